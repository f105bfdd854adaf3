"""External scores: a score file made elsewhere (DSIR, a quality classifier, a dolma-style attribute
file, ...) → the shared scores table (``example_id, score``) that ``select select`` consumes.

The file is keyed by ``doc_id`` (every pool example of the document gets the document's score) or
by ``example_id``. Nothing is dropped silently: each record that cannot be used becomes one row of a
rejects table with its reason, and the report counts records, reasons, and how much of the pool the
file covers. Pool examples the file does not score are handled per ``missing``:

* ``error``: the job fails, naming how many and a few of them;
* ``lowest``: they get a score ranked below every scored example under the arm's select
  ``direction`` (picked only when the scored ones run out, or by the Gumbel noise when τ > 0);
* ``drop``: they get NaN, which ``select`` never picks (the budget stays a share of the whole pool,
  so an arm whose file covers fewer examples than the budget selects fewer).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMATS = ("jsonl", "parquet", "tsv", "csv")
KEYS = ("doc_id", "example_id")
MISSING = ("error", "lowest", "drop")
REASONS = ("bad_record", "missing_key", "bad_key", "non_numeric", "not_finite", "duplicate_id", "unknown_id")
_SUFFIXES = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".tsv": "tsv",
    ".csv": "csv",
}
RAW_MAX = 4096


def detect_format(path: str | Path, fmt: str = "auto") -> str:
    """The file's format: ``fmt`` unless it is ``auto``, else from the suffix (a ``.gz`` is looked through)."""
    if fmt != "auto":
        if fmt not in FORMATS:
            raise ValueError(f"format must be auto or one of {FORMATS}, got {fmt!r}")
        return fmt
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _SUFFIXES:
        return _SUFFIXES[suffixes[-1]]
    raise ValueError(f"{path}: cannot tell its format from the name; set format to one of {FORMATS}")


@dataclass
class Record:
    index: int  # 0-based record (line or row) of the file
    key: object
    score: object
    raw: bytes


@dataclass
class Reject:
    index: int
    reason: str
    detail: str
    raw: bytes


def _open_text(path: Path):
    if path.suffix.lower() == ".gz":
        import gzip

        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_records(path: str | Path, fmt: str, key: str, score_column: str) -> tuple[list[Record], list[Reject]]:
    """Every record of the file as (key value, score value), unparsed; malformed records are rejects.
    A file without the key or score column at all is an error (no record could be used)."""
    path = Path(path)
    fmt = detect_format(path, fmt)
    records: list[Record] = []
    rejects: list[Reject] = []
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        for col in (key, score_column):
            if col not in table.column_names:
                raise ValueError(f"{path}: no column {col!r} (columns: {table.column_names})")
        keys, scores = table[key].to_pylist(), table[score_column].to_pylist()
        for i, (k, s) in enumerate(zip(keys, scores)):
            records.append(Record(i, k, s, json.dumps({key: k, score_column: s}, default=str).encode()[:RAW_MAX]))
        return records, rejects
    with _open_text(path) as f:
        if fmt == "jsonl":
            for i, line in enumerate(f):
                raw = line.rstrip("\r\n").encode()[:RAW_MAX]
                if not line.strip():
                    rejects.append(Reject(i, "bad_record", "empty line", raw))
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    rejects.append(Reject(i, "bad_record", f"not JSON: {e}", raw))
                    continue
                if not isinstance(obj, dict):
                    rejects.append(Reject(i, "bad_record", "not a JSON object", raw))
                    continue
                records.append(Record(i, obj.get(key), obj.get(score_column, _ABSENT), raw))
            return records, rejects
        reader = csv.reader(f, delimiter="\t" if fmt == "tsv" else ",")
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty {fmt} file (no header)")
        for col in (key, score_column):
            if col not in header:
                raise ValueError(f"{path}: no column {col!r} in the header {header}")
        ki, si = header.index(key), header.index(score_column)
        for i, row in enumerate(reader):
            buf = io.StringIO()
            csv.writer(buf, delimiter="\t" if fmt == "tsv" else ",").writerow(row)
            raw = buf.getvalue().rstrip("\r\n").encode()[:RAW_MAX]
            if len(row) != len(header):
                rejects.append(Reject(i, "bad_record", f"{len(row)} fields, header has {len(header)}", raw))
                continue
            records.append(Record(i, row[ki] or None, row[si], raw))
    return records, rejects


