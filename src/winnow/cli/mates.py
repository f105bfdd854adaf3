"""``winnow mates ...``: stage pools, the reference set, the exact oracle, per-stage comparison."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from winnow.cli._common import add_args, add_runtime, add_store, add_threads, add_tokenizer, resolve_device, sidecars
from winnow.io.atomic import read_json, write_json
from winnow.params import add_params

log = logging.getLogger(__name__)

# Reference examples live in their own token shard, numbered far from the corpus shards so their
# example_ids (shard · 2**32 + index) never collide with corpus ids in a combined ExampleStore.
REFERENCE_SHARD = 1_000_000


def register(sub) -> None:
    p = sub.add_parser("pools", help="one of the disjoint pools: the probe pool or a stage's pool")
    add_args(
        p,
        """
        --pool  IDS parquet of the whole pool the disjoint pools are cut from
        --part  probe, or a stage number k
        --out   IDS parquet
        """,
    )
    add_params(p, "mates pools")
    add_threads(p)
    p.set_defaults(func=pools)

    p = sub.add_parser("reference", help="LAMBADA-style last-word reference examples (loss on the word)")
    add_args(
        p,
        """
        --docs      DOCS parquet (data/docs.parquet)
        --split     split of the docs: val (the oracle's reference) or test (evals)
        --n:int     last-word items (mates.reference.n, or n_eval for the test split)
        --tokens    token file written (the reference store's one shard)
        --examples  EXAMPLES parquet written (the reference store)
        --ids       IDS parquet written: the reference items
        --manifest  manifest.json written (the reference store)
        """,
    )
    add_tokenizer(p)
    add_params(p, "mates reference")
    add_threads(p)
    p.set_defaults(func=reference)

    p = sub.add_parser("oracle", help="exact one-step AdamW oracle influence of probe candidates")
    p.add_argument("--ckpt", required=True, help="model.safetensors of the stage's final checkpoint")
    add_store(p)
    # Without --reference-examples/--reference-tokens the reference ids live in the corpus store
    # (the bake-off's MATES arm: the PDS target); with them, in a store of their own (last words).
    add_args(
        p,
        """
        --reference-examples?  EXAMPLES parquet of the reference store (mates reference)
        --reference-tokens?    token file of the reference store (mates reference)
        --reference-ids        IDS parquet: the reference items whose loss is the target
        --probe                probe pool (IDS parquet)
        --seed:int             seed of the candidate draw (per stage and run seed)
        --out                  ORACLE parquet written: per candidate, the reference loss change after one AdamW step on it
        --report               JSON written: counts, reference loss, delta statistics, timings
        """,
    )
    add_params(p, "mates oracle")
    add_runtime(p)
    p.set_defaults(func=oracle)

    p = sub.add_parser("compare", help="MATES vs random, stage by stage and seed by seed")
    add_args(
        p,
        """
        --evals+  eval files of mates_k{k} and mrandom_k{k} models
        --out     TSV written: MATES minus random per stage and seed
        """,
    )
    add_threads(p)
    p.set_defaults(func=compare)


def pools(args) -> None:
    """One seeded permutation of the pool cut as [probe | stage 0 | stage 1 | ...]: the probe pool
    and stage k's pool do not depend on how many stages there are, so adding a stage leaves the
    existing pools (and everything built on them) as they are."""
    from winnow.data.subsets import ids_table, partition_ids
    from winnow.io.tables import IDS, read_table, write_table

    cfg = args.params
    ids = read_table(args.pool, IDS)["example_id"].to_numpy()
    if args.part == "probe":
        part = partition_ids(ids, [cfg.probe_size], cfg.seed)[0]
    else:
        k = int(args.part)
        if k < 0:
            raise ValueError(f"--part: a stage number ≥ 0 or 'probe', got {args.part!r}")
        part = partition_ids(ids, [cfg.probe_size] + [cfg.stage_size] * (k + 1), cfg.seed)[-1]
    write_table(args.out, ids_table(part), IDS)
    sidecars(args, "mates pools", [args.out], [args.pool], seed=cfg.seed)


def reference(args) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    from winnow.data.tasks import build_lastword
    from winnow.data.tokenize import ID_STRIDE, tokenize_shard
    from winnow.data.tokenizer import load
    from winnow.io.shards import FLAT_LAYOUT, layout_entry, token_dtype, write_shard
    from winnow.io.tables import DOCS, EXAMPLES, IDS, read_table, write_table

    docs = read_table(args.docs, DOCS)
    rows = [r for r in docs.to_pylist() if r["split"] == args.split and r["prompt"] is None]
    cfg = args.params
    items = build_lastword(rows, args.n, cfg.seed)
    if not items:
        raise ValueError(f"no last-word items could be built from the {args.split} split")
    # Each item is a prompt/response document: the context is the prompt, the word the response,
    # so the tokenizer puts the loss on the word's tokens only (as MATES's LAMBADA reference).
    ref_docs = pa.table(
        {
            "doc_id": [f"reference/{i}" for i in range(len(items))],
            "text": [it["context"] + it["target"] for it in items],
            "domain": [it.get("domain", "reference") for it in items],
            "source": [it.get("doc_id", "") for it in items],
            "split": [args.split] * len(items),
            "prompt": [it["context"] for it in items],
        },
        schema=DOCS,
    )
    if Path(args.tokens) != Path(args.manifest).parent / FLAT_LAYOUT.format(shard=REFERENCE_SHARD):
        raise ValueError(f"--tokens must be {FLAT_LAYOUT.format(shard=REFERENCE_SHARD)} next to the manifest")
    tok = load(Path(args.tokenizer).parent)
    tokens, examples, stats = tokenize_shard(ref_docs, tok, 0, 1, cfg.seq_len)
    offset = REFERENCE_SHARD * ID_STRIDE
    examples = examples.set_column(0, "example_id", pc.add(examples["example_id"], offset))
    examples = examples.set_column(2, "shard", pa.array([REFERENCE_SHARD] * examples.num_rows, pa.int32()))
    write_shard(args.tokens, tokens, token_dtype(len(tok)))
    write_table(args.examples, examples, EXAMPLES)
    from winnow.data.subsets import ids_table

    write_table(args.ids, ids_table(examples["example_id"].to_numpy()), IDS)
    manifest = {
        "examples": examples.num_rows,
        "seq_len": cfg.seq_len,
        "dtype": token_dtype(len(tok)).str,
        "vocab_size": len(tok),
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "shard": REFERENCE_SHARD,
        "shards": {REFERENCE_SHARD: examples.num_rows},
        "layout": layout_entry(FLAT_LAYOUT, 1, 1),
        "split": args.split,
        # The corpus documents the items were cut from: the val (oracle) and test (evaluation)
        # references must share none (tests/workflow/test_wf_mates.py checks).
        "source_docs": sorted({it.get("doc_id", "") for it in items}),
        "stats": stats,
        "definition": "LAMBADA-style last word: loss on the target word's tokens given the passage",
    }
    write_json(args.manifest, manifest)
    sidecars(
        args,
        "mates reference",
        [args.tokens, args.examples, args.ids, args.manifest],
        [args.docs, args.tokenizer],
        seed=cfg.seed,
    )


def oracle(args) -> None:
    import torch

    from winnow.io.tables import IDS, read_table, write_table
    from winnow.methods.mates import ORACLE, OracleConfig, load_state, probe
    from winnow.models.build import load_pretrained
    from winnow.train.batches import open_store

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if (args.reference_examples is None) != (args.reference_tokens is None):
        raise ValueError("--reference-examples and --reference-tokens go together")
    extra = None
    if args.reference_examples is not None:
        extra = (args.reference_examples, {REFERENCE_SHARD: args.reference_tokens})
    store, manifest = open_store(args.examples, args.manifest, extra)
    probe_pool = np.sort(read_table(args.probe, IDS)["example_id"].to_numpy())
    n_probe = args.params.n_probe
    if n_probe > probe_pool.size:
        raise ValueError(f"n_probe {n_probe} > probe pool {probe_pool.size}")
    candidates = probe_pool[np.random.default_rng(args.seed).permutation(probe_pool.size)[:n_probe]]
    ref_ids = read_table(args.reference_ids, IDS)["example_id"].to_numpy()
    ckpt_dir = Path(args.ckpt).parent
    model = load_pretrained(ckpt_dir, trust_remote_code=args.trust_remote_code).to(device)
    trainer_state = read_json(ckpt_dir / "trainer_state.json")
    cfg = OracleConfig.from_trainer_state(trainer_state, **args.params.oracle)
    state = load_state(ckpt_dir, model=model, device=device, **args.params.oracle)
    table, result = probe(model, state, store, candidates, ref_ids, manifest["seq_len"], manifest["pad_token_id"], cfg)
    write_table(args.out, table, ORACLE)
    report = {
        "n_probe": int(len(candidates)),
        "n_reference": int(len(ref_ids)),
        "ref_loss_before": result.ref_loss_before,
        "delta": {
            "mean": float(np.mean(result.delta)),
            "std": float(np.std(result.delta)),
            "min": float(np.min(result.delta)),
            "max": float(np.max(result.delta)),
        },
        "method": result.method,
        "lr": cfg.lr,
        "timings": result.timings,
        "candidates_per_s": len(candidates)
        / max(sum(v for v in result.timings.values() if isinstance(v, float)), 1e-9),
        "definition": "delta = reference loss after one AdamW step on the candidate − before (lower is better)",
    }
    write_json(args.report, report)
    log.info(
        "oracle: %d candidates, ref loss %.4f, delta mean %.2e std %.2e",
        len(candidates),
        result.ref_loss_before,
        report["delta"]["mean"],
        report["delta"]["std"],
    )
    sidecars(
        args,
        "mates oracle",
        [args.out, args.report],
        [args.ckpt, args.probe, args.reference_ids, *([args.reference_examples] if args.reference_examples else [])],
        seed=args.seed,
    )


def compare(args) -> None:
    from winnow.eval.table import compare_stages, evals_and_items, write_tsv

    summary, items = evals_and_items(args.evals)
    write_tsv(args.out, compare_stages(summary, items=items))
    sidecars(args, "mates compare", [args.out], args.evals)
