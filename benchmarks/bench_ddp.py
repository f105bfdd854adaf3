"""One GPU vs two GPUs under torchrun: the same loss curve at the same global batch.

    python benchmarks/bench_ddp.py            # a machine with >= 2 GPUs: bf16 autocast, 300 steps
    python benchmarks/bench_ddp.py --smoke    # CPU: 1 process vs 2 gloo processes, fp32, 12 steps

Both runs use Winnow's trainer (`winnow.train.trainer.train`, the code `winnow train lm` runs) on
the same tokenized data, the same initial weights (seeded) and the same data order (the trainer
draws step batches from the seed; under DDP each rank takes every world-th micro-batch of the
same global batch). The loss of every step is recorded at full precision (rank 0, after the
all-reduce), and the curves are compared step by step.

A third run gives the noise floor: one GPU again, with half the micro-batch size, i.e. the same
sums in another order. The two-GPU curve should differ from the one-GPU curve by about as much.

Writes benchmarks/results/ddp-<gpu>.json (--smoke: benchmarks/out/ddp/; or --json PATH): the curves,
the differences and the environment; prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

GPU = {
    "corpus": str(ROOT / "data/default_corpus/corpus.parquet"),
    "id_field": "doc_id",
    "vocab": 8192,
    "seq_len": 256,
    "model": {
        "hidden_size": 256,
        "num_layers": 4,
        "num_heads": 4,
        "intermediate_size": 1024,
        "max_position_embeddings": 256,
    },
    "train": {
        "steps": 300,
        "batch_size": 32,
        "micro_batch_size": 8,
        "lr": 1e-3,
        "warmup_steps": 20,
        "precision": "bf16",
    },
}
SMOKE = {
    "corpus": str(ROOT / "tests/data/tiny_corpus.jsonl.gz"),
    "id_field": "id",
    "vocab": 512,
    "seq_len": 64,
    "model": {
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    },
    "train": {"steps": 12, "batch_size": 8, "micro_batch_size": 2, "lr": 3e-3, "warmup_steps": 2, "precision": "fp32"},
}


def prepare(spec: dict, d: Path) -> dict[str, str]:
    """Ingest, tokenizer, one token shard, examples and the train ids (via the CLI), once."""
    from winnow.cli import main as cli
    from winnow.params import schema_params

    p = {k: str(d / v) for k, v in {
        "docs": "docs.parquet", "rejects": "rejects.parquet", "ingest": "ingest.json", "tok": "tok/tokenizer.json",
        "block": "tokens/block-0", "examples": "tokens/examples.parquet",
        "manifest": "tokens/manifest.json", "ids": "ids.parquet",
    }.items()}  # fmt: skip
    if Path(p["ids"]).exists():
        return p
    d.mkdir(parents=True, exist_ok=True)
    cli(["data", "ingest", "--inputs", spec["corpus"], "--params", schema_params("data ingest", id_field=spec["id_field"]),
         "--docs", p["docs"], "--rejects", p["rejects"], "--manifest", p["ingest"]])  # fmt: skip
    cli(["data", "tokenizer", "--docs", p["docs"], "--params", schema_params("data tokenizer", vocab_size=spec["vocab"]),
         "--out", p["tok"]])  # fmt: skip
    layout = {"shards_per_block": 1, "num_shards": 1, "seq_len": spec["seq_len"]}
    one_block = ["--params", schema_params("data tokenize", **layout)]
    cli(["data", "tokenize", "--docs", p["docs"], "--tokenizer", p["tok"], "--block", "0", *one_block,
         "--out", p["block"]])  # fmt: skip
    cli(["data", "merge-examples", "--blocks", p["block"], "--tokenizer", p["tok"], *one_block,
         "--out", p["examples"], "--manifest", p["manifest"]])  # fmt: skip
    cli(["data", "sample-subset", "--examples", p["examples"], "--splits", "train", "--fraction", "1.0",
         "--seed", "0", "--out", p["ids"]])  # fmt: skip
    return p


def worker(args) -> None:
    """One training run (a torchrun worker when WORLD_SIZE is set); rank 0 writes the curve."""
    import torch

    import winnow.train.trainer as trainer
    from winnow.data.tokenizer import load
    from winnow.io.tables import IDS, read_table
    from winnow.models.build import build_model
    from winnow.train.batches import open_store

    spec = SMOKE if args.smoke else GPU
    p = json.loads(Path(args.data_json).read_text())
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(1 if args.smoke else 4)
    tok = load(Path(p["tok"]).parent)
    store, manifest = open_store(p["examples"], p["manifest"])
    ids = read_table(p["ids"], IDS)["example_id"].to_numpy()
    train_cfg = dict(spec["train"], micro_batch_size=args.micro_batch or spec["train"]["micro_batch_size"])
    cfg = trainer.TrainConfig(seq_len=manifest["seq_len"], seed=0, ckpt_every=1, keep_checkpoints=1, **train_cfg)
    model = build_model(spec["model"], len(tok), tok.eos_token_id, tok.pad_token_id, seed=0)

    # Every step's loss, at full precision, without writing a checkpoint per step: the trainer calls
    # save_checkpoint(dir, model, optimizer, state) on rank 0 every ckpt_every (= 1) steps.
    losses: list[float] = []
    trainer.save_checkpoint = lambda _d, _m, _o, state: losses.append(float(state["last_loss"]))
    trainer._prune = lambda *a, **k: None
    out = Path(args.out)
    summary = trainer.train(model, store, ids, cfg, out / "model", out / "ckpt", tok.pad_token_id, init="scratch:0")
    if int(os.environ.get("RANK", "0")) == 0:
        losses.append(float(summary["final_loss"]))
        out.mkdir(parents=True, exist_ok=True)
        (out / "curve.json").write_text(json.dumps({"losses": losses, "summary": summary}, indent=1))


def run(label: str, cmd: list[str], env: dict, out: Path) -> dict:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    curve = json.loads((out / "curve.json").read_text())
    curve["wall_s"] = time.monotonic() - t0
    print(f"{label}: {len(curve['losses'])} steps, final loss {curve['losses'][-1]:.5f}, {curve['wall_s']:.1f} s")
    return curve


def diff(a: list[float], b: list[float]) -> dict:
    d = [abs(x - y) for x, y in zip(a, b, strict=True)]
    return {"max_abs": max(d), "mean_abs": sum(d) / len(d), "final_abs": d[-1], "argmax_step": d.index(max(d)) + 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model, 12 steps, 2 gloo processes")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/out/ddp"), help="scratch folder (data, runs)")
    ap.add_argument(
        "--json", default=None, help="result file (default: benchmarks/results/ddp-<gpu>.json; smoke: in --out)"
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data-json", help=argparse.SUPPRESS)
    ap.add_argument("--micro-batch", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    import torch

    from winnow.cli.train import torchrun_launcher

    spec = SMOKE if args.smoke else GPU
    if not args.smoke and torch.cuda.device_count() < 2:
        raise SystemExit(f"needs 2 GPUs, found {torch.cuda.device_count()} (use --smoke for the CPU check)")
    base = Path(args.out) / ("smoke" if args.smoke else "gpu")
    data = prepare(spec, base / "data")
    (base / "data.json").write_text(json.dumps(data))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    env.pop("WORLD_SIZE", None)
    me = [sys.executable, str(Path(__file__).resolve()), "--worker", "--data-json", str(base / "data.json")]
    me += ["--smoke"] if args.smoke else []
    one_env = dict(env, CUDA_VISIBLE_DEVICES="" if args.smoke else "0")
    two_env = dict(env, CUDA_VISIBLE_DEVICES="" if args.smoke else "0,1")
    torchrun = torchrun_launcher(2)  # what `winnow train lm` launches, with this script as the program
    half = max(1, spec["train"]["micro_batch_size"] // 2)
    one = run("1 GPU ", [*me, "--out", str(base / "one")], one_env, base / "one")
    two = run("2 GPUs", [*torchrun, *me[1:], "--out", str(base / "two")], two_env, base / "two")
    ref = run(
        f"1 GPU, micro-batch {half}",
        [*me, "--out", str(base / "ref"), "--micro-batch", str(half)],
        one_env,
        base / "ref",
    )

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import environment

    device = torch.device("cpu" if args.smoke else "cuda")
    result = {
        "what": "loss per step, 1 GPU vs 2 GPUs (torchrun, DDP) at the same global batch; noise floor: 1 GPU, half micro-batch",
        "command": "python benchmarks/bench_ddp.py" + (" --smoke" if args.smoke else ""),
        "spec": spec,
        "environment": environment(device),
        "gpus_visible": torch.cuda.device_count(),
        "two_vs_one": diff(one["losses"], two["losses"]),
        "noise_floor_half_micro_vs_one": diff(one["losses"], ref["losses"]),
        "wall_s": {"one": one["wall_s"], "two": two["wall_s"], "ref": ref["wall_s"]},
        "world_size": {"one": one["summary"]["world_size"], "two": two["summary"]["world_size"]},
        "curves": {"one": one["losses"], "two": two["losses"], "ref": ref["losses"]},
    }
    assert result["world_size"] == {"one": 1, "two": 2}, result["world_size"]
    tag = "smoke-cpu" if args.smoke else torch.cuda.get_device_name(0).replace(" ", "-").lower()
    out = (
        Path(args.json)
        if args.json
        else (Path(args.out) if args.smoke else ROOT / "benchmarks/results") / f"ddp-{tag}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print("step  1-GPU     2-GPU     |diff|")
    stride = max(1, len(one["losses"]) // 15)
    for i in range(0, len(one["losses"]), stride):
        print(
            f"{i + 1:4d}  {one['losses'][i]:.5f}  {two['losses'][i]:.5f}  {abs(one['losses'][i] - two['losses'][i]):.2e}"
        )
    t, n = result["two_vs_one"], result["noise_floor_half_micro_vs_one"]
    print(
        f"2 GPUs vs 1: max |Δloss| {t['max_abs']:.2e} (step {t['argmax_step']}), mean {t['mean_abs']:.2e}, final {t['final_abs']:.2e}"
    )
    print(
        f"noise floor (1 GPU, micro-batch {half} vs {spec['train']['micro_batch_size']}): max {n['max_abs']:.2e}, mean {n['mean_abs']:.2e}"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
