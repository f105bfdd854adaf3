"""Scoring the pool with a fitted scorer, resumable from part files."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from winnow.io.atomic import read_json, write_json
from winnow.io.tables import SCORES, read_table, write_table
from winnow.progress import Progress
from winnow.scorer.inference import _check_vocab, _CudaScorer, _scored_batches
from winnow.scorer.inputs import Encoder, input_encoder
from winnow.scorer.model import load_scorer
from winnow.train.batches import ExampleStore

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# scoring the pool (resumable)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _part_path(state_path: Path, k: int) -> Path:
    return state_path.with_name(f"{state_path.stem}-part-{k:06d}.parquet")


def _clear_parts(state_path: Path) -> None:
    for p in state_path.parent.glob(f"{state_path.stem}-part-*.parquet"):
        p.unlink()
    if state_path.exists():
        state_path.unlink()


def _score_fingerprint(
    ids: np.ndarray, model_dir: Path, batch_size: int, max_len: int, device: torch.device, tag: str, compile
) -> str:
    """What a resumable :func:`score_ids` state must match: ids, weights, batching, device, tag."""
    fp = hashlib.sha256()
    fp.update(ids.tobytes())
    fp.update(_file_sha256(model_dir / "model.safetensors").encode())
    fp.update(f"{batch_size}|{max_len}|{device.type}|{tag}".encode())
    if device.type == "cuda":  # compiled and eager kernels round differently: never mix their parts
        fp.update(f"|compile={compile is not False}".encode())
    return fp.hexdigest()[:32]


def _resume_scores(state_path: Path, fingerprint: str, ids: np.ndarray) -> tuple[list[np.ndarray], int]:
    """``(scores of the finished parts, next index)`` from a matching state; else cleared, ``([], 0)``."""
    parts: list[np.ndarray] = []
    start = 0
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state = read_json(state_path) if state_path.exists() else None
    if state is not None and state.get("fingerprint") == fingerprint:
        try:
            tables = [read_table(state_path.with_name(name), SCORES) for name in state["parts"]]
            got_ids = np.concatenate([t["example_id"].to_numpy() for t in tables]) if tables else ids[:0]
            if int(state["next_index"]) != len(got_ids) or not np.array_equal(got_ids, ids[: len(got_ids)]):
                raise ValueError("parts do not cover ids[:next_index]")
        except (OSError, ValueError, KeyError) as err:
            log.warning("score state %s is unusable (%s); starting over", state_path, err)
            _clear_parts(state_path)
        else:
            parts = [t["score"].to_numpy() for t in tables]
            start = len(got_ids)
            log.info("resuming scoring at %d/%d from %s", start, len(ids), state_path)
    elif state is not None:
        log.warning("score state %s is from other inputs; starting over", state_path)
    if start == 0:
        _clear_parts(state_path)  # leftovers of another run must not be mixed in
    return parts, start


def score_ids(
    model_dir: str | os.PathLike,
    store: ExampleStore | None,
    ids: Sequence[int],
    batch_size: int,
    out_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    state_path: str | os.PathLike | None = None,
    flush_every: int = 100,
    encoder: Encoder | None = None,
    tag: str = "",
    log_every_s: float = 10.0,
    compile: bool | None = None,
    trust_remote_code: bool = False,
) -> dict:
    """Score ``ids`` with a fitted scorer; write SCORES parquet (example_id int64, score float32).

    Scores are in **z units of the training labels** (see the package docstring), rows in the
    order of ``ids``. Batches are consecutive slices of ``ids``; bf16 autocast on CUDA only.
    ``trust_remote_code``: the workflow config's (see :func:`load_scorer`), never the folder's.

    Resumable when ``state_path`` is given: every ``flush_every`` batches the new scores go to
    ``{state_path.stem}-part-{k:06d}.parquet`` next to ``state_path`` and the JSON state
    (fingerprint, next index, parts) is rewritten. A rerun with the same arguments continues at
    the next index and writes the same bytes as an uninterrupted run. The fingerprint covers the
    ids, the weights' sha256, batch size, max_len, device type and ``tag`` (name any custom
    ``encoder`` there, e.g. the retokenized table's hash); a state with another fingerprint is
    discarded, never mixed. Parts and state are removed once ``out_path`` is written.

    On CUDA the batches run through :class:`_CudaScorer` (bf16 weights, ``compile``: None = on);
    the CPU path is :func:`_predict_batch` (fp32).

    Returns: ``{"n", "resumed_at", "wall_s", "examples_per_s", "units", "label_norm"}``.
    """
    t0 = time.monotonic()
    model_dir = Path(model_dir)
    device = torch.device(device)
    ids = np.asarray(ids, dtype=np.int64)
    model, meta = load_scorer(model_dir, device, trust_remote_code=trust_remote_code)
    max_len = int(meta["config"]["max_len"])
    pad_id = int(meta["pad_id"])
    use_bf16 = device.type == "cuda"
    if encoder is None and meta.get("inputs") == "encoder":
        raise ValueError(f"{model_dir} was fitted on custom (retokenized) inputs: pass the same encoder")
    encoder, _ = input_encoder(store, encoder, max_len)
    _check_vocab(model, encoder, ids)

    fingerprint = _score_fingerprint(ids, model_dir, batch_size, max_len, device, tag, compile)
    state_path = Path(state_path) if state_path is not None else None
    parts, start = _resume_scores(state_path, fingerprint, ids) if state_path is not None else ([], 0)

    prog = Progress("score", total=len(ids), unit="examples", interval_s=log_every_s)
    prog.count = start
    pending: list[np.ndarray] = []
    pending_from = start
    n_batches = 0
    fast = _CudaScorer(model, batch_size, max_len, compile is not False) if device.type == "cuda" else None
    for scores in _scored_batches(model, encoder, ids, start, batch_size, pad_id, max_len, device, use_bf16, fast):
        pending.append(scores)
        n_batches += 1
        prog.update(len(scores))
        if state_path is not None and n_batches % flush_every == 0:
            _flush(state_path, ids, parts, pending, pending_from, fingerprint)
            pending_from += sum(len(p) for p in pending)
            pending = []
    prog.done()
    scores = np.concatenate(parts + pending) if (parts or pending) else np.zeros(0, dtype=np.float32)
    table = pa.table({"example_id": pa.array(ids, pa.int64()), "score": pa.array(scores.astype(np.float32))})
    write_table(out_path, table, SCORES)
    if state_path is not None:
        _clear_parts(state_path)
    wall = time.monotonic() - t0
    return {
        "n": int(len(ids)),
        "resumed_at": int(start),
        "wall_s": wall,
        "examples_per_s": (len(ids) - start) / wall if wall > 0 else None,
        "units": "z (training-label mean/std, clipped)",
        "label_norm": meta["label_norm"],
    }


def _flush(state_path: Path, ids: np.ndarray, parts: list, pending: list, start: int, fingerprint: str) -> None:
    """Write ``pending`` scores as the next part file, then the state that lists it."""
    new = np.concatenate(pending).astype(np.float32)
    k = len(parts)
    part = _part_path(state_path, k)
    write_table(
        part,
        pa.table({"example_id": pa.array(ids[start : start + len(new)], pa.int64()), "score": pa.array(new)}),
        SCORES,
    )
    parts.append(new)
    names = [_part_path(state_path, j).name for j in range(len(parts))]
    write_json(
        state_path, {"fingerprint": fingerprint, "next_index": start + len(new), "parts": names, "n_ids": int(len(ids))}
    )
