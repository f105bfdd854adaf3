"""Projected, normalised gradient features per example, and their store: <name>.npy (N, d) plus a
<name>.npy.json sidecar."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from winnow.grads import Batch, eval_mode
from winnow.io.atomic import atomic_path, read_json, write_json
from winnow.methods.less.lora import (
    KINDS,
    adam_features,
    flat_moments,
    per_example_lora_grads,
    per_example_lora_grads_hooks,
)
from winnow.methods.less.projection import RademacherProjector
from winnow.train.batches import ExampleStore, collate

# ----------------------------------------------------------------------------------------------
# features


def _amp_ctx(amp: str | None, device: torch.device):
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if amp not in (None, "fp32"):
        raise ValueError(f"amp {amp!r}: None, 'fp32' or 'bf16'")
    return contextlib.nullcontext()


def _example_grads(model, batch: Batch, names, method: str, chunk_size, amp, device) -> torch.Tensor:
    """Per-example LoRA gradients ``(b, P)`` of one batch by ``method`` ("hooks" or "vmap")."""
    with _amp_ctx(amp, device):
        if method == "hooks":
            return per_example_lora_grads_hooks(model, batch, names)
        if method == "vmap":
            return per_example_lora_grads(model, batch, names, chunk_size=chunk_size)
        raise ValueError(f"method {method!r}: 'hooks' or 'vmap'")


def _to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch on ``device``. On CUDA from pinned memory without blocking: a copy from pageable
    memory first waits for the GPU's queue to drain, so every batch's host work (collate, launches,
    a garbage collection) would leave the GPU idle instead of overlapping the previous batch."""
    if device.type != "cuda":
        return {k: t.to(device) for k, t in batch.items()}
    return {k: t.pin_memory().to(device, non_blocking=True) for k, t in batch.items()}


def _normalised_projection(projector: RademacherProjector, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows of x projected and L2-normalised (b, d), their norms before (b,))``, on the CPU."""
    proj = projector.project(x)
    n = proj.norm(dim=1)
    return (proj / n.clamp(min=torch.finfo(torch.float32).tiny)[:, None]).cpu(), n.cpu()


def featurize(
    model: torch.nn.Module,
    store: ExampleStore,
    ids: Sequence[int] | np.ndarray,
    names: Sequence[str],
    projector: RademacherProjector,
    kind: str,
    moments: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    batch_size: int = 16,
    seq_len: int = 512,
    pad_id: int = 0,
    device: torch.device | str | None = None,
    chunk_size: int | None = None,
    project_batch: int | None = None,
    amp: str | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    method: str = "hooks",
) -> tuple[torch.Tensor, torch.Tensor]:
    """LESS features of the examples ``ids`` at the model's current LoRA weights.

    Args:
        kind: "adam" (pool examples: :func:`adam_features` from ``moments``, see
            :func:`load_lora_checkpoint`) or "sgd" (target examples: the plain gradient).
        batch_size: examples per ``vmap(grad)`` call (memory ≈ 2 × batch_size × P floats + activations).
        project_batch: examples per projection call (default max(batch_size, 64)); a larger value
            spreads the cost of materialising R (see :class:`RademacherProjector`) over more
            examples, at project_batch × P floats of buffer on the device.
        device: where to compute (default: the model's device; the model is not moved).
        amp: None/"fp32" or "bf16" (autocast over the fp32 parameters, as the trainer on GPU).
        betas, eps: of the simulated Adam step ("adam"); LESS uses 0.9, 0.999, 1e-8 whatever the
            warm-up optimiser's were.
        method: "hooks" (one batched backward, :func:`per_example_lora_grads_hooks`) or "vmap"
            (:func:`per_example_lora_grads`); the same gradients, hooks is faster.
    Returns:
        ``features (N, d)`` float32, L2-normalised rows (a zero row stays zero), and ``norms (N,)``
        float32, the L2 norms of the projected vectors before normalisation; CPU, ``ids`` order.
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: one of {KINDS}")
    if kind == "adam" and not moments:
        raise ValueError('kind "adam" needs the checkpoint\'s AdamW moments')
    device = torch.device(device) if device is not None else next(model.parameters()).device
    project_batch = project_batch or max(batch_size, 64)
    ids = [int(i) for i in ids]
    if kind == "adam":
        m, v = flat_moments(moments, names, device)
        if m.numel() != projector.n_in:
            raise ValueError(f"moments have {m.numel()} values, projector expects {projector.n_in}")
    feats, norms = [], []
    # one preallocated projection buffer in the projector's matmul dtype (it casts to that dtype
    # anyway, so the values are the same): no torch.cat copy, and half the bytes when that is bf16
    cap = min(project_batch + batch_size - 1, len(ids))
    pbuf = torch.empty(cap, projector.n_in, dtype=projector.compute_dtype, device=device) if cap else None

    def flush(rows: int) -> None:
        for out, value in zip((feats, norms), _normalised_projection(projector, pbuf[:rows])):
            out.append(value)

    buffered = 0
    with eval_mode(model, eager=method == "vmap"):  # once, not per batch
        for i in range(0, len(ids), batch_size):
            chunk = ids[i : i + batch_size]
            batch = _to_device(collate(store, chunk, seq_len, pad_id), device)
            g = _example_grads(model, batch, names, method, chunk_size, amp, device)
            if kind == "adam":
                g = adam_features(g, m, v, betas[0], betas[1], eps)
            if g.shape[1] != projector.n_in:
                raise ValueError(f"gradients have {g.shape[1]} values, projector expects {projector.n_in}")
            pbuf[buffered : buffered + len(chunk)].copy_(g)
            del g
            buffered += len(chunk)
            if buffered >= project_batch:
                flush(buffered)
                buffered = 0
        if buffered:
            flush(buffered)
    if not feats:
        return torch.zeros(0, projector.d), torch.zeros(0)
    return torch.cat(feats), torch.cat(norms)


# ----------------------------------------------------------------------------------------------
# feature store: <name>.npy (N, d) + <name>.npy.json sidecar

SIDECAR_KEYS = ("checkpoint", "kind", "d", "seed", "ids")


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(path)}.json")


