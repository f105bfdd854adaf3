"""Tables over evaluated models: one row per ``.../eval/{method}/s{seed}/``, and each method
against a baseline (random at the same size) seed by seed, with a paired bootstrap interval over
evaluation items (``winnow.stats``).

Metric columns: ``target/{subset}`` (mean loss, lower is better), ``ppl_token/{domain}`` and
``bits_per_byte/all`` (lower is better), ``{task}/{metric}`` from lm-eval (acc: higher is better).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from winnow.io.atomic import write_text
from winnow.stats import ItemMetric, mean_metric, paired_bootstrap, verdict

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
        elif name == "harness-tasks.json":  # eval.harness: lm-eval's tasks and the user's
            for task, metrics in sorted(data["tasks"].items()):
                for metric, value in sorted(metrics.items()):
                    if isinstance(value, (int, float)) and not metric.endswith("_stderr"):
                        row[f"{task}/{metric}"] = value
        elif name.startswith("target-"):
            row[f"target/{name[len('target-') : -len('.json')]}"] = data["loss"]
        elif name == "reference.json":  # MATES's reference task (held-out last words)
            row["reference/loss"] = data["loss"]
        else:
            raise ValueError(f"{path}: unknown eval file")
    return [rows[k] for k in sorted(rows)]


def item_metrics(path: str | os.PathLike) -> dict[str, ItemMetric]:
    """The per-item form of every metric :func:`summary_rows` reads from one eval file.

    Names match the summary's columns. Files written before per-item output existed give ``{}``
    (their comparisons carry no interval).
    """
    data = json.loads(Path(path).read_text())
    name = Path(path).name
    items = data.get("items")
    if not items:
        return {}
    out: dict[str, ItemMetric] = {}
    if name == "ppl.json":
        nll = -np.asarray(items["sum_logprob"], dtype=np.float64)
        tokens = np.asarray(items["n_tokens"], dtype=np.float64)
        domains = np.asarray(items["domain"], dtype=object)
        ids = tuple(map(str, items["doc_id"]))
        for dom in sorted(set(items["domain"])):
            keep = domains == dom
            out[f"ppl_token/{dom}"] = ItemMetric(tuple(np.asarray(ids)[keep]), nll[keep], tokens[keep], "exp")
        out["ppl_token/all"] = ItemMetric(ids, nll, tokens, "exp")
        nbytes = np.asarray(items["n_bytes"], dtype=np.float64) * math.log(2)
        out["bits_per_byte/all"] = ItemMetric(ids, nll, nbytes, "identity")
    elif name == "harness.json":
        for task, per_task in sorted(items.items()):
            if not task.startswith("winnow_"):
                continue
            label = task.removeprefix("winnow_")
            for metric, values in per_task["values"].items():
                out[f"{label}/{metric}"] = _harness_metric(metric, per_task["ids"], values)
    elif name == "harness-tasks.json":
        for task, per_task in sorted(items.items()):
            for metric, values in per_task["values"].items():
                out[f"{task}/{metric}"] = _harness_metric(metric, per_task["ids"], values)
    elif name.startswith("target-") or name == "reference.json":
        key = "reference/loss" if name == "reference.json" else f"target/{name[len('target-') : -len('.json')]}"
        out[key] = mean_metric(items["example_id"], items["loss"])
    return out


def _harness_metric(metric: str, ids: list[str], values: list) -> ItemMetric:
    """lm-eval's per-item values as an :class:`ItemMetric` with lm-eval's own aggregation."""
    if values and isinstance(values[0], list):  # [loglik, count]: weighted perplexity, bits per byte
        pairs = np.asarray(values, dtype=np.float64)
        if metric == "bits_per_byte":
            return ItemMetric(tuple(ids), -pairs[:, 0], pairs[:, 1] * math.log(2), "identity")
        return ItemMetric(tuple(ids), -pairs[:, 0], pairs[:, 1], "exp")
    if metric == "perplexity":  # per item: the log-likelihood; the task: exp(−mean)
        return mean_metric(ids, -np.asarray(values, dtype=np.float64), "exp")
    return mean_metric(ids, values)


def evals_and_items(eval_paths) -> tuple[list[dict], dict[tuple[str, int], dict[str, ItemMetric]]]:
    """:func:`summary_rows` and, per (method, seed), the per-item metrics of its eval files."""
    items: dict[tuple[str, int], dict[str, ItemMetric]] = {}
    for path in sorted(map(str, eval_paths)):
        items.setdefault(model_key(path), {}).update(item_metrics(path))
    return summary_rows(eval_paths), items


def interval_columns(
    items: dict | None, method: str, baseline: str, seeds: list[int], metric: str
) -> dict[str, object]:
    """``diff`` (bootstrap point), ``ci_low``, ``ci_high``, ``verdict``, ``n_items`` of one metric.

    NA where some model of these seeds has no per-item values of the metric.
    """
    na = {"ci_low": None, "ci_high": None, "verdict": "NA", "n_items": None}
    if not items:
        return na
    try:
        ms = [items[(method, s)][metric] for s in seeds]
        bs = [items[(baseline, s)][metric] for s in seeds]
    except KeyError:
        return na
    shared = set(ms[0].ids).intersection(*(m.ids for m in [*ms[1:], *bs]))
    if len(shared) < 2:  # one item (e.g. a domain with one test document) has no interval
        return {**na, "n_items": len(shared)}
    ci = paired_bootstrap(ms, bs)
    return {
        "ci_low": ci.low,
        "ci_high": ci.high,
        "verdict": verdict(ci.low, ci.high, lower_is_better(metric)),
        "n_items": ci.n_items,
    }


def less_eval_metrics(ev: dict) -> tuple[dict, dict[str, ItemMetric]]:
    """A LESS arm's ``eval.json`` → (``{metric: value}``, ``{metric: ItemMetric}``).

    Metrics: ``target/loss`` (all test-split target items), ``target/{subtask}`` and lm-eval's
    ``define_choice/{acc,acc_norm}``. Items are empty for files without per-item output.
    """
    values = {"target/loss": ev["target_loss"]}
    values.update({f"target/{k}": v for k, v in ev["target_loss_by_subtask"].items()})
    harness = ev.get("harness", {})
    for metric, value in harness.get("winnow_define_choice", {}).items():
        if not metric.endswith("_stderr"):
            values[f"define_choice/{metric}"] = value
    items: dict[str, ItemMetric] = {}
    if "items" in ev:
        it = ev["items"]
        items["target/loss"] = mean_metric(it["example_id"], it["loss"])
        sub = np.asarray(it["subtask"], dtype=object)
        for name in sorted(set(it["subtask"])):
            keep = sub == name
            items[f"target/{name}"] = mean_metric(np.asarray(it["example_id"])[keep], np.asarray(it["loss"])[keep])
    for task, per_task in harness.get("items", {}).items():
        label = task.removeprefix("winnow_")
        for metric, vals in per_task["values"].items():
            items[f"{label}/{metric}"] = _harness_metric(metric, per_task["ids"], vals)
    return values, items


def compare_arms(evals: dict[tuple[str, int], tuple[dict, dict]], baseline: str = "random") -> list[dict]:
    """LESS's arms over seeds: the baseline's means, then each arm against it with intervals.

    ``evals``: ``{(arm, seed): (values, items)}`` from :func:`less_eval_metrics`. Rows as
    :func:`compare_rows`, with ``arm`` for ``method``; the baseline's rows carry only its mean.
    """
    summary = [{"method": arm, "seed": seed, **values} for (arm, seed), (values, _) in sorted(evals.items())]
    items = {key: its for key, (_, its) in evals.items()}
    base = [r for r in summary if r["method"] == baseline]
    rows = []
    for metric in [k for k in (base[0] if base else {}) if k not in ("method", "seed")]:
        vals = [float(r[metric]) for r in base if _num(r.get(metric))]
        rows.append(
            {
                "method": baseline,
                "baseline": baseline,
                "metric": metric,
                "direction": "lower" if lower_is_better(metric) else "higher",
                "n_seeds": len(vals),
                "method_mean": sum(vals) / len(vals) if vals else None,
                "baseline_mean": sum(vals) / len(vals) if vals else None,
            }
        )
    order = sorted({r["method"] for r in summary} - {baseline}, key=lambda a: (a != "less", a))
    compared = compare_rows(summary, baseline, items)
    rows += sorted(compared, key=lambda r: order.index(r["method"]))
    return [{"arm": r.pop("method"), **r} for r in rows]


def lower_is_better(metric: str) -> bool:
    return any(tag in metric for tag in LOWER_IS_BETTER)


def compare_rows(summary: list[dict], baseline: str = "random", items: dict | None = None) -> list[dict]:
    """For each method ≠ baseline and metric: per-seed values, the mean difference, its interval.

    ``diff`` = mean over seeds of (method − baseline) (same seed = same training seed and steps);
    ``ci_low``/``ci_high``: the 95% paired bootstrap interval over evaluation items of that mean
    (``items`` from :func:`evals_and_items`; NA without them); ``verdict``: better / worse / no
    detectable difference, from the interval and the metric's direction. ``wins`` counts seeds
    where the method is better. Rows for seeds that the baseline lacks are skipped, never compared
    across seeds.
    """
    base = {int(r["seed"]): r for r in summary if r["method"] == baseline}
    out = []
    methods = sorted({r["method"] for r in summary} - {baseline})
    for method in methods:
        rows = {int(r["seed"]): r for r in summary if r["method"] == method}
        seeds = sorted(set(rows) & set(base))
        metrics = [k for k in rows[seeds[0]] if k not in ("method", "seed")] if seeds else []
        for metric in metrics:
            paired_seeds = [s for s in seeds if _num(rows[s].get(metric)) and _num(base[s].get(metric))]
            pairs = [(float(rows[s][metric]), float(base[s][metric])) for s in paired_seeds]
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
                    "diff": mean,
                    **interval_columns(items, method, baseline, paired_seeds, metric),
                    "diff_sd": sd,
                    "wins": sum(better(d) for d in diffs),
                    "per_seed_diff": ";".join(f"s{s}:{d:.6g}" for s, d in zip(paired_seeds, diffs)),
                }
            )
    return out


def compare_stages(
    summary: list[dict], method: str = "mates", baseline: str = "mrandom", items: dict | None = None
) -> list[dict]:
    """Staged methods: ``{method}_k{k}`` against ``{baseline}_k{k}`` at every stage k, seed by seed."""
    stages = sorted({int(r["method"].rsplit("_k", 1)[1]) for r in summary if r["method"].startswith(f"{method}_k")})
    out = []
    for k in stages:
        rows = [r for r in summary if r["method"] in (f"{method}_k{k}", f"{baseline}_k{k}")]
        out += [{"stage": k, **row} for row in compare_rows(rows, f"{baseline}_k{k}", items)]
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


def leaderboard_rows(
    summary: list[dict], primary: str, baseline: str = "random", items: dict | None = None
) -> list[dict]:
    """One row per method: mean and sample sd over seeds of every metric, ranked by ``primary``.

    Every method must have the same seeds (a bake-off compares like with like); ``wins`` counts the
    seeds where the method beats ``baseline`` on ``primary`` (same seed, so same training seed).
    ``diff``, ``ci_low``, ``ci_high``, ``verdict``: the method − baseline difference of ``primary``
    (mean over seeds) and its paired bootstrap interval over evaluation items (see
    :func:`compare_rows`); NA on the baseline's own row.
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
            paired = [
                s for s in sorted(rows) if s in base and _num(rows[s].get(primary)) and _num(base[s].get(primary))
            ]
            diffs = [float(rows[s][primary]) - float(base[s][primary]) for s in paired]
            row[f"wins vs {baseline}"] = sum(better(d) for d in diffs)
            row["diff"] = sum(diffs) / len(diffs) if diffs else None
            row.update(interval_columns(items, method, baseline, paired, primary))
        out.append(row)
    sign = 1.0 if lower_is_better(primary) else -1.0
    out.sort(key=lambda r: (sign * r[primary] if _num(r[primary]) else math.inf, r["method"]))
    wins = f"wins vs {baseline}"
    first = ["method", "n_seeds", primary, f"{primary} sd", "diff", "ci_low", "ci_high", "verdict", wins]
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

    def interval(row):
        if not (_num(row.get("diff")) and _num(row.get("ci_low")) and _num(row.get("ci_high"))):
            return "—"
        return f"{float(row['diff']):+.3g} [{float(row['ci_low']):+.3g}, {float(row['ci_high']):+.3g}]"

    extra = sorted({c for r in rows for c in r if c.startswith("wins vs ")})
    base = extra[0].removeprefix("wins vs ") if extra else "baseline"
    head = ["rank", "method", "seeds", *[f"{m} ({'↓' if lower_is_better(m) else '↑'})" for m in metrics]]
    head += [f"{primary} − {base} [95% CI]", "verdict", *extra]
    body = []
    for r in rows:
        cells = [str(r["rank"]), r["method"], str(r["n_seeds"])] + [cell(r, m) for m in metrics]
        cells += [interval(r), str(r.get("verdict") or "—")]
        cells += [str(r.get(c, "—")) for c in extra]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>{t}</title><style>"
        "body{{font-family:sans-serif;margin:1em}}table{{border-collapse:collapse}}"
        "td,th{{border:1px solid #bbb;padding:4px 8px;text-align:right}}td:nth-child(2){{text-align:left}}"
        "</style></head><body><h2>{t}</h2><p>Ranked by <b>{p}</b> (mean ± sample sd over seeds; ↓ lower is"
        " better, ↑ higher is better). The interval is the 95% paired bootstrap interval over evaluation"
        " items of the mean difference from the baseline; the verdict says whether it excludes 0.</p><table id='leaderboard'><thead><tr>{h}</tr></thead><tbody>{b}"
        "</tbody></table></body></html>\n"
    ).format(
        t=html.escape(title),
        p=html.escape(primary),
        h="".join(f"<th>{html.escape(c)}</th>" for c in head),
        b="".join(body),
    )
