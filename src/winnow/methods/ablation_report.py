"""How well merged models predict mixture models: the perplexity table, correlations and a plot.

Per evaluation domain, across mixtures: Pearson and Spearman (average ranks for ties) of the mixture
model's perplexity against the merge's, the naive mean of the components' perplexities and, where
configured, a covering macro merge; also over the whole test split (``__all__``) and pooled over
(mixture, domain) points. Eval files are found by path: ``.../ablation/eval/seed/ppl.json`` and
``.../ablation/eval/{components|mixtures|merges|macros}/{name}/ppl.json``.

See docs/methods/ablation.md.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from winnow.methods.ablation import mixture_name
from winnow.stats import pearson, spearman

KINDS = ("seed", "components", "mixtures", "merges", "macros")
METRICS = ("ppl_token", "ppl_word", "ppl_char", "bits_per_byte")
ALL = "__all__"
POOLED = {"__pooled__": None, "__pooled_partitions__": "partition", "__pooled_held_out__": "held_out"}


def model_of(path: str | os.PathLike) -> tuple[str, str]:
    """``.../ablation/eval/mixtures/kjv+pydocs/ppl.json`` → ``("mixtures", "kjv+pydocs")``."""
    parts = Path(path).parts
    if parts[-1] != "ppl.json" or "eval" not in parts:
        raise ValueError(f"{path}: expected .../eval/{{kind}}/{{name}}/ppl.json or .../eval/seed/ppl.json")
    i = len(parts) - 1 - parts[::-1].index("eval")
    rest = parts[i + 1 : -1]
    if rest == ("seed",):
        return "seed", "seed"
    if len(rest) == 2 and rest[0] in KINDS:
        return rest[0], rest[1]
    raise ValueError(f"{path}: unknown model kind {rest}")


def ppl_rows(eval_paths: Iterable[str | os.PathLike]) -> list[dict]:
    """One row per (model, evaluation domain) with every perplexity statistic of ``eval ppl``."""
    rows = []
    for path in sorted(map(str, eval_paths)):
        kind, name = model_of(path)
        data = json.loads(Path(path).read_text())
        for domain, st in sorted(data["domains"].items()):
            rows.append(
                {
                    "kind": kind,
                    "model": name,
                    "domain": domain,
                    **{m: float(st[m]) for m in METRICS},
                    "sum_logprob": float(st["sum_logprob"]),
                    "n_tokens": int(st["n_tokens"]),
                    "n_docs": int(st["n_docs"]),
                }
            )
    return rows


def points(
    rows: Sequence[Mapping],
    mixtures: Sequence[Sequence[str]],
    partitions: Sequence[str],
    metric: str = "ppl_token",
    macros: Mapping[str, Sequence[Sequence[str]]] | None = None,
) -> list[dict]:
    """One point per (mixture, evaluation domain): the mixture model's value and each proxy's.

    ``mixture_value`` (the truth), ``merged``, ``mean_components``, ``seed`` (the seed model's
    value, for reference, when it was evaluated) and, where a macro merge covers exactly the
    mixture's partitions, ``macro`` (+ ``macro_name``; the first such macro by name). A mixture
    without a mixture-model, merge or component eval is an error, never silently dropped.
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {METRICS}")
    value = {(r["kind"], r["model"], r["domain"]): float(r[metric]) for r in rows}
    domains = sorted({r["domain"] for r in rows if r["kind"] == "mixtures"})
    macro_of: dict[str, str] = {}
    for name in sorted(macros or {}):
        union = sorted({p for member in macros[name] for p in member})
        if len(union) >= 2:
            macro_of.setdefault(mixture_name(union), name)
    out = []
    for parts in mixtures:
        mix = mixture_name(parts)
        for domain in domains:
            try:
                y = value[("mixtures", mix, domain)]
                merged = value[("merges", mix, domain)]
                comps = [value[("components", p, domain)] for p in parts]
            except KeyError as err:
                raise ValueError(f"no eval for {err.args[0]}") from None
            point = {
                "mixture": mix,
                "size": len(parts),
                "domain": domain,
                "domain_kind": "all" if domain == ALL else ("partition" if domain in partitions else "held_out"),
                "in_mixture": domain in parts,
                "mixture_value": y,
                "merged": merged,
                "mean_components": float(np.mean(comps)),
            }
            if ("seed", "seed", domain) in value:
                point["seed"] = value[("seed", "seed", domain)]
            if mix in macro_of and ("macros", macro_of[mix], domain) in value:
                point["macro"] = value[("macros", macro_of[mix], domain)]
                point["macro_name"] = macro_of[mix]
            out.append(point)
    return out


