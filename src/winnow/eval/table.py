"""Tables over evaluated models: one row per ``.../eval/{method}/s{seed}/``, and each method
against a baseline (random at the same size) seed by seed.

Metric columns: ``target/{subset}`` (mean loss, lower is better), ``ppl_token/{domain}`` and
``bits_per_byte/all`` (lower is better), ``{task}/{metric}`` from lm-eval (acc: higher is better).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from winnow.io.atomic import write_text

LOWER_IS_BETTER = ("target/", "reference/", "ppl_token/", "bits_per_byte/", "/perplexity")


def model_key(path: str | os.PathLike) -> tuple[str, int]:
    """``results/r/eval/random/s0/ppl.json`` → ``("random", 0)``."""
    p = Path(path)
    seed_dir, method_dir = p.parent.name, p.parent.parent.name
    if not seed_dir.startswith("s"):
        raise ValueError(f"{path}: expected .../{{method}}/s{{seed}}/")
    return method_dir, int(seed_dir[1:])


def summary_rows(eval_paths) -> list[dict]:
    rows: dict[tuple[str, int], dict] = {}
    for path in sorted(map(str, eval_paths)):
        key = model_key(path)
        row = rows.setdefault(key, {"method": key[0], "seed": key[1]})
        data = json.loads(Path(path).read_text())
        name = Path(path).name
        if name == "ppl.json":
            for dom, stats in sorted(data["domains"].items()):
                label = "all" if dom == "__all__" else dom
                row[f"ppl_token/{label}"] = stats["ppl_token"]
                if dom == "__all__":
                    row["bits_per_byte/all"] = stats["bits_per_byte"]
        elif name == "harness.json":
            for task, metrics in sorted(data.items()):
                if not task.startswith("winnow_") or not isinstance(metrics, dict):
                    continue  # n_samples, lm_eval_version, dropped_too_long
                for metric, value in sorted(metrics.items()):
                    if isinstance(value, (int, float)) and not metric.endswith("_stderr"):
                        row[f"{task.removeprefix('winnow_')}/{metric}"] = value
        elif name.startswith("target-"):
            row[f"target/{name[len('target-') : -len('.json')]}"] = data["loss"]
        elif name == "reference.json":  # MATES's reference task (held-out last words)
            row["reference/loss"] = data["loss"]
        else:
            raise ValueError(f"{path}: unknown eval file")
    return [rows[k] for k in sorted(rows)]


def lower_is_better(metric: str) -> bool:
    return any(tag in metric for tag in LOWER_IS_BETTER)


def compare_rows(summary: list[dict], baseline: str = "random") -> list[dict]:
    """For each method ≠ baseline and metric: per-seed values, the mean difference, and wins.

    ``diff = method − baseline`` per seed (same seed = same training seed and steps); ``wins``
    counts seeds where the method is better in the metric's direction. Rows for seeds that the
    baseline lacks are skipped, never compared across seeds.
    """
    base = {int(r["seed"]): r for r in summary if r["method"] == baseline}
    out = []
    methods = sorted({r["method"] for r in summary} - {baseline})
    for method in methods:
        rows = {int(r["seed"]): r for r in summary if r["method"] == method}
        seeds = sorted(set(rows) & set(base))
        metrics = [k for k in rows[seeds[0]] if k not in ("method", "seed")] if seeds else []
        for metric in metrics:
            pairs = [
                (float(rows[s][metric]), float(base[s][metric]))
                for s in seeds
                if _num(rows[s].get(metric)) and _num(base[s].get(metric))
            ]
            if not pairs:
                continue
            diffs = [m - b for m, b in pairs]
            better = (lambda d: d < 0) if lower_is_better(metric) else (lambda d: d > 0)
            mean = sum(diffs) / len(diffs)
            sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) if len(diffs) > 1 else float("nan")
            out.append(
                {
                    "method": method,
                    "baseline": baseline,
                    "metric": metric,
                    "direction": "lower" if lower_is_better(metric) else "higher",
                    "n_seeds": len(pairs),
                    "method_mean": sum(m for m, _ in pairs) / len(pairs),
                    "baseline_mean": sum(b for _, b in pairs) / len(pairs),
                    "diff_mean": mean,
                    "diff_sd": sd,
                    "wins": sum(better(d) for d in diffs),
                    "per_seed_diff": ";".join(f"s{s}:{d:.6g}" for s, d in zip(seeds, diffs)),
                }
            )
    return out


def compare_stages(summary: list[dict], method: str = "mates", baseline: str = "mrandom") -> list[dict]:
    """Staged methods: ``{method}_k{k}`` against ``{baseline}_k{k}`` at every stage k, seed by seed."""
    stages = sorted(
        {int(r["method"].rsplit("_k", 1)[1]) for r in summary if r["method"].startswith(f"{method}_k")}
    )
    out = []
    for k in stages:
        rows = [r for r in summary if r["method"] in (f"{method}_k{k}", f"{baseline}_k{k}")]
        out += [{"stage": k, **row} for row in compare_rows(rows, f"{baseline}_k{k}")]
    return out


def _num(v) -> bool:
    try:
        return v is not None and v != "NA" and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def write_tsv(path: str | os.PathLike, rows: list[dict]) -> None:
    cols: list[str] = []
    for row in rows:
        cols += [c for c in row if c not in cols]
    lines = ["\t".join(cols)] + ["\t".join(_fmt(row.get(c)) for c in cols) for row in rows]
    write_text(path, "\n".join(lines) + "\n")


def read_tsv(path: str | os.PathLike) -> list[dict]:
    lines = Path(path).read_text().splitlines()
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]


def _fmt(v) -> str:
    if v is None:
        return "NA"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
