"""CPU tokenization throughput of the default corpus: Winnow's tokenize step vs `tokenizers`' own batch encoder.

Issue 9: MB/s of UTF-8 text on the bundled corpus (`data/default_corpus/corpus.parquet`), ours
(`winnow.data.tokenize.tokenize_shard`: the HF fast tokenizer's batch call, eos, cutting into
seq_len pieces, the examples table and the packed token array) against the ceiling, the
`tokenizers` library's ``Tokenizer.encode_batch`` on the same texts with the same trained
tokenizer (ids only, no packing). Both run in one child process per thread count, alternately, so
they see the same machine load. The tokenizer is trained as the workflow trains it (byte-level BPE,
vocab 8192, min frequency 2, on the train split, one thread).

    python benchmarks/bench_tokenize.py --json benchmarks/results/tokenize.json
    python benchmarks/bench_tokenize.py --quick      # ~1 MB of text, vocab 1024, one repeat (< 1 min)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _rows import package_env, row, write_rows  # noqa: E402

CORPUS = ROOT / "data" / "default_corpus" / "corpus.parquet"
SEQ_LEN = 128  # config/config.yaml tokenize.seq_len


def _docs(max_mb: float | None):
    """The corpus as the ingest step makes it (the default config's corpus options)."""
    from winnow.data.ingest import IngestOptions, ingest

    opts = IngestOptions(domain_field="domain", id_field="doc_id", max_chars=200_000)
    docs = ingest([str(CORPUS)], opts).docs
    if max_mb:
        total, n = 0, 0
        for t in docs["text"].to_pylist():
            total, n = total + len(t.encode()), n + 1
            if total >= max_mb * 1e6:
                break
        docs = docs.slice(0, n)
    return docs


def child(args) -> dict:
    """One thread count: ours and the reference, alternately, ``repeat`` times each."""
    from winnow.data.tokenize import tokenize_shard
    from winnow.data.tokenizer import load

    docs = _docs(args.max_mb)
    texts = docs["text"].to_pylist()
    mb = sum(len(t.encode()) for t in texts) / 1e6
    tok = load(args.tok_dir)
    backend = tok.backend_tokenizer
    ours, ref = [], []
    tokenize_shard(docs, tok, 0, 1, SEQ_LEN)  # warm-up (thread pool, caches)
    n_tokens = 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        tokens, examples, _ = tokenize_shard(docs, tok, 0, 1, SEQ_LEN)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        enc = backend.encode_batch(texts, add_special_tokens=False)
        ref.append(time.perf_counter() - t0)
        n_tokens = len(tokens)
        ref_tokens = sum(len(e.ids) for e in enc)
    return {
        "threads": args.threads,
        "mb": mb,
        "docs": len(texts),
        "ours_s": statistics.median(ours),
        "ref_s": statistics.median(ref),
        "ours_all_s": ours,
        "ref_all_s": ref,
        "tokens_ours": int(n_tokens),  # + one eos per doc, − dropped 1-token pieces
        "tokens_ref": int(ref_tokens),
        "examples": examples.num_rows,
    }


def run_child(threads: int, tok_dir: Path, max_mb: float | None, repeat: int) -> dict:
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true" if threads > 1 else "false")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, __file__, "--child", "--threads", str(threads), "--tok-dir", str(tok_dir)]
    cmd += ["--repeat", str(repeat)] + (["--max-mb", str(max_mb)] if max_mb else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the result here")
    ap.add_argument("--quick", action="store_true", help="~1 MB of text, vocab 1024, one repeat")
    ap.add_argument("--threads", type=int, nargs="*", default=None, help="thread counts (default: 1 and 2)")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tok-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--max-mb", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.threads = args.threads[0]
        print(json.dumps(child(args)))
        return None

    sys.path.insert(0, str(ROOT / "src"))
    threads = args.threads or ([2] if args.quick else [1, 2])
    repeat = args.repeat or (1 if args.quick else 5)
    max_mb = 1.0 if args.quick else None
    vocab = 1024 if args.quick else 8192
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tmp) / "tokenizer"
        # Trained in a child with one thread, as the workflow's tokenizer rule does (deterministic merges).
        env = dict(os.environ, RAYON_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]);"
            "import bench_tokenize as b; from winnow.data.tokenizer import train_bpe;"
            "d = b._docs(float(sys.argv[4]) if sys.argv[4] != 'None' else None);"
            "texts = [t for t, s in zip(d['text'].to_pylist(), d['split'].to_pylist()) if s == 'train'];"
            "train_bpe(texts, int(sys.argv[5]), sys.argv[3], 2)"
        )
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                str(ROOT / "src"),
                str(ROOT / "benchmarks"),
                str(tok_dir),
                str(max_mb),
                str(vocab),
            ],
            env=env,
            check=True,
        )
        train_s = time.perf_counter() - t0
        results = [run_child(t, tok_dir, max_mb, repeat) for t in threads]

    rows = []
    for r in results:
        ours, ref = r["mb"] / r["ours_s"], r["mb"] / r["ref_s"]
        rows.append(
            row(
                f"tokenize {r['mb']:.1f} MB ({r['docs']} docs), {r['threads']} thread(s), MB/s",
                ours,
                ref,
                limit=round(ref, 3),
                unit="MB/s",
                target="ours close to tokenizers' encode_batch (the ceiling)",
                met=bool(ours / ref >= 0.8),
            )
        )
    detail = {"tokenizer_train_s": train_s, "vocab_size": vocab, "seq_len": SEQ_LEN, "runs": results}
    env = package_env("tokenizers", "transformers", "snakemake", "pyarrow", "numpy")
    result = write_rows(args.json, "tokenize", env, rows, detail)
    for r in rows:
        print(f"{r['figure']}: ours {r['ours']:.3g} reference {r['reference']:.3g} ratio {r['ratio']:.3f}")
    return result


if __name__ == "__main__":
    main()
