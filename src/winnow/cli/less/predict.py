"""``winnow less`` predict, prefilter-*, eval and compare: predicted scores and the arms' evaluation."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from winnow.cli._common import resolve_device, sidecars
from winnow.cli.less._shared import _counts, _ids, _scores_of, _store, base_input
from winnow.io.atomic import read_json, write_json

log = logging.getLogger(__name__)


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
    fit_ids = prefilter_fit_ids(pool, args.params.fit_fraction, args.params.seed)  # the prefilter's S too
    fit_mask = np.isin(pool, fit_ids)
    base = load_pretrained(Path(args.base).parent, trust_remote_code=args.trust_remote_code).to(device)
    x = mean_hidden_states(base, store, pool, args.batch_size, manifest["seq_len"], manifest["pad_token_id"], device)
    x = np.asarray(x, dtype=np.float64)
    model = fit_ridge(x[fit_mask], y[fit_mask], seed=args.params.seed)
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
    params = SelectParams(direction="higher", ratio=args.params.ratio, temperature=0.0)
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
        seed=args.params.seed,
    )


# ----------------------------------------------------------------------------------------- prefilter
def prefilter_sample(args) -> None:
    from winnow.data.subsets import ids_table
    from winnow.io.tables import IDS, write_table
    from winnow.methods.less_prefilter import prefilter_fit_ids

    cfg = args.params
    fit = prefilter_fit_ids(_ids(args.pool), cfg.fit_fraction, cfg.seed)
    write_table(args.out, ids_table(fit), IDS)
    log.info("prefilter: fit sample S of %d examples", fit.size)
    sidecars(args, "less prefilter-sample", [args.out], [args.pool], seed=cfg.seed)


def prefilter_predict(args) -> None:
    import pyarrow as pa
    import torch

    from winnow.data.subsets import ids_table
    from winnow.io.tables import IDS, SCORES, write_table
    from winnow.methods.less import fit_ridge, mean_hidden_states, predict_ridge, regression_report
    from winnow.methods.less_prefilter import prefilter_top_ids
    from winnow.models.build import load_pretrained

    cfg = args.params
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    store, manifest = _store(args)
    pool = np.sort(_ids(args.pool))
    fit_ids = np.sort(_ids(args.fit_ids))
    if not np.isin(fit_ids, pool).all():
        raise ValueError(f"{args.fit_ids}: ids outside the pool")
    y_fit = _scores_of(args.fit_scores, fit_ids, "fit-sample")
    fit_mask = np.isin(pool, fit_ids)  # pool is sorted, so pool[fit_mask] == fit_ids
    base = load_pretrained(Path(args.base).parent, trust_remote_code=args.trust_remote_code).to(device)
    x = mean_hidden_states(base, store, pool, args.batch_size, manifest["seq_len"], manifest["pad_token_id"], device)
    x = np.asarray(x, dtype=np.float64)
    model = fit_ridge(x[fit_mask], y_fit, seed=cfg.seed)
    pred = np.asarray(predict_ridge(model, x), dtype=np.float64)
    hybrid = pred.copy()
    hybrid[fit_mask] = y_fit
    top = prefilter_top_ids(pool, pred, fit_ids, cfg.featurize_fraction)
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
            "featurize_fraction": cfg.featurize_fraction,
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
        seed=cfg.seed,
    )


def prefilter(args) -> None:
    import pyarrow as pa

    from winnow.io.tables import SCORES, write_table
    from winnow.methods.less_prefilter import prefilter_comparison, prefilter_scores

    cfg = args.params
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
    k = int(math.floor(cfg.ratio * n))
    featurised = np.isin(pool, exact_ids)
    fit = np.isin(pool, fit_ids)
    comparison = None
    if args.full_scores:
        full = _scores_of(args.full_scores, pool, "full-pool")
        comparison = prefilter_comparison(pool, full, final.astype(np.float32), hybrid, featurised, fit, cfg.ratio)
    recall = (lambda key: comparison[key]["recall_at_k"]) if comparison else (lambda key: None)
    report = {
        "mode": cfg.mode,
        "fit_fraction": cfg.fit_fraction,
        "featurize_fraction": cfg.featurize_fraction,
        "ratio": cfg.ratio,
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
        model, store, ids, manifest["seq_len"], manifest["pad_token_id"], args.params.batch_size, device
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
            batch_size=args.params.batch_size,
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
