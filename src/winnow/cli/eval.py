"""``winnow eval ...``: perplexity per domain and lm-eval on local task files."""

from __future__ import annotations

import logging
from pathlib import Path

from winnow.cli._common import (
    add_args,
    add_model,
    add_runtime,
    add_store,
    add_threads,
    add_tokenizer,
    resolve_device,
    sidecars,
)
from winnow.io.atomic import write_json
from winnow.params import add_params

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("ppl", help="rolling-window perplexity per domain on held-out docs")
    _add_model_args(p, "eval ppl")
    add_args(
        p,
        """
        --docs          DOCS parquet (data/docs.parquet)
        --max-len:int?  window length in tokens (default: the model's context)
        --out           ppl.json: token/word/char perplexity and bits per byte per domain
        """,
    )
    p.set_defaults(func=ppl)

    p = sub.add_parser("harness", help="lm-eval on locally generated tasks")
    _add_model_args(p, "eval harness")
    add_args(
        p,
        """
        --lastword  last-word task JSONL (data eval-tasks --lastword)
        --choice    multiple-choice task JSONL (data eval-tasks --choice)
        --out       harness.json: lm-eval metrics per task
        """,
    )
    p.set_defaults(func=harness)

    # eval.harness: standard lm-eval tasks and the user's task YAMLs (winnow.eval.user_tasks).
    p = sub.add_parser("harness-check", help="resolve lm-eval task names and load their data offline")
    add_args(
        p,
        """
        --out  JSON: the resolved tasks (read by harness-tasks)
        """,
    )
    add_params(p, "eval harness-check")
    add_threads(p)
    p.set_defaults(func=harness_check)
    p = sub.add_parser("harness-tasks", help="lm-eval on the tasks harness-check resolved")
    _add_model_args(p, "eval harness-tasks")
    add_args(
        p,
        """
        --resolved  harness-check's output
        --out       harness-tasks.json: lm-eval metrics per task
        """,
    )
    p.set_defaults(func=harness_tasks)
    _add_tables(sub)


def _add_tables(sub) -> None:
    """table, target, compare and leaderboard: per-model tables and method comparisons."""
    p = sub.add_parser("table", help="one TSV row per evaluated model (paths .../eval/{method}/s{seed}/)")
    add_args(
        p,
        """
        --evals+  ppl.json, harness.json, target-*.json files
        --out     TSV: one row per (method, seed), one column per metric
        """,
    )
    add_threads(p)
    p.set_defaults(func=table)

    p = sub.add_parser("target", help="mean per-example loss on an id list (e.g. the PDS target set)")
    add_model(p)
    add_store(p)
    add_args(
        p,
        """
        --ids  IDS parquet: the examples whose loss is averaged
        --out  target-{name}.json: mean per-example loss (token-mean cross-entropy, nats) and the items
        """,
    )
    add_params(p, "eval target")
    add_runtime(p)
    p.set_defaults(func=target)

    p = sub.add_parser("compare", help="each method against a baseline: per-seed differences, 95%% bootstrap CI")
    add_args(
        p,
        """
        --evals+  eval files of the method and the baseline
        --out     TSV: one row per (method, metric)
        """,
    )
    p.add_argument("--baseline", default="random", help="method the others are compared with; default random")
    add_threads(p)
    p.set_defaults(func=compare)
    p = sub.add_parser("leaderboard", help="bake-off: mean ± sd over seeds per method, ranked by one metric")
    add_args(
        p,
        """
        --evals+  eval files of every bake-off method and seed
        --out     TSV: one row per method
        --html    the same table as a page (for the report)
        """,
    )
    add_params(p, "eval leaderboard")
    p.add_argument(
        "--metrics",
        nargs="+",
        action="extend",
        required=True,
        help="columns of the HTML table, in order (primary first)",
    )
    p.add_argument("--baseline", default="random", help="method the others are compared with; default random")
    add_threads(p)
    p.set_defaults(func=leaderboard)


def _add_model_args(p, command: str) -> None:
    """The model under evaluation, how it runs and the command's config keys (ppl, harness, harness-tasks)."""
    add_model(p)
    add_tokenizer(p)
    add_params(p, command)
    add_runtime(p)


