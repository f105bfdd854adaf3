"""What a run holds, method by method: the run-status section of ``snakemake --report``.

A report is built for whatever exists: a method in ``methods`` that was not run (or not finished)
is listed as such instead of failing the report. Pure Python.
"""

from __future__ import annotations

from collections.abc import Callable


def status(groups: dict[str, list[str]], exists: Callable[[str], bool]) -> list[dict]:
    """One row per group (a method and its target files): ``complete``, ``partial`` or ``not run``,
    with the files present and missing."""
    rows = []
    for name, files in groups.items():
        present = [f for f in files if exists(f)]
        missing = [f for f in files if not exists(f)]
        state = "complete" if not missing else "partial" if present else "not run"
        rows.append({"method": name, "status": state, "present": present, "missing": missing})
    return rows


def rst(rows: list[dict], max_missing: int = 5) -> str:
    """The rows as reStructuredText for the report's description (missing files: the first few)."""
    lines = ["Run status", "----------", ""]
    for r in rows:
        n = len(r["present"]) + len(r["missing"])
        line = f"* **{r['method']}**: {r['status']} ({len(r['present'])} of {n} target files)"
        if r["missing"]:
            shown = ", ".join(f"``{f}``" for f in r["missing"][:max_missing])
            more = f" and {len(r['missing']) - max_missing} more" if len(r["missing"]) > max_missing else ""
            line += f"; missing: {shown}{more}"
        lines.append(line)
    not_run = [r["method"] for r in rows if r["status"] != "complete"]
    lines += [
        "",
        (
            f"Not in this report (not run or not finished): {', '.join(not_run)}. Run ``snakemake`` (or"
            " the method's target) and build the report again."
            if not_run
            else "Every configured method is in this report."
        ),
        "",
    ]
    return "\n".join(lines)
