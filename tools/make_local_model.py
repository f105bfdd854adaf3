#!/usr/bin/env python
"""Build a tiny local HF model folder (llama, qwen2 or gpt_neox; random init, nothing downloaded)
with its own byte-level BPE tokenizer trained on the given text files and a chat template.

    python tools/make_local_model.py --arch llama --text data/corpus.jsonl.gz --out models/tiny-llama \
        --vocab-size 512 --hidden 32 --layers 2 --heads 2 [--max-shard-size 50KB]

See docs/models.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from winnow.models.local import make_local_model, texts_of  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["llama", "qwen2", "gpt_neox"], default="llama")
    p.add_argument("--text", nargs="+", required=True, help="text files (.txt lines, .jsonl[.gz] 'text')")
    p.add_argument("--out", required=True)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--max-position-embeddings", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-shard-size", default=None, help='e.g. "50KB": write a sharded checkpoint')
    a = p.parse_args(argv)
    out = make_local_model(
        a.out,
        a.arch,
        texts_of(a.text),
        vocab_size=a.vocab_size,
        hidden=a.hidden,
        layers=a.layers,
        heads=a.heads,
        max_pos=a.max_position_embeddings,
        seed=a.seed,
        max_shard_size=a.max_shard_size,
    )
    print(out)


if __name__ == "__main__":
    main()
