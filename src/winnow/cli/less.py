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

import logging
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from winnow.cli._common import (
    add_batch_size,
    add_device,
    add_model,
    add_store,
    add_threads,
    add_tokenizer,
    add_trust,
    config_help,
    json_arg,
    resolve_device,
    sidecars,
)
from winnow.io.atomic import read_json, write_json

log = logging.getLogger(__name__)


def base_input(path: str) -> str | Path:
    """What a job's provenance records of its base: a local folder's files (given as its
    config.json; its weights may be sharded), or the spine's model.safetensors."""
    return Path(path).parent if Path(path).name == "config.json" else path


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
    source.add_argument("--docs", default=None, help="DOCS parquet of the corpus (less.data.source corpus)")
    source.add_argument(
        "--files-config",
        type=json_arg,
        default=None,
        help=config_help("less.data.files", " (pool/target/eval paths, fields, chat_template)")
        + "; replaces --docs (less.data.source files)",
    )
    source.add_argument(
        "--rejects",
        default=None,
        help="REJECTS parquet written with the files' malformed records (with --files-config)",
    )
    add_tokenizer(p)
    p.add_argument("--seq-len", type=int, required=True, help="tokens per example (tokenize.seq_len)")
    p.add_argument("--num-shards", type=int, required=True, help="token shards of the instruction store")
    p.add_argument("--data-config", type=json_arg, required=True, help=config_help("less.data"))
    out = p.add_argument_group("outputs")
    out.add_argument("--instructions", required=True, help="INSTRUCTIONS parquet: the built instruction items")
    out.add_argument(
        "--tokens", nargs="+", required=True, help="tokens-{shard}.bin, one per shard, in order, next to --manifest"
    )
    out.add_argument("--examples", required=True, help="EXAMPLES parquet of the instruction store")
    out.add_argument("--manifest", required=True, help="manifest.json of the instruction store (layout, counts)")
    out.add_argument("--pool", required=True, help="IDS parquet: the pool LESS selects from (train split)")
    out.add_argument("--target", required=True, help="IDS parquet: the target's reference points (val split)")
    out.add_argument(
        "--eval-ids", required=True, help="IDS parquet: held-out items the arms are judged on (test split)"
    )
    out.add_argument("--subtasks", required=True, help="SUBTASKS parquet: task and subtask of every example")
    out.add_argument("--choice", required=True, help="define-choice task JSONL for lm-eval (empty with --files-config)")
    add_threads(p)
    p.set_defaults(func=data)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="LoRA warm-up (per-epoch checkpoints) or fine-tune (merged model)")
    add_store(p, "the instruction store")
    _add_base(p)
    p.add_argument("--ids", required=True, help="IDS parquet: the examples to train on")
    p.add_argument(
        "--fraction", type=float, default=None, help="train on a seeded fraction (0-1] of --ids (less.warmup.fraction)"
    )
    _add_lora(p)
    p.add_argument(
        "--train-config",
        type=json_arg,
        required=True,
        help=config_help("less.train", " (the LoRA recipe; epochs = less.warmup.epochs for the warm-up)"),
    )
    p.add_argument("--seed", type=int, required=True, help="seed of the LoRA init, the data order and --fraction")
    p.add_argument("--ckpt-root", required=True, help="folder of the intermediate (per-epoch) checkpoints")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--epochs-out", nargs="+", help="epoch-{e}/model.safetensors for e = 1..E (warm-up)")
    mode.add_argument("--merged-out", help="model.safetensors of the merged model (fine-tune)")
    p.add_argument("--report", required=True, help="JSON: ids, steps, mean lr of each epoch, summary")
    add_trust(p)
    add_threads(p)
    p.set_defaults(func=train)


def _add_features(sub) -> None:
    p = sub.add_parser("features", help="projected Adam (pool) and SGD (target) LoRA gradient features")
    add_store(p, "the instruction store")
    _add_base(p)
    p.add_argument("--checkpoint", required=True, help="model.safetensors of one warm-up epoch")
    _add_lora(p)
    p.add_argument("--pool", required=True, help="IDS parquet of the pool examples to featurise (Adam features)")
    p.add_argument("--target", required=True, help="IDS parquet of the target examples (SGD features)")
    p.add_argument(
        "--dim", type=int, default=None, help="projected feature dimension; required here or in --features-config"
    )
    p.add_argument(
        "--proj-seed",
        type=int,
        default=None,
        help="seed of the random projection; required here or in --features-config",
    )
    p.add_argument(
        "--dtype",
        default="float16",
        choices=["float16", "float32"],
        help="dtype of the stored features; default float16",
    )
    add_batch_size(p, 16)
    p.add_argument(
        "--method",
        default="hooks",
        choices=["hooks", "vmap"],
        help="per-example gradients: one batched backward with hooks, or vmap(grad); default hooks",
    )
    add_device(p)
    p.add_argument("--pool-out", nargs="+", required=True, help="pool-{block}.npy, one per block of token shards")
    p.add_argument("--shards-per-block", type=int, default=1, help="shards a pool-{block}.npy file covers; default 1")
    p.add_argument("--target-out", required=True, help="target.npy: the target's features")
    p.add_argument(
        "--features-config",
        type=json_arg,
        default=None,
        help=config_help("less.features", " (plus eval.device and shards_per_block)")
        + f"; replaces the flags of these keys: {sorted(_FEATURES_KEYS)}",
    )
    add_trust(p)
    add_threads(p)
    p.set_defaults(func=features)