def ppl(args) -> None:
    import numpy as np
    import torch

    from winnow.data.tokenizer import load
    from winnow.eval.perplexity import domain_perplexity
    from winnow.io.tables import DOCS, read_table
    from winnow.models.build import load_pretrained

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = load_pretrained(Path(args.model).parent, trust_remote_code=args.trust_remote_code).to(device).eval()
    tok = load(Path(args.tokenizer).parent)
    docs = read_table(args.docs, DOCS)
    cfg = args.params
    docs = docs.filter(np.asarray([s == cfg.split for s in docs["split"].to_pylist()]))
    per_domain: dict[str, int] = {}
    chosen = []
    # Docs are in table order; the first N per domain keeps the set fixed across models.
    doc_ids = []
    for doc_id, domain, text in zip(docs["doc_id"].to_pylist(), docs["domain"].to_pylist(), docs["text"].to_pylist()):
        if per_domain.get(domain, 0) < cfg.max_docs_per_domain:
            per_domain[domain] = per_domain.get(domain, 0) + 1
            chosen.append((domain, text))
            doc_ids.append(doc_id)
    max_len = args.max_len or model.config.max_position_embeddings
    per_doc: list[dict] = []
    result = domain_perplexity(
        model, tok, chosen, max_len=max_len, batch_size=cfg.batch_size, device=device, per_doc=per_doc
    )
    # Per-document sums: the paired bootstrap of a comparison resamples documents (winnow.stats).
    items = {
        "doc_id": doc_ids,
        **{k: [d[k] for d in per_doc] for k in ("domain", "sum_logprob", "n_tokens", "n_bytes")},
    }
    write_json(args.out, {"split": cfg.split, "max_len": max_len, "domains": result, "items": items})
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
        device=resolve_device(args.device),
        batch_size=args.params.batch_size,
        limit=args.params.harness_limit,
        work_dir=out.parent / f".harness-{out.stem}",
        trust_remote_code=args.trust_remote_code,
    )
    write_json(out, result)
    sidecars(args, "eval harness", [out], [args.model, args.tokenizer, args.lastword, args.choice])


def harness_check(args) -> None:
    from winnow.eval.user_tasks import local_inputs, resolve

    resolved = resolve(list(args.params.tasks), args.params.include_path, args.params.datasets_cache)
    write_json(args.out, resolved)
    sidecars(args, "eval harness-check", [args.out], local_inputs(resolved))


def harness_tasks(args) -> None:
    import json

    import torch

    from winnow.eval.user_tasks import local_inputs, run_tasks

    torch.set_num_threads(args.threads)
    resolved = json.loads(Path(args.resolved).read_text(encoding="utf-8"))
    result = run_tasks(
        Path(args.model).parent,
        Path(args.tokenizer).parent,
        resolved,
        device=resolve_device(args.device),
        batch_size=args.params.batch_size,
        limit=args.params.harness_limit,
        trust_remote_code=args.trust_remote_code,
    )
    write_json(args.out, result)
    inputs = [args.model, args.tokenizer, args.resolved, *local_inputs(resolved)]
    sidecars(args, "eval harness-tasks", [args.out], inputs)


def table(args) -> None:
    from winnow.eval.table import summary_rows, write_tsv

    write_tsv(args.out, summary_rows(args.evals))
    sidecars(args, "eval table", [args.out], args.evals)


def compare(args) -> None:
    from winnow.eval.table import compare_rows, evals_and_items, write_tsv

    summary, items = evals_and_items(args.evals)
    write_tsv(args.out, compare_rows(summary, args.baseline, items))
    sidecars(args, "eval compare", [args.out], args.evals)


def leaderboard(args) -> None:
    from winnow.eval.table import evals_and_items, leaderboard_html, leaderboard_rows, write_tsv
    from winnow.io.atomic import write_text

    summary, items = evals_and_items(args.evals)
    rows = leaderboard_rows(summary, args.params.primary, args.baseline, items)
    write_tsv(args.out, rows)
    metrics = [m for m in args.metrics if any(m in r for r in rows)]
    write_text(args.html, leaderboard_html(rows, args.params.primary, metrics, "Bake-off: one pool, one budget"))
    sidecars(args, "eval leaderboard", [args.out, args.html], args.evals)


def target(args) -> None:
    import numpy as np
    import torch

    from winnow.eval.loss import per_example_losses
    from winnow.io.tables import IDS, read_table
    from winnow.models.build import load_pretrained
    from winnow.train.batches import open_store

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = load_pretrained(Path(args.model).parent, trust_remote_code=args.trust_remote_code).to(device)
    store, manifest = open_store(args.examples, args.manifest)
    ids = read_table(args.ids, IDS)["example_id"].to_numpy()
    losses = per_example_losses(
        model, store, ids, manifest["seq_len"], manifest["pad_token_id"], args.params.batch_size, device
    )
    result = {
        "loss": float(losses.mean()),
        "loss_sem": float(losses.std(ddof=1) / np.sqrt(len(losses))) if len(losses) > 1 else None,
        "n_examples": int(len(losses)),
        "definition": "mean over examples of the token-mean next-token cross-entropy (nats)",
        # Per-item losses: the paired bootstrap of a comparison resamples these (winnow.stats).
        "items": {"example_id": [int(e) for e in ids], "loss": [float(x) for x in losses]},
    }
    write_json(args.out, result)
    sidecars(args, "eval target", [args.out], [args.model, args.examples, args.ids])
