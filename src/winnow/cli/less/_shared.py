"""Helpers shared by the ``winnow less`` commands."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np


def base_input(path: str) -> str | Path:
    """What a job's provenance records of its base: a local folder's files (given as its
    config.json; its weights may be sharded), or the spine's model.safetensors."""
    return Path(path).parent if Path(path).name == "config.json" else path


def _store(args):
    from winnow.train.batches import open_store

    return open_store(args.examples, args.manifest)


def _ids(path) -> np.ndarray:
    from winnow.io.tables import IDS, read_table

    return read_table(path, IDS)["example_id"].to_numpy()


def _counts(values) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def _scores_of(path, ids: np.ndarray, what: str) -> np.ndarray:
    """The scores of ``ids`` (in that order) from a SCORES table that holds exactly those ids."""
    from winnow.io.tables import SCORES, read_table

    table = read_table(path, SCORES)
    got = table["example_id"].to_numpy()
    if got.size != ids.size or not np.array_equal(np.sort(got), np.sort(ids)):
        raise ValueError(f"{path}: {what} scores hold {got.size} ids, not the {ids.size} expected")
    score_of = dict(zip(got.tolist(), table["score"].to_numpy().astype(np.float64).tolist(), strict=True))
    return np.asarray([score_of[int(e)] for e in ids], dtype=np.float64)
