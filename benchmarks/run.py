"""Run every benchmark and print one table: figure | ours | reference | ratio | limit | met.

    python benchmarks/run.py --quick --cpu      # every benchmark's CPU smoke mode (tiny models), ~2 min
    python benchmarks/run.py --gpu              # the GPU benchmarks at full size (on a GPU machine)
    python benchmarks/run.py --cpu              # the CPU-only benchmarks at full size
    python benchmarks/run.py --only train,pds --gpu --out /tmp/res

Each benchmark is a script ``benchmarks/bench_<name>.py`` run as a subprocess with
``--json <out>/<name>.json`` (``<name>_quick.json`` with ``--quick``); it writes
``{"bench", "env", "command", "rows": [{"figure", "ours", "reference", "ratio", "limit", "unit",
"target", "met"}]}`` and this script prints the rows. Scripts that are not there are skipped
(listed at the end); a script that fails is reported and makes the exit status 1.
``--args NAME="..."`` passes extra arguments to one benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _rows import fmt  # noqa: E402

# name, needs a GPU for its full-size run, its smoke-mode flag (None: the script has none)
BENCHES = [
    ("train", True, "--quick"),
    ("scorer", True, "--quick"),
    ("less", True, "--quick"),
    ("mates", True, "--quick"),
    ("pds", True, "--quick"),
    ("score_pool", True, "--quick"),
    ("tokenize", False, "--quick"),
    ("dag", False, "--quick"),
]


def plan(names: list[str] | None, quick: bool, cpu: bool, gpu: bool) -> list[tuple[str, list[str]]]:
    """``[(name, extra args)]`` to run: GPU benches need --gpu or their smoke mode (--quick)."""
    both = not cpu and not gpu
    out = []
    for name, needs_gpu, quick_flag in BENCHES:
        if names and name not in names:
            continue
        if needs_gpu:
            if quick and (cpu or both):
                out.append((name, [quick_flag]))
            elif gpu or (both and not quick):
                out.append((name, []))
        elif cpu or both:
            out.append((name, [quick_flag] if quick else []))
    return out


def table(docs: list[dict]) -> str:
    cols = ["bench", "figure", "ours", "reference", "ratio", "limit", "unit", "met"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for d in docs:
        for r in d.get("rows", []):
            cells = [d["bench"]] + [fmt(r.get(c)) for c in cols[1:]]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="each benchmark's smoke mode (tiny models, CPU)")
    ap.add_argument("--cpu", action="store_true", help="the CPU parts only")
    ap.add_argument("--gpu", action="store_true", help="the GPU parts only (full size)")
    ap.add_argument("--only", default=None, help="comma list of names: " + ",".join(n for n, _, _ in BENCHES))
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for the JSON files")
    ap.add_argument("--args", action="append", default=[], help='NAME="extra args" for one benchmark')
    ap.add_argument("--timeout", type=float, default=None, help="seconds per benchmark")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else None
    extra = {}
    for a in args.args:
        k, _, v = a.partition("=")
        extra[k] = shlex.split(v)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    docs, failed, missing = [], [], []
    for name, flags in plan(names, args.quick, args.cpu, args.gpu):
        script = HERE / f"bench_{name}.py"
        if not script.exists():
            missing.append(name)
            continue
        path = out / (f"{name}_quick.json" if args.quick else f"{name}.json")
        cmd = [sys.executable, str(script), *flags, *extra.get(name, []), "--json", str(path)]
        print(f"== {name}: {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, timeout=args.timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        wall = time.perf_counter() - t0
        if rc != 0 or not path.exists():
            failed.append(f"{name} (exit {rc})")
            continue
        doc = json.loads(path.read_text())
        doc["wall_s"] = wall
        docs.append(doc)
    print()
    print(table(docs))
    for d in docs:
        e = d.get("env", {})
        print(f"- {d['bench']}: {e.get('device')} torch {e.get('torch')}, {d.get('command')}")
    if missing:
        print("not present: " + ", ".join(missing))
    if failed:
        print("FAILED: " + ", ".join(failed))
    bad = [
        f"{d['bench']}: {r['figure']}"
        for d in docs
        for r in d["rows"]
        if not (isinstance(r.get("ours"), (int, float)) and math.isfinite(r["ours"]))
    ]
    if bad:
        print("non-finite: " + "; ".join(bad))
    return 1 if failed or bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
