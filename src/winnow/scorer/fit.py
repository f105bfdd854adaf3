"""Fitting a scorer to labels; the checkpoint kept is the one with the best validation Spearman."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from winnow.io.atomic import atomic_folder, write_json
from winnow.io.tables import write_table
from winnow.progress import Progress
from winnow.scorer.inference import _check_vocab, _use_bf16, pad_batch, predict
from winnow.scorer.inputs import Encoder, input_encoder, tokenizer_info
from winnow.scorer.model import SCORER_FORMAT, LabelNorm, ScorerConfig, ScorerModel, build_scorer, val_metrics
from winnow.train.batches import ExampleStore, step_ids
from winnow.train.optim import trainer_param_groups
from winnow.train.schedules import lr_at

log = logging.getLogger(__name__)


VAL_TABLE = pa.schema(
    [
        ("example_id", pa.int64()),
        ("label", pa.float64()),
        ("target", pa.float32()),
        ("prediction", pa.float32()),
    ]
)


# --------------------------------------------------------------------------------------------
# fitting


def split_ids(ids: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded ``(train_ids, val_ids)``; val = the first ⌈fraction·n⌉ of ``default_rng(seed)``'s permutation."""
    ids = np.asarray(ids, dtype=np.int64)
    n_val = max(int(math.ceil(val_fraction * len(ids))), 1)
    perm = np.random.default_rng(seed).permutation(len(ids))
    return np.sort(ids[perm[n_val:]]), np.sort(ids[perm[:n_val]])


def _fit_split(
    ids: Sequence[int], labels: Sequence[float], cfg: ScorerConfig, val_ids: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked ``(ids, labels, train_ids, val_ids)`` of :func:`fit_scorer`: explicit or seeded split."""
    ids = np.asarray(ids, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.float64)
    if ids.shape != labels.shape or ids.ndim != 1:
        raise ValueError(f"ids {ids.shape} and labels {labels.shape} must be equal-length 1-D arrays")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids contain duplicates")
    if not np.all(np.isfinite(labels)):
        raise ValueError(f"{int((~np.isfinite(labels)).sum())} labels are not finite")
    if val_ids is None:
        train_ids, val = split_ids(ids, cfg.val_fraction, cfg.seed)
    else:
        val = np.sort(np.unique(np.asarray(val_ids, dtype=np.int64)))
        missing = np.setdiff1d(val, ids)
        if len(missing):
            raise ValueError(f"{len(missing)} val ids have no label (first: {missing[:5].tolist()})")
        train_ids = np.sort(np.setdiff1d(ids, val))
    if len(val) < 3 or len(train_ids) < 1:
        raise ValueError(f"need ≥ 3 validation and ≥ 1 training examples, got {len(val)} and {len(train_ids)}")
    return ids, labels, train_ids, val


def _fit_model(
    cfg: ScorerConfig, tokenizer, encoder: Encoder, device: torch.device, check_ids: np.ndarray
) -> tuple[ScorerModel, int]:
    """The freshly initialised scorer on ``device`` in train mode, and the pad id its inputs use."""
    pad_id, eos_id, vocab = 0, None, None
    if tokenizer is not None:
        eos_id, vocab = tokenizer.eos_token_id, len(tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_id or 0)
    model = build_scorer(cfg, vocab, eos_id, pad_id)
    if tokenizer is None and getattr(model.backbone.config, "pad_token_id", None) is not None:
        pad_id = int(model.backbone.config.pad_token_id)
    model.to(device).train()
    _check_vocab(model, encoder, check_ids)
    return model, pad_id


def _adamw(model: ScorerModel, cfg: ScorerConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases and norms: none)."""
    return torch.optim.AdamW(trainer_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)


@dataclass
class _FitRun:
    """What one :func:`fit_scorer` training loop works with (fixed before the first step)."""

    cfg: ScorerConfig
    model: ScorerModel
    optimizer: torch.optim.Optimizer
    encoder: Encoder
    train_ids: np.ndarray
    target_of: dict
    val: np.ndarray
    val_target: np.ndarray
    pad_id: int
    device: torch.device
    use_bf16: bool
    total: int


def _fit_step(run: _FitRun, step: int) -> tuple[float, float, int]:
    """One optimizer step: ``(loss, lr, batch size)``."""
    cfg, model = run.cfg, run.model
    lr = lr_at(step, cfg.lr, run.total, "cosine", cfg.warmup_steps, cfg.min_lr_ratio)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    batch = step_ids(run.train_ids, step, cfg.batch_size, cfg.seed)
    input_ids, attention = pad_batch([run.encoder(e) for e in batch], run.pad_id, cfg.max_len)
    y = torch.tensor([run.target_of[e] for e in batch.tolist()], dtype=torch.float32, device=run.device)
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.use_bf16):
        pred = model(input_ids.to(run.device), attention.to(run.device))
    loss = F.mse_loss(pred.float(), y)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"scorer loss is {float(loss)} at step {step}")
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), lr, len(batch)