def write_features(path: str | os.PathLike, features, sidecar: dict, dtype: str | None = None, norms=None) -> Path:
    """Write ``features (N, d)`` as an .npy (float16 or float32) plus the sidecar ``<path>.json``.

    ``sidecar`` must hold checkpoint (a string naming the LoRA checkpoint), kind ("adam"/"sgd"), d,
    seed (the projector's) and ids (the N example ids in row order); other keys are kept. ``dtype``
    defaults to ``sidecar["dtype"]``, else float16 (LESS stores fp16). ``norms (N,)`` (the
    unnormalised projected norms of :func:`featurize`), if given, go into the sidecar as "norms".
    The writer adds dtype and n. Both files are written atomically, the old sidecar removed first and
    the new one written last, so a sidecar always describes the .npy next to it.
    """
    if dtype is not None and "dtype" in sidecar and sidecar["dtype"] != dtype:
        raise ValueError(f"dtype {dtype!r} but sidecar dtype {sidecar['dtype']!r}")
    dtype = dtype or sidecar.get("dtype", "float16")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype {dtype!r}: float16 or float32")
    missing = [k for k in SIDECAR_KEYS if k not in sidecar]
    if missing:
        raise ValueError(f"sidecar lacks {missing}")
    arr = features.detach().cpu().numpy() if torch.is_tensor(features) else np.asarray(features)
    arr = np.ascontiguousarray(arr, dtype=dtype)
    ids = [int(i) for i in np.asarray(sidecar["ids"]).reshape(-1)]
    if arr.ndim != 2 or arr.shape[0] != len(ids) or arr.shape[1] != int(sidecar["d"]):
        raise ValueError(f"features {arr.shape} do not match {len(ids)} ids × d={sidecar['d']}")
    meta = {k: _plain(v) for k, v in sidecar.items()}
    meta.update(ids=ids, d=int(sidecar["d"]), seed=int(sidecar["seed"]), dtype=dtype, n=len(ids))
    if norms is not None:
        nv = norms.detach().cpu().numpy() if torch.is_tensor(norms) else np.asarray(norms)
        if nv.shape != (len(ids),):
            raise ValueError(f"norms {nv.shape} for {len(ids)} ids")
        meta["norms"] = [float(x) for x in nv.astype(np.float64)]
    path = Path(path)
    side = sidecar_path(path)
    side.unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
    write_json(side, meta)
    return path


def read_sidecar(path: str | os.PathLike) -> dict:
    """The sidecar of a feature file as written (ids, norms if stored, ...), unchecked."""
    return read_json(sidecar_path(path))


def _plain(v):
    return os.fspath(v) if isinstance(v, os.PathLike) else v


def read_features(path: str | os.PathLike, expect: dict) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map features written by :func:`write_features` after checking the sidecar.

    ``expect`` holds any of checkpoint, kind, d, seed, dtype, ids (and other sidecar keys); each
    must equal the stored value.
    Returns:
        ``(features (N, d) read-only memmap, ids (N,) int64)``.
    Raises:
        ValueError naming the first key that differs (or is missing), or a shape/dtype mismatch
        between the sidecar and the .npy.
    """
    side = sidecar_path(path)
    if not side.exists():
        raise ValueError(f"{path}: no sidecar {side.name}")
    meta = read_json(side)
    for key, want in expect.items():
        if key not in meta:
            raise ValueError(f"{path}: sidecar has no {key!r}")
        got = meta[key]
        if key == "ids":
            same = np.array_equal(np.asarray(got, dtype=np.int64), np.asarray(want, dtype=np.int64).reshape(-1))
            shown = f"{len(got)} ids" if isinstance(got, list) else got
            if not same:
                raise ValueError(
                    f"{path}: sidecar 'ids' differ from the expected {len(np.asarray(want).reshape(-1))} ids ({shown})"
                )
            continue
        if key in ("d", "seed", "n"):
            same = int(got) == int(want)
        else:
            same = got == _plain(want)
        if not same:
            raise ValueError(f"{path}: sidecar {key!r} is {got!r}, expected {_plain(want)!r}")
    arr = np.load(path, mmap_mode="r")
    if arr.shape != (int(meta["n"]), int(meta["d"])) or arr.dtype != np.dtype(meta["dtype"]):
        raise ValueError(f"{path}: array {arr.shape} {arr.dtype} does not match its sidecar (n, d, dtype)")
    return arr, np.asarray(meta["ids"], dtype=np.int64)
