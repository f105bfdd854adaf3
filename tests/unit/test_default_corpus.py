"""Checks on the bundled default corpus (data/default_corpus); no network needed.

The corpus is rebuilt with ``python tools/build_default_corpus.py``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

CORPUS_DIR = Path(__file__).resolve().parents[2] / "data" / "default_corpus"
PARQUET = CORPUS_DIR / "corpus.parquet"
SOURCES = CORPUS_DIR / "SOURCES.json"

EXPECTED_COLUMNS = ["doc_id", "text", "domain", "subdomain", "source"]
EXPECTED_DOMAINS = {
    "fortunes",
    "kjv",
    "pydocs",
    "wordnet",
    "shakespeare",
    "folio",
    "milton",
}
COMMON_WORDS = re.compile(r"\b(the|and|of|to|a|in|is|that|it|or)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def table():
    return pq.read_table(PARQUET)


@pytest.fixture(scope="module")
def rows(table):
    return table.to_pylist()


def test_schema(table):
    assert table.column_names == EXPECTED_COLUMNS
    for name in EXPECTED_COLUMNS:
        assert table.schema.field(name).type == pa.string(), name
        assert table.column(name).null_count == 0, name


def test_parquet_is_zstd_with_row_groups():
    meta = pq.ParquetFile(PARQUET).metadata
    assert meta.num_row_groups >= 2
    assert meta.row_group(0).column(1).compression == "ZSTD"
    assert 1_000_000 <= PARQUET.stat().st_size <= 8_000_000


def test_domains_and_sizes(rows):
    per_domain: dict[str, int] = {}
    for r in rows:
        per_domain[r["domain"]] = per_domain.get(r["domain"], 0) + 1
    assert len(per_domain) >= 6
    assert set(per_domain) <= EXPECTED_DOMAINS
    for domain, n in per_domain.items():
        assert n >= 200, (domain, n)


def test_doc_ids_unique_and_well_formed(rows):
    ids = [r["doc_id"] for r in rows]
    assert len(set(ids)) == len(ids)
    for r in rows:
        assert r["doc_id"].startswith(r["domain"] + "/"), r["doc_id"]
        assert r["subdomain"].strip(), r["doc_id"]
        assert r["source"].startswith(("debian:", "pypi:")), r["source"]


def test_texts_non_empty_utf8_english(rows):
    per_domain_hits: dict[str, list[int]] = {}
    for r in rows:
        text = r["text"]
        assert text.strip(), r["doc_id"]
        text.encode("utf-8")  # valid (no lone surrogates)
        assert "\x00" not in text
        letters = sum(ch.isalpha() for ch in text)
        nonspace = sum(not ch.isspace() for ch in text)
        assert letters >= 0.5 * nonspace, r["doc_id"]
        hit = 1 if COMMON_WORDS.search(text) else 0
        per_domain_hits.setdefault(r["domain"], []).append(hit)
    for domain, hits in per_domain_hits.items():
        assert sum(hits) / len(hits) >= 0.8, domain


def test_rows_are_ordered(rows):
    domains_seen: list[str] = []
    for r in rows:
        if not domains_seen or domains_seen[-1] != r["domain"]:
            assert r["domain"] not in domains_seen, "domains not contiguous"
            domains_seen.append(r["domain"])


def test_sources_json_matches_parquet(rows):
    sources = json.loads(SOURCES.read_text(encoding="utf-8"))
    digest = hashlib.sha256(PARQUET.read_bytes()).hexdigest()
    assert sources["parquet"]["sha256"] == digest
    assert sources["parquet"]["rows"] == len(rows)
    for domain, c in sources["domains"].items():
        dom_rows = [r for r in rows if r["domain"] == domain]
        assert c["docs"] == len(dom_rows)
        assert c["chars"] == sum(len(r["text"]) for r in dom_rows)
    for pkg in sources["packages"]:
        assert re.fullmatch(r"[0-9a-f]{64}", pkg["sha256"]), pkg["name"]
        assert pkg["version"] and pkg["license"], pkg["name"]
