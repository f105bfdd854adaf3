"""``winnow eval ...``: perplexity per domain and lm-eval on local task files."""

from __future__ import annotations

import logging
from pathlib import Path

from winnow.cli._common import add_threads, sidecars
from winnow.io.atomic import write_json

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("ppl", help="rolling-window perplexity per domain on held-out docs")
    p.add_argument("--model", required=True, help="model.safetensors in an HF model folder")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--docs", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--max-docs-per-domain", type=int, default=100)
    p.add_argument("--max-len", type=int, default=None, help="window length (default: the model's context)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    add_threads(p)
    p.set_defaults(func=ppl)

    p = sub.add_parser("harness", help="lm-eval on locally generated tasks")
    p.add_argument("--model", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--lastword", required=True)
    p.add_argument("--choice", required=True)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    add_threads(p)
    p.set_defaults(func=harness)

    p = sub.add_parser("table", help="one TSV row per evaluated model (paths .../eval/{method}/s{seed}/)")
    p.add_argument("--ppl", nargs="+", required=True)
    p.add_argument("--harness", nargs="+", required=True)
    p.add_argument("--out", required=True)
    add_threads(p)
    p.set_defaults(func=table)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def ppl(args) -> None:
    import numpy as np
    import torch

    from winnow.data.tokenizer import load
    from winnow.eval.perplexity import domain_perplexity
    from winnow.io.tables import DOCS, read_table
    from winnow.models.build import load_pretrained

    torch.set_num_threads(args.threads)
    device = _device(args.device)
    model = load_pretrained(Path(args.model).parent).to(device).eval()
    tok = load(Path(args.tokenizer).parent)
    docs = read_table(args.docs, DOCS)
    docs = docs.filter(np.asarray([s == args.split for s in docs["split"].to_pylist()]))
    per_domain: dict[str, int] = {}
    chosen = []
    # Docs are in table order; the first N per domain keeps the set fixed across models.
    for domain, text in zip(docs["domain"].to_pylist(), docs["text"].to_pylist()):
        if per_domain.get(domain, 0) < args.max_docs_per_domain:
            per_domain[domain] = per_domain.get(domain, 0) + 1
            chosen.append((domain, text))
    max_len = args.max_len or model.config.max_position_embeddings
    result = domain_perplexity(model, tok, chosen, max_len=max_len, batch_size=args.batch_size, device=device)
    write_json(args.out, {"split": args.split, "max_len": max_len, "domains": result})
    sidecars(args, "eval ppl", [args.out], [args.model, args.tokenizer, args.docs])


def harness(args) -> None:
    import torch

    from winnow.eval.harness import run_harness

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    result = run_harness(
        Path(args.model).parent,
        Path(args.tokenizer).parent,
        {"lastword": Path(args.lastword).resolve(), "choice": Path(args.choice).resolve()},
        device=_device(args.device),
        batch_size=args.batch_size,
        limit=args.limit,
        work_dir=out.parent / f".harness-{out.stem}",
    )
    write_json(out, result)
    sidecars(args, "eval harness", [out], [args.model, args.tokenizer, args.lastword, args.choice])


def table(args) -> None:
    from winnow.eval.table import summary_rows, write_tsv

    rows = summary_rows(args.ppl, args.harness)
    write_tsv(args.out, rows)
    sidecars(args, "eval table", [args.out], args.ppl + args.harness)