def _add_match(sub) -> None:
    p = sub.add_parser("match", help="LESS scores: Σ_epochs w̄ cos, aggregated over the target")
    p.add_argument("--pool-features", nargs="+", required=True, help="pool-{block}.npy of every epoch and block")
    p.add_argument("--target-features", nargs="+", required=True, help="target.npy, one per epoch, in epoch order")
    p.add_argument("--warmup", required=True, help="warm-up report (each epoch's mean lr)")
    p.add_argument("--subtasks", default=None, help="SUBTASKS parquet; without it the target is one subtask")
    p.add_argument(
        "--aggregate",
        default="subtask_max",
        choices=["subtask_max", "mean", "max", "min"],
        help="how a pool example's similarities to the target points are combined; default subtask_max",
    )
    p.add_argument(
        "--match-config",
        type=json_arg,
        default=None,
        help='JSON {"aggregate": ...} (less.aggregate of the workflow config); replaces --aggregate',
    )
    p.add_argument("--out", required=True, help="SCORES parquet: the LESS score of every pool example")
    p.add_argument("--report", required=True, help="JSON: counts, epoch weights, score quantiles")
    add_threads(p)
    p.set_defaults(func=match)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="learned predictor of the LESS score from hidden states")
    add_store(p, "the instruction store")
    _add_base(p)
    p.add_argument("--pool", required=True, help="IDS parquet of the pool")
    p.add_argument("--scores", required=True, help="exact LESS scores of the whole pool")
    p.add_argument(
        "--fit-fraction", type=float, required=True, help="fraction (0-1) of the pool the ridge is fitted on"
    )
    p.add_argument("--ratio", type=float, required=True, help="selection ratio (0-1] for the overlap")
    p.add_argument("--seed", type=int, required=True, help="seed of the fit sample and the ridge's CV folds")
    add_batch_size(p, 32)
    add_device(p)
    p.add_argument("--out", required=True, help="scores table: exact on the fit sample, predicted elsewhere")
    p.add_argument("--report", required=True, help="JSON: held-out R²/Spearman, selection overlaps")
    add_trust(p)
    add_threads(p)
    p.set_defaults(func=predict)


def _add_prefilter_sample(sub) -> None:
    p = sub.add_parser("prefilter-sample", help="the prefilter's fit sample S of the pool")
    p.add_argument("--pool", required=True, help="IDS parquet of the pool")
    p.add_argument(
        "--predictor-config",
        type=json_arg,
        required=True,
        help='JSON {"fit_fraction", "seed"}: ' + config_help("less.predictor", " (these keys)"),
    )
    p.add_argument("--out", required=True, help="IDS parquet of S, sorted by example id")
    p.set_defaults(func=prefilter_sample)


def _add_prefilter_predict(sub) -> None:
    p = sub.add_parser("prefilter-predict", help="ridge fitted on S's exact scores → predictions, the top T")
    add_store(p, "the instruction store")
    _add_base(p)
    p.add_argument("--pool", required=True, help="IDS parquet of the pool")
    p.add_argument("--fit-ids", required=True, help="S (prefilter-sample)")
    p.add_argument("--fit-scores", required=True, help="exact LESS scores of S (match over S's features)")
    p.add_argument(
        "--predictor-config",
        type=json_arg,
        required=True,
        help='JSON {"featurize_fraction", "seed", "device", "batch_size" (default 32)}: '
        + config_help("less.predictor", " (these keys, device from eval.device)"),
    )
    p.add_argument("--predicted", required=True, help="scores table: exact on S, predicted elsewhere")
    p.add_argument("--top-ids", required=True, help="IDS parquet of T, best predicted first")
    p.add_argument("--report", required=True, help="JSON: counts, ridge lambda, fit quality")
    add_trust(p)
    add_threads(p)
    p.set_defaults(func=prefilter_predict)


def _add_prefilter(sub) -> None:
    p = sub.add_parser("prefilter", help="the prefilter's scores and its report (vs full featurisation)")
    p.add_argument("--pool", required=True, help="IDS parquet of the pool")
    p.add_argument("--fit-ids", required=True, help="IDS parquet of S (prefilter-sample)")
    p.add_argument("--fit-scores", required=True, help="exact LESS scores of S")
    p.add_argument("--top-ids", required=True, help="IDS parquet of T (prefilter-predict)")
    p.add_argument("--top-scores", required=True, help="exact LESS scores of T")
    p.add_argument("--predicted", required=True, help="prefilter-predict's table (exact on S, predicted elsewhere)")
    p.add_argument("--fit-match", required=True, help="match report of S (its epoch count)")
    p.add_argument("--full-scores", default=None, help="exact scores of the whole pool, when the run has them")
    p.add_argument(
        "--predictor-config",
        type=json_arg,
        required=True,
        help='JSON {"mode", "fit_fraction", "featurize_fraction", "ratio"}: '
        + config_help("less.predictor", " (these keys, ratio from select.less.ratio)"),
    )
    p.add_argument("--out", required=True, help="scores table: exact on S ∪ T, the rest ranked below")
    p.add_argument("--report", required=True, help="JSON: counts featurised, savings, recall of the exact top-k")
    p.set_defaults(func=prefilter)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="target loss (overall, per subtask) and the lm-eval define choice")
    add_store(p, "the instruction store")
    add_model(p, what="the fine-tuned (merged) model")
    add_tokenizer(p)
    p.add_argument("--eval-ids", required=True, help="IDS parquet: the held-out items (less data --eval-ids)")
    p.add_argument("--subtasks", required=True, help="SUBTASKS parquet (less data --subtasks)")
    p.add_argument("--choice", required=True, help="define-choice task JSONL (empty: the target loss alone)")
    add_batch_size(p, 16)
    add_device(p)
    p.add_argument("--out", required=True, help="eval.json: target loss overall and per subtask, define-choice acc")
    add_trust(p)
    add_threads(p)
    p.set_defaults(func=evaluate)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="the arms' evals over seeds → one table")
    p.add_argument("--evals", nargs="+", required=True, help=".../less/{arm}/s{seed}/eval.json")
    p.add_argument("--selections", nargs="+", required=True, help=".../less/{arm}/s{seed}/ids.parquet")
    p.add_argument("--examples", required=True, help="EXAMPLES parquet of the instruction store (tasks of the ids)")
    p.add_argument("--out", required=True, help="TSV: each arm against random over seeds")
    p.add_argument("--composition", required=True, help="TSV: task shares of each arm's selection")
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


