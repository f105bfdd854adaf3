"""``winnow select ...``: random scores (the baseline selector), external scores, and scores → ids."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from winnow.cli._common import add_args, add_threads, sidecars
from winnow.io.atomic import write_json

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("random-scores", help="equal scores for a pool: Gumbel-top-k on them is uniform sampling")
    add_args(
        p,
        """
        --pool  id list (IDS parquet) to score
        --out   SCORES parquet written: every pool id with score 0
        """,
    )
    add_threads(p)
    p.set_defaults(func=random_scores)

    p = sub.add_parser("select", help="scores table → selected ids (top-k or Gumbel-top-k)")
    p.add_argument("--scores", required=True, help="SCORES parquet (example_id, score)")
    p.add_argument(
        "--direction", choices=("higher", "lower"), required=True, help="which scores are better (select.<method>)"
    )
    g = p.add_mutually_exclusive_group(required=True)
    add_args(
        g,
        """
        --ratio:float?  fraction (0-1] of the scored ids to keep (select.<method>.ratio)
        --k:int?        number of ids to keep (select.<method>.k)
        """,
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="Gumbel-top-k temperature (≥ 0; 0: deterministic top-k) (select.<method>.temperature); default 0",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the Gumbel noise (the run's seed); default 0")
    add_args(
        p,
        """
        --key?      config key of the ratio / k, named when it keeps 0 examples
        --out       IDS parquet written: the selected ids
        --manifest  JSON written: counts and the selection parameters
        """,
    )
    add_threads(p)
    p.set_defaults(func=select)
    _add_external(sub)


def _add_external(sub) -> None:
    """external-scores and heuristic-scores: score files made outside the workflow."""
    # External scores (docs/external_scores.md): a user's score file → the shared scores table.
    p = sub.add_parser("external-scores", help="a score file made elsewhere → validated scores of the pool")
    add_args(
        p,
        """
        --scores-file  the user's file (jsonl, parquet, tsv, csv)
        --examples     the token store's examples table
        --pool         id list (IDS parquet) of the candidate pool
        --out          scores table (example_id, score)
        --rejects      one row per unusable record, with its reason
        --report       JSON: counts per reason, coverage of the pool
        """,
    )
    p.add_argument(
        "--key",
        choices=("doc_id", "example_id"),
        default="doc_id",
        help="what a row scores: a document (all its pool examples) or one example (external.<name>.key)",
    )
    p.add_argument("--score-column", default="score", help="field holding the score (external.<name>.score_column)")
    p.add_argument(
        "--format",
        default="auto",
        choices=("auto", "jsonl", "parquet", "tsv", "csv"),
        help="format of the score file: auto (from the suffix), jsonl, parquet, tsv, csv; default auto",
    )
    p.add_argument(
        "--missing",
        default="error",
        choices=("error", "lowest", "drop"),
        help="pool examples without a score: fail, rank below every scored one, or never select"
        " (external.<name>.missing); default error",
    )
    p.add_argument(
        "--direction",
        choices=("higher", "lower"),
        default="higher",
        help="which scores are better; with --missing lowest, where the worst end is; default higher",
    )
    p.add_argument("--where", default="external", help="config key named in errors")
    add_threads(p)
    p.set_defaults(func=external_scores)

    p = sub.add_parser(
        "heuristic-scores",
        help="DEMO: a doc_id score file from a length × type-token-ratio heuristic (not a recommended method)",
    )
    add_args(
        p,
        """
        --docs  the ingested documents (data/docs.parquet)
        --out   the score file; its format from the suffix
        """,
    )
    p.add_argument(
        "--format",
        default="auto",
        choices=("auto", "jsonl", "parquet", "tsv", "csv"),
        help="format of the score file: auto (from the suffix), jsonl, parquet, tsv, csv; default auto",
    )
    add_threads(p)
    p.set_defaults(func=heuristic_scores)


def random_scores(args) -> None:
    """Score 0 for every pool id: with temperature > 0 the select step's Gumbel keys are pure
    noise, so each seed draws a uniform sample without replacement (the random baseline)."""
    from winnow.io.tables import IDS, SCORES, read_table, write_table

    ids = np.sort(read_table(args.pool, IDS)["example_id"].to_numpy())
    scores = np.zeros(ids.size, dtype=np.float32)
    write_table(args.out, pa.table({"example_id": ids, "score": scores}), SCORES)
    sidecars(args, "select random-scores", [args.out], [args.pool], extra={"units": "constant 0"})


def select(args) -> None:
    from winnow.io.tables import IDS, SCORES, read_table, write_table
    from winnow.provenance import file_sha256
    from winnow.select import SelectParams
    from winnow.select import select as run

    params = SelectParams(args.direction, args.ratio, args.k, args.temperature, args.seed)
    table = read_table(args.scores, SCORES)
    ids, keys = run(table["example_id"].to_numpy(), table["score"].to_numpy(), params, key=args.key)
    out = pa.table({"example_id": ids, "rank": np.arange(ids.size, dtype=np.int64)})
    write_table(args.out, out, IDS)
    manifest = {
        **params.as_dict(),
        "noise": "gumbel" if params.temperature > 0 else "none",
        "pool_size": table.num_rows,
        "selected": int(ids.size),
        "scores_sha256": file_sha256(args.scores),
        "key_range": [float(keys.min()), float(keys.max())] if keys.size else None,
    }
    write_json(args.manifest, manifest)
    log.info("selected %d of %d (%s)", ids.size, table.num_rows, params.as_dict())
    sidecars(args, "select select", [args.out, args.manifest], [args.scores], seed=args.seed)


def external_scores(args) -> None:
    import pyarrow.parquet as pq

    from winnow.io.tables import IDS, REJECTS, SCORES, read_table, write_table
    from winnow.methods.external import align, read_records

    records, rejects = read_records(args.scores_file, args.format, args.key, args.score_column)
    pool = read_table(args.pool, IDS)["example_id"].to_numpy()
    examples = pq.read_table(args.examples, columns=["example_id", "doc_id"])
    aligned = align(
        records,
        rejects,
        pool,
        examples["example_id"].to_numpy(),
        examples["doc_id"].to_numpy(zero_copy_only=False),
        args.key,
        args.missing,
        args.direction,
        args.where,
    )
    write_table(args.out, pa.table({"example_id": aligned.example_ids, "score": aligned.scores}), SCORES)
    rows = aligned.rejects
    reject_table = pa.table(
        {
            "source": [str(args.scores_file)] * len(rows),
            "record": [r.index for r in rows],
            "reason": [r.reason for r in rows],
            "detail": [r.detail for r in rows],
            "raw": [r.raw for r in rows],
        },
        schema=REJECTS,
    )
    write_table(args.rejects, reject_table, REJECTS)
    write_json(args.report, aligned.report)
    log.info("external scores: %s", aligned.report)
    sidecars(
        args,
        "select external-scores",
        [args.out, args.rejects, args.report],
        [args.scores_file, args.examples, args.pool],
    )


def heuristic_scores(args) -> None:
    from winnow.io.tables import read_table
    from winnow.methods.external import heuristic_score, write_scores_file

    docs = read_table(args.docs).select(["doc_id", "text"]).to_pydict()
    scores = [heuristic_score(t) for t in docs["text"]]
    write_scores_file(args.out, docs["doc_id"], scores, "doc_id", args.format)
    log.info("wrote %d demo heuristic scores to %s", len(scores), args.out)
