"""``winnow less`` data, train, features and match: the LESS pipeline up to the scores."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np

from winnow.cli._common import resolve_device, sidecars
from winnow.cli.less._shared import _counts, _ids, _store, base_input
from winnow.io.atomic import read_json, write_json

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- data
def data(args) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    from winnow.data.instruct import build_instructions, less_sets
    from winnow.data.subsets import ids_table
    from winnow.data.tasks import write_jsonl
    from winnow.data.tokenize import tokenize_shard
    from winnow.data.tokenizer import load
    from winnow.io.shards import FLAT_LAYOUT, layout_entry, token_dtype, write_shard
    from winnow.io.tables import DOCS, EXAMPLES, IDS, INSTRUCTIONS, SUBTASKS, read_table, write_table

    cfg, seq_len, num_shards = args.params.data, args.params.seq_len, len(args.tokens)
    if cfg.get("num_shards", num_shards) != num_shards:
        raise ValueError(f"--tokens names {num_shards} files for less.data.num_shards {cfg['num_shards']}")
    for shard, path in enumerate(args.tokens):  # readers find them through the manifest's layout
        if Path(path) != Path(args.manifest).parent / FLAT_LAYOUT.format(shard=shard):
            raise ValueError(f"--tokens: shard {shard} must be {FLAT_LAYOUT.format(shard=shard)} next to the manifest")
    tok = load(Path(args.tokenizer).parent)
    files = args.files_config
    if files is not None:  # the user's pool / target / eval files (winnow.data.instruct_files)
        from winnow.data.instruct_files import build_from_files
        from winnow.io.tables import REJECTS

        if not args.rejects:
            raise ValueError("less data: --files-config needs --rejects")
        inst, rejects, file_counts = build_from_files(
            {k: files.get(k) for k in ("pool", "target", "eval")},
            fields=files.get("fields"),
            tokenizer=tok,
            chat_template=files.get("chat_template"),
        )
        write_table(args.rejects, rejects, REJECTS)
        log.info("less data from files: %s", file_counts)
    else:
        docs = read_table(args.docs, DOCS)
        docs = docs.filter(pc.is_null(docs["prompt"]))  # instruction items are built from plain text
        inst = build_instructions(docs, seed=cfg["seed"], max_per_task=cfg["max_per_task"])
    write_table(args.instructions, inst, INSTRUCTIONS)
    dtype = token_dtype(len(tok))
    as_docs = inst.select([f.name for f in DOCS])
    parts, stats = [], {}
    for shard, path in enumerate(args.tokens):
        tokens, examples, st = tokenize_shard(as_docs, tok, shard, num_shards, seq_len)
        write_shard(path, tokens, dtype)
        parts.append(examples)
        stats[str(shard)] = st
    examples = pa.concat_tables(parts)
    write_table(args.examples, examples, EXAMPLES)
    sets = less_sets(inst, examples, cfg, from_files=files is not None)
    write_table(args.subtasks, sets.subtasks, SUBTASKS)
    write_table(args.pool, ids_table(sets.pool), IDS)
    write_table(args.target, ids_table(sets.target), IDS)
    write_table(args.eval_ids, ids_table(sets.eval_ids), IDS)
    write_jsonl(args.choice, sets.choice)
    write_json(
        args.manifest,
        {
            "examples": examples.num_rows,
            "seq_len": seq_len,
            "dtype": dtype.str,
            "vocab_size": len(tok),
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "num_shards": num_shards,
            "shards": {int(t["shard"][0].as_py()): t.num_rows for t in parts if t.num_rows},
            "layout": layout_entry(FLAT_LAYOUT, 1, num_shards),
            "stats": stats,
            **sets.summary,
            **({"files": file_counts} if files is not None else {}),
        },
    )
    outs = [args.instructions, *args.tokens, args.examples, args.manifest, args.pool, args.target]
    outs += [args.eval_ids, args.subtasks, args.choice] + ([args.rejects] if files is not None else [])
    ins = [args.docs] if files is None else [str(files[k]) for k in ("pool", "target", "eval")]
    sidecars(args, "less data", outs, [*ins, args.tokenizer], seed=cfg["seed"])


# --------------------------------------------------------------------------------------------- train
def less_train_config(cfg: dict, n_ids: int, seq_len: int, seed: int):
    """The shared trainer's config for LESS's recipe: ``epochs`` over ``n_ids`` examples, a linear
    decay after ``warmup_ratio`` of the steps (HF's linear schedule), one checkpoint per epoch.

    Batches are epoch-aligned (HF's Trainer: each epoch one permutation in ⌈n/B⌉ steps, the last
    batch partial), so the checkpoint at step e·⌈n/B⌉ is exactly the end of data epoch e."""
    from winnow.train.batches import steps_per_epoch as epoch_steps
    from winnow.train.trainer import TrainConfig

    steps_per_epoch = epoch_steps(n_ids, cfg["batch_size"])
    steps = cfg["epochs"] * steps_per_epoch
    return TrainConfig(
        steps=steps,
        batch_size=cfg["batch_size"],
        micro_batch_size=cfg.get("micro_batch_size", cfg["batch_size"]),
        seq_len=seq_len,
        lr=cfg["lr"],
        schedule="linear",
        warmup_steps=int(math.ceil(cfg.get("warmup_ratio", 0.0) * steps)),
        min_lr_ratio=0.0,
        weight_decay=cfg.get("weight_decay", 0.0),
        betas=tuple(cfg.get("betas", (0.9, 0.999))),
        grad_clip=cfg.get("grad_clip", 1.0),
        seed=seed,
        ckpt_every=steps_per_epoch,
        keep_checkpoints=cfg["epochs"],
        precision=cfg.get("precision", "auto"),
        epoch_batches=True,
    ), steps_per_epoch


def epoch_mean_lrs(tc, steps_per_epoch: int) -> list[float]:
    """η̄_e: the mean learning rate over the optimizer steps of each epoch (LESS's checkpoint weights);
    with epoch-aligned batches (:func:`less_train_config`) epoch e is steps [e·spe, (e+1)·spe)."""
    from winnow.train.schedules import lr_at

    lrs = [
        lr_at(s, tc.lr, tc.steps, tc.schedule, tc.warmup_steps, tc.min_lr_ratio, tc.decay_frac, tc.half_life)
        for s in range(tc.steps)
    ]
    return [
        float(np.mean(lrs[e * steps_per_epoch : (e + 1) * steps_per_epoch])) for e in range(tc.steps // steps_per_epoch)
    ]


def warmup_ids(pool: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """LESS's warm-up set: a seeded ⌊fraction · n⌋ of the pool; a fraction that keeps none is an
    error naming the config key (not silently one example)."""
    from winnow.data.subsets import sample_ids

    return sample_ids(pool, seed, fraction=fraction, key="less.warmup.fraction", what="pool")


def train(args) -> None:
    import torch

    from winnow.methods.less import add_lora
    from winnow.models.build import load_pretrained
    from winnow.models.checkpoint import write_checkpoint_files
    from winnow.provenance import path_sha256
    from winnow.train.trainer import train as run

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    store, manifest = _store(args)
    ids = _ids(args.ids)
    if args.params.fraction is not None:  # LESS's warm-up: a seeded random fraction of the pool
        ids = warmup_ids(ids, args.params.fraction, args.seed)
    tc, spe = less_train_config(args.train_config, ids.size, manifest["seq_len"], args.seed)
    base = load_pretrained(Path(args.base).parent, trust_remote_code=args.trust_remote_code)
    model = add_lora(base, seed=args.seed, **args.lora_config)
    init = f"lora:{path_sha256(base_input(args.base))}:{sorted(args.lora_config.items())}"
    ckpt_root = Path(args.ckpt_root)
    final = ckpt_root / "final" if args.merged_out else Path(args.epochs_out[-1]).parent
    summary = run(model, store, ids, tc, final, ckpt_root, manifest["pad_token_id"], init=init)
    report = {
        "n_ids": int(ids.size),
        "ids_head": [int(i) for i in ids[:20]],
        "steps": tc.steps,
        "steps_per_epoch": spe,
        "epochs": tc.steps // spe,
        "epoch_mean_lr": epoch_mean_lrs(tc, spe),
        "train_config": {k: v for k, v in vars(tc).items() if k != "extra"},
        "lora": args.lora_config,
        "summary": summary,
    }
    if args.epochs_out:
        if len(args.epochs_out) != report["epochs"]:
            raise ValueError(f"--epochs-out names {len(args.epochs_out)} folders for {report['epochs']} epochs")
        # The trainer keeps one checkpoint per epoch under ckpt_root (the last is `final`).
        for e, out in enumerate(args.epochs_out[:-1], start=1):
            src = ckpt_root / f"step-{e * spe:08d}"
            dst = Path(out).parent
            tmp = dst.with_name(f".tmp-{dst.name}")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            shutil.rmtree(dst, ignore_errors=True)
            tmp.rename(dst)
        outs = list(args.epochs_out)
    else:
        merged = model.merge_and_unload()
        out_dir = Path(args.merged_out).parent
        tmp = out_dir.with_name(f".tmp-{out_dir.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        write_checkpoint_files(tmp, merged, None, {"summary": summary, "merged_lora": args.lora_config})
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
        outs = [args.merged_out]
    write_json(args.report, report)
    sidecars(args, "less train", outs + [args.report], [args.examples, base_input(args.base), args.ids], seed=args.seed)


# ------------------------------------------------------------------------------------------ features
def features(args) -> None:
    import torch

    from winnow.methods.less import RademacherProjector, featurize, load_lora_checkpoint, write_features
    from winnow.models.build import load_pretrained

    cfg = args.params
    if cfg.dtype not in ("float16", "float32") or cfg.method not in ("hooks", "vmap"):
        raise ValueError(f"less features: dtype {cfg.dtype!r} / method {cfg.method!r} not supported")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    store, manifest = _store(args)
    base = load_pretrained(Path(args.base).parent, trust_remote_code=args.trust_remote_code)
    model, moments = load_lora_checkpoint(base, Path(args.checkpoint).parent, args.lora_config)
    model.to(device)
    from winnow.methods.less import lora_param_names

    names = lora_param_names(model)
    n_in = sum(dict(model.named_parameters())[n].numel() for n in names)
    projector = RademacherProjector(n_in, cfg.dim, cfg.seed)
    pool = _ids(args.pool)
    # A pool id's block, from its shard (example_id = shard · 2**32 + index): one file per block
    # keeps the job resumable per file and its file list short at thousands of shards.
    block_of = (pool >> 32) // args.shards_per_block
    common = {"checkpoint": str(Path(args.checkpoint).parent), "d": cfg.dim, "seed": cfg.seed}
    common["dtype"] = cfg.dtype
    kw = dict(names=names, projector=projector, seq_len=manifest["seq_len"], pad_id=manifest["pad_token_id"])
    kw.update(batch_size=cfg.batch_size, device=device, method=cfg.method)
    if str(device).startswith("cuda"):
        kw["amp"] = "bf16"  # as the trainer on GPU: bf16 autocast over the fp32 parameters
    for path in args.pool_out:
        ids = pool[block_of == int(Path(path).stem.split("-")[-1])]
        feats, norms = featurize(model, store, ids, kind="adam", moments=moments, **kw)
        write_features(path, feats, {**common, "kind": "adam", "ids": ids.tolist()}, norms=norms)
    target = _ids(args.target)
    feats, norms = featurize(model, store, target, kind="sgd", **kw)
    write_features(args.target_out, feats, {**common, "kind": "sgd", "ids": target.tolist()}, norms=norms)
    sidecars(
        args,
        "less features",
        list(args.pool_out) + [args.target_out],
        [args.examples, base_input(args.base), args.checkpoint, args.pool, args.target],
        seed=cfg.seed,
    )


# --------------------------------------------------------------------------------------------- match
def _pool_features_by_epoch(pool_paths: list[str], target_paths: list[str]):
    """Pool feature files grouped by their epoch folder, in the order of the target files."""
    from winnow.methods.less import read_features

    groups: dict[str, list[str]] = {}
    for p in pool_paths:
        groups.setdefault(str(Path(p).parent), []).append(p)
    out = []
    for t in target_paths:
        files = sorted(groups.pop(str(Path(t).parent), []))
        if not files:
            raise ValueError(f"no pool features next to {t}")
        parts = [read_features(f, {"kind": "adam"}) for f in files]
        feats = np.concatenate([np.asarray(f, dtype=np.float32) for f, _ in parts])
        ids = np.concatenate([i for _, i in parts])
        out.append((feats, ids))
    if groups:
        raise ValueError(f"pool features without target features: {sorted(groups)}")
    return out


def match(args) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import torch

    from winnow.io.tables import SCORES, SUBTASKS, read_table, write_table
    from winnow.methods.less import checkpoint_weights, less_scores, read_features

    aggregate = args.params.aggregate
    if aggregate not in ("subtask_max", "mean", "max", "min"):
        raise ValueError(f"less match: aggregate {aggregate!r} is not subtask_max, mean, max or min")
    torch.set_num_threads(args.threads)
    pool = _pool_features_by_epoch(args.pool_features, args.target_features)
    ids = pool[0][1]
    order = np.argsort(ids, kind="stable")
    train_feats = []
    for feats, epoch_ids in pool:
        o = np.argsort(epoch_ids, kind="stable")
        if not np.array_equal(epoch_ids[o], ids[order]):
            raise ValueError("pool features of different epochs hold different example ids")
        train_feats.append(torch.from_numpy(feats[o]))
    ids = ids[order]
    target = [read_features(p, {"kind": "sgd"}) for p in args.target_features]
    target_ids = target[0][1]
    for _, t_ids in target[1:]:
        if not np.array_equal(t_ids, target_ids):
            raise ValueError("target features of different epochs hold different example ids")
    if args.subtasks is None:
        subtasks = ["all"] * int(target_ids.size)
    else:
        sub = read_table(args.subtasks, SUBTASKS)
        sub = sub.filter(pc.is_in(sub["example_id"], pa.array(target_ids)))
        sub_of = dict(zip(sub["example_id"].to_pylist(), sub["subtask"].to_pylist(), strict=True))
        subtasks = [sub_of[int(e)] for e in target_ids]
    warm = read_json(args.warmup)
    if len(warm["epoch_mean_lr"]) != len(args.target_features):
        raise ValueError(f"{len(warm['epoch_mean_lr'])} warm-up epochs but {len(args.target_features)} feature sets")
    weights = checkpoint_weights(warm["epoch_mean_lr"])
    scores = less_scores(
        train_feats,
        [torch.from_numpy(np.asarray(f, dtype=np.float32)) for f, _ in target],
        weights,
        subtasks,
        aggregate=aggregate,
    )
    scores = np.asarray(scores, dtype=np.float32)
    write_table(args.out, pa.table({"example_id": ids.astype(np.int64), "score": scores}, schema=SCORES), SCORES)
    write_json(
        args.report,
        {
            "n_pool": int(ids.size),
            "n_target": int(target_ids.size),
            "subtasks": _counts(subtasks),
            "epoch_weights": [float(w) for w in weights],
            "aggregate": aggregate,
            "score": {
                q: float(np.quantile(scores, v)) if scores.size else None
                for q, v in (("min", 0), ("median", 0.5), ("max", 1))
            },
        },
    )
    inputs = [*args.pool_features, *args.target_features, args.warmup, *([args.subtasks] if args.subtasks else [])]
    sidecars(args, "less match", [args.out, args.report], inputs)
