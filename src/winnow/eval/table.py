"""Side-by-side table of evaluated models: one row per ``.../eval/{method}/s{seed}/``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from winnow.io.atomic import write_text


def model_key(path: str | os.PathLike) -> tuple[str, int]:
    """``results/r/eval/random/s0/ppl.json`` → ``("random", 0)``."""
    p = Path(path)
    seed_dir, method_dir = p.parent.name, p.parent.parent.name
    if not seed_dir.startswith("s"):
        raise ValueError(f"{path}: expected .../{{method}}/s{{seed}}/")
    return method_dir, int(seed_dir[1:])


def summary_rows(ppl_paths, harness_paths) -> list[dict]:
    rows: dict[tuple[str, int], dict] = {}
    for path in ppl_paths:
        key = model_key(path)
        doms = json.loads(Path(path).read_text())["domains"]
        row = rows.setdefault(key, {"method": key[0], "seed": key[1]})
        for dom, stats in sorted(doms.items()):
            name = "all" if dom == "__all__" else dom
            row[f"ppl_token/{name}"] = stats["ppl_token"]
            if dom == "__all__":
                row["bits_per_byte/all"] = stats["bits_per_byte"]
    for path in harness_paths:
        key = model_key(path)
        res = json.loads(Path(path).read_text())
        row = rows.setdefault(key, {"method": key[0], "seed": key[1]})
        for task, metrics in sorted(res.items()):
            if not task.startswith("winnow_") or not isinstance(metrics, dict):
                continue  # n_samples, lm_eval_version
            for metric, value in sorted(metrics.items()):
                if isinstance(value, (int, float)) and not metric.endswith("_stderr"):
                    row[f"{task.removeprefix('winnow_')}/{metric}"] = value
    return [rows[k] for k in sorted(rows)]


def write_tsv(path: str | os.PathLike, rows: list[dict]) -> None:
    cols: list[str] = []
    for row in rows:
        cols += [c for c in row if c not in cols]
    lines = ["\t".join(cols)]
    for row in rows:
        lines.append("\t".join(_fmt(row.get(c)) for c in cols))
    write_text(path, "\n".join(lines) + "\n")


def _fmt(v) -> str:
    if v is None:
        return "NA"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