def _fit_eval(run: _FitRun, done: int, train_loss: float, lr: float, best: dict) -> tuple[dict, dict]:
    """Evaluate after ``done`` steps: ``(curve entry, best)``, best replaced when strictly better."""
    cfg = run.cfg
    vp = predict(
        run.model, run.encoder, run.val, cfg.eval_batch_size, run.pad_id, cfg.max_len, run.device, run.use_bf16
    )
    m = val_metrics(vp, run.val_target)
    entry = {
        "step": done,
        "val_spearman": m["spearman"],
        "val_pearson": m["pearson"],
        "val_mse": m["mse"],
        "val_top_precision": m["top_precision"],
        "train_loss": train_loss,
        "lr": lr,
    }
    rho = m["spearman"] if np.isfinite(m["spearman"]) else -math.inf
    # Strictly better only: ties keep the earlier (less trained) checkpoint.
    if rho > best["spearman"] or best["step"] is None:
        best = {
            "spearman": rho,
            "step": done,
            "state": {k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()},
            "pred": vp,
            "metrics": m,
        }
    return entry, best


def _fit_loop(run: _FitRun, eval_every: int, on_eval) -> tuple[list[dict], dict]:
    """The training steps with an evaluation every ``eval_every`` and at the end: ``(curve, best)``."""
    curve: list[dict] = []
    best = {"spearman": -math.inf, "step": None, "state": None, "pred": None, "metrics": None}
    loss_sum, loss_n = 0.0, 0
    prog = Progress("fit scorer", total=run.total, unit="steps", interval_s=run.cfg.log_every_s)
    for step in range(run.total):
        loss, lr, n_batch = _fit_step(run, step)
        loss_sum += loss
        loss_n += 1
        prog.update(1, examples=n_batch)
        done = step + 1
        if done % eval_every == 0 or done == run.total:
            entry, best = _fit_eval(run, done, loss_sum / loss_n, lr, best)
            curve.append(entry)
            loss_sum, loss_n = 0.0, 0
            log.info(
                "%s step %d: val spearman %.4f pearson %.4f mse %.4f, train loss %.4f (best %.4f @ %d)",
                prog.line(),
                done,
                entry["val_spearman"],
                entry["val_pearson"],
                entry["val_mse"],
                entry["train_loss"],
                best["spearman"],
                best["step"],
            )
            if on_eval is not None:
                on_eval(done, entry, run.model)
    prog.done()
    return curve, best


def _save_fit(
    out_dir: Path,
    run: _FitRun,
    curve: list[dict],
    best: dict,
    *,
    norm: LabelNorm,
    label_of: dict,
    tokenizer,
    inputs: str,
    steps_per_epoch: int,
    n_params: int,
    wall_s: float,
) -> dict:
    """The report of :func:`fit_scorer`; writes the scorer folder (the best checkpoint, loaded)."""
    m = best["metrics"]
    report = {
        "val_spearman": m["spearman"],
        "val_pearson": m["pearson"],
        "val_mse": m["mse"],
        "val_top_precision": m["top_precision"],
        "n_train": int(len(run.train_ids)),
        "n_val": int(len(run.val)),
        "best_step": int(best["step"]),
        "steps": run.total,
        "steps_per_epoch": steps_per_epoch,
        "curve": curve,
        "label_norm": norm.to_dict(),
        "units": "z (training-label mean/std, clipped)",
        "wall_s": wall_s,
        "n_params": n_params,
        "device": str(run.device),
        "precision": "bf16" if run.use_bf16 else "fp32",
    }
    meta = {
        "format": SCORER_FORMAT,
        "config": asdict(run.cfg),
        "label_norm": norm.to_dict(),
        "tokenizer": tokenizer_info(tokenizer),
        "pad_id": int(run.pad_id),
        "inputs": inputs,
        "best_step": report["best_step"],
        "report": report,
    }
    val_table = pa.table(
        {
            "example_id": pa.array(run.val, pa.int64()),
            "label": pa.array([label_of[e] for e in run.val.tolist()], pa.float64()),
            "target": pa.array(run.val_target.astype(np.float32)),
            "prediction": pa.array(best["pred"].astype(np.float32)),
        }
    )
    _save_folder(out_dir, run.model, meta, val_table, tokenizer)
    return report


