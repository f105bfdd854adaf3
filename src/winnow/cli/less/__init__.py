"""``winnow less ...``: LESS (gradient similarity for targeted instruction tuning) as file steps.

    data      docs → instruction examples (own token store), pool / target / eval id lists,
              subtask labels, the lm-eval define-choice task
    train     LoRA on a base model: the warm-up (one checkpoint per epoch + each epoch's mean lr)
              or a fine-tune (the adapter merged into a plain model folder for evaluation)
    features  one warm-up checkpoint → Adam features of the pool (one .npy per block of token shards) and
              SGD features of the target, projected and normalised, each with a JSON sidecar
    match     features of every checkpoint → LESS scores of the pool
    predict   a ridge model on the frozen base's hidden states, fitted to the exact scores of a
              featurised sample → predicted scores of the rest, R²/Spearman, selection overlap
    prefilter-sample   the prefilter's fit sample S (ids), before any pool features exist
    prefilter-predict  the ridge fitted on S's exact scores → predictions of the rest and the
              predicted top T of the rest (the only other examples that get exact features)
    prefilter exact scores of S ∪ T, the rest ranked below them by prediction → one scores
              table; the counts featurised and, with full features, the recall of the exact top-k
    eval      a fine-tuned model → target loss (overall, per subtask) + lm-eval define choice
    compare   the arms' evals over seeds → one table

Example ids in results/{run}/less/ refer to less/data/examples.parquet (the instruction store),
not to the pretraining corpus's examples table.
"""

from __future__ import annotations

from winnow.cli._common import (
    add_args,
    add_batch_size,
    add_device,
    add_model,
    add_runtime,
    add_store,
    add_threads,
    add_tokenizer,
    add_trust,
    config_help,
    json_arg,
)
from winnow.cli.less._shared import base_input
from winnow.cli.less.build import data, epoch_mean_lrs, features, less_train_config, match, train, warmup_ids
from winnow.cli.less.predict import compare, evaluate, predict, prefilter, prefilter_predict, prefilter_sample
from winnow.params import add_params

__all__ = [
    "base_input",
    "epoch_mean_lrs",
    "less_train_config",
    "register",
    "warmup_ids",
]


def register(sub) -> None:
    _add_data(sub)
    _add_train(sub)
    _add_features(sub)
    _add_match(sub)
    _add_predict(sub)
    _add_prefilter_sample(sub)
    _add_prefilter_predict(sub)
    _add_prefilter(sub)
    _add_eval(sub)
    _add_compare(sub)


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="instruction examples, id lists and the define-choice task")
    source = p.add_argument_group("source (corpus docs, or the user's files)")
    add_args(
        source,
        """
        --docs?     DOCS parquet of the corpus (less.data.source corpus)
        --rejects?  REJECTS parquet written with the files' malformed records (with --files-config)
        """,
    )
    source.add_argument(
        "--files-config",
        type=json_arg,
        default=None,
        help=config_help("less.data.files", " (pool/target/eval paths, fields, chat_template)")
        + "; replaces --docs (less.data.source files)",
    )
    add_tokenizer(p)
    add_params(p, "less data")
    out = p.add_argument_group("outputs")
    add_args(
        out,
        """
        --instructions  INSTRUCTIONS parquet: the built instruction items
        --tokens+       tokens-{shard}.bin, one per shard, in order, next to --manifest
        --examples      EXAMPLES parquet of the instruction store
        --manifest      manifest.json of the instruction store (layout, counts)
        --pool          IDS parquet: the pool LESS selects from (train split)
        --target        IDS parquet: the target's reference points (val split)
        --eval-ids      IDS parquet: held-out items the arms are judged on (test split)
        --subtasks      SUBTASKS parquet: task and subtask of every example
        --choice        define-choice task JSONL for lm-eval (empty with --files-config)
        """,
    )
    add_threads(p)
    p.set_defaults(func=data)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="LoRA warm-up (per-epoch checkpoints) or fine-tune (merged model)")
    add_store(p, "the instruction store")
    _add_base(p)
    add_args(
        p,
        """
        --ids              IDS parquet: the examples to train on
        --seed:int         seed of the LoRA init, the data order and the warm-up's fraction
        --ckpt-root        folder of the intermediate (per-epoch) checkpoints
        """,
    )
    add_params(p, "less train")
    _add_lora(p)
    p.add_argument(
        "--train-config",
        type=json_arg,
        required=True,
        help=config_help("less.train", " (the LoRA recipe; epochs = less.warmup.epochs for the warm-up)"),
    )
    mode = p.add_mutually_exclusive_group(required=True)
    add_args(
        mode,
        """
        --epochs-out+?  epoch-{e}/model.safetensors for e = 1..E (warm-up)
        --merged-out?   model.safetensors of the merged model (fine-tune)
        """,
    )
    p.add_argument("--report", required=True, help="JSON: ids, steps, mean lr of each epoch, summary")
    add_trust(p)
    add_threads(p)
    p.set_defaults(func=train)


