"""Reproducibility audit: every artifact of a run checked against its provenance sidecar.

For each ``X.prov.json`` under ``results/{run}/`` the audit re-hashes ``X`` and compares:

* ``bytes``: the artifact's sha256 now vs the one recorded when it was written (an edited or
  truncated file is named);
* ``code``: the hash of the package modules its command runs, recorded vs today's
  (:func:`winnow.provenance.command_hash`), so a module edit names exactly the artifacts it made;
* ``dirty``: whether the source tree had uncommitted changes when it was made;
* ``inputs``: whether each recorded input still exists with the recorded hash (an input rebuilt
  since, without this artifact being rebuilt, makes it stale).

One row per artifact goes to a TSV; counts and the failing artifacts per check go to JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from winnow.provenance import command_hash, path_sha256

SUFFIX = ".prov.json"
CHECKS = ("missing", "bytes", "code", "dirty", "inputs")


def find_sidecars(root: str | os.PathLike, exclude: tuple[str, ...] = ("audit",)) -> list[Path]:
    """Every sidecar under ``root`` (sorted), except those under the top-level folders ``exclude``."""
    root = Path(root)
    out = []
    for p in root.rglob(f"*{SUFFIX}"):
        rel = p.relative_to(root)
        if rel.parts and rel.parts[0] in exclude:
            continue
        out.append(p)
    return sorted(out)


def params_hash(params: dict) -> str:
    """sha256 (16 hex) of the parameters that define an artifact, as JSON with sorted keys."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _today_hash(command: str, cache: dict[str, str | None]) -> str | None:
    if command not in cache:
        try:
            cache[command] = command_hash(command)
        except (KeyError, FileNotFoundError):
            cache[command] = None  # a command this code no longer has
    return cache[command]


def audit_one(sidecar: Path, root: Path, code_cache: dict, hash_cache: dict) -> dict:
    """One row: what the sidecar recorded and which checks fail now."""
    side = json.loads(sidecar.read_text())
    artifact = Path(str(sidecar)[: -len(SUFFIX)])
    command = side.get("command", "")
    recorded_code = (side.get("code") or {}).get("hash")
    today = _today_hash(command, code_cache)
    failures = []
    if not artifact.exists():
        failures.append("missing")
        now = None
    else:
        now = _hash(artifact, hash_cache)
        if now != side.get("sha256"):
            failures.append("bytes")
    if recorded_code is None or today is None or recorded_code != today:
        failures.append("code")
    git = side.get("git") or {}
    if git.get("dirty"):
        failures.append("dirty")
    stale_inputs = []
    for path, recorded in (side.get("inputs") or {}).items():
        p = Path(path)
        if not p.is_absolute() and not p.exists():
            p = root.parent.parent / path  # inputs are recorded relative to the workflow directory
        if not p.exists() or _hash(p, hash_cache) != recorded:
            stale_inputs.append(path)
    if stale_inputs:
        failures.append("inputs")
    return {
        "artifact": str(artifact.relative_to(root)) if artifact.is_relative_to(root) else str(artifact),
        "command": command,
        "ok": not failures,
        "failures": ",".join(failures),
        "sha256_recorded": side.get("sha256"),
        "sha256_now": now,
        "code_recorded": recorded_code,
        "code_now": today,
        "params_hash": params_hash(side.get("params") or {}),
        "seed": side.get("seed"),
        "git_sha": git.get("sha"),
        "dirty": git.get("dirty"),
        "deterministic": side.get("deterministic", True),
        "stale_inputs": ",".join(stale_inputs),
        "created_utc": side.get("created_utc"),
    }


def _hash(path: Path, cache: dict) -> str:
    key = str(path.resolve())
    if key not in cache:
        cache[key] = path_sha256(path)
    return cache[key]


def audit(root: str | os.PathLike) -> tuple[list[dict], dict]:
    """Audit every artifact under ``root`` (a ``results/{run}`` folder): rows and a summary."""
    root = Path(root)
    code_cache: dict = {}
    hash_cache: dict = {}
    rows = [audit_one(s, root, code_cache, hash_cache) for s in find_sidecars(root)]
    summary = {
        "root": str(root),
        "artifacts": len(rows),
        "ok": sum(r["ok"] for r in rows),
        "failed": {c: sorted(r["artifact"] for r in rows if c in r["failures"].split(",")) for c in CHECKS},
    }
    summary["passed"] = summary["ok"] == summary["artifacts"]
    return rows, summary


