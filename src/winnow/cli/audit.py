"""``winnow audit verify``: every artifact of a run against its provenance sidecar (see winnow.audit)."""

from __future__ import annotations

import logging

from winnow.io.atomic import write_json

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("verify", help="re-hash every artifact; compare bytes, code, inputs, dirty flag")
    p.add_argument("--root", required=True, help="results/{run}")
    p.add_argument("--out", required=True, help="TSV, one row per artifact")
    p.add_argument("--summary", required=True, help="JSON: counts and the failing artifacts per check")
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit non-zero when any artifact fails (after writing both files), so CI can gate on it",
    )
    p.set_defaults(func=verify)


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