_ABSENT = object()


def parse_score(value) -> tuple[float | None, str | None, str]:
    """(score, None, "") or (None, reason, detail)."""
    if value is _ABSENT or value is None or value == "":
        return None, "non_numeric", "no score"
    if isinstance(value, bool):
        return None, "non_numeric", f"boolean {value!r}"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None, "non_numeric", f"{value!r} is not a number"
    if not math.isfinite(x):
        return None, "not_finite", f"{value!r}"
    return x, None, ""


def parse_key(value, key: str) -> tuple[object, str | None, str]:
    if value is None or value is _ABSENT:
        return None, "missing_key", f"no {key}"
    if key == "doc_id":
        return str(value), None, ""
    if isinstance(value, bool):
        return None, "bad_key", f"example_id {value!r} is not an integer"
    if isinstance(value, float):
        if not value.is_integer():
            return None, "bad_key", f"example_id {value!r} is not an integer"
        return int(value), None, ""
    try:
        return int(str(value).strip()), None, ""
    except ValueError:
        return None, "bad_key", f"example_id {value!r} is not an integer"


@dataclass
class Aligned:
    example_ids: np.ndarray  # (n,) int64: the pool, sorted
    scores: np.ndarray  # (n,) float32; NaN for missing ids under missing=drop
    rejects: list[Reject]
    report: dict = field(default_factory=dict)


def _parse_records(
    records: list[Record], key: str, rejects: list[Reject]
) -> tuple[dict[object, list[tuple[Record, float]]], dict[object, float]]:
    """``(records by parsed key, the score of each key given once)``; unusable records and every
    copy of a repeated key are appended to ``rejects``."""
    parsed: dict[object, list[tuple[Record, float]]] = {}
    for r in records:
        k, reason, detail = parse_key(r.key, key)
        if reason is None:
            s, reason, detail = parse_score(r.score)
        if reason is not None:
            rejects.append(Reject(r.index, reason, detail, r.raw))
            continue
        parsed.setdefault(k, []).append((r, s))
    # A key given twice has no one score; no copy wins silently, and the key counts as missing.
    scored: dict[object, float] = {}
    for k, rows in parsed.items():
        if len(rows) > 1:
            for r, _ in rows:
                rejects.append(Reject(r.index, "duplicate_id", f"{key} {k!r} appears {len(rows)} times", r.raw))
        else:
            scored[k] = rows[0][1]
    return parsed, scored


