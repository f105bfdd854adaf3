"""PDS: data weights from Pontryagin's maximum principle (the PMP solver).

:func:`solve` runs a T-step SGD trajectory from the model given (θ_0), the costates λ_t backwards
with Hessian-vector products, and returns ``grad_gamma`` ``(N,)`` float64, one score per proxy
example (higher = better; with ``interval`` 1 it is −dJ_total/dγ_n), with a plain-JSON report.
Variants (``PMPConfig.variant``): "released" (one pass on uniformly weighted trajectory batches, as
microsoft/LMOps computes) and "paper" (Algorithm 1: projected-simplex epochs on the γ-weighted proxy
set; the final γ is ``report["gamma"]``). The trajectory is stored in ``work_dir`` with √T
checkpointing and reused when its fingerprint matches.

See docs/methods/pds.md for the equations, the storage layout and the checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import save_file

from winnow.grads import (
    Batch,
    Params,
    functional_model,
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
from winnow.progress import Progress
from winnow.train.batches import ExampleStore, collate

log = logging.getLogger(__name__)

VARIANTS = ("released", "paper")

TRAJECTORY_BATCHES = pa.schema(
    [
        ("step", pa.int64()),
        ("example_id", pa.int64()),
        ("weight", pa.float64()),  # coefficient of ℓ(x, θ_t) in the step's loss (1/B or γ_n)
    ]
)


@dataclass
class PMPConfig:
    steps: int = 40  # T
    lr: float = 0.008  # η: constant-lr SGD, no weight decay, no clipping
    batch_size: int = 16  # B: trajectory examples per step ("released")
    interval: int = 1  # proxy contributions at t = 0, interval, 2·interval, … (compute-ct-interval); "paper": 1
    ckpt_every: int = 0  # k: θ saved every k steps; 0 = ⌊√T⌋
    variant: str = "released"  # released | paper
    outer_epochs: int = 1  # E ("paper"; "released" is one pass by definition)
    outer_lr: float = 1.0  # α of the projected γ ascent ("paper")
    proxy_batch_size: int = 16  # micro-batch for contributions (and the "paper" forward/HVP)
    target_batch_size: int = 16  # micro-batch for J and ∇J
    micro_batch_size: int = 0  # micro-batch for the trajectory step's gradient/HVP; 0 = whole step
    seed: int = 0  # seeds torch's RNG (the solver itself draws no random numbers)
    # The contribution pass on CUDA (both ignored on CPU): "model" = the model's dtype, "bf16" =
    # bf16 autocast over the model's parameters; compile = torch.compile of the batched JVP
    # (dynamic=False: one graph per micro-batch shape), None = on for CUDA.
    contribution_precision: str = "model"
    compile: bool | None = None

    def resolved_ckpt_every(self) -> int:
        return self.ckpt_every if self.ckpt_every > 0 else max(1, math.isqrt(self.steps))

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        for name in ("steps", "batch_size", "interval", "outer_epochs", "proxy_batch_size", "target_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.contribution_precision not in ("model", "bf16"):
            raise ValueError(f"contribution_precision must be 'model' or 'bf16', got {self.contribution_precision!r}")
        if self.ckpt_every < 0 or self.micro_batch_size < 0:
            raise ValueError("ckpt_every and micro_batch_size must be ≥ 0")
        if self.variant == "released" and self.outer_epochs != 1:
            raise ValueError("the released variant is a single pass: outer_epochs must be 1")
        if self.variant == "paper" and self.interval != 1:
            # Algorithm 1's g = −dJ_total/dγ sums every step's contribution; a sparser sum is not it.
            raise ValueError(
                f"pds.solver.interval must be 1 for the paper variant (got {self.interval}): Algorithm 1"
                " sums the proxy contributions over every step (g = −dJ_total/dγ); interval > 1 is the"
                " released code's approximation and applies to variant 'released' only"
            )


# ----------------------------------------------------------------------------------------------
# helpers


def project_simplex(v: np.ndarray, z: float = 1.0) -> np.ndarray:
    """Euclidean projection of ``v`` (n,) onto {x ≥ 0, Σx = z} (sort-based; Duchi et al. 2008).

    x = max(v − τ, 0) with τ chosen so that Σx = z; O(n log n). Returns float64 (n,).
    """
    v = np.asarray(v, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"expected a non-empty 1-D vector, got shape {v.shape}")
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - z
    j = np.arange(1, v.size + 1)
    rho = int(np.nonzero(u - css / j > 0)[0][-1])  # last index where the sorted entry stays positive
    tau = css[rho] / (rho + 1)
    return np.maximum(v - tau, 0.0)


def gamma_entropy(gamma: np.ndarray) -> float:
    """Shannon entropy (nats) of a simplex vector; log N for uniform."""
    g = gamma[gamma > 0]
    return float(-(g * np.log(g)).sum())


def _stats(x: np.ndarray) -> dict:
    return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "max": float(x.max())}


class _Timer:
    """Wall-clock seconds per phase (CUDA synchronised, so a phase is not billed to the next)."""

    PHASES = ("forward", "recompute", "hvp", "grad_J", "contributions", "io")

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.total: dict[str, float] = dict.fromkeys(self.PHASES, 0.0)

    def phase(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                if timer.cuda:
                    torch.cuda.synchronize()
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                if timer.cuda:
                    torch.cuda.synchronize()
                timer.total[name] = timer.total.get(name, 0.0) + time.perf_counter() - self.t0

        return _Ctx()


class _Data:
    """Collates micro-batches of example ids from the store (on demand; nothing is kept)."""

    def __init__(self, store: ExampleStore, seq_len: int, pad_id: int):
        self.store, self.seq_len, self.pad_id = store, seq_len, pad_id

    def chunks(self, ids: np.ndarray, size: int) -> Iterator[tuple[slice, Batch]]:
        for lo in range(0, len(ids), size):
            sl = slice(lo, min(lo + size, len(ids)))
            yield sl, collate(self.store, ids[sl], self.seq_len, self.pad_id)

    def batches(self, ids: np.ndarray, size: int) -> list[Batch]:
        return [b for _, b in self.chunks(ids, size)]

    def token_hash(self, ids: np.ndarray) -> str:
        """Hash of the tokens and loss spans of ``ids`` (so a re-tokenised store is not reused)."""
        h = hashlib.sha256()
        for eid in np.unique(ids):
            tokens, ls, le = self.store.get(int(eid))
            h.update(np.int64([eid, ls, le, len(tokens)]).tobytes())
            h.update(np.ascontiguousarray(tokens, dtype=np.int64).tobytes())
        return h.hexdigest()


class _Plan:
    """The loss of every SGD step: ids (and weights) whose weighted ℓ-sum drives step t.

    "released": step t = ``trajectory_ids[t·B:(t+1)·B]``, uniform weights 1/B (batch mean).
    "paper": every step = the proxy examples with γ_n > 0, weights γ_n (collated once, kept).
    """

    def __init__(self, ids: list[np.ndarray], weights: list[np.ndarray], micro: int, data: _Data, shared: bool):
        self.ids, self.weights, self.micro, self.data, self.shared = ids, weights, micro, data, shared
        self._cache: list[Batch] | None = None

    @classmethod
    def released(cls, trajectory_ids: np.ndarray, cfg: PMPConfig, data: _Data) -> _Plan:
        b = cfg.batch_size
        ids = [trajectory_ids[t * b : (t + 1) * b] for t in range(cfg.steps)]
        weights = [np.full(b, 1.0 / b) for _ in range(cfg.steps)]
        return cls(ids, weights, cfg.micro_batch_size or b, data, shared=False)

    @classmethod
    def paper(cls, proxy_ids: np.ndarray, gamma: np.ndarray, cfg: PMPConfig, data: _Data) -> _Plan:
        keep = gamma > 0
        ids, w = proxy_ids[keep], gamma[keep]
        return cls([ids] * cfg.steps, [w] * cfg.steps, cfg.proxy_batch_size, data, shared=True)

    def step(self, t: int) -> tuple[list[Batch], torch.Tensor]:
        """Micro-batches of step t and their weights ``(b_total,)`` float64."""
        w = torch.from_numpy(np.ascontiguousarray(self.weights[t]))
        if self.shared:
            if self._cache is None:
                self._cache = self.data.batches(self.ids[0], self.micro)
            return self._cache, w
        return self.data.batches(self.ids[t], self.micro), w

    def table(self) -> pa.Table:
        steps = np.concatenate([np.full(len(ids), t, dtype=np.int64) for t, ids in enumerate(self.ids)])
        return pa.table(
            {
                "step": steps,
                "example_id": np.concatenate(self.ids).astype(np.int64),
                "weight": np.concatenate(self.weights).astype(np.float64),
            }
        )

    def hash(self) -> str:
        h = hashlib.sha256()
        for ids, w in zip(self.ids, self.weights):
            h.update(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
            h.update(np.ascontiguousarray(w, dtype=np.float64).tobytes())
        return h.hexdigest()


def _params_hash(params: Params) -> str:
    h = hashlib.sha256()
    for name in sorted(params):
        t = params[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


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
    T = cfg.steps

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    config = getattr(model, "config", None)
    attn_before = getattr(config, "_attn_implementation", None)
    functional_model(model)
    was_training = model.training
    model.eval()
    params0 = {k: v.detach() for k, v in model.named_parameters()}
    device, dtype = next(iter(params0.values())).device, next(iter(params0.values())).dtype
    data = _Data(store, seq_len, pad_id)
    timer = _Timer(device)
    t_start = time.perf_counter()
    params_hash = _params_hash(params0)
    targets = data.batches(target_ids, cfg.target_batch_size)

    epochs: list[dict] = []
    gamma = np.full(len(proxy_ids), 1.0 / len(proxy_ids))
    try:
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
                    entry["gamma_entropy_before"] = gamma_entropy(gamma)
                    entry["gamma_nonzero_before"] = int((gamma > 0).sum())
                    gamma = project_simplex(gamma + cfg.outer_lr * grad_gamma)
                    entry["gamma_entropy"] = gamma_entropy(gamma)
                    entry["gamma_nonzero"] = int((gamma > 0).sum())
                epochs.append(entry)
                log.info("pmp epoch %d: J_total %.6f, J_T %.6f", epoch, entry["J_total"], J[T])
    finally:
        model.train(was_training)
        if attn_before is not None and config._attn_implementation != attn_before:
            model.set_attn_implementation(attn_before)

    timings = dict(sorted(timer.total.items()))
    timings["total"] = time.perf_counter() - t_start
    report = _solve_report(cfg, proxy_ids, target_ids, seq_len, dtype, device, J, lam_norm, timings, epochs)
    if cfg.variant == "paper":
        report["gamma"] = gamma.tolist()
    return grad_gamma, report
