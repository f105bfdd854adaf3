"""``winnow report plots``: score histograms, selection overlap and composition, MATES per stage."""

from __future__ import annotations

import logging
from pathlib import Path

from winnow.cli._common import add_args, sidecars

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("plots", help="figures and tables of what each method scored and selected")
    add_args(
        p,
        """
        --examples  the corpus examples table (domains of the ids)
        --out-dir   folder the figures (PNG) and tables (TSV) are written to
        """,
    )
    p.add_argument("--selection", nargs="+", default=[], help="NAME=ids.parquet, one per selection")
    p.add_argument("--scores", nargs="*", default=[], help="NAME=scores.parquet, one per score table")
    p.add_argument("--mates-evals", nargs="*", default=[], help=".../eval/{mates|mrandom}_k{k}/s{seed}/reference.json")
    p.add_argument("--curves", nargs="*", default=[], help="NAME=trainer_state.json, NAME = {method}_s{seed}")
    p.set_defaults(func=plots)


def _pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"expected NAME=PATH, got {item!r}")
        out[name] = path
    return out


def plots(args) -> None:
    from winnow.eval.table import write_tsv
    from winnow.io.tables import EXAMPLES, IDS, SCORES, read_table
    from winnow.report import (
        composition_rows,
        curve_rows,
        mates_stage_rows,
        overlap_rows,
        plot_composition,
        plot_curves,
        plot_mates_stages,
        plot_overlap,
        plot_scores,
    )

    out = Path(args.out_dir)
    examples = read_table(args.examples, EXAMPLES)
    domain_of = dict(zip(examples["example_id"].to_pylist(), examples["domain"].to_pylist(), strict=True))
    selections = {n: read_table(p, IDS)["example_id"].to_numpy() for n, p in _pairs(args.selection).items()}
    scores = {n: read_table(p, SCORES)["score"].to_numpy() for n, p in _pairs(args.scores).items()}
    outs = []
    if scores:
        plot_scores(scores, out / "scores.png")
        outs.append(out / "scores.png")
    overlap = overlap_rows(selections)
    write_tsv(out / "overlap.tsv", overlap)
    plot_overlap(overlap, out / "overlap.png")
    comp = composition_rows(selections, domain_of)
    write_tsv(out / "composition.tsv", comp)
    plot_composition(comp, out / "composition.png")
    outs += [out / "overlap.tsv", out / "overlap.png", out / "composition.tsv", out / "composition.png"]
    if args.mates_evals:
        plot_mates_stages(mates_stage_rows(args.mates_evals), out / "mates_stages.png")
        outs.append(out / "mates_stages.png")
    if args.curves:
        plot_curves(curve_rows(_pairs(args.curves)), out / "curves.png")
        outs.append(out / "curves.png")
    inputs = [args.examples, *_pairs(args.selection).values(), *_pairs(args.scores).values(), *args.mates_evals]
    inputs += list(_pairs(args.curves).values())
    sidecars(args, "report plots", outs, inputs)
