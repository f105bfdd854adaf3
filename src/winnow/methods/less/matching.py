"""Matching pool features against target features: lr-weighted cosine influence, aggregated."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

AGGREGATES = ("subtask_max", "mean", "max", "min")


# ----------------------------------------------------------------------------------------------
# matching


def checkpoint_weights(avg_lrs: Sequence[float]) -> np.ndarray:
    """w_i = η̄_i / Σ_j η̄_j: ``(C,)`` float64 from each checkpoint's average learning rate."""
    lrs = np.asarray(avg_lrs, dtype=np.float64)
    if lrs.ndim != 1 or len(lrs) == 0 or np.any(lrs < 0) or lrs.sum() <= 0:
        raise ValueError(f"average learning rates must be non-negative with a positive sum, got {lrs}")
    return lrs / lrs.sum()


def _as_f32(a, device) -> torch.Tensor:
    if not torch.is_tensor(a):  # a copy: memmaps are read-only, which torch.from_numpy warns about
        a = torch.from_numpy(np.array(a, dtype=np.float32))
    return a.to(device=device, dtype=torch.float32)


def less_scores(
    train_feats: Sequence,
    target_feats: Sequence,
    weights,
    subtasks: Sequence[str],
    aggregate: str = "subtask_max",
    chunk: int = 8192,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Score of each pool example against a target task: ``(N,)`` float32.

    Args:
        train_feats: per checkpoint, the pool features ``(N, d)`` (normalised; arrays, memmaps or
            tensors, any float dtype).
        target_feats: per checkpoint, the target features ``(M, d)``, same checkpoint order.
        weights: ``(C,)`` checkpoint weights (:func:`checkpoint_weights`).
        subtasks: the subtask label of each of the M target examples.
        aggregate: over the M values Inf(z, z'_m) = Σ_i w_i ⟨φ_i(z), φ_i(z'_m)⟩:
            "subtask_max" (LESS: mean within each subtask, max over subtasks), or "mean", "max",
            "min" over the individual target examples.
    The N × M influence matrix is formed ``chunk`` pool rows at a time (float32 matmuls).
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate {aggregate!r}: one of {AGGREGATES}")
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if not (len(train_feats) == len(target_feats) == len(w)) or len(w) == 0:
        raise ValueError(f"{len(train_feats)} pool / {len(target_feats)} target feature sets for {len(w)} weights")
    n = int(train_feats[0].shape[0])
    targets = [_as_f32(t, device) for t in target_feats]
    m = int(targets[0].shape[0])
    if len(subtasks) != m:
        raise ValueError(f"{len(subtasks)} subtask labels for {m} target examples")
    for f, t in zip(train_feats, targets):
        if f.shape[0] != n or t.shape[0] != m or f.shape[1] != t.shape[1]:
            raise ValueError(f"feature shapes differ across checkpoints: {tuple(f.shape)} vs {tuple(t.shape)}")
    if aggregate == "subtask_max":
        labels = list(dict.fromkeys(subtasks))  # first-appearance order
        col = {s: j for j, s in enumerate(labels)}
        avg = torch.zeros(m, len(labels), dtype=torch.float32, device=device)
        for r, s in enumerate(subtasks):
            avg[r, col[s]] = 1.0
        avg /= avg.sum(0, keepdim=True)
    out = np.empty(n, dtype=np.float32)
    for i in range(0, n, chunk):
        j = min(i + chunk, n)
        inf = torch.zeros(j - i, m, dtype=torch.float32, device=device)
        for wc, f, t in zip(w, train_feats, targets):
            inf += float(wc) * (_as_f32(f[i:j], device) @ t.T)
        if aggregate == "subtask_max":
            s = (inf @ avg).max(dim=1).values
        elif aggregate == "mean":
            s = inf.mean(dim=1)
        elif aggregate == "max":
            s = inf.max(dim=1).values
        else:
            s = inf.min(dim=1).values
        out[i:j] = s.cpu().numpy()
    return out