def _log_plan(run: _FitRun, eval_every: int, n_params: int) -> None:
    cfg = run.cfg
    sizes = (n_params, len(run.train_ids), len(run.val), run.total, cfg.batch_size, cfg.epochs, eval_every)
    log.info(
        "fit scorer: %d params, %d train / %d val, %d steps × %d (%.1f epochs), eval every %d, %s, %s",
        *sizes,
        run.device,
        "bf16" if run.use_bf16 else "fp32",
    )


def fit_scorer(
    store: ExampleStore | None,
    ids: Sequence[int],
    labels: Sequence[float],
    cfg: ScorerConfig,
    out_dir: str | os.PathLike,
    tokenizer=None,
    val_ids: Sequence[int] | None = None,
    encoder: Encoder | None = None,
    device: str | torch.device | None = None,
    on_eval: Callable[[int, dict, ScorerModel], None] | None = None,
) -> dict:
    """Fit a scorer to ``labels`` and save the best-validation-Spearman checkpoint in ``out_dir``.

    Args:
        store: corpus examples; inputs are their tokens (truncated to ``cfg.max_len``) unless
            ``encoder`` is given (then ``store`` may be None).
        ids: ``(n,)`` example ids with labels; ``labels``: ``(n,)`` raw labels, same order.
        tokenizer: the tokenizer of the scorer's *inputs* (the corpus tokenizer, or the scorer's
            own when ``encoder`` is a retokenization): gives vocab size and pad id, and is saved
            under ``out_dir/tokenizer``.
        val_ids: explicit validation ids (a subset of ``ids``); otherwise a seeded split of
            ``cfg.val_fraction``.
        encoder: example_id → token list, e.g. ``dict_encoder(retokenize(...))``.
        device: default CUDA if available, else CPU.
        on_eval: called as ``on_eval(step, curve_entry, model)`` after each evaluation (after the
            best checkpoint was updated), e.g. for an external tracker.
    Returns:
        The report (also in ``scorer.json``): ``val_spearman``, ``val_pearson``, ``val_mse`` (z
        units), ``val_top_precision``, ``n_train``, ``n_val``, ``best_step``, ``steps``, ``curve``
        (per evaluation: step, val_spearman, val_pearson, val_mse, train_loss, lr), ``label_norm``,
        ``wall_s``, ``n_params``, ``device``, ``precision``.
    """
    t_start = time.monotonic()
    ids, labels, train_ids, val = _fit_split(ids, labels, cfg, val_ids)
    label_of = dict(zip(ids.tolist(), labels.tolist()))
    norm = LabelNorm.fit(np.array([label_of[e] for e in train_ids.tolist()]), cfg.clip)
    target_of = dict(zip(ids.tolist(), norm.apply(labels).tolist()))
    val_target = np.array([target_of[e] for e in val.tolist()], dtype=np.float64)

    encoder, inputs = input_encoder(store, encoder, cfg.max_len)
    device = (
        torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    use_bf16 = _use_bf16(cfg.precision, device)
    model, pad_id = _fit_model(cfg, tokenizer, encoder, device, np.concatenate([train_ids[:128], val[:128]]))
    optimizer = _adamw(model, cfg)
    steps_per_epoch = math.ceil(len(train_ids) / cfg.batch_size)
    total = max(int(math.ceil(cfg.epochs * steps_per_epoch)), 1)
    eval_every = max(int(cfg.eval_every), 1)
    n_params = sum(p.numel() for p in model.parameters())
    run = _FitRun(
        cfg, model, optimizer, encoder, train_ids, target_of, val, val_target, pad_id, device, use_bf16, total
    )
    _log_plan(run, eval_every, n_params)
    torch.manual_seed(cfg.seed)  # dropout stream
    curve, best = _fit_loop(run, eval_every, on_eval)
    model.load_state_dict(best["state"])
    model.eval()

    return _save_fit(
        Path(out_dir),
        run,
        curve,
        best,
        norm=norm,
        label_of=label_of,
        tokenizer=tokenizer,
        inputs=inputs,
        steps_per_epoch=steps_per_epoch,
        n_params=n_params,
        wall_s=time.monotonic() - t_start,
    )


def _save_folder(out_dir: Path, model: ScorerModel, meta: dict, val_table: pa.Table, tokenizer) -> None:
    """Write the scorer folder atomically (temp folder, then rename)."""
    from safetensors.torch import save_file

    with atomic_folder(out_dir) as tmp:
        model.backbone.config.save_pretrained(str(tmp))
        # clone: tied weights share storage, which safetensors refuses
        weights = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_json(tmp / "scorer.json", meta)
        write_table(tmp / "val.parquet", val_table, VAL_TABLE)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / "tokenizer"))
