"""A large pool scored by ``winnow.scorer.score_ids`` in resumable parts: killed, resumed, compared.

    python benchmarks/bench_score_pool.py --n 100000 --kill-at 0.5       # GPU, Pythia-160M-shaped scorer
    python benchmarks/bench_score_pool.py --quick                        # CPU smoke run (tiny model)

Three processes over the same pool (a token shard + EXAMPLES table written once, a fitted-format
scorer folder with random weights): (1) an uninterrupted run; (2) the same command with a state
file, killed (SIGKILL, nothing flushed on the way out) once its saved parts pass ``--kill-at`` of
the pool; (3) the same command again,
which resumes from the parts the killed run left. The report: whether (3)'s parquet equals (1)'s
byte for byte, where it resumed, the rate, and the time a 10M pool would take at that rate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_pool(root: Path, n: int, seq: int, vocab: int) -> None:
    import pyarrow as pa
    import torch
    from safetensors.torch import save_file

    from winnow import scorer as S
    from winnow.io.atomic import write_json
    from winnow.io.shards import token_dtype, write_shard
    from winnow.io.tables import EXAMPLES, write_table

    rng = np.random.default_rng(0)
    dtype = token_dtype(vocab)
    write_shard(root / "tokens-0.bin", rng.integers(2, vocab, size=n * seq), dtype)
    table = pa.table(
        {
            "example_id": np.arange(n, dtype=np.int64),
            "doc_id": [f"d{i}" for i in range(n)],
            "shard": np.zeros(n, dtype=np.int32),
            "offset": np.arange(n, dtype=np.int64) * seq,
            "length": np.full(n, seq, dtype=np.int32),
            "loss_start": np.zeros(n, dtype=np.int32),
            "loss_end": np.full(n, seq, dtype=np.int32),
            "domain": ["x"] * n,
            "split": ["train"] * n,
        },
        schema=EXAMPLES,
    )
    write_table(root / "examples.parquet", table, EXAMPLES)
    json.dump({"dtype": dtype.str, "vocab": vocab}, open(root / "pool.json", "w"))
    bb = (
        {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 256}
        if vocab < 1000
        else {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 3072}
    )
    cfg = S.ScorerConfig(backbone={**bb, "max_position_embeddings": seq, "vocab_size": vocab}, max_len=seq)
    model = S.build_scorer(cfg, vocab, eos_id=0, pad_id=0).eval()
    folder = root / "scorer"
    folder.mkdir()
    model.backbone.config.save_pretrained(str(folder))
    weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    norm = {"mean": 0.0, "std": 1.0, "clip": 3.0}
    write_json(folder / "scorer.json", {"config": asdict(cfg), "label_norm": norm, "pad_id": 0, "inputs": "store"})
    del torch


def score(root: Path, out: str, state: str | None, batch: int, device: str, flush_every: int) -> None:
    """One scoring process (what ``winnow scorer score`` runs)."""
    from winnow import scorer as S
    from winnow.io.tables import EXAMPLES, read_table
    from winnow.train.batches import ExampleStore

    meta = json.load(open(root / "pool.json"))
    table = read_table(root / "examples.parquet", EXAMPLES)
    store = ExampleStore(table, {0: root / "tokens-0.bin"}, meta["dtype"])
    ids = table["example_id"].to_numpy()
    info = S.score_ids(
        root / "scorer",
        store,
        ids,
        batch,
        root / out,
        device=device,
        state_path=None if state is None else root / state,
        flush_every=flush_every,
        log_every_s=30.0,
    )
    print("RESULT " + json.dumps({k: info[k] for k in ("n", "resumed_at", "wall_s", "examples_per_s")}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--flush-every", type=int, default=50)
    ap.add_argument("--kill-at", type=float, default=0.5, help="kill the second run once this share is saved")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.quick else "cpu"
    if args.child:
        root, out, state, dev = args.child
        score(Path(root), out, None if state == "-" else state, args.batch, dev, args.flush_every)
        return
    if args.quick:
        args.n, args.seq, args.batch, args.flush_every = 2000, 64, 16, 5
    vocab = 512 if args.quick else 50304
    tmp = tempfile.TemporaryDirectory(prefix="bench_pool_")
    root = Path(tmp.name)
    t0 = time.perf_counter()
    make_pool(root, args.n, args.seq, vocab)
    t_make = time.perf_counter() - t0

    def child(out: str, state: str, kill_at: int | None = None) -> tuple[dict | None, float, bool]:
        """Run one scoring process; ``kill_at``: SIGKILL it once its state has passed that index."""
        cmd = [sys.executable, __file__, "--batch", str(args.batch), "--flush-every", str(args.flush_every)]
        cmd += ["--child", str(root), out, state, device]
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if kill_at is not None:
            # a time-based kill missed once (the second process compiled from the cache and had
            # finished): kill on the run's own progress instead
            path = root / state
            while p.poll() is None:
                try:
                    if json.loads(path.read_text())["next_index"] >= kill_at:
                        p.kill()  # SIGKILL: the run gets no chance to flush anything
                        p.wait()
                        return None, time.perf_counter() - t, True
                except (OSError, ValueError, KeyError):
                    pass  # not written yet, or caught mid-replace
                time.sleep(0.05)
        stdout, stderr = p.communicate()
        if p.returncode != 0:
            raise SystemExit(stderr[-3000:])
        res = [json.loads(line[7:]) for line in stdout.splitlines() if line.startswith("RESULT ")]
        return res[-1], time.perf_counter() - t, False

    clean, t_clean, _ = child("clean.parquet", "-")
    _, t_killed, killed = child("resumed.parquet", "state/state.json", kill_at=int(args.kill_at * args.n))
    saved = json.load(open(root / "state/state.json")) if (root / "state/state.json").exists() else None
    resumed, t_resumed, _ = child("resumed.parquet", "state/state.json")
    same = (root / "clean.parquet").read_bytes() == (root / "resumed.parquet").read_bytes()
    rate = clean["examples_per_s"]  # includes the process's fixed costs (model load, compile)
    # steady rate from the two complete runs: they share the fixed costs, the resumed one scores
    # resumed_at fewer examples
    k, dt = resumed["resumed_at"], clean["wall_s"] - resumed["wall_s"]
    steady = k / dt if k and dt > 0 else rate
    fixed = max(clean["wall_s"] - args.n / steady, 0.0)
    result = {
        "n": args.n,
        "seq": args.seq,
        "batch": args.batch,
        "flush_every": args.flush_every,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "make_pool_s": t_make,
        "clean": {**clean, "process_s": t_clean},
        "killed": {"after_s": t_killed, "killed": killed, "state_next_index": saved and saved["next_index"]},
        "resumed": {**resumed, "process_s": t_resumed},
        "identical_bytes": same,
        "rate_examples_per_s": rate,
        "steady_examples_per_s": steady,
        "fixed_s": fixed,
        "hours_for_10M": (fixed + 1e7 / steady) / 3600,
    }
    print(json.dumps(result, indent=1))
    from _common import environment, row, write_rows

    rows = [
        row(
            f"pool scoring, score_ids resumed after a kill == uninterrupted ({args.n} × {args.seq} tokens)",
            float(same),
            None,
            unit="1 = identical bytes",
            target="restart where it stopped",
            met=same and killed and bool(resumed["resumed_at"]),
        ),
        row(
            "pool scoring rate, score_ids end to end (store reads, parquet parts)",
            steady,
            rate,
            unit="examples/s (steady; reference = incl. load + compile)",
            target=f"10M pool: {result['hours_for_10M']:.2f} h on one GPU",
        ),
    ]
    write_rows(args.json, "score_pool", environment(torch.device(device)), rows, result)
    tmp.cleanup()
    if not same:
        raise SystemExit("resumed scores differ from the uninterrupted run")
    if not killed or not resumed["resumed_at"]:
        raise SystemExit("the second run was not killed mid-way: the resume was not exercised")


if __name__ == "__main__":
    main()
