"""``winnow select ...``: random scores (the baseline selector) and scores → ids."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from winnow.cli._common import add_threads, sidecars
from winnow.io.atomic import write_json

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("random-scores", help="equal scores for a pool: Gumbel-top-k on them is uniform sampling")
    p.add_argument("--pool", required=True, help="id list (IDS parquet) to score")
    p.add_argument("--out", required=True)
    add_threads(p)
    p.set_defaults(func=random_scores)

    p = sub.add_parser("select", help="scores table → selected ids (top-k or Gumbel-top-k)")
    p.add_argument("--scores", required=True)
    p.add_argument("--direction", choices=("higher", "lower"), required=True)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--ratio", type=float)
    g.add_argument("--k", type=int)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--key", default=None, help="config key of the ratio / k, named when it keeps 0 examples")
    p.add_argument("--out", required=True)
    p.add_argument("--manifest", required=True)
    add_threads(p)
    p.set_defaults(func=select)


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