def align(
    records: list[Record],
    rejects: list[Reject],
    pool_ids: np.ndarray,
    example_ids: np.ndarray,
    example_docs: np.ndarray,
    key: str,
    missing: str = "error",
    direction: str = "higher",
    where: str = "external",
) -> Aligned:
    """Validate the records and give every pool example a score.

    Args:
        pool_ids: the candidate pool's example ids.
        example_ids, example_docs: every example of the corpus and its doc_id (the token store's
            examples table): an id of the corpus outside the pool is counted, not rejected.
        where: the config key named in errors (``external.<name>``).
    """
    if key not in KEYS:
        raise ValueError(f"{where}.key must be one of {KEYS}, got {key!r}")
    if missing not in MISSING:
        raise ValueError(f"{where}.missing must be one of {MISSING}, got {missing!r}")
    rejects = list(rejects)
    n_records = len(records) + len(rejects)
    parsed, scored = _parse_records(records, key, rejects)

    pool = np.unique(np.asarray(pool_ids, dtype=np.int64))
    example_ids = np.asarray(example_ids, dtype=np.int64)
    in_pool = np.isin(example_ids, pool)
    if key == "doc_id":
        known = {str(d) for d in example_docs}
        pool_docs = {str(d) for d in np.asarray(example_docs, dtype=object)[in_pool]}
    else:
        known = set(example_ids.tolist())
        pool_docs = set(pool.tolist())
    outside = 0
    for k in list(scored):
        if k not in known:
            rejects.append(
                Reject(_record_of(parsed[k]), "unknown_id", f"{key} {k!r} is not in the corpus", parsed[k][0][0].raw)
            )
            del scored[k]
        elif k not in pool_docs:
            outside += 1  # a real id of the corpus (e.g. a test document): not a candidate
            del scored[k]

    values = _pool_values(scored, key, pool, example_ids, example_docs, in_pool)
    have = np.isfinite(values)
    n_missing = int((~have).sum())
    fill = None
    if n_missing and missing == "error":
        few = ", ".join(str(i) for i in pool[~have][:5])
        raise ValueError(
            f"{where}: {n_missing} of {pool.size} pool examples have no usable score (e.g. example_id {few});"
            f" set {where}.missing to lowest or drop to select anyway (rejected records: {_counts(rejects)})"
        )
    if not have.any():
        raise ValueError(f"{where}: no pool example has a usable score (rejected records: {_counts(rejects)})")
    if n_missing and missing == "lowest":
        fill = _lowest(values[have], direction)
        values[~have] = fill
    rejects.sort(key=lambda r: (r.index, r.reason))
    report = {
        "key": key,
        "missing": missing,
        "direction": direction,
        "records": n_records,
        "accepted": n_records - len(rejects),
        "rejected": _counts(rejects),
        "outside_pool": outside,
        "pool_examples": int(pool.size),
        "scored_examples": int(have.sum()),
        "coverage": float(have.mean()),
        "missing_examples": n_missing,
        "missing_score": fill if missing == "lowest" else ("nan" if missing == "drop" else None),
    }
    return Aligned(pool, values.astype(np.float32), rejects, report)


def _pool_values(scored: dict, key: str, pool, example_ids, example_docs, in_pool) -> np.ndarray:
    """``(pool.size,)`` float64 scores of the pool's examples in id order (NaN: none); by doc_id,
    every example of a document gets the document's score."""
    if key != "doc_id":
        return np.array([scored.get(int(i), np.nan) for i in pool], dtype=np.float64)
    order = np.argsort(example_ids[in_pool], kind="stable")
    pool_docs_of = np.asarray(example_docs, dtype=object)[in_pool][order]
    pool_example_ids = example_ids[in_pool][order]
    if pool_example_ids.size != pool.size:
        raise ValueError("the pool names example ids the examples table lacks")
    return np.array([scored.get(str(d), np.nan) for d in pool_docs_of], dtype=np.float64)


def _lowest(scored_values: np.ndarray, direction: str) -> float:
    """A score strictly worse than every scored example, in float32 too."""
    lo, hi = float(scored_values.min()), float(scored_values.max())
    return lo - max(1.0, abs(lo)) if direction == "higher" else hi + max(1.0, abs(hi))


def _record_of(rows) -> int:
    return rows[0][0].index


def _counts(rejects: list[Reject]) -> dict[str, int]:
    return dict(sorted(Counter(r.reason for r in rejects).items()))


# ---- a demo heuristic (for the tutorial and tests; not a recommended selection method) ----------
def heuristic_score(text: str) -> float:
    """log(1 + words) × type-token ratio of the words: favours long documents that do not repeat
    themselves. A demo of an external score file, nothing more."""
    words = text.lower().split()
    if not words:
        return 0.0
    return math.log1p(len(words)) * len(set(words)) / len(words)


def write_scores_file(
    path: str | Path, keys: list, scores: list[float], key: str = "doc_id", fmt: str = "auto"
) -> None:
    """A score file in any of :data:`FORMATS` (written atomically)."""
    from winnow.io.atomic import atomic_path

    fmt = detect_format(path, fmt)
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({key: keys, "score": pa.array(scores, pa.float64())}), tmp)
        elif fmt == "jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                for k, s in zip(keys, scores):
                    f.write(json.dumps({key: k, "score": s}) + "\n")
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                w = csv.writer(f, delimiter="\t" if fmt == "tsv" else ",")
                w.writerow([key, "score"])
                w.writerows([k, repr(float(s))] for k, s in zip(keys, scores))
