"""Figures and tables for the Snakemake report: what each method scored and selected.

* score histograms per method (the raw scores each selection ranked);
* selection overlap: Jaccard |A ∩ B| / |A ∪ B| of the id sets of every pair of selections;
* per-domain composition of each selection (counts and shares);
* MATES: the reference loss of each stage's evaluation model, MATES arm against the random arm.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def jaccard(a, b) -> float:
    a, b = set(map(int, a)), set(map(int, b))
    return len(a & b) / len(a | b) if (a or b) else 1.0


def overlap_rows(selections: Mapping[str, Sequence[int]]) -> list[dict]:
    """One row per ordered-by-name pair of selections (and each with itself)."""
    names = sorted(selections)
    rows = []
    for i, x in enumerate(names):
        for y in names[i:]:
            sx, sy = set(map(int, selections[x])), set(map(int, selections[y]))
            rows.append(
                {"a": x, "b": y, "n_a": len(sx), "n_b": len(sy), "shared": len(sx & sy), "jaccard": jaccard(sx, sy)}
            )
    return rows


def composition_rows(selections: Mapping[str, Sequence[int]], domain_of: Mapping[int, str]) -> list[dict]:
    """Counts and shares of each domain in each selection (ids missing from ``domain_of`` raise)."""
    rows = []
    for name in sorted(selections):
        counts: dict[str, int] = {}
        for e in selections[name]:
            d = domain_of[int(e)]
            counts[d] = counts.get(d, 0) + 1
        total = sum(counts.values())
        rows += [{"selection": name, "domain": d, "n": n, "share": n / total} for d, n in sorted(counts.items())]
    return rows


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> None:
    from winnow.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def plot_scores(scores: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """One histogram per method's score table (50 bins), sorted by name."""
    plt = _plt()
    names = sorted(scores)
    cols = min(3, max(1, len(names)))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        v = np.asarray(scores[name], dtype=np.float64)
        v = v[np.isfinite(v)]
        ax.hist(v, bins=50, color="tab:blue", alpha=0.8)
        ax.set_title(f"{name} (n={v.size})", fontsize=9)
        ax.set_xlabel("score")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_overlap(rows: Sequence[Mapping], path: str | os.PathLike) -> None:
    """Heat map of pairwise Jaccard indices."""
    plt = _plt()
    names = sorted({r["a"] for r in rows} | {r["b"] for r in rows})
    m = np.eye(len(names))
    idx = {n: i for i, n in enumerate(names)}
    for r in rows:
        m[idx[r["a"]], idx[r["b"]]] = m[idx[r["b"]], idx[r["a"]]] = r["jaccard"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(names), 0.8 + 0.6 * len(names)))
    im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w" if m[i, j] < 0.6 else "k")
    fig.colorbar(im, ax=ax, label="Jaccard")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_composition(rows: Sequence[Mapping], path: str | os.PathLike) -> None:
    """Stacked horizontal bars: the share of each domain in each selection."""
    plt = _plt()
    sels = sorted({r["selection"] for r in rows})
    domains = sorted({r["domain"] for r in rows})
    share = {(r["selection"], r["domain"]): r["share"] for r in rows}
    cmap = plt.get_cmap("tab10" if len(domains) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.35 * len(sels)))
    left = np.zeros(len(sels))
    for k, d in enumerate(domains):
        w = np.array([share.get((s, d), 0.0) for s in sels])
        ax.barh(sels, w, left=left, color=cmap(k % cmap.N), label=d)
        left += w
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the selection")
    ax.legend(fontsize=7, ncol=min(len(domains), 4), loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def mates_stage_rows(evals: Sequence[str | os.PathLike]) -> list[dict]:
    """``.../eval/{mates|mrandom}_k{k}/s{seed}/reference.json`` → rows (arm, stage, seed, loss)."""
    rows = []
    for p in evals:
        p = Path(p)
        arm, _, k = p.parent.parent.name.partition("_k")
        rows.append({"arm": arm, "stage": int(k), "seed": p.parent.name, "loss": json.loads(p.read_text())["loss"]})
    return sorted(rows, key=lambda r: (r["arm"], r["stage"], r["seed"]))


def plot_mates_stages(rows: Sequence[Mapping], path: str | os.PathLike) -> None:
    """Reference loss after each stage (decayed checkpoint): one line per arm (seed mean), seeds as dots."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for arm, color in (("mrandom", "tab:gray"), ("mates", "tab:red")):
        mine = [r for r in rows if r["arm"] == arm or (arm == "mates" and r["arm"] == "mrandom" and r["stage"] == 0)]
        stages = sorted({r["stage"] for r in mine})
        means = [np.mean([r["loss"] for r in mine if r["stage"] == k]) for k in stages]
        ax.plot(stages, means, "-o", color=color, label="MATES" if arm == "mates" else "random")
        ax.scatter([r["stage"] for r in mine], [r["loss"] for r in mine], color=color, s=10, alpha=0.5)
    ax.set_xticks(sorted({r["stage"] for r in rows}))
    ax.set_xlabel("stage")
    ax.set_ylabel("reference loss (nats)")
    ax.legend()
    ax.grid(True, lw=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def curve_rows(states: Mapping[str, str | os.PathLike]) -> list[dict]:
    """``{"{method}_s{seed}": trainer_state.json}`` → rows (method, seed, step, loss, lr) of each step."""
    rows = []
    for name, p in states.items():
        method, _, seed = name.rpartition("_s")
        for step, loss, lr in json.loads(Path(p).read_text()).get("history", []):
            rows.append({"method": method, "seed": int(seed), "step": int(step), "loss": loss, "lr": lr})
    return rows


def plot_curves(rows: Sequence[Mapping], path: str | os.PathLike, window: int = 10) -> None:
    """Training loss per step: each method's seed mean, smoothed by a trailing mean of ``window`` steps."""
    plt = _plt()
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(6, 5), sharex=True, height_ratios=(3, 1))
    for method in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == method]
        steps = sorted({r["step"] for r in mine})
        mean = np.array([np.mean([r["loss"] for r in mine if r["step"] == s]) for s in steps])
        smooth = np.convolve(mean, np.ones(window) / window, mode="valid") if len(mean) >= window else mean
        ax.plot(steps[len(steps) - len(smooth) :], smooth, label=method, lw=1.2)
        ax_lr.plot(steps, [next(r["lr"] for r in mine if r["step"] == s) for s in steps], lw=1)
    ax.set_ylabel(f"train loss (nats, {window}-step mean)")
    ax.legend(fontsize=7)
    ax.grid(True, lw=0.3)
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("step")
    ax_lr.grid(True, lw=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
