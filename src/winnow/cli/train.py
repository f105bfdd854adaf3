"""``winnow train lm``: train a causal LM on an id list; write its final checkpoint folder."""

from __future__ import annotations

import logging
from pathlib import Path

from winnow.cli._common import add_threads, json_arg, sidecars
from winnow.io.atomic import read_json

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("lm", help="train a causal LM on exactly the ids given")
    p.add_argument("--examples", required=True, help="examples.parquet")
    p.add_argument("--manifest", required=True, help="tokenized manifest.json (dtype, seq_len)")
    p.add_argument("--shards", nargs="+", required=True, help="tokens-{shard}.bin files")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json in an HF tokenizer folder")
    p.add_argument("--ids", required=True, help="IDS parquet: the examples to train on")
    p.add_argument("--model-config", type=json_arg, required=True)
    p.add_argument("--train-config", type=json_arg, required=True)
    p.add_argument("--resume-from", default=None, help="checkpoint folder to continue from")
    p.add_argument("--ckpt-root", required=True, help="folder for intermediate checkpoints")
    p.add_argument("--out", required=True, help="final model.safetensors (folder gets the rest)")
    add_threads(p)
    p.set_defaults(func=lm)


def lm(args) -> None:
    import torch

    from winnow.data.tokenizer import load
    from winnow.io.tables import EXAMPLES, IDS, read_table
    from winnow.models.build import build_model
    from winnow.provenance import path_sha256
    from winnow.train.batches import ExampleStore, shard_paths_from
    from winnow.train.trainer import TrainConfig, train

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    manifest = read_json(args.manifest)
    tok = load(Path(args.tokenizer).parent)
    store = ExampleStore(read_table(args.examples, EXAMPLES), shard_paths_from(args.shards), manifest["dtype"])
    ids = read_table(args.ids, IDS)["example_id"].to_numpy()
    cfg = TrainConfig(seq_len=manifest["seq_len"], **args.train_config)
    model = build_model(args.model_config, len(tok), tok.eos_token_id, tok.pad_token_id, seed=cfg.seed)
    init = (
        f"resume:{path_sha256(Path(args.resume_from) / 'model.safetensors')}"
        if args.resume_from
        else (
            f"pretrained:{args.model_config['pretrained']}"
            if args.model_config.get("pretrained")
            else f"scratch:{cfg.seed}"
        )
    )
    out_dir = Path(args.out).parent
    summary = train(
        model, store, ids, cfg, out_dir, args.ckpt_root, tok.pad_token_id, init=init, resume_from=args.resume_from
    )
    log.info("summary: %s", summary)
    outs = [out_dir / n for n in ("model.safetensors", "config.json", "optimizer.safetensors", "trainer_state.json")]
    inputs = [args.examples, args.manifest, args.ids, args.tokenizer] + ([args.resume_from] if args.resume_from else [])
    sidecars(args, "train lm", outs, inputs, seed=cfg.seed, extra={"summary": summary})
