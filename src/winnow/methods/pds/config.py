"""The PMP solver's configuration and the plan it works from: data, batches per step, timers."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from winnow.grads import (
    Batch,
    Params,
)
from winnow.train.batches import ExampleStore, collate

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
