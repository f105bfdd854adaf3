"""The rows convention every benchmark shares, without torch (the CPU benchmarks import it alone).

A benchmark writes ``{"bench", "env", "command", "rows": [...], "details"?}``; each row is
``{"figure", "ours", "reference", "ratio", "limit", "unit", "target", "met"}`` and
``benchmarks/run.py`` prints them all as one table.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s, H100 SXM datasheet (the H200's is the same)


def row(
    figure: str,
    ours: float,
    reference: float | None = None,
    limit: float | str | None = None,
    unit: str = "",
    target: str = "",
    met: bool | None = None,
    ratio: float | None = None,
) -> dict:
    """One table row; ``ratio`` defaults to ours / reference when both are numbers."""
    if ratio is None and isinstance(reference, (int, float)) and reference:
        ratio = float(ours) / float(reference)
    return {
        "figure": figure,
        "ours": float(ours),
        "reference": None if reference is None else float(reference),
        "ratio": None if ratio is None else float(ratio),
        "limit": limit,
        "unit": unit,
        "target": target,
        "met": met,
    }


def command() -> str:
    """This process's command line as it is typed from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])


def package_env(*names: str) -> dict:
    """Python, CPU count, machine, the date and the versions of ``names`` (None if missing)."""
    import importlib.metadata as md

    env = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "machine": platform.machine()}
    for name in names:
        try:
            env[name] = md.version(name)
        except md.PackageNotFoundError:
            env[name] = None
    env["date_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return env


def write_rows(
    path: str | os.PathLike | None, bench: str, env: dict, rows: list[dict], extra: dict | None = None
) -> dict:
    """The rows document (``extra`` under "details"); written to ``path`` unless it is None."""
    doc = {"bench": bench, "env": env, "command": command(), "rows": rows}
    if extra is not None:
        doc["details"] = extra
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    return doc


def fmt(v) -> str:
    """Numbers to 4 significant digits, None as an empty cell."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_table(rows: list[dict]) -> None:
    """figure | ours | reference | ratio | limit — the one table every benchmark prints."""
    cols = ["figure", "ours", "reference", "ratio", "limit"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |")
