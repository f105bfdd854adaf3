""":func:`solve`: inputs, fingerprint, the passes per epoch and the report."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from winnow.grads import (
    functional_model,
)
from winnow.methods.pds.config import (
    PMPConfig,
    _Data,
    _params_hash,
    _Plan,
    _stats,
    _Timer,
    gamma_entropy,
    project_simplex,
)
from winnow.methods.pds.passes import _backward, _forward, _trajectory_complete
from winnow.train.batches import ExampleStore

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# solver


def _fingerprint(cfg: PMPConfig, params_hash: str, plan: _Plan, data: _Data, dtype: torch.dtype) -> str:
    d = {
        "variant": cfg.variant,
        "steps": cfg.steps,
        "lr": cfg.lr,
        "ckpt_every": cfg.resolved_ckpt_every(),
        "micro": plan.micro,  # summation order of the step gradient
        "seq_len": data.seq_len,
        "pad_id": data.pad_id,
        "dtype": str(dtype),
        "params": params_hash,
        "plan": plan.hash(),
        "tokens": data.token_hash(np.concatenate(plan.ids)),
    }
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _as_ids(x, name: str) -> np.ndarray:
    ids = np.asarray(x, dtype=np.int64).reshape(-1)
    if ids.size == 0:
        raise ValueError(f"{name} is empty")
    return ids


def _solve_inputs(cfg: PMPConfig, proxy_ids, target_ids, trajectory_ids):
    """Checked ``(proxy_ids, target_ids, trajectory_ids)`` of :func:`solve` (the released variant's
    trajectory cut to T·B ids)."""
    cfg.validate()
    proxy_ids = _as_ids(proxy_ids, "proxy_ids")
    target_ids = _as_ids(target_ids, "target_ids")
    if len(np.unique(proxy_ids)) != len(proxy_ids):
        raise ValueError("proxy_ids contains duplicates")
    T, B = cfg.steps, cfg.batch_size
    if cfg.variant == "released":
        if trajectory_ids is None:
            raise ValueError("the released variant needs trajectory_ids (T·B ids, in order)")
        trajectory_ids = _as_ids(trajectory_ids, "trajectory_ids")
        if len(trajectory_ids) < T * B:
            raise ValueError(f"need T·B = {T * B} trajectory ids, got {len(trajectory_ids)}")
        trajectory_ids = trajectory_ids[: T * B]
    return proxy_ids, target_ids, trajectory_ids


def _solve_report(
    cfg: PMPConfig,
    proxy_ids: np.ndarray,
    target_ids: np.ndarray,
    seq_len: int,
    dtype: torch.dtype,
    device: torch.device,
    J: list[float],
    lam_norm: list[float | None],
    timings: dict,
    epochs: list[dict],
) -> dict:
    """:func:`solve`'s report (the last epoch's J and ‖λ‖; without ``gamma``)."""
    return {
        "variant": cfg.variant,
        "config": asdict(cfg),
        "steps": cfg.steps,
        "lr": cfg.lr,
        "interval": cfg.interval,
        "ckpt_every": cfg.resolved_ckpt_every(),
        "contribution_steps": list(range(0, cfg.steps, cfg.interval)),
        "n_proxy": len(proxy_ids),
        "n_target": len(target_ids),
        "n_trajectory_ids": 0 if cfg.variant == "paper" else cfg.steps * cfg.batch_size,
        "seq_len": seq_len,
        "dtype": str(dtype),
        "device": str(device),
        "J": J,
        "J_total": float(sum(J[1:])),
        "lambda_norm": lam_norm,
        "timings_s": timings,
        "reused_trajectory": all(e["reused_trajectory"] for e in epochs),
        "epochs": epochs,
    }


@contextlib.contextmanager
def _solving(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode with the functional (eager) attention; both restored on exit."""
    config = getattr(model, "config", None)
    attn_before = getattr(config, "_attn_implementation", None)
    functional_model(model)
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
        if attn_before is not None and config._attn_implementation != attn_before:
            model.set_attn_implementation(attn_before)


def _paper_step(gamma: np.ndarray, grad_gamma: np.ndarray, outer_lr: float, entry: dict) -> np.ndarray:
    """Algorithm 1's projected ascent step on γ ``(N,)``; its entropy and support before and after
    go into ``entry``."""
    entry["gamma_entropy_before"] = gamma_entropy(gamma)
    entry["gamma_nonzero_before"] = int((gamma > 0).sum())
    gamma = project_simplex(gamma + outer_lr * grad_gamma)
    entry["gamma_entropy"] = gamma_entropy(gamma)
    entry["gamma_nonzero"] = int((gamma > 0).sum())
    return gamma