# `less features` JSON keys → argument names (the rules pass config values as one JSON object).
_FEATURES_KEYS = {
    "dim": "dim",
    "seed": "proj_seed",
    "dtype": "dtype",
    "batch_size": "batch_size",
    "method": "method",
    "device": "device",
    "shards_per_block": "shards_per_block",
}


def _apply_config(args, cfg: dict | None, keys: dict[str, str], flag: str) -> None:
    """Set the arguments named by ``keys`` from the JSON object ``cfg`` (unknown keys fail)."""
    unknown = sorted(set(cfg or {}) - set(keys))
    if unknown:
        raise ValueError(f"{flag}: unknown keys {unknown} (known: {sorted(keys)})")
    for key, value in (cfg or {}).items():
        setattr(args, keys[key], value)


def _store(args):
    from winnow.train.batches import open_store

    return open_store(args.examples, args.manifest)


def _ids(path) -> np.ndarray:
    from winnow.io.tables import IDS, read_table

    return read_table(path, IDS)["example_id"].to_numpy()


# ---------------------------------------------------------------------------------------------- data
def data(args) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    from winnow.data.instruct import build_instructions, less_sets
    from winnow.data.subsets import ids_table
    from winnow.data.tasks import write_jsonl
    from winnow.data.tokenize import tokenize_shard
    from winnow.data.tokenizer import load
    from winnow.io.shards import FLAT_LAYOUT, layout_entry, token_dtype, write_shard
    from winnow.io.tables import DOCS, EXAMPLES, IDS, INSTRUCTIONS, SUBTASKS, read_table, write_table

    cfg = args.data_config
    if len(args.tokens) != args.num_shards:
        raise ValueError(f"--tokens names {len(args.tokens)} files for {args.num_shards} shards")
    for shard, path in enumerate(args.tokens):  # readers find them through the manifest's layout
        if Path(path) != Path(args.manifest).parent / FLAT_LAYOUT.format(shard=shard):
            raise ValueError(f"--tokens: shard {shard} must be {FLAT_LAYOUT.format(shard=shard)} next to the manifest")
    tok = load(Path(args.tokenizer).parent)
    files = args.files_config
    if files is not None:  # the user's pool / target / eval files (winnow.data.instruct_files)
        from winnow.data.instruct_files import build_from_files
        from winnow.io.tables import REJECTS

        if not args.rejects:
            raise ValueError("less data: --files-config needs --rejects")
        inst, rejects, file_counts = build_from_files(
            {k: files.get(k) for k in ("pool", "target", "eval")},
            fields=files.get("fields"),
            tokenizer=tok,
            chat_template=files.get("chat_template"),
        )
        write_table(args.rejects, rejects, REJECTS)
        log.info("less data from files: %s", file_counts)
    else:
        docs = read_table(args.docs, DOCS)
        docs = docs.filter(pc.is_null(docs["prompt"]))  # instruction items are built from plain text
        inst = build_instructions(docs, seed=cfg["seed"], max_per_task=cfg["max_per_task"])
    write_table(args.instructions, inst, INSTRUCTIONS)
    dtype = token_dtype(len(tok))
    as_docs = inst.select([f.name for f in DOCS])
    parts, stats = [], {}
    for shard, path in enumerate(args.tokens):
        tokens, examples, st = tokenize_shard(as_docs, tok, shard, args.num_shards, args.seq_len)
        write_shard(path, tokens, dtype)
        parts.append(examples)
        stats[str(shard)] = st
    examples = pa.concat_tables(parts)
    write_table(args.examples, examples, EXAMPLES)
    sets = less_sets(inst, examples, cfg, from_files=files is not None)
    write_table(args.subtasks, sets.subtasks, SUBTASKS)
    write_table(args.pool, ids_table(sets.pool), IDS)
    write_table(args.target, ids_table(sets.target), IDS)
    write_table(args.eval_ids, ids_table(sets.eval_ids), IDS)
    write_jsonl(args.choice, sets.choice)
    write_json(
        args.manifest,
        {
            "examples": examples.num_rows,
            "seq_len": args.seq_len,
            "dtype": dtype.str,
            "vocab_size": len(tok),
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "num_shards": args.num_shards,
            "shards": {int(t["shard"][0].as_py()): t.num_rows for t in parts if t.num_rows},
            "layout": layout_entry(FLAT_LAYOUT, 1, args.num_shards),
            "stats": stats,
            **sets.summary,
            **({"files": file_counts} if files is not None else {}),
        },
    )
    outs = [args.instructions, *args.tokens, args.examples, args.manifest, args.pool, args.target]
    outs += [args.eval_ids, args.subtasks, args.choice] + ([args.rejects] if files is not None else [])
    ins = [args.docs] if files is None else [str(files[k]) for k in ("pool", "target", "eval")]
    sidecars(args, "less data", outs, [*ins, args.tokenizer], seed=cfg["seed"])