def made_by_module(rows: list[dict], root: str | os.PathLike, module: str) -> list[str]:
    """Artifacts whose recorded code includes ``module`` (e.g. ``winnow.train.trainer``)."""
    out = []
    for r in rows:
        side = json.loads((Path(root) / f"{r['artifact']}{SUFFIX}").read_text())
        if module in (side.get("code") or {}).get("modules", []):
            out.append(r["artifact"])
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# two runs of the same config: which artifacts are byte-identical, which only close

# Artifacts whose bytes must match across two CPU runs: scores, id lists, tokens, weights, features.
EXACT_SUFFIXES = (".parquet", ".safetensors", ".bin", ".npy", ".jsonl")


def _numeric_close(a: Path, b: Path, rtol: float, atol: float) -> bool | None:
    """Values of two artifacts equal within tolerance (None: a format this cannot compare)."""
    import numpy as np

    if a.suffix == ".parquet":
        import pyarrow.parquet as pq

        ta, tb = pq.read_table(a), pq.read_table(b)
        if ta.schema != tb.schema or ta.num_rows != tb.num_rows:
            return False
        for name in ta.column_names:
            ca, cb = ta[name].to_numpy(zero_copy_only=False), tb[name].to_numpy(zero_copy_only=False)
            if ca.dtype.kind == "f":
                if not np.allclose(ca, cb, rtol=rtol, atol=atol, equal_nan=True):
                    return False
            elif not np.array_equal(ca, cb):
                return False
        return True
    if a.suffix == ".safetensors":
        from safetensors.numpy import load_file

        from winnow.io.artifacts import naming

        with naming(a, "safetensors file"):
            xa = load_file(str(a))
        with naming(b, "safetensors file"):
            xb = load_file(str(b))
        return xa.keys() == xb.keys() and all(
            xa[k].shape == xb[k].shape and np.allclose(xa[k], xb[k], rtol=rtol, atol=atol) for k in xa
        )
    if a.suffix == ".npy":
        xa, xb = np.load(a), np.load(b)
        return xa.shape == xb.shape and bool(np.allclose(xa, xb, rtol=rtol, atol=atol))
    return None


def compare_runs(
    a: str | os.PathLike, b: str | os.PathLike, rtol: float = 1e-4, atol: float = 1e-6
) -> tuple[list[dict], dict]:
    """Artifacts of two ``results/{run}`` folders made from the same config.

    Each artifact with a sidecar in both is ``identical`` (same sha256), ``close`` (values within
    ``rtol``/``atol``; reported as a pass only where a sidecar says the step was not
    deterministic, e.g. it ran on a GPU), or ``differs``. Exact kinds (``EXACT_SUFFIXES``) made
    deterministically must be identical; JSON reports and logs may differ in timings and are
    listed but not judged.
    """
    a, b = Path(a), Path(b)
    rows = []
    for side_a in find_sidecars(a):
        rel = side_a.relative_to(a)
        side_b = b / rel
        art = str(rel)[: -len(SUFFIX)]
        if not side_b.exists():
            rows.append({"artifact": art, "status": "only_in_a", "judged": True, "ok": False})
            continue
        sa, sb = json.loads(side_a.read_text()), json.loads(side_b.read_text())
        deterministic = sa.get("deterministic", True) and sb.get("deterministic", True)
        judged = Path(art).suffix in EXACT_SUFFIXES
        if sa.get("sha256") == sb.get("sha256"):
            status, ok = "identical", True
        else:
            close = _numeric_close(a / art, b / art, rtol, atol) if judged else None
            status = "close" if close else "differs"
            ok = (not judged) or (close is True and not deterministic)
        rows.append({"artifact": art, "status": status, "judged": judged, "deterministic": deterministic, "ok": ok})
    seen = {r["artifact"] for r in rows}
    for side_b in find_sidecars(b):
        art = str(side_b.relative_to(b))[: -len(SUFFIX)]
        if art not in seen:
            rows.append({"artifact": art, "status": "only_in_b", "judged": True, "ok": False})
    judged = [r for r in rows if r["judged"]]
    summary = {
        "a": str(a),
        "b": str(b),
        "artifacts": len(rows),
        "judged": len(judged),
        "identical": sum(r["status"] == "identical" for r in judged),
        "failed": sorted(r["artifact"] for r in rows if not r["ok"]),
        "unjudged_differing": sorted(r["artifact"] for r in rows if not r["judged"] and r["status"] != "identical"),
    }
    summary["passed"] = not summary["failed"]
    return rows, summary