def solve(
    model: torch.nn.Module,
    store: ExampleStore,
    trajectory_ids: Sequence[int] | np.ndarray | None,
    proxy_ids: Sequence[int] | np.ndarray,
    target_ids: Sequence[int] | np.ndarray,
    cfg: PMPConfig,
    work_dir: str | os.PathLike,
    *,
    seq_len: int,
    pad_id: int,
) -> tuple[np.ndarray, dict]:
    """Run the PMP solver from θ_0 = the model's current parameters.

    Args:
        model: causal LM (HF); its parameters are not changed. It runs with eager attention in
            eval mode while solving (both restored afterwards). Its dtype and device are the
            solver's (float32 normally; float64 for exactness tests).
        store: where all ids are looked up; batches are ``collate(store, ids, seq_len, pad_id)``.
        trajectory_ids: "released": the SGD batches, in order; step t uses
            ``trajectory_ids[t·B:(t+1)·B]`` (at least T·B ids; extra ids are unused).
            "paper": ignored (may be None).
        proxy_ids: (N,) distinct ids to score; the result is in this order.
        target_ids: the examples whose mean loss is J.
        work_dir: trajectory storage (see the module docstring); reused when it matches.
    Returns:
        ``grad_gamma`` (N,) float64, higher = better ("paper": the last epoch's g), and a report:
        J curve ``J[t]`` (t = 0..T), ``J_total`` = Σ_{t≥1} J, ``lambda_norm[t]`` (None at t = 0),
        ``contribution_steps``, ``timings_s`` per phase (forward, recompute, hvp, grad_J,
        contributions, io, total), settings, ``epochs`` (one entry per outer epoch, with γ entropy
        and non-zero count for "paper"). For "paper" also ``report["gamma"]``: the final γ, a list of
        N floats in ``proxy_ids`` order. The report is plain JSON (``write_json`` takes it as is).
    """
    proxy_ids, target_ids, trajectory_ids = _solve_inputs(cfg, proxy_ids, target_ids, trajectory_ids)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    with _solving(model):
        return _solve(model, proxy_ids, target_ids, trajectory_ids, cfg, work_dir, seq_len, pad_id, store)


def _solve(model, proxy_ids, target_ids, trajectory_ids, cfg: PMPConfig, work_dir: Path, seq_len, pad_id, store):
    """:func:`solve` with its inputs checked and the model in solving mode."""
    T = cfg.steps
    params0 = {k: v.detach() for k, v in model.named_parameters()}
    device, dtype = next(iter(params0.values())).device, next(iter(params0.values())).dtype
    data = _Data(store, seq_len, pad_id)
    timer = _Timer(device)
    t_start = time.perf_counter()
    params_hash = _params_hash(params0)
    targets = data.batches(target_ids, cfg.target_batch_size)

    epochs: list[dict] = []
    gamma = np.full(len(proxy_ids), 1.0 / len(proxy_ids))
    with torch.no_grad():  # torch.func builds its own graphs; nothing else needs autograd
        for epoch in range(cfg.outer_epochs):
            if cfg.variant == "released":
                plan, tdir = _Plan.released(trajectory_ids, cfg, data), work_dir
            else:
                plan, tdir = _Plan.paper(proxy_ids, gamma, cfg, data), work_dir / f"epoch-{epoch:03d}"
            fingerprint = _fingerprint(cfg, params_hash, plan, data, dtype)
            reused = _trajectory_complete(tdir, fingerprint, plan)
            if reused:
                log.info("pmp: reusing the complete trajectory in %s (fingerprint %s)", tdir, fingerprint)
            else:
                _forward(model, params0, plan, cfg, tdir, fingerprint, timer)
            grad_gamma, J, lam_norm = _backward(model, params0, plan, cfg, tdir, proxy_ids, targets, data, timer)
            entry = {
                "epoch": epoch,
                "fingerprint": fingerprint,
                "reused_trajectory": reused,
                "J_total": float(sum(J[1:])),
                "J_T": J[T],
                "grad_gamma": _stats(grad_gamma),
            }
            if cfg.variant == "paper":
                gamma = _paper_step(gamma, grad_gamma, cfg.outer_lr, entry)
            epochs.append(entry)
            log.info("pmp epoch %d: J_total %.6f, J_T %.6f", epoch, entry["J_total"], J[T])

    timings = dict(sorted(timer.total.items()))
    timings["total"] = time.perf_counter() - t_start
    report = _solve_report(cfg, proxy_ids, target_ids, seq_len, dtype, device, J, lam_norm, timings, epochs)
    if cfg.variant == "paper":
        report["gamma"] = gamma.tolist()
    return grad_gamma, report