def _counts(values) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


# --------------------------------------------------------------------------------------------- train
def less_train_config(cfg: dict, n_ids: int, seq_len: int, seed: int):
    """The shared trainer's config for LESS's recipe: ``epochs`` over ``n_ids`` examples, a linear
    decay after ``warmup_ratio`` of the steps (HF's linear schedule), one checkpoint per epoch.

    Batches are epoch-aligned (HF's Trainer: each epoch one permutation in ⌈n/B⌉ steps, the last
    batch partial), so the checkpoint at step e·⌈n/B⌉ is exactly the end of data epoch e."""
    from winnow.train.batches import steps_per_epoch as epoch_steps
    from winnow.train.trainer import TrainConfig

    steps_per_epoch = epoch_steps(n_ids, cfg["batch_size"])
    steps = cfg["epochs"] * steps_per_epoch
    return TrainConfig(
        steps=steps,
        batch_size=cfg["batch_size"],
        micro_batch_size=cfg.get("micro_batch_size", cfg["batch_size"]),
        seq_len=seq_len,
        lr=cfg["lr"],
        schedule="linear",
        warmup_steps=int(math.ceil(cfg.get("warmup_ratio", 0.0) * steps)),
        min_lr_ratio=0.0,
        weight_decay=cfg.get("weight_decay", 0.0),
        betas=tuple(cfg.get("betas", (0.9, 0.999))),
        grad_clip=cfg.get("grad_clip", 1.0),
        seed=seed,
        ckpt_every=steps_per_epoch,
        keep_checkpoints=cfg["epochs"],
        precision=cfg.get("precision", "auto"),
        epoch_batches=True,
    ), steps_per_epoch


