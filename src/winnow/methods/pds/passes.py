"""The two passes of the PMP solver: the SGD trajectory forward (√T checkpointed in ``work_dir``)
and the costates backward with Hessian-vector products."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from winnow.grads import (
    Batch,
    Params,
    hvp,
    loss_jvp,
    mean_loss,
    mean_loss_grad,
    mean_loss_value_and_grad,
    tree_add,
    tree_norm,
)
from winnow.io.artifacts import load_tensors
from winnow.io.atomic import atomic_path, read_json, write_json
from winnow.io.tables import read_table, write_table
from winnow.methods.pds.config import TRAJECTORY_BATCHES, PMPConfig, _Data, _Plan, _Timer
from winnow.progress import Progress

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# trajectory (forward) and its storage


def _theta_path(tdir: Path, t: int) -> Path:
    return tdir / f"theta-{t:06d}.safetensors"


def _saved_steps(T: int, k: int) -> list[int]:
    return sorted(set(range(0, T, k)) | {T})


def _save_theta(tdir: Path, t: int, params: Params, fingerprint: str) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in params.items()}
    with atomic_path(_theta_path(tdir, t)) as tmp:
        save_file(tensors, str(tmp), metadata={"step": str(t), "fingerprint": fingerprint})


def _load_theta(tdir: Path, t: int, like: Params) -> Params:
    device = next(iter(like.values())).device
    tensors = load_tensors(_theta_path(tdir, t), device=str(device) if device.type != "cpu" else "cpu")
    if set(tensors) != set(like):
        raise ValueError(f"{_theta_path(tdir, t)}: parameter names differ from the model's")
    return {k: tensors[k].to(like[k].dtype) for k in like}


def _trajectory_complete(tdir: Path, fingerprint: str, plan: _Plan) -> bool:
    meta_path = tdir / "trajectory.json"
    if not meta_path.exists():
        return False
    meta = read_json(meta_path)
    if meta.get("fingerprint") != fingerprint or not meta.get("complete"):
        return False
    if not all(_theta_path(tdir, t).exists() for t in meta["saved_steps"]):
        return False
    if not (tdir / "batches.parquet").exists():
        return False
    # The fingerprint already covers the ids; this guards against a hand-edited folder.
    return read_table(tdir / "batches.parquet", TRAJECTORY_BATCHES).equals(plan.table().cast(TRAJECTORY_BATCHES))


def _clear_trajectory(tdir: Path) -> None:
    # trajectory.json goes first: a crash midway must not leave a "complete" marker over new files.
    for p in [tdir / "trajectory.json", tdir / "batches.parquet", *sorted(tdir.glob("theta-*.safetensors"))]:
        if p.exists():
            p.unlink()


def _sgd_step(model, params: Params, plan: _Plan, t: int, lr: float) -> Params:
    batches, w = plan.step(t)
    g = mean_loss_grad(model, params, batches, weights=w)
    return tree_add(params, g, -lr)


def _forward(model, params0: Params, plan: _Plan, cfg: PMPConfig, tdir: Path, fingerprint: str, timer: _Timer) -> None:
    T, k = cfg.steps, cfg.resolved_ckpt_every()
    saved = _saved_steps(T, k)
    tdir.mkdir(parents=True, exist_ok=True)
    _clear_trajectory(tdir)
    with timer.phase("io"):
        write_table(tdir / "batches.parquet", plan.table(), TRAJECTORY_BATCHES)
        _save_theta(tdir, 0, params0, fingerprint)
    prog = Progress("pmp forward", total=T, unit="steps")
    theta = params0
    for t in range(T):
        with timer.phase("forward"):
            theta = _sgd_step(model, theta, plan, t, cfg.lr)
        if t + 1 in saved:
            with timer.phase("io"):
                _save_theta(tdir, t + 1, theta, fingerprint)
        prog.update(1)
    prog.done()
    write_json(
        tdir / "trajectory.json", {"fingerprint": fingerprint, "steps": T, "saved_steps": saved, "complete": True}
    )


# ----------------------------------------------------------------------------------------------
# costate (backward) pass


def _target_value_and_grad(model, params: Params, targets: list[Batch]) -> tuple[float, Params]:
    value, g = mean_loss_value_and_grad(model, params, targets)
    return float(value), g


class _CudaJVP:
    """The contribution pass's JVP on CUDA: optional bf16 autocast and torch.compile.

    Compiled with dynamic=False: dynamic shapes lose the fused kernels, and a second micro-batch
    size failed in dynamo (fake-tensor layer_norm under the functorch JVP, torch 2.11). A compiler
    failure falls back to the eager JVP (same function) with a warning rather than stopping a run.
    """

    def __init__(self, cfg: PMPConfig):
        self.bf16 = cfg.contribution_precision == "bf16"
        self.fn = torch.compile(loss_jvp, dynamic=False) if cfg.compile is not False else loss_jvp

    def __call__(self, model, params: Params, batch: Batch, lam: Params) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            if self.fn is loss_jvp:
                return loss_jvp(model, params, batch, lam)
            try:
                return self.fn(model, params, batch, lam)
            except Exception as exc:  # noqa: BLE001 (any compiler error: the eager JVP is the same function)
                log.warning("pmp: compiled JVP failed (%s); using the eager JVP", repr(exc)[:300])
                self.fn = loss_jvp
                return loss_jvp(model, params, batch, lam)


def _contributions(
    model, params: Params, lam: Params, proxy_ids: np.ndarray, cfg: PMPConfig, data: _Data, jvp=None
) -> np.ndarray:
    """η ⟨∇ℓ(x_n, θ), λ⟩ for every proxy example: (N,) float64.

    ``jvp``: a :class:`_CudaJVP` on CUDA. Its results stay on the device until the pass ends, so
    that the host collates the next micro-batch while the device runs this one.
    """
    out = np.empty(len(proxy_ids), dtype=np.float64)
    if jvp is None:
        for sl, batch in data.chunks(proxy_ids, cfg.proxy_batch_size):
            out[sl] = loss_jvp(model, params, batch, lam).to("cpu", torch.float64).numpy()
        return cfg.lr * out
    parts = [jvp(model, params, batch, lam).double() for _, batch in data.chunks(proxy_ids, cfg.proxy_batch_size)]
    out[:] = torch.cat(parts).cpu().numpy()
    return cfg.lr * out


def _backward(
    model,
    params0: Params,
    plan: _Plan,
    cfg: PMPConfig,
    tdir: Path,
    proxy_ids: np.ndarray,
    targets: list[Batch],
    data: _Data,
    timer: _Timer,
) -> tuple[np.ndarray, list[float], list[float | None]]:
    """Returns grad_gamma (N,), J(θ_t) for t = 0..T, ‖λ_t‖ for t = 0..T (None at t = 0)."""
    T, eta = cfg.steps, cfg.lr
    saved = read_json(tdir / "trajectory.json")["saved_steps"]
    J: list[float] = [math.nan] * (T + 1)
    lam_norm: list[float | None] = [None] * (T + 1)
    grad_gamma = np.zeros(len(proxy_ids), dtype=np.float64)
    jvp = _CudaJVP(cfg) if next(iter(params0.values())).device.type == "cuda" else None

    with timer.phase("io"):
        theta_T = _load_theta(tdir, T, params0)
    with timer.phase("grad_J"):
        J[T], lam = _target_value_and_grad(model, theta_T, targets)
    lam_norm[T] = float(tree_norm(lam))
    del theta_T

    prog = Progress("pmp backward", total=T, unit="steps")
    starts = [s for s in saved if s < T]
    ends = {s: e for s, e in zip(saved[:-1], saved[1:])}
    for s in reversed(starts):
        e = ends[s]
        with timer.phase("io"):
            thetas = {s: _load_theta(tdir, s, params0)}
        with timer.phase("recompute"):
            for t in range(s, e - 1):
                thetas[t + 1] = _sgd_step(model, thetas[t], plan, t, eta)
        for t in range(e - 1, s - 1, -1):
            theta = thetas.pop(t)  # λ currently holds λ_{t+1}
            if t % cfg.interval == 0:
                with timer.phase("contributions"):
                    grad_gamma += _contributions(model, theta, lam, proxy_ids, cfg, data, jvp)
            if t >= 1:
                with timer.phase("grad_J"):
                    J[t], gJ = _target_value_and_grad(model, theta, targets)
                with timer.phase("hvp"):
                    batches, w = plan.step(t)
                    h_lam = hvp(model, theta, batches, lam, weights=w)
                lam = {k: lam[k] + gJ[k] - eta * h_lam[k] for k in lam}
                lam_norm[t] = float(tree_norm(lam))
            else:
                with timer.phase("grad_J"):
                    J[0] = float(mean_loss(model, theta, targets))
            prog.update(1)
    prog.done()
    return grad_gamma, J, lam_norm
