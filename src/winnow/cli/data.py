"""``winnow data ...``: ingest, tokenizer, tokenize, merge-examples, sample-subset, eval-tasks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from winnow.cli._common import SCHEMA, add_args, add_threads, add_tokenizer, json_arg, sidecars
from winnow.io.atomic import write_json
from winnow.params import add_params

log = logging.getLogger(__name__)


def register(sub) -> None:
    _add_ingest(sub)
    _add_tokenizer(sub)
    _add_tokenize(sub)
    _add_merge_examples(sub)
    _add_sample_subset(sub)
    _add_contract(sub)
    _add_eval_tasks(sub)


def _add_ingest(sub) -> None:
    p = sub.add_parser("ingest", help="raw records → docs + rejects + manifest")
    add_args(
        p,
        """
        --inputs+          raw corpus files (corpus.inputs): JSONL, parquet, ...
        --docs             DOCS parquet written: the accepted documents with their split
        --rejects          REJECTS parquet written: unusable records and why
        --manifest         ingest.json written: counts per input, split and domain
        --failed-rejects?  where the rejects also go when no document is accepted (a place the workflow keeps after a failed job, which loses its outputs)
        """,
    )
    add_params(p, "data ingest")
    p.add_argument(
        "--input-options",
        type=json_arg,
        default={},
        help='JSON {"<path>": {"split": "target", "domain": "lima"}}: the split and/or domain forced on an'
        " input's records (the object entries of corpus.inputs)",
    )
    add_threads(p)
    p.set_defaults(func=ingest)


def _add_tokenizer(sub) -> None:
    p = sub.add_parser("tokenizer", help="train a byte-level BPE on the train docs, or copy a local one")
    add_args(
        p,
        """
        --docs    DOCS parquet; the BPE is trained on its train split
        --local?  a local HF tokenizer folder to use instead (tokenizer.path); its own Python code runs only with trust_remote_code in --params
        --out     output tokenizer.json (its folder holds the HF files)
        """,
    )
    add_params(p, "data tokenizer")
    add_threads(p)
    p.set_defaults(func=tokenizer)


def _add_tokenize(sub) -> None:
    p = sub.add_parser("tokenize", help="one block of token shards + their examples, in one folder")
    add_args(
        p,
        """
        --docs         DOCS parquet (data/docs.parquet)
        --block:int    index of the block of shards to write (0-based)
        --out          the block's folder: tokens-{shard}.bin, examples-{shard}.parquet
        """,
    )
    add_tokenizer(p)
    add_params(p, "data tokenize")
    add_threads(p)
    p.set_defaults(func=tokenize)


def _add_merge_examples(sub) -> None:
    p = sub.add_parser("merge-examples", help="per-shard examples of all blocks → examples.parquet + manifest")
    add_args(
        p,
        """
        --blocks+      the block folders written by `data tokenize`
        --out          EXAMPLES parquet written: every example of every shard
        --manifest     manifest.json written: seq_len, dtype, ids, shard layout
        """,
    )
    add_params(p, "data merge-examples")
    add_tokenizer(p)
    add_threads(p)
    p.set_defaults(func=merge_examples)


def _add_sample_subset(sub) -> None:
    p = sub.add_parser("sample-subset", help="a seeded id list from the examples table")
    p.add_argument("--examples", required=True, help="EXAMPLES parquet (tokens/examples.parquet)")
    p.add_argument("--splits", nargs="*", default=None, help="keep examples of these splits; default: all")
    # --domains a b, or --domains=a --domains=b (the workflow's form: a domain may start with '-')
    p.add_argument(
        "--domains",
        nargs="*",
        action="extend",
        default=None,
        help="keep examples of these domains (repeatable: --domains=a --domains=b); default: all",
    )
    p.add_argument("--exclude", nargs="*", default=[], help="id lists whose ids are excluded")
    g = p.add_mutually_exclusive_group(required=True)
    add_args(
        g,
        """
        --n:int?           number of ids to draw (subsets.<name>.n)
        --fraction:float?  fraction (0-1] of the eligible ids to draw (subsets.<name>.fraction)
        """,
    )
    p.add_argument("--key", default="subset", help="config key of the size (n or fraction), named in errors")
    add_args(
        p,
        """
        --seed:int  seed of the draw (subsets.<name>.seed)
        --out       IDS parquet written
        """,
    )
    add_threads(p)
    p.set_defaults(func=sample_subset)


def _add_contract(sub) -> None:
    p = sub.add_parser("contract", help="check the config's data requests against ingest/tokenize counts")
    add_args(
        p,
        """
        --ingest    data/ingest.json
        --manifest  tokens/manifest.json
        --out       contract.json written: what was checked and the counts
        """,
    )
    p.add_argument(
        "--config",
        required=True,
        help="the workflow config's `subsets`, `methods`, `eval.split` and `ablation` (column, partitions,"
        f" seed_mix) as one JSON object (winnow.data.contract.config_part); keys in {SCHEMA}",
    )
    add_threads(p)
    p.set_defaults(func=contract)


def _add_eval_tasks(sub) -> None:
    p = sub.add_parser("eval-tasks", help="last-word and multiple-choice task data from held-out docs")
    add_args(
        p,
        """
        --docs      DOCS parquet (data/docs.parquet)
        --lastword  last-word task JSONL written
        --choice    multiple-choice task JSONL written
        """,
    )
    add_params(p, "data eval-tasks")
    add_threads(p)
    p.set_defaults(func=eval_tasks)


def ingest(args) -> None:
    from winnow.data.ingest import EmptyCorpusError, IngestOptions
    from winnow.data.ingest import ingest as run
    from winnow.io.tables import DOCS, REJECTS, write_table

    opts = IngestOptions(**args.params.as_dict(), per_input=args.input_options)
    try:
        res = run(args.inputs, opts)
    except EmptyCorpusError as err:
        # Nothing to train on: fail here, not steps later, and leave the rejects to look at.
        kept = [p for p in (args.rejects, args.failed_rejects) if p]
        for path in kept:
            write_table(path, err.result.rejects, REJECTS)
        write_json(args.manifest, err.result.manifest)
        raise EmptyCorpusError(f"{err}\nrejects written to {', '.join(kept)}", err.result) from None
    if args.failed_rejects and Path(args.failed_rejects).exists():
        Path(args.failed_rejects).unlink()  # a failed attempt's leftovers: this one succeeded
    write_table(args.docs, res.docs, DOCS)
    write_table(args.rejects, res.rejects, REJECTS)
    write_json(args.manifest, res.manifest)
    log.info(
        "records %d = accepted %d + rejected %d; reasons %s",
        res.manifest["records"],
        res.manifest["accepted"],
        res.manifest["rejected"],
        res.manifest["reasons"],
    )
    sidecars(args, "data ingest", [args.docs, args.rejects, args.manifest], args.inputs, seed=args.params.split_seed)


def tokenizer(args) -> None:
    from winnow.data import tokenizer as tk
    from winnow.io.tables import DOCS, read_table

    cfg = args.params
    out_dir = Path(args.out).parent
    if args.local:
        tk.copy_local(args.local, out_dir, trust_remote_code=cfg.trust_remote_code)
        inputs = [args.local]
    else:
        docs = read_table(args.docs, DOCS)
        train = [t for t, s in zip(docs["text"].to_pylist(), docs["split"].to_pylist()) if s == "train"]
        budget, texts = cfg.max_train_chars, []
        for t in train:  # docs order is deterministic, so is the prefix we train on
            if budget <= 0:
                break
            texts.append(t)
            budget -= len(t)
        log.info("training BPE (vocab %d) on %d train docs, %d chars", cfg.vocab_size, len(texts), sum(map(len, texts)))
        tk.train_bpe(texts, cfg.vocab_size, out_dir, cfg.min_frequency)
        inputs = [args.docs]
    if not Path(args.out).exists():
        raise FileNotFoundError(f"{args.out} was not written by the tokenizer")
    sidecars(args, "data tokenizer", [args.out], inputs)


def tokenize(args) -> None:
    from winnow.data.tokenize import shard_of, tokenize_shard
    from winnow.data.tokenizer import load
    from winnow.io.shards import block_shards, token_dtype, write_shard
    from winnow.io.tables import DOCS, EXAMPLES, read_table, write_table
    from winnow.provenance import inputs_sha256

    cfg = args.params
    shards = block_shards(args.block, cfg.shards_per_block, cfg.num_shards)
    tok = load(Path(args.tokenizer).parent)
    docs = read_table(args.docs, DOCS)
    # One pass assigns every doc its shard; each shard then tokenizes only its own rows.
    doc_shard = np.fromiter((shard_of(d, cfg.num_shards) for d in docs["doc_id"].to_pylist()), np.int64, docs.num_rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(len(tok))
    hashes = inputs_sha256([args.docs, args.tokenizer])  # once for the block's 2 × shards artifacts
    for shard in shards:
        rows = docs.take(np.flatnonzero(doc_shard == shard))
        tokens, examples, stats = tokenize_shard(rows, tok, shard, cfg.num_shards, cfg.seq_len)
        paths = [out / f"tokens-{shard}.bin", out / f"examples-{shard}.parquet"]
        write_shard(paths[0], tokens, dtype)
        write_table(paths[1], examples, EXAMPLES)
        log.info("shard %d: %s", shard, stats)
        extra = {"stats": stats, "dtype": dtype.str}
        sidecars(args, "data tokenize", paths, [args.docs, args.tokenizer], extra=extra, hashes=hashes)


def merge_examples(args) -> None:
    from collections import Counter

    import pyarrow as pa

    from winnow.data.tokenizer import load
    from winnow.io.shards import BLOCK_LAYOUT, block_shards, layout_entry, num_blocks, token_dtype
    from winnow.io.tables import EXAMPLES, read_table, write_table
    from winnow.provenance import file_sha256

    cfg = args.params
    blocks = {int(Path(b).name.removeprefix("block-")): Path(b) for b in args.blocks}
    if sorted(blocks) != list(range(num_blocks(cfg.num_shards, cfg.shards_per_block))):
        raise ValueError(f"--blocks must name blocks 0..{num_blocks(cfg.num_shards, cfg.shards_per_block) - 1}")
    paths = [
        blocks[b] / f"examples-{s}.parquet"
        for b in sorted(blocks)
        for s in block_shards(b, cfg.shards_per_block, cfg.num_shards)
    ]
    tables = [read_table(p, EXAMPLES) for p in paths]
    merged = pa.concat_tables(tables).sort_by("example_id")
    ids = merged["example_id"].to_numpy()
    if np.unique(ids).size != ids.size:
        raise ValueError("duplicate example ids across shards")
    write_table(args.out, merged, EXAMPLES)
    tok = load(Path(args.tokenizer).parent)
    length = merged["length"].to_numpy()
    manifest = {
        "examples": merged.num_rows,
        "tokens": int(length.sum()),
        "seq_len": cfg.seq_len,
        "dtype": token_dtype(len(tok)).str,
        "vocab_size": len(tok),
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "tokenizer_sha256": file_sha256(args.tokenizer),
        "chunking": "per document: tokens + eos, cut every seq_len tokens; pieces < 2 tokens dropped",
        "shards": {int(t["shard"][0].as_py()): t.num_rows for t in tables if t.num_rows},
        "layout": layout_entry(BLOCK_LAYOUT, cfg.shards_per_block, cfg.num_shards),
        "splits": dict(sorted(Counter(merged["split"].to_pylist()).items())),
        "domains": dict(sorted(Counter(merged["domain"].to_pylist()).items())),
        # examples per split and domain: what the data contract checks subset sizes against
        "split_domains": _split_domains(merged["split"].to_pylist(), merged["domain"].to_pylist()),
    }
    write_json(args.manifest, manifest)
    sidecars(args, "data merge-examples", [args.out, args.manifest], [*paths, args.tokenizer])


def _split_domains(splits, domains) -> dict:
    from collections import Counter

    pairs = Counter(zip(splits, domains))
    return {
        s: {d: pairs[(s, d)] for d in sorted({d for x, d in pairs if x == s})} for s in sorted({s for s, _ in pairs})
    }


def sample_subset(args) -> None:
    from winnow.data.subsets import draw_subset, filter_examples, ids_table
    from winnow.io.tables import EXAMPLES, IDS, read_table, write_table

    examples = read_table(args.examples, EXAMPLES)
    exclude = (
        np.concatenate([read_table(p, IDS)["example_id"].to_numpy() for p in args.exclude]) if args.exclude else None
    )
    pool = filter_examples(examples, args.splits, args.domains, exclude)
    ids = draw_subset(pool, args.seed, n=args.n, fraction=args.fraction, key=args.key)
    write_table(args.out, ids_table(ids), IDS)
    log.info("sampled %d of %d matching examples", ids.size, pool.size)
    sidecars(
        args,
        "data sample-subset",
        [args.out],
        [args.examples, *args.exclude],
        seed=args.seed,
        extra={"pool_size": int(pool.size), "selected": int(ids.size)},
    )


def contract(args) -> None:
    from winnow.data import contract as c

    ingest = json.loads(Path(args.ingest).read_text())
    manifest = json.loads(Path(args.manifest).read_text())
    cfg = json.loads(args.config)
    for path, recorded in ((args.ingest, ingest), (args.manifest, manifest)):
        if "split_domains" not in recorded:  # written by an older winnow
            raise SystemExit(f"{path} has no split_domains counts: rerun its job (snakemake --forcerun ingest)")
    problems = c.check(cfg, {"docs": ingest["split_domains"], "examples": manifest["split_domains"]})
    if problems:
        raise SystemExit(c.format(problems))
    write_json(args.out, {"ok": True, "checked": cfg, "problems": []})
    log.info("data contract: the corpus serves every subset, partition and task of the config")
    sidecars(args, "data contract", [args.out], [args.ingest, args.manifest])


def eval_tasks(args) -> None:
    from winnow.data.tasks import build_choice, build_lastword, write_jsonl
    from winnow.io.tables import DOCS, read_table

    cfg = args.params
    docs = read_table(args.docs, DOCS)
    held = docs.filter(np.asarray([s == cfg.split for s in docs["split"].to_pylist()]))
    held = held.filter(np.asarray([p is None for p in held["prompt"].to_pylist()]))
    rows = held.to_pylist()
    lastword = build_lastword(rows, cfg.n_lastword, cfg.task_seed)
    choice = build_choice(rows, cfg.n_choice, cfg.task_seed)
    write_jsonl(args.lastword, lastword)
    write_jsonl(args.choice, choice)
    log.info("%d last-word items, %d choice items from %d %s docs", len(lastword), len(choice), len(rows), cfg.split)
    sidecars(
        args,
        "data eval-tasks",
        [args.lastword, args.choice],
        [args.docs],
        seed=cfg.task_seed,
        extra={"n_lastword": len(lastword), "n_choice": len(choice)},
    )
