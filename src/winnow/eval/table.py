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


def leaderboard_rows(summary: list[dict], primary: str, baseline: str = "random") -> list[dict]:
    """One row per method: mean and sample sd over seeds of every metric, ranked by ``primary``.

    Every method must have the same seeds (a bake-off compares like with like); ``wins`` counts the
    seeds where the method beats ``baseline`` on ``primary`` (same seed, so same training seed).
    """
    by_method: dict[str, dict[int, dict]] = {}
    for r in summary:
        by_method.setdefault(r["method"], {})[int(r["seed"])] = r
    seed_sets = {m: sorted(rows) for m, rows in by_method.items()}
    if len({tuple(s) for s in seed_sets.values()}) > 1:
        raise ValueError(f"bake-off methods were run on different seeds: {seed_sets}")
    metrics: list[str] = []
    for rows in by_method.values():
        for row in rows.values():
            metrics += [k for k in row if k not in ("method", "seed") and k not in metrics]
    if primary not in metrics:
        raise ValueError(f"primary metric {primary!r} is not among the evaluations: {metrics}")
    out = []
    for method, rows in by_method.items():
        row: dict = {"method": method, "n_seeds": len(rows)}
        for metric in metrics:
            vals = [float(r[metric]) for r in rows.values() if _num(r.get(metric))]
            mean = sum(vals) / len(vals) if vals else float("nan")
            var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else float("nan")
            row[metric], row[f"{metric} sd"] = mean, math.sqrt(var)
        if baseline in by_method and method != baseline:
            better = (lambda d: d < 0) if lower_is_better(primary) else (lambda d: d > 0)
            base = by_method[baseline]
            row[f"wins vs {baseline}"] = sum(
                better(float(rows[s][primary]) - float(base[s][primary]))
                for s in rows
                if s in base and _num(rows[s].get(primary)) and _num(base[s].get(primary))
            )
        out.append(row)
    sign = 1.0 if lower_is_better(primary) else -1.0
    out.sort(key=lambda r: (sign * r[primary] if _num(r[primary]) else math.inf, r["method"]))
    wins = f"wins vs {baseline}"
    first = ["method", "n_seeds", primary, f"{primary} sd", wins]
    return [
        {"rank": rank, **{k: r[k] for k in first if k in r}, **{k: v for k, v in r.items() if k not in first}}
        for rank, r in enumerate(out, start=1)
    ]


def leaderboard_html(rows: list[dict], primary: str, metrics: list[str], title: str) -> str:
    """A self-contained HTML page of the leaderboard (``mean ± sd`` cells) for the Snakemake report."""
    import html

    def cell(row, m):
        if not _num(row.get(m)):
            return "NA"
        sd = row.get(f"{m} sd")
        return f"{float(row[m]):.4g} ± {float(sd):.2g}" if _num(sd) else f"{float(row[m]):.4g}"

    extra = sorted({c for r in rows for c in r if c.startswith("wins vs ")})
    head = ["rank", "method", "seeds", *[f"{m} ({'↓' if lower_is_better(m) else '↑'})" for m in metrics], *extra]
    body = []
    for r in rows:
        cells = [str(r["rank"]), r["method"], str(r["n_seeds"])] + [cell(r, m) for m in metrics]
        cells += [str(r.get(c, "—")) for c in extra]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>{t}</title><style>"
        "body{{font-family:sans-serif;margin:1em}}table{{border-collapse:collapse}}"
        "td,th{{border:1px solid #bbb;padding:4px 8px;text-align:right}}td:nth-child(2){{text-align:left}}"
        "</style></head><body><h2>{t}</h2><p>Ranked by <b>{p}</b> (mean ± sample sd over seeds; ↓ lower is"
        " better, ↑ higher is better).</p><table id='leaderboard'><thead><tr>{h}</tr></thead><tbody>{b}"
        "</tbody></table></body></html>\n"
    ).format(
        t=html.escape(title),
        p=html.escape(primary),
        h="".join(f"<th>{html.escape(c)}</th>" for c in head),
        b="".join(body),
    )
