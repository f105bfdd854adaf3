"""``winnow ablation ...``: partition id lists, equal-share mixtures, merges, and the correlation report."""

from __future__ import annotations

import logging
from pathlib import Path

from winnow.cli._common import add_args, add_threads, sidecars
from winnow.io.atomic import write_json
from winnow.params import add_params

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("partition", help="the ids of one partition (a value of a docs/examples column)")
    add_args(
        p,
        """
        --examples  EXAMPLES parquet (tokens/examples.parquet)
        --docs      docs.parquet (for a column the examples table lacks)
        --value     the partition: rows whose column equals this
        --out       IDS parquet
        --report    JSON: examples, docs and tokens per split
        """,
    )
    add_params(p, "ablation partition")
    p.add_argument("--splits", nargs="+", default=["train"], help="splits whose ids are written")
    add_threads(p)
    p.set_defaults(func=partition)

    p = sub.add_parser("mix", help="equal shares of several id lists (small ones repeated)")
    add_args(
        p,
        """
        --parts+         IDS parquet files, one per partition
        --per-part:int?  entries per partition (default: the largest)
        --out            IDS parquet written: the mixture
        """,
    )
    add_params(p, "ablation mix")
    add_threads(p)
    p.set_defaults(func=mix)

    p = sub.add_parser("merge", help="uniform parameter average of model folders")
    add_args(
        p,
        """
        --models+  model.safetensors files in HF model folders
        --out      model.safetensors of the merged folder
        --members  JSON: members and what was averaged or copied
        """,
    )
    add_threads(p)
    p.set_defaults(func=merge)

    p = sub.add_parser("correlate", help="merged vs mixture perplexity: table, JSON and a plot")
    add_args(
        p,
        """
        --evals+     .../ablation/eval/**/ppl.json
        --spec:json  JSON {"partitions", "mixtures", "macros", "metric"}: the resolved `ablation` block of the workflow config (ablation.partitions, mixtures, macro_merges, metric)
        --table      TSV: one row per (proxy, domain)
        --json       JSON written: the correlations and their settings
        --points     TSV: one row per (mixture, domain)
        --ppl        parquet: every model × domain
        --plot       PNG scatter
        """,
    )
    add_threads(p)
    p.set_defaults(func=correlate)


def partition(args) -> None:
    from collections import Counter

    import numpy as np
    import pyarrow.parquet as pq

    from winnow.io.tables import EXAMPLES, IDS, read_table, write_table
    from winnow.methods.ablation import partition_mask

    column = args.params.column
    examples = read_table(args.examples, EXAMPLES)
    if column in examples.column_names:
        values = examples[column].to_pylist()
    else:
        docs = pq.read_table(args.docs, columns=["doc_id", column])
        by_doc = dict(zip(docs["doc_id"].to_pylist(), docs[column].to_pylist()))
        values = [by_doc.get(d) for d in examples["doc_id"].to_pylist()]
    mask = partition_mask(values, args.value)
    splits = np.asarray(examples["split"].to_pylist(), dtype=object)
    chosen = mask & np.isin(splits, args.splits)
    ids = np.sort(examples["example_id"].to_numpy()[chosen])
    if ids.size == 0:
        raise ValueError(f"partition {args.value!r}: no examples with {column} == {args.value!r} in {args.splits}")
    lengths = examples["length"].to_numpy()
    doc_ids = np.asarray(examples["doc_id"].to_pylist(), dtype=object)
    report = {
        "column": column,
        "value": args.value,
        "splits_written": args.splits,
        "examples": dict(sorted(Counter(splits[mask].tolist()).items())),
        "docs": {s: len(set(doc_ids[mask & (splits == s)].tolist())) for s in sorted(set(splits[mask].tolist()))},
        "tokens": {s: int(lengths[mask & (splits == s)].sum()) for s in sorted(set(splits[mask].tolist()))},
        "ids": int(ids.size),
    }
    write_table(args.out, _ids_table(ids), IDS)
    write_json(args.report, report)
    log.info("partition %s=%s: %s", column, args.value, report)
    sidecars(args, "ablation partition", [args.out, args.report], [args.examples, args.docs])


def mix(args) -> None:
    from winnow.io.tables import IDS, read_table, write_table
    from winnow.methods.ablation import equal_shares

    lists = [read_table(p, IDS)["example_id"].to_numpy() for p in args.parts]
    seed = args.params.seed
    ids, counts = equal_shares(lists, seed, args.per_part)
    write_table(args.out, _ids_table(ids), IDS)
    sizes = [int(x.size) for x in lists]
    log.info("mixture of %d partitions: sizes %s → %s entries each (%d in all)", len(lists), sizes, counts[0], ids.size)
    sidecars(args, "ablation mix", [args.out], args.parts, seed=seed, extra={"sizes": sizes, "entries": counts})


def merge(args) -> None:
    from winnow.methods.merge import merge_folders

    out_dir = Path(args.out).parent
    report = merge_folders([Path(m).parent for m in args.models], out_dir)
    write_json(args.members, report)
    log.info(
        "merged %d models: %d tensors averaged, %d copied", report["n"], len(report["averaged"]), len(report["copied"])
    )
    sidecars(args, "ablation merge", [args.out, out_dir / "config.json", args.members], args.models)


def correlate(args) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from winnow.eval.table import write_tsv
    from winnow.io.atomic import atomic_path
    from winnow.methods.ablation_report import correlation_rows, plot, points, ppl_rows, summary

    spec = args.spec
    metric = spec.get("metric", "ppl_token")
    rows = ppl_rows(args.evals)
    pts = points(rows, spec["mixtures"], spec["partitions"], metric, spec.get("macros"))
    corr = correlation_rows(pts, metric)
    with atomic_path(args.ppl) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp, compression="zstd")
    write_tsv(args.points, pts)
    write_tsv(args.table, corr)
    held_out = sorted({p["domain"] for p in pts if p["domain_kind"] == "held_out"})
    write_json(
        args.json,
        {
            "metric": metric,
            "partitions": spec["partitions"],
            "mixtures": ["+".join(m) for m in spec["mixtures"]],
            "held_out_domains": held_out,
            "macros": spec.get("macros") or {},
            "summary": summary(corr),
            "rows": corr,
        },
    )
    plot(pts, corr, args.plot, metric)
    for r in corr:
        if r["domain"] in ("__all__", "__pooled__"):
            log.info(
                "%s %s: n=%d pearson %.3f spearman %.3f", r["proxy"], r["domain"], r["n"], r["pearson"], r["spearman"]
            )
    outs = [args.table, args.json, args.points, args.ppl, args.plot]
    sidecars(args, "ablation correlate", outs, args.evals)


def _ids_table(ids):
    """An IDS table (``rank`` = position: the order a trainer may consume them)."""
    import numpy as np
    import pyarrow as pa

    ids = np.asarray(ids, dtype=np.int64)
    return pa.table({"example_id": ids, "rank": np.arange(ids.size, dtype=np.int64)})