def epoch_mean_lrs(tc, steps_per_epoch: int) -> list[float]:
    """η̄_e: the mean learning rate over the optimizer steps of each epoch (LESS's checkpoint weights);
    with epoch-aligned batches (:func:`less_train_config`) epoch e is steps [e·spe, (e+1)·spe)."""
    from winnow.train.schedules import lr_at

    lrs = [
        lr_at(s, tc.lr, tc.steps, tc.schedule, tc.warmup_steps, tc.min_lr_ratio, tc.decay_frac, tc.half_life)
        for s in range(tc.steps)
    ]
    return [
        float(np.mean(lrs[e * steps_per_epoch : (e + 1) * steps_per_epoch])) for e in range(tc.steps // steps_per_epoch)
    ]


def warmup_ids(pool: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """LESS's warm-up set: a seeded ⌊fraction · n⌋ of the pool; a fraction that keeps none is an
    error naming the config key (not silently one example)."""
    from winnow.data.subsets import sample_ids

    return sample_ids(pool, seed, fraction=fraction, key="less.warmup.fraction", what="pool")


def train(args) -> None:
    import torch

    from winnow.methods.less import add_lora
    from winnow.models.build import load_pretrained
    from winnow.models.checkpoint import write_checkpoint_files
    from winnow.provenance import path_sha256
    from winnow.train.trainer import train as run

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    store, manifest = _store(args)
    ids = _ids(args.ids)
    if args.fraction is not None:  # LESS's warm-up: a seeded random fraction of the pool
        ids = warmup_ids(ids, args.fraction, args.seed)
    tc, spe = less_train_config(args.train_config, ids.size, manifest["seq_len"], args.seed)
    base = load_pretrained(Path(args.base).parent, trust_remote_code=args.trust_remote_code)
    model = add_lora(base, seed=args.seed, **args.lora_config)
    init = f"lora:{path_sha256(base_input(args.base))}:{sorted(args.lora_config.items())}"
    ckpt_root = Path(args.ckpt_root)
    final = ckpt_root / "final" if args.merged_out else Path(args.epochs_out[-1]).parent
    summary = run(model, store, ids, tc, final, ckpt_root, manifest["pad_token_id"], init=init)
    report = {
        "n_ids": int(ids.size),
        "ids_head": [int(i) for i in ids[:20]],
        "steps": tc.steps,
        "steps_per_epoch": spe,
        "epochs": tc.steps // spe,
        "epoch_mean_lr": epoch_mean_lrs(tc, spe),
        "train_config": {k: v for k, v in vars(tc).items() if k != "extra"},
        "lora": args.lora_config,
        "summary": summary,
    }
    if args.epochs_out:
        if len(args.epochs_out) != report["epochs"]:
            raise ValueError(f"--epochs-out names {len(args.epochs_out)} folders for {report['epochs']} epochs")
        # The trainer keeps one checkpoint per epoch under ckpt_root (the last is `final`).
        for e, out in enumerate(args.epochs_out[:-1], start=1):
            src = ckpt_root / f"step-{e * spe:08d}"
            dst = Path(out).parent
            tmp = dst.with_name(f".tmp-{dst.name}")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            shutil.rmtree(dst, ignore_errors=True)
            tmp.rename(dst)
        outs = list(args.epochs_out)
    else:
        merged = model.merge_and_unload()
        out_dir = Path(args.merged_out).parent
        tmp = out_dir.with_name(f".tmp-{out_dir.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        write_checkpoint_files(tmp, merged, None, {"summary": summary, "merged_lora": args.lora_config})
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
        outs = [args.merged_out]
    write_json(args.report, report)
    sidecars(args, "less train", outs + [args.report], [args.examples, base_input(args.base), args.ids], seed=args.seed)


# ------------------------------------------------------------------------------------------ features
def features(args) -> None:
    import torch

    from winnow.methods.less import RademacherProjector, featurize, load_lora_checkpoint, write_features
    from winnow.models.build import load_pretrained

    _apply_config(args, args.features_config, _FEATURES_KEYS, "--features-config")
    for name in ("dim", "proj_seed"):
        if getattr(args, name) is None:
            raise ValueError(f"less features: {name} is required (flag or --features-config)")
    if args.dtype not in ("float16", "float32") or args.method not in ("hooks", "vmap"):
        raise ValueError(f"less features: dtype {args.dtype!r} / method {args.method!r} not supported")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    store, manifest = _store(args)
    base = load_pretrained(Path(args.base).parent, trust_remote_code=args.trust_remote_code)
    model, moments = load_lora_checkpoint(base, Path(args.checkpoint).parent, args.lora_config)
    model.to(device)
    from winnow.methods.less import lora_param_names

    names = lora_param_names(model)
    n_in = sum(dict(model.named_parameters())[n].numel() for n in names)
    projector = RademacherProjector(n_in, args.dim, args.proj_seed)
    pool = _ids(args.pool)
    # A pool id's block, from its shard (example_id = shard · 2**32 + index): one file per block
    # keeps the job resumable per file and its file list short at thousands of shards.
    block_of = (pool >> 32) // args.shards_per_block
    common = {"checkpoint": str(Path(args.checkpoint).parent), "d": args.dim, "seed": args.proj_seed}
    common["dtype"] = args.dtype
    kw = dict(names=names, projector=projector, seq_len=manifest["seq_len"], pad_id=manifest["pad_token_id"])
    kw.update(batch_size=args.batch_size, device=device, method=args.method)
    if str(device).startswith("cuda"):
        kw["amp"] = "bf16"  # as the trainer on GPU: bf16 autocast over the fp32 parameters
    for path in args.pool_out:
        ids = pool[block_of == int(Path(path).stem.split("-")[-1])]
        feats, norms = featurize(model, store, ids, kind="adam", moments=moments, **kw)
        write_features(path, feats, {**common, "kind": "adam", "ids": ids.tolist()}, norms=norms)
    target = _ids(args.target)
    feats, norms = featurize(model, store, target, kind="sgd", **kw)
    write_features(args.target_out, feats, {**common, "kind": "sgd", "ids": target.tolist()}, norms=norms)
    sidecars(
        args,
        "less features",
        list(args.pool_out) + [args.target_out],
        [args.examples, base_input(args.base), args.checkpoint, args.pool, args.target],
        seed=args.proj_seed,
    )


# --------------------------------------------------------------------------------------------- match
def _pool_features_by_epoch(pool_paths: list[str], target_paths: list[str]):
    """Pool feature files grouped by their epoch folder, in the order of the target files."""
    from winnow.methods.less import read_features

    groups: dict[str, list[str]] = {}
    for p in pool_paths:
        groups.setdefault(str(Path(p).parent), []).append(p)
    out = []
    for t in target_paths:
        files = sorted(groups.pop(str(Path(t).parent), []))
        if not files:
            raise ValueError(f"no pool features next to {t}")
        parts = [read_features(f, {"kind": "adam"}) for f in files]
        feats = np.concatenate([np.asarray(f, dtype=np.float32) for f, _ in parts])
        ids = np.concatenate([i for _, i in parts])
        out.append((feats, ids))
    if groups:
        raise ValueError(f"pool features without target features: {sorted(groups)}")
    return out


def match(args) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import torch

    from winnow.io.tables import SCORES, SUBTASKS, read_table, write_table
    from winnow.methods.less import checkpoint_weights, less_scores, read_features

    _apply_config(args, args.match_config, {"aggregate": "aggregate"}, "--match-config")
    torch.set_num_threads(args.threads)
    pool = _pool_features_by_epoch(args.pool_features, args.target_features)
    ids = pool[0][1]
    order = np.argsort(ids, kind="stable")
    train_feats = []
    for feats, epoch_ids in pool:
        o = np.argsort(epoch_ids, kind="stable")
        if not np.array_equal(epoch_ids[o], ids[order]):
            raise ValueError("pool features of different epochs hold different example ids")
        train_feats.append(torch.from_numpy(feats[o]))
    ids = ids[order]
    target = [read_features(p, {"kind": "sgd"}) for p in args.target_features]
    target_ids = target[0][1]
    for _, t_ids in target[1:]:
        if not np.array_equal(t_ids, target_ids):
            raise ValueError("target features of different epochs hold different example ids")
    if args.subtasks is None:
        subtasks = ["all"] * int(target_ids.size)
    else:
        sub = read_table(args.subtasks, SUBTASKS)
        sub = sub.filter(pc.is_in(sub["example_id"], pa.array(target_ids)))
        sub_of = dict(zip(sub["example_id"].to_pylist(), sub["subtask"].to_pylist(), strict=True))
        subtasks = [sub_of[int(e)] for e in target_ids]
    warm = read_json(args.warmup)
    if len(warm["epoch_mean_lr"]) != len(args.target_features):
        raise ValueError(f"{len(warm['epoch_mean_lr'])} warm-up epochs but {len(args.target_features)} feature sets")
    weights = checkpoint_weights(warm["epoch_mean_lr"])
    scores = less_scores(
        train_feats,
        [torch.from_numpy(np.asarray(f, dtype=np.float32)) for f, _ in target],
        weights,
        subtasks,
        aggregate=args.aggregate,
    )
    scores = np.asarray(scores, dtype=np.float32)
    write_table(args.out, pa.table({"example_id": ids.astype(np.int64), "score": scores}, schema=SCORES), SCORES)
    write_json(
        args.report,
        {
            "n_pool": int(ids.size),
            "n_target": int(target_ids.size),
            "subtasks": _counts(subtasks),
            "epoch_weights": [float(w) for w in weights],
            "aggregate": args.aggregate,
            "score": {
                q: float(np.quantile(scores, v)) if scores.size else None
                for q, v in (("min", 0), ("median", 0.5), ("max", 1))
            },
        },
    )
    inputs = [*args.pool_features, *args.target_features, args.warmup, *([args.subtasks] if args.subtasks else [])]
    sidecars(args, "less match", [args.out, args.report], inputs)


# ------------------------------------------------------------------------------------------- predict
def predict(args) -> None:
    import pyarrow as pa
    import torch

    from winnow.io.tables import SCORES, read_table, write_table
    from winnow.methods.less import fit_ridge, mean_hidden_states, predict_ridge, regression_report
    from winnow.methods.less_prefilter import prefilter_fit_ids
    from winnow.models.build import load_pretrained
    from winnow.select import SelectParams, select
    from winnow.stats import spearman

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    store, manifest = _store(args)
    pool = np.sort(_ids(args.pool))
    exact = read_table(args.scores, SCORES)
    exact_of = dict(zip(exact["example_id"].to_pylist(), exact["score"].to_pylist(), strict=True))
    y = np.asarray([exact_of[int(e)] for e in pool], dtype=np.float64)
    fit_ids = prefilter_fit_ids(pool, args.fit_fraction, args.seed)  # the prefilter's S too
    fit_mask = np.isin(pool, fit_ids)
    base = load_pretrained(Path(args.base).parent, trust_remote_code=args.trust_remote_code).to(device)
    x = mean_hidden_states(base, store, pool, args.batch_size, manifest["seq_len"], manifest["pad_token_id"], device)
    x = np.asarray(x, dtype=np.float64)
    model = fit_ridge(x[fit_mask], y[fit_mask], seed=args.seed)
    pred = np.asarray(predict_ridge(model, x), dtype=np.float64)
    held = ~fit_mask
    report = {
        "inputs": "mean last-layer hidden state of the frozen base model",
        "n_pool": int(pool.size),
        "n_fit": int(fit_mask.sum()),
        "n_held_out": int(held.sum()),
        "held_out": regression_report(y[held], pred[held]),
        "fit": regression_report(y[fit_mask], pred[fit_mask]),
        "ridge_lambda": float(model["lambda"]) if "lambda" in model else None,
    }
    # Selection from predictions: exact scores where they were computed (the featurised sample),
    # predictions elsewhere; compared with the exact LESS selection over the whole pool.
    hybrid = np.where(fit_mask, y, pred)
    params = SelectParams(direction="higher", ratio=args.ratio, temperature=0.0)
    k = params.count(pool.size)
    top_exact = set(select(pool, y, params)[0].tolist())
    for name, s in (("hybrid", hybrid), ("predicted", pred)):
        top = set(select(pool, s, params)[0].tolist())
        report[f"overlap_{name}"] = len(top & top_exact) / max(k, 1)
    # What chance would give: a random k-subset overlaps the exact top-k in k/n on average.
    report["overlap_random_expected"] = k / pool.size
    report["k"] = k
    report["spearman_all_hybrid"] = spearman(hybrid, y)
    write_table(args.out, pa.table({"example_id": pool, "score": hybrid.astype(np.float32)}, schema=SCORES), SCORES)
    write_json(args.report, report)
    log.info("predictor: held-out %s; overlap hybrid %.3f", report["held_out"], report["overlap_hybrid"])
    sidecars(
        args,
        "less predict",
        [args.out, args.report],
        [args.examples, base_input(args.base), args.pool, args.scores],
        seed=args.seed,
    )


# ----------------------------------------------------------------------------------------- prefilter
def _scores_of(path, ids: np.ndarray, what: str) -> np.ndarray:
    """The scores of ``ids`` (in that order) from a SCORES table that holds exactly those ids."""
    from winnow.io.tables import SCORES, read_table

    table = read_table(path, SCORES)
    got = table["example_id"].to_numpy()
    if got.size != ids.size or not np.array_equal(np.sort(got), np.sort(ids)):
        raise ValueError(f"{path}: {what} scores hold {got.size} ids, not the {ids.size} expected")
    score_of = dict(zip(got.tolist(), table["score"].to_numpy().astype(np.float64).tolist(), strict=True))
    return np.asarray([score_of[int(e)] for e in ids], dtype=np.float64)


def prefilter_sample(args) -> None:
    from winnow.data.subsets import ids_table
    from winnow.io.tables import IDS, write_table
    from winnow.methods.less_prefilter import prefilter_fit_ids

    cfg = args.predictor_config
    fit = prefilter_fit_ids(_ids(args.pool), cfg["fit_fraction"], cfg["seed"])
    write_table(args.out, ids_table(fit), IDS)
    log.info("prefilter: fit sample S of %d examples", fit.size)
    sidecars(args, "less prefilter-sample", [args.out], [args.pool], seed=cfg["seed"])


def prefilter_predict(args) -> None:
    import pyarrow as pa
    import torch

    from winnow.data.subsets import ids_table
    from winnow.io.tables import IDS, SCORES, write_table
    from winnow.methods.less import fit_ridge, mean_hidden_states, predict_ridge, regression_report
    from winnow.methods.less_prefilter import prefilter_top_ids
    from winnow.models.build import load_pretrained

    cfg = args.predictor_config
    torch.set_num_threads(args.threads)
    device = resolve_device(cfg.get("device", "auto"))
    store, manifest = _store(args)
    pool = np.sort(_ids(args.pool))
    fit_ids = np.sort(_ids(args.fit_ids))
    if not np.isin(fit_ids, pool).all():
        raise ValueError(f"{args.fit_ids}: ids outside the pool")
    y_fit = _scores_of(args.fit_scores, fit_ids, "fit-sample")
    fit_mask = np.isin(pool, fit_ids)  # pool is sorted, so pool[fit_mask] == fit_ids
    base = load_pretrained(Path(args.base).parent, trust_remote_code=args.trust_remote_code).to(device)
    x = mean_hidden_states(
        base, store, pool, cfg.get("batch_size", 32), manifest["seq_len"], manifest["pad_token_id"], device
    )
    x = np.asarray(x, dtype=np.float64)
    model = fit_ridge(x[fit_mask], y_fit, seed=cfg["seed"])
    pred = np.asarray(predict_ridge(model, x), dtype=np.float64)
    hybrid = pred.copy()
    hybrid[fit_mask] = y_fit
    top = prefilter_top_ids(pool, pred, fit_ids, cfg["featurize_fraction"])
    write_table(
        args.predicted, pa.table({"example_id": pool, "score": hybrid.astype(np.float32)}, schema=SCORES), SCORES
    )
    write_table(args.top_ids, ids_table(top), IDS)
    write_json(
        args.report,
        {
            "inputs": "mean last-layer hidden state of the frozen base model",
            "n_pool": int(pool.size),
            "n_fit": int(fit_ids.size),
            "n_top": int(top.size),
            "featurize_fraction": cfg["featurize_fraction"],
            "ridge_lambda": float(model["lambda"]),
            "cv_mse_best": float(np.min(model["cv_mse"])),
            "fit": regression_report(y_fit, pred[fit_mask]),
            "top_predicted_min": float(pred[np.isin(pool, top)].min()) if top.size else None,
        },
    )
    log.info("prefilter: ridge fitted on %d, predicted top T of %d", fit_ids.size, top.size)
    sidecars(
        args,
        "less prefilter-predict",
        [args.predicted, args.top_ids, args.report],
        [args.examples, base_input(args.base), args.pool, args.fit_ids, args.fit_scores],
        seed=cfg["seed"],
    )


def prefilter(args) -> None:
    import pyarrow as pa

    from winnow.io.tables import SCORES, write_table
    from winnow.methods.less_prefilter import prefilter_comparison, prefilter_scores

    cfg = args.predictor_config
    pool = np.sort(_ids(args.pool))
    fit_ids, top_ids = np.sort(_ids(args.fit_ids)), _ids(args.top_ids)
    if np.intersect1d(fit_ids, top_ids).size or not np.isin(np.concatenate([fit_ids, top_ids]), pool).all():
        raise ValueError("the fit sample and the predicted top must be disjoint subsets of the pool")
    exact_ids = np.concatenate([fit_ids, top_ids])
    exact = np.concatenate(
        [_scores_of(args.fit_scores, fit_ids, "fit-sample"), _scores_of(args.top_scores, top_ids, "top")]
    )
    hybrid = _scores_of(args.predicted, pool, "predicted")
    final = prefilter_scores(pool, exact_ids, exact, hybrid)
    write_table(args.out, pa.table({"example_id": pool, "score": final.astype(np.float32)}, schema=SCORES), SCORES)

    n, n_fit, n_top = int(pool.size), int(fit_ids.size), int(top_ids.size)
    n_feat = n_fit + n_top
    epochs = len(read_json(args.fit_match)["epoch_weights"])
    k = int(math.floor(cfg["ratio"] * n))
    featurised = np.isin(pool, exact_ids)
    fit = np.isin(pool, fit_ids)
    comparison = None
    if args.full_scores:
        full = _scores_of(args.full_scores, pool, "full-pool")
        comparison = prefilter_comparison(pool, full, final.astype(np.float32), hybrid, featurised, fit, cfg["ratio"])
    recall = (lambda key: comparison[key]["recall_at_k"]) if comparison else (lambda key: None)
    report = {
        "mode": cfg["mode"],
        "fit_fraction": cfg["fit_fraction"],
        "featurize_fraction": cfg["featurize_fraction"],
        "ratio": cfg["ratio"],
        "k": k,
        "n_pool": n,
        "n_fit": n_fit,
        "n_top": n_top,
        "n_featurised": n_feat,
        "featurised_fraction": n_feat / n,
        "n_not_featurised": n - n_feat,
        "saved_fraction": 1.0 - n_feat / n,
        "k_within_featurised": k <= n_feat,
        "epochs": epochs,
        "pool_gradient_examples": {"prefilter": epochs * n_feat, "full": epochs * n, "saved": epochs * (n - n_feat)},
        # One row per way of scoring the pool: how many pool examples got exact gradient features
        # (every warm-up epoch) and how much of the exact top-k its own top-k recovers.
        "side_by_side": {
            "full": {"n_featurised": n, "featurised_fraction": 1.0, "recall_at_k": 1.0 if comparison else None},
            "prefilter": {
                "n_featurised": n_feat,
                "featurised_fraction": n_feat / n,
                "recall_at_k": recall("prefilter"),
            },
            "predict_only": {
                "n_featurised": n_fit,
                "featurised_fraction": n_fit / n,
                "recall_at_k": recall("predict_only"),
            },
        },
        "comparison": comparison,
        "scores": (
            "exact LESS score on S ∪ T; the rest ranked below every exact score by prediction"
            " (lo − 1 − rank/R, not LESS scores); ties go to the smaller example id"
        ),
    }
    write_json(args.report, report)
    log.info(
        "prefilter: %d of %d featurised (%.1f%%); recall of the exact top-%d %s (predict-only %s)",
        n_feat,
        n,
        100 * n_feat / n,
        k,
        recall("prefilter"),
        recall("predict_only"),
    )
    inputs = [args.pool, args.fit_ids, args.fit_scores, args.top_ids, args.top_scores, args.predicted, args.fit_match]
    sidecars(args, "less prefilter", [args.out, args.report], inputs + ([args.full_scores] if args.full_scores else []))


# ---------------------------------------------------------------------------------------------- eval
def evaluate(args) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import torch

    from winnow.eval.harness import run_harness
    from winnow.eval.loss import per_example_losses
    from winnow.io.tables import SUBTASKS, read_table
    from winnow.models.build import load_pretrained

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    store, manifest = _store(args)
    ids = _ids(args.eval_ids)
    model = load_pretrained(Path(args.model).parent, trust_remote_code=args.trust_remote_code).to(device)
    losses = per_example_losses(
        model, store, ids, manifest["seq_len"], manifest["pad_token_id"], args.batch_size, device
    )
    sub = read_table(args.subtasks, SUBTASKS)
    sub = sub.filter(pc.is_in(sub["example_id"], pa.array(ids)))
    sub_of = dict(zip(sub["example_id"].to_pylist(), sub["subtask"].to_pylist(), strict=True))
    per_sub: dict[str, list[float]] = {}
    for e, loss in zip(ids, losses, strict=True):
        per_sub.setdefault(sub_of[int(e)], []).append(float(loss))
    out = Path(args.out)
    harness = {}  # an empty choice file (less.data.source: files): the target loss alone
    if Path(args.choice).stat().st_size:
        harness = run_harness(
            Path(args.model).parent,
            Path(args.tokenizer).parent,
            {"define_choice": Path(args.choice).resolve()},
            device=device,
            batch_size=args.batch_size,
            limit=None,
            work_dir=out.parent / f".harness-{out.stem}",
            trust_remote_code=args.trust_remote_code,
        )
    result = {
        "target_loss": float(losses.mean()),
        "target_loss_sem": float(losses.std(ddof=1) / np.sqrt(losses.size)) if losses.size > 1 else None,
        "n_examples": int(losses.size),
        "target_loss_by_subtask": {k: float(np.mean(v)) for k, v in sorted(per_sub.items())},
        "define_choice_acc": harness.get("winnow_define_choice", {}).get("acc"),
        "define_choice_acc_norm": harness.get("winnow_define_choice", {}).get("acc_norm"),
        "harness": harness,
        "definition": "target_loss: mean over test-split target-task items of the token-mean response CE (nats)",
        # Per-item losses (the harness has its own items): what a comparison's bootstrap resamples.
        "items": {
            "example_id": [int(e) for e in ids],
            "subtask": [sub_of[int(e)] for e in ids],
            "loss": [float(x) for x in losses],
        },
    }
    write_json(out, result)
    sidecars(args, "less eval", [out], [args.model, args.examples, args.eval_ids, args.choice])


# ------------------------------------------------------------------------------------------- compare
def compare(args) -> None:
    import pyarrow.compute as pc

    from winnow.eval.table import compare_arms, less_eval_metrics, write_tsv
    from winnow.io.tables import EXAMPLES, read_table

    evals = {}
    for path in args.evals:
        arm, seed = Path(path).parent.parent.name, int(Path(path).parent.name.removeprefix("s"))
        evals[(arm, seed)] = less_eval_metrics(read_json(path))
    write_tsv(args.out, compare_arms(evals, baseline="random"))
    examples = read_table(args.examples, EXAMPLES)
    comp = []
    for path in args.selections:
        arm, seed = Path(path).parent.parent.name, Path(path).parent.name
        sel = examples.filter(pc.is_in(examples["example_id"], read_table(path)["example_id"]))
        counts = _counts(sel["domain"].to_pylist())
        total = sum(counts.values())
        comp += [{"arm": arm, "seed": seed, "task": t, "n": n, "share": n / total} for t, n in counts.items()]
    write_tsv(args.composition, comp)
    sidecars(args, "less compare", [args.out, args.composition], [*args.evals, *args.selections])