def _add_features(sub) -> None:
    p = sub.add_parser("features", help="projected Adam (pool) and SGD (target) LoRA gradient features")
    add_store(p, "the instruction store")
    _add_base(p)
    add_args(
        p,
        """
        --checkpoint      model.safetensors of one warm-up epoch
        --pool            IDS parquet of the pool examples to featurise (Adam features)
        --target          IDS parquet of the target examples (SGD features)
        --pool-out+       pool-{block}.npy, one per block of token shards
        --target-out      target.npy: the target's features
        """,
    )
    _add_lora(p)
    add_params(p, "less features")
    add_device(p)
    p.add_argument("--shards-per-block", type=int, default=1, help="shards a pool-{block}.npy file covers; default 1")
    add_trust(p)
    add_threads(p)
    p.set_defaults(func=features)


def _add_match(sub) -> None:
    p = sub.add_parser("match", help="LESS scores: Σ_epochs w̄ cos, aggregated over the target")
    add_args(
        p,
        """
        --pool-features+      pool-{block}.npy of every epoch and block
        --target-features+    target.npy, one per epoch, in epoch order
        --warmup              warm-up report (each epoch's mean lr)
        --subtasks?           SUBTASKS parquet; without it the target is one subtask
        --out                 SCORES parquet: the LESS score of every pool example
        --report              JSON: counts, epoch weights, score quantiles
        """,
    )
    add_params(p, "less match")
    add_threads(p)
    p.set_defaults(func=match)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="learned predictor of the LESS score from hidden states")
    add_store(p, "the instruction store")
    _add_base(p)
    add_args(
        p,
        """
        --pool                IDS parquet of the pool
        --scores              exact LESS scores of the whole pool
        --out                 scores table: exact on the fit sample, predicted elsewhere
        --report              JSON: held-out R²/Spearman, selection overlaps
        """,
    )
    add_params(p, "less predict")
    add_batch_size(p, 32)
    add_runtime(p)
    p.set_defaults(func=predict)


def _add_prefilter_sample(sub) -> None:
    p = sub.add_parser("prefilter-sample", help="the prefilter's fit sample S of the pool")
    add_args(
        p,
        """
        --pool  IDS parquet of the pool
        --out   IDS parquet of S, sorted by example id
        """,
    )
    add_params(p, "less prefilter-sample")
    p.set_defaults(func=prefilter_sample)


def _add_prefilter_predict(sub) -> None:
    p = sub.add_parser("prefilter-predict", help="ridge fitted on S's exact scores → predictions, the top T")
    add_store(p, "the instruction store")
    _add_base(p)
    add_args(
        p,
        """
        --pool        IDS parquet of the pool
        --fit-ids     S (prefilter-sample)
        --fit-scores  exact LESS scores of S (match over S's features)
        --predicted   scores table: exact on S, predicted elsewhere
        --top-ids     IDS parquet of T, best predicted first
        --report      JSON: counts, ridge lambda, fit quality
        """,
    )
    add_params(p, "less prefilter-predict")
    add_batch_size(p, 32)
    add_runtime(p)
    p.set_defaults(func=prefilter_predict)


def _add_prefilter(sub) -> None:
    p = sub.add_parser("prefilter", help="the prefilter's scores and its report (vs full featurisation)")
    add_args(
        p,
        """
        --pool          IDS parquet of the pool
        --fit-ids       IDS parquet of S (prefilter-sample)
        --fit-scores    exact LESS scores of S
        --top-ids       IDS parquet of T (prefilter-predict)
        --top-scores    exact LESS scores of T
        --predicted     prefilter-predict's table (exact on S, predicted elsewhere)
        --fit-match     match report of S (its epoch count)
        --full-scores?  exact scores of the whole pool, when the run has them
        --out           scores table: exact on S ∪ T, the rest ranked below
        --report        JSON: counts featurised, savings, recall of the exact top-k
        """,
    )
    add_params(p, "less prefilter")
    p.set_defaults(func=prefilter)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="target loss (overall, per subtask) and the lm-eval define choice")
    add_store(p, "the instruction store")
    add_model(p, what="the fine-tuned (merged) model")
    add_tokenizer(p)
    add_args(
        p,
        """
        --eval-ids  IDS parquet: the held-out items (less data --eval-ids)
        --subtasks  SUBTASKS parquet (less data --subtasks)
        --choice    define-choice task JSONL (empty: the target loss alone)
        --out       eval.json: target loss overall and per subtask, define-choice acc
        """,
    )
    add_params(p, "less eval")
    add_runtime(p)
    p.set_defaults(func=evaluate)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="the arms' evals over seeds → one table")
    add_args(
        p,
        """
        --evals+       .../less/{arm}/s{seed}/eval.json
        --selections+  .../less/{arm}/s{seed}/ids.parquet
        --examples     EXAMPLES parquet of the instruction store (tasks of the ids)
        --out          TSV: each arm against random over seeds
        --composition  TSV: task shares of each arm's selection
        """,
    )
    p.set_defaults(func=compare)


def _add_base(p) -> None:
    p.add_argument("--base", required=True, help="model.safetensors (or config.json) of the base model folder")


def _add_lora(p) -> None:
    p.add_argument(
        "--lora-config",
        type=json_arg,
        required=True,
        help=config_help("less.lora", " (target_modules resolved for the base)"),
    )
