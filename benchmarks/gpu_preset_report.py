"""The tables of a GPU preset run (benchmarks/gpu_preset.sh) for benchmarks/RESULTS.md.

    python benchmarks/gpu_preset_report.py RESULTS_DIR      # e.g. the unpacked results/gpu

Reads what the run's progress.tgz brings back: Snakemake's own logs (*.snakemake.log: when each
job started and finished), the one-second nvidia-smi trace (gpu_util.csv), the trainers' summaries
(trainer_state.json) and the comparison tables. Prints Markdown:
- per rule: jobs, summed job wall time, the span from its first start to its last end, and the
  GPU's mean utilisation while a job of that rule ran (jobs of other rules may share those seconds:
  the column says how busy the GPU was, not what that rule alone used);
- per training rule: start-up (imports, data, model), first step (compile) and steady tokens/s;
- the run's wall time and whole-run GPU busy fraction; the comparison tables verbatim.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
START = re.compile(r"^(?:local)?rule (\w+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
DONE = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$")


def jobs_of_log(path: Path) -> list[tuple[str, float, float]]:
    """(rule, start, end) in epoch seconds of every finished job of one Snakemake log."""
    started: dict[str, tuple[str, float]] = {}
    done = []
    stamp = rule = None
    for line in path.read_text(errors="replace").splitlines():
        if m := STAMP.match(line):
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y").timestamp()
        elif m := START.match(line):
            rule = m.group(1)
        elif (m := JOBID.match(line)) and rule and stamp is not None:
            started[m.group(1)] = (rule, stamp)
            rule = None
        elif (m := DONE.match(line)) and m.group(1) in started and stamp is not None:
            r, t0 = started.pop(m.group(1))
            done.append((r, t0, stamp))
    return done


def gpu_trace(path: Path) -> list[tuple[float, float]]:
    """(epoch seconds, utilisation %) of every nvidia-smi sample."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            t = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            out.append((t, float(parts[1].rstrip(" %"))))
        except (ValueError, IndexError):
            continue
    return out


def busy_while(trace, intervals) -> float | None:
    """Mean utilisation % over the samples that fall in any of ``intervals``."""
    vals = [u for t, u in trace if any(a <= t <= b for a, b in intervals)]
    return statistics.fmean(vals) if vals else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="the run's results folder (results/gpu)")
    args = ap.parse_args(argv)
    root = args.results
    jobs = [j for log in sorted(root.glob("*.snakemake.log")) for j in jobs_of_log(log)]
    trace = gpu_trace(root / "gpu_util.csv") if (root / "gpu_util.csv").exists() else []
    if not jobs:
        print("no finished jobs in the Snakemake logs", file=sys.stderr)
        return 1
    by_rule = defaultdict(list)
    for rule, a, b in jobs:
        by_rule[rule].append((a, b))
    t0, t1 = min(a for _, a, _ in jobs), max(b for _, _, b in jobs)
    print(f"{len(jobs)} jobs finished; first start to last end {t1 - t0:.0f} s")
    whole = busy_while(trace, [(t0, t1)])
    if whole is not None:
        print(f"GPU utilisation over the run: {whole:.0f}% (nvidia-smi, 1 s samples)")
    print("\n| rule | jobs | job wall, summed (s) | span (s) | GPU busy while it ran (%) |")
    print("|---|---:|---:|---:|---:|")
    for rule, iv in sorted(by_rule.items(), key=lambda kv: min(a for a, _ in kv[1])):
        busy = busy_while(trace, iv)
        span = max(b for _, b in iv) - min(a for a, _ in iv)
        print(
            f"| {rule} | {len(iv)} | {sum(b - a for a, b in iv):.0f} | {span:.0f} |"
            f" {'' if busy is None else f'{busy:.0f}'} |"
        )
    rows = []
    for state in sorted(root.rglob("trainer_state.json")):
        s = json.loads(state.read_text()).get("summary") or {}
        if s.get("startup_s") is not None:
            rows.append((str(state.parent.relative_to(root)), s))
    if rows:
        print("\n| model | steps | wall (s) | start-up (s) | first step (s) | steady tokens/s | peak MiB |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, s in rows:
            fs = s.get("first_step_s")
            steady = s.get("steady_tokens_per_s")
            print(
                f"| {name} | {s.get('steps')} | {s.get('wall_s', 0):.0f} | {s['startup_s']:.1f} |"
                f" {'' if fs is None else f'{fs:.1f}'} | {'' if steady is None else f'{steady:,.0f}'} |"
                f" {s.get('peak_gpu_mem_mb', 0):.0f} |"
            )
    for table in [root / "bakeoff" / "leaderboard.tsv", *sorted((root / "eval").glob("compare-*.tsv"))]:
        if table.exists():
            print(f"\n{table.relative_to(root)}:\n```\n{table.read_text().rstrip()}\n```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
