"""``winnow scorer ...``: fit a data scorer to labels, score the pool one block of shards at a time, merge."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from winnow.cli._common import (
    add_args,
    add_batch_size,
    add_device,
    add_runtime,
    add_store,
    add_threads,
    config_help,
    json_arg,
    resolve_device,
    sidecars,
)
from winnow.io.atomic import read_json, write_json

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("fit", help="fit the scorer to a labels table (model selection by val Spearman)")
    add_store(p)
    add_args(
        p,
        """
        --tokenizer     the corpus tokenizer.json
        --labels        parquet with example_id and the label column
        --label-column  the column of --labels to fit: grad_gamma or gamma (PDS), delta (MATES oracle), score (LESS)
        --out           model.safetensors (its folder gets the rest)
        --report        JSON: model selection by val Spearman, fit curve
        """,
    )
    p.add_argument(
        "--scorer-config",
        type=json_arg,
        required=True,
        help=config_help("pds.scorer or mates.scorer", " (encoder sizes or pretrained, fit settings)"),
    )
    add_device(p)
    add_threads(p)
    p.set_defaults(func=fit)

    p = sub.add_parser("score", help="score the ids that live in one block of token shards (resumable)")
    add_args(
        p,
        """
        --scorer     the scorer's model.safetensors
        --block:int  the block of shards (manifest's layout) to score
        --tokenizer  the corpus tokenizer.json
        --ids        IDS parquet; only the ids of this block are scored
        --state      prefix of the resume state files
        --out        SCORES parquet written: the scores of this block's ids
        """,
    )
    add_store(p)
    add_batch_size(p, 64)
    add_runtime(p, "the scorer block's trust_remote_code")
    p.set_defaults(func=score)

    p = sub.add_parser("merge", help="per-block scores → one scores table")
    add_args(
        p,
        """
        --parts+  per-block SCORES parquet files (scorer score)
        --out     SCORES parquet written: all blocks, sorted by example id
        """,
    )
    add_threads(p)
    p.set_defaults(func=merge)


def scorer_config(cfg: dict):
    """The workflow's flat scorer block → ScorerConfig (backbone sizes grouped, max_len as context)."""
    from winnow.scorer import ScorerConfig

    cfg = dict(cfg)
    arch = {k: cfg.pop(k) for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size") if k in cfg}
    cfg.pop("tokenizer", None)
    if arch and not cfg.get("pretrained"):
        arch["max_position_embeddings"] = cfg.get("max_len", 128)
        cfg["backbone"] = arch
    return ScorerConfig.from_dict(cfg)


def _encoder(args_cfg: dict, store, ids, corpus_tok, report_path=None):
    """With a scorer tokenizer of its own: retokenize the ids for it (keyed by example_id) and
    check a seeded sample round-trips; otherwise the scorer reads the corpus tokens directly."""
    from winnow.data.tokenizer import load
    from winnow.scorer import dict_encoder, retokenize, roundtrip_check

    if not args_cfg.get("tokenizer"):
        return None, corpus_tok, None
    dst = load(args_cfg["tokenizer"], trust_remote_code=bool(args_cfg.get("trust_remote_code", False)))
    max_len = args_cfg.get("max_len", 128)
    check = roundtrip_check(store, ids, corpus_tok, dst, n=64, seed=0)
    if not check["passed"]:
        raise ValueError(f"scorer tokenizer round trip failed: {check['n_failed']} of {check['n_checked']} samples")
    mapping = retokenize(store, ids, corpus_tok, dst, max_len)
    return dict_encoder(mapping, max_len), dst, {k: v for k, v in check.items() if k != "samples"}


def fit(args) -> None:
    import torch

    from winnow.data.tokenizer import load
    from winnow.io.tables import read_table
    from winnow.scorer import fit_scorer
    from winnow.train.batches import open_store

    torch.set_num_threads(args.threads)
    store, _ = open_store(args.examples, args.manifest)
    labels = read_table(args.labels)
    ids = labels["example_id"].to_numpy()
    y = labels[args.label_column].to_numpy().astype(np.float64)
    cfg = scorer_config(args.scorer_config)
    corpus_tok = load(Path(args.tokenizer).parent)
    encoder, tok, roundtrip = _encoder(args.scorer_config, store, ids, corpus_tok)
    report = fit_scorer(
        store, ids, y, cfg, Path(args.out).parent, tokenizer=tok, encoder=encoder, device=resolve_device(args.device)
    )
    report = {**report, "label_column": args.label_column, "roundtrip": roundtrip}
    write_json(args.report, report)
    log.info("scorer fit: %s", {k: report.get(k) for k in ("val_spearman", "val_pearson", "val_mse", "best_step")})
    sidecars(args, "scorer fit", [args.out, args.report], [args.examples, args.labels, args.tokenizer], seed=cfg.seed)


def score(args) -> None:
    import torch

    from winnow.data.tokenizer import load
    from winnow.io.shards import block_shards
    from winnow.io.tables import IDS, read_table
    from winnow.scorer import score_ids
    from winnow.train.batches import open_store

    torch.set_num_threads(args.threads)
    manifest = read_json(args.manifest)
    layout = manifest["layout"]
    shards = block_shards(args.block, layout["shards_per_block"], layout["num_shards"])
    store, _ = open_store(args.examples, args.manifest, only_shards=shards)
    ids = read_table(args.ids, IDS)["example_id"].to_numpy()
    ids = np.sort(ids[np.isin(ids >> 32, np.asarray(shards))])  # example_id = shard · 2**32 + index
    meta = read_json(Path(args.scorer).parent / "scorer.json")  # never decides trust_remote_code
    scorer_cfg = meta.get("config", {})
    tok_dir = Path(args.scorer).parent / "tokenizer"
    encoder, tag = None, ""
    if meta.get("inputs") == "encoder":
        # The scorer has a tokenizer of its own: retokenize this block's ids the same way as at fit.
        from winnow.scorer import dict_encoder, retokenize

        max_len = scorer_cfg.get("max_len", 128)
        mapping = retokenize(
            store,
            ids,
            load(Path(args.tokenizer).parent),
            load(tok_dir, trust_remote_code=args.trust_remote_code),
            max_len,
        )
        encoder, tag = dict_encoder(mapping, max_len), f"retokenized:{tok_dir}"
    result = score_ids(
        Path(args.scorer).parent,
        store,
        ids,
        args.batch_size,
        args.out,
        device=resolve_device(args.device),
        state_path=args.state,
        encoder=encoder,
        tag=tag,
        trust_remote_code=args.trust_remote_code,
    )
    log.info("scored %d ids of block %d: %s", ids.size, args.block, {k: v for k, v in result.items() if k != "ids"})
    sidecars(args, "scorer score", [args.out], [args.scorer, args.examples, args.manifest, args.ids])


def merge(args) -> None:
    import pyarrow as pa

    from winnow.io.tables import SCORES, read_table, write_table

    table = pa.concat_tables([read_table(p, SCORES).select(["example_id", "score"]) for p in args.parts])
    table = table.sort_by("example_id")
    ids = table["example_id"].to_numpy()
    if np.unique(ids).size != ids.size:
        raise ValueError("an example id is scored in two parts")
    write_table(args.out, table, SCORES)
    sidecars(args, "scorer merge", [args.out], args.parts)