def correlation_rows(pts: Sequence[Mapping], metric: str = "ppl_token") -> list[dict]:
    """Per proxy: a row per evaluation domain (and ``__all__``), then the pooled rows.

    Each row: ``n`` points (mixtures), ``pearson``, ``spearman``, and ``mean_log_ratio`` =
    mean(log(proxy / mixture)) (> 0: the proxy's perplexity is higher than the mixture model's).
    """
    proxies = [p for p in ("merged", "mean_components", "macro") if any(p in q for q in pts)]
    rows = []
    for proxy in proxies:
        groups: dict[str, list[Mapping]] = {}
        for q in pts:
            if proxy in q:
                groups.setdefault(q["domain"], []).append(q)
        for name, kind in POOLED.items():
            groups[name] = [
                q for q in pts if proxy in q and q["domain"] != ALL and (kind is None or q["domain_kind"] == kind)
            ]
        order = sorted(d for d in groups if d not in POOLED and d != ALL) + [ALL] + list(POOLED)
        for domain in order:
            qs = groups.get(domain, [])
            if not qs:
                continue
            x = np.array([q[proxy] for q in qs], dtype=np.float64)
            y = np.array([q["mixture_value"] for q in qs], dtype=np.float64)
            kinds = {q["domain_kind"] for q in qs}
            rows.append(
                {
                    "metric": metric,
                    "proxy": proxy,
                    "domain": domain,
                    "domain_kind": kinds.pop() if len(kinds) == 1 else "pooled",
                    "n": int(x.size),
                    "pearson": pearson(x, y),
                    "spearman": spearman(x, y),
                    "mean_log_ratio": float(np.mean(np.log(x / y))),
                }
            )
    return rows


def summary(rows: Sequence[Mapping]) -> dict:
    """``{proxy: {domain: {n, pearson, spearman}}}`` for the ``__all__`` and pooled rows."""
    out: dict[str, dict] = {}
    for r in rows:
        if r["domain"] == ALL or r["domain"] in POOLED:
            out.setdefault(r["proxy"], {})[r["domain"]] = {k: r[k] for k in ("n", "pearson", "spearman")}
    return out


def plot(pts: Sequence[Mapping], rows: Sequence[Mapping], path: str | os.PathLike, metric: str = "ppl_token") -> None:
    """Scatter of mixture-model perplexity against each proxy (log axes, one colour per domain)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from winnow.io.atomic import atomic_path

    proxies = [p for p in ("merged", "mean_components", "macro") if any(p in q for q in pts)]
    titles = {
        "merged": "merged model (uniform average)",
        "mean_components": "mean of components",
        "macro": "macro merge",
    }
    pooled = {r["proxy"]: r for r in rows if r["domain"] == "__pooled__"}
    domains = sorted({q["domain"] for q in pts if q["domain"] != ALL})
    cmap = plt.get_cmap("tab10" if len(domains) <= 10 else "tab20")
    legend_w = 1.6
    fig, axes = plt.subplots(1, len(proxies), figsize=(5.2 * len(proxies) + legend_w, 4.8), squeeze=False)
    for ax, proxy in zip(axes[0], proxies):
        lo, hi = math.inf, -math.inf
        for i, domain in enumerate(domains):
            qs = [q for q in pts if q["domain"] == domain and proxy in q]
            if not qs:
                continue
            x = [q[proxy] for q in qs]
            y = [q["mixture_value"] for q in qs]
            lo, hi = min(lo, *x, *y), max(hi, *x, *y)
            held = qs[0]["domain_kind"] == "held_out"
            ax.scatter(
                x,
                y,
                s=28,
                color=cmap(i % cmap.N),
                marker="^" if held else "o",
                label=f"{domain}{' (held out)' if held else ''}",
            )
        if math.isfinite(lo):
            ax.plot([lo, hi], [lo, hi], color="0.6", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # log-axis minor labels overlap on short ranges
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{metric} of the proxy: {titles[proxy]}")
        ax.set_ylabel(f"{metric} of the mixture model")
        r = pooled.get(proxy)
        if r:
            ax.set_title(
                f"{titles[proxy]}\npooled n={r['n']}: Pearson {r['pearson']:.3f}, Spearman {r['spearman']:.3f}"
            )
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - legend_w / (5.2 * len(proxies) + legend_w), 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
