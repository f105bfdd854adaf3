"""``winnow audit verify``: every artifact of a run against its provenance sidecar (see winnow.audit)."""

from __future__ import annotations

import logging

from winnow.cli._common import add_args
from winnow.io.atomic import write_json

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("verify", help="re-hash every artifact; compare bytes, code, inputs, dirty flag")
    add_args(
        p,
        """
        --root     results/{run}
        --out      TSV, one row per artifact
        --summary  JSON: counts and the failing artifacts per check
        """,
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit non-zero when any artifact fails (after writing both files), so CI can gate on it",
    )
    p.set_defaults(func=verify)
    register_compare(sub)


def verify(args) -> None:
    from winnow.audit import audit
    from winnow.eval.table import write_tsv

    rows, summary = audit(args.root)
    write_tsv(args.out, rows)
    write_json(args.summary, summary)
    failed = {k: v for k, v in summary["failed"].items() if v}
    log.info(
        "audit: %d artifacts, %d ok; failing: %s",
        summary["artifacts"],
        summary["ok"],
        {k: len(v) for k, v in failed.items()},
    )
    for check, names in failed.items():
        for name in names[:20]:
            log.warning("%s: %s", check, name)
    if args.strict and not summary["passed"]:
        raise SystemExit(f"audit failed: {sum(len(v) for v in failed.values())} findings ({', '.join(failed)})")


def register_compare(sub) -> None:
    p = sub.add_parser("compare", help="two runs of one config: identical, close (GPU steps) or different")
    add_args(
        p,
        """
        --a        results/{run} of the first run
        --b        results/{run} of the second run
        --out      TSV, one row per artifact of either run
        --summary  JSON: counts per verdict and the differing artifacts
        """,
    )
    p.add_argument(
        "--rtol", type=float, default=1e-4, help="relative tolerance of a close number (|a-b| ≤ atol + rtol·|b|)"
    )
    p.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance of a close number")
    p.add_argument(
        "--strict", action="store_true", help="exit non-zero when any artifact differs (after writing both files)"
    )
    p.set_defaults(func=compare)


def compare(args) -> None:
    from winnow.audit import compare_runs
    from winnow.eval.table import write_tsv

    rows, summary = compare_runs(args.a, args.b, args.rtol, args.atol)
    write_tsv(args.out, rows)
    write_json(args.summary, summary)
    log.info(
        "compare: %d artifacts, %d judged, %d identical, %d failed",
        summary["artifacts"],
        summary["judged"],
        summary["identical"],
        len(summary["failed"]),
    )
    for name in summary["failed"][:50]:
        log.warning("differs: %s", name)
    if args.strict and not summary["passed"]:
        raise SystemExit(f"runs differ: {len(summary['failed'])} artifacts")
