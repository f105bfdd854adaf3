"""Ingest raw records into a docs table; every bad record goes to a rejects table with a reason.

Inputs: ``.jsonl``, ``.jsonl.gz``, ``.parquet`` files and ``datasets`` ``save_to_disk`` folders.
A record is one of:

* plain text: ``{text_field: str, [domain_field], [id_field], ...}``;
* prompt/response: ``{"prompt": str, "response": str}``, stored as text = prompt + response and
  ``prompt`` = the prefix, so the tokenizer can put the loss on the response only;
* chat: ``{"messages": [{"role", "content"}, ...]}`` ending with an assistant turn, rendered with
  :func:`render_messages`; the prompt is everything before the last assistant content.

Document ids never depend on file names or paths, so a renamed or moved input keeps every id
and every split (splits and shards are seeded hashes of the id):

* with ``id_field``: the record's own value (in a ``DatasetDict``, prefixed by the split name,
  which is part of the data: its splits are separate namespaces);
* without it (or when the record has none): ``sha256-<32 hex>`` of the content (text and prompt),
  so two records with the same content are the same document, the second a ``duplicate_text``.

Invariant checked before anything is written: input records = accepted + rejected. An input that
breaks off (a truncated ``.gz``, an unreadable file) keeps the records read before the break; the
rest counts as one ``read_error`` record whose detail names the file. An input with no accepted
record gets a warning (log and manifest), and a corpus with no accepted record at all is refused
(:class:`EmptyCorpusError`, naming every input and its reasons).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from winnow.io.tables import DOCS, REJECTS
from winnow.progress import Progress

log = logging.getLogger(__name__)

REASONS = (
    "invalid_json",  # a line that does not parse as JSON (blank lines included)
    "invalid_utf8",  # bytes that are not UTF-8
    "not_an_object",  # JSON that is not an object
    "missing_text",  # no text field (nor prompt/response, nor messages), or not a string
    "empty_text",  # text present but empty or whitespace only
    "over_length",  # longer than max_chars characters
    "duplicate_id",  # an id already seen (the record's own id, from id_field)
    "duplicate_text",  # no id: the same content (text and prompt) as a record already accepted
    "bad_messages",  # messages present but malformed (roles, contents, no final assistant turn)
    "read_error",  # the file broke off (truncated .gz, corrupt parquet): the unread rest, as one record
)
RAW_KEEP = 4096  # bytes of a rejected record kept in the rejects table


@dataclass
class IngestOptions:
    text_field: str = "text"
    domain_field: str | None = "domain"
    id_field: str | None = None
    default_domain: str | None = None  # None: the input's file stem
    max_chars: int = 1_000_000
    split_seed: int = 0
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.9, "val": 0.05, "test": 0.05})
    # Per input path: {"split": ..., "domain": ...} forced on all its records. A target set (e.g.
    # instruction data whose loss a selection should lower) comes in as split "target": tokenized
    # with the corpus, never part of the train/val/test draw, never in a pool drawn from train.
    per_input: dict[str, dict] = field(default_factory=dict)


@dataclass
class IngestResult:
    docs: pa.Table
    rejects: pa.Table
    manifest: dict


class EmptyCorpusError(ValueError):
    """No record of any input was accepted; ``result`` holds the rejects and the manifest."""

    def __init__(self, message: str, result: IngestResult):
        super().__init__(message)
        self.result = result


def content_id(text: str, prompt: str | None = None) -> str:
    """The id of a record without one: a hash of its content (the prompt's length marks where the
    response starts, so the same text split differently is another document)."""
    payload = text if prompt is None else f"prompt:{len(prompt)}\n{text}"
    return "sha256-" + hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _reasons_text(reasons: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "no records"


def split_of(doc_id: str, seed: int, fractions: dict[str, float]) -> str:
    """Seeded, order-independent split assignment from a hash of ``doc_id``."""
    h = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    u = int.from_bytes(h[:8], "little") / 2**64
    acc = 0.0
    names = sorted(fractions)  # fixed order, whatever order the config lists them in
    for name in names:
        acc += fractions[name]
        if u < acc:
            return name
    return names[-1]


def render_messages(messages: list[dict]) -> tuple[str, str]:
    """Chat turns → (prompt, response); the response is the last assistant turn's content."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            raise ValueError("each message needs string role and content")
    if messages[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's")
    prompt = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages[:-1]) + "<|assistant|>\n"
    return prompt, messages[-1]["content"]


def _records_jsonl(path: Path) -> Iterator[tuple[int, bytes | None, object, str | None, str]]:
    """Yield (index, raw_bytes, parsed_or_None, reason_or_None, detail)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        for i, line, err in _lines(fh):
            if err is not None:  # the file broke off here: the rest is one unreadable record
                yield i, b"", None, "read_error", _read_error(path, i, err)
                return
            raw = line.rstrip(b"\r\n")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield i, raw, None, "invalid_utf8", str(err)
                continue
            if not text.strip():
                yield i, raw, None, "invalid_json", "blank line"
                continue
            try:
                yield i, raw, json.loads(text), None, ""
            except json.JSONDecodeError as err:
                yield i, raw, None, "invalid_json", str(err)


READ_ERRORS = (EOFError, OSError, zlib.error)  # truncated/corrupt gzip (BadGzipFile is an OSError), I/O


def _read_error(path: Path, i: int, err: BaseException) -> str:
    return f"{path}: {type(err).__name__}: {err} (after {i} records)"


def _lines(fh) -> Iterator[tuple[int, bytes | None, BaseException | None]]:
    """(index, line, None) of a binary file, then ``(index, None, error)`` once if reading breaks
    off (truncated or corrupt gzip, I/O error): the lines read before the break are kept."""
    it = iter(fh)
    i = 0
    while True:
        try:
            line = next(it)
        except StopIteration:
            return
        except READ_ERRORS as err:
            yield i, None, err
            return
        yield i, line, None
        i += 1


def _records_arrow(table: pa.Table) -> Iterator[tuple[int, bytes | None, object, str | None, str]]:
    # Parquet/Arrow rows are already structured; binary text columns may still hold bad UTF-8.
    for batch in table.to_batches(max_chunksize=4096):
        base = 0
        for row in batch.to_pylist():
            # A null is how a table spells "absent" (mixed plain/prompt/messages rows share columns).
            yield base, None, {k: v for k, v in row.items() if v is not None}, None, ""
            base += 1


def _unreadable(path: Path, err: BaseException) -> Iterator:
    yield 0, b"", None, "read_error", _read_error(path, 0, err)


def _iter_source(path: Path) -> Iterator[tuple[str, Iterator]]:
    """(source, records) of one input; a ``DatasetDict`` folder gives one source per split."""
    if path.is_dir():
        import datasets  # only needed for save_to_disk folders

        try:
            loaded = datasets.load_from_disk(str(path))
        except (pa.ArrowException, OSError) as err:
            yield str(path), _unreadable(path, err)
            return
        if isinstance(loaded, datasets.DatasetDict):
            for split in sorted(loaded):
                yield f"{path}/{split}", _numbered(_records_arrow(loaded[split].data.table))
        else:
            yield str(path), _numbered(_records_arrow(loaded.data.table))
    elif path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as err:
            if not path.exists():
                raise  # a missing input is a config error, not a bad record
            yield str(path), _unreadable(path, err)
            return
        yield str(path), _numbered(_records_arrow(table))
    elif path.name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")):
        yield str(path), _records_jsonl(path)
    else:
        raise ValueError(f"{path}: unsupported input (jsonl, jsonl.gz, parquet or a save_to_disk folder)")


def _numbered(it: Iterator) -> Iterator:
    for i, (_, raw, obj, reason, detail) in enumerate(it):
        yield i, raw, obj, reason, detail


def _source_stem(path: Path) -> str:
    name = path.name
    for suffix in (".jsonl.gz", ".json.gz", ".jsonl", ".ndjson", ".parquet"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _as_text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8")  # raises UnicodeDecodeError → invalid_utf8
    return value if isinstance(value, str) else None


def _document(obj: dict, opts: IngestOptions, namespace: str, stem: str, forced: dict, source: str):
    """One record's document: ``((text, prompt, doc_id, duplicate reason, domain, source), None)``,
    or ``(None, (reason, detail, object kept as raw))`` when it is rejected (duplicates aside)."""
    prompt = None
    try:
        if "messages" in obj and opts.text_field not in obj:
            try:
                prompt, response = render_messages(obj["messages"])
            except ValueError as err:
                return None, ("bad_messages", str(err), obj)
            text = prompt + response
            if not response.strip():
                return None, ("empty_text", "empty assistant response", obj)
        elif "prompt" in obj and "response" in obj and opts.text_field not in obj:
            prompt, response = _as_text(obj["prompt"]), _as_text(obj["response"])
            if prompt is None or response is None:
                return None, ("missing_text", "prompt/response not strings", obj)
            text = prompt + response
            if not response.strip():
                return None, ("empty_text", "empty response", obj)
        else:
            text = _as_text(obj.get(opts.text_field))
    except UnicodeDecodeError as err:
        return None, ("invalid_utf8", str(err), {k: repr(v)[:200] for k, v in obj.items()})
    if text is None:
        return None, ("missing_text", f"no string field {opts.text_field!r}", obj)
    if not text.strip():
        return None, ("empty_text", "", obj)
    if len(text) > opts.max_chars:
        return None, ("over_length", f"{len(text)} > {opts.max_chars} chars", obj)
    rid = obj.get(opts.id_field) if opts.id_field else None
    if rid is None or rid == "":
        doc_id, dup_reason = content_id(text, prompt), "duplicate_text"
    else:
        doc_id, dup_reason = (f"{namespace}/{rid}" if namespace else str(rid)), "duplicate_id"
    domain = obj.get(opts.domain_field) if opts.domain_field else None
    if not isinstance(domain, str) or not domain:
        domain = opts.default_domain or stem
    domain = forced.get("domain") or domain
    doc_source = str(obj.get("source") or source)
    try:  # JSON "\ud800" escapes parse to lone surrogates, which Arrow cannot store
        for value in (text, doc_id, domain, doc_source):
            value.encode("utf-8")
    except UnicodeEncodeError as err:
        return None, ("invalid_utf8", str(err), obj)
    return (text, prompt, doc_id, dup_reason, domain, doc_source), None


def _manifest(docs: dict, docs_table: pa.Table, rejects_table: pa.Table, per_input: list, warnings: list) -> dict:
    """The ingest manifest: record counts per input and reason, domains and splits of the docs."""
    total = sum(p["records"] for p in per_input)
    reasons = Counter()
    for p in per_input:
        reasons.update(p["reasons"])
    manifest = {
        "records": total,
        "accepted": docs_table.num_rows,
        "rejected": rejects_table.num_rows,
        "reasons": dict(sorted(reasons.items())),
        "inputs": per_input,
        "domains": dict(sorted(Counter(docs["domain"]).items())),
        "splits": dict(sorted(Counter(docs["split"]).items())),
        # documents per split and domain: what the data contract (winnow.data.contract) checks
        "split_domains": {
            s: dict(sorted(Counter(d for d, x in zip(docs["domain"], docs["split"]) if x == s).items()))
            for s in sorted(set(docs["split"]))
        },
        "warnings": warnings,
    }
    return manifest


def _source_summary(source: str, n: int, counts: Counter, warnings: list[str]) -> dict:
    """The manifest's entry of one source of ``n`` records; a warning when it gave no document or
    stopped at a read error."""
    rejected = sum(v for k, v in counts.items() if k != "accepted")
    reasons = {k: v for k, v in sorted(counts.items()) if k != "accepted"}
    log.info("%s: %d records, %d accepted, %d rejected", source, n, counts["accepted"], rejected)
    if counts["accepted"] == 0:
        warnings.append(f"{source}: no record accepted ({n} records; {_reasons_text(reasons)})")
    elif counts["read_error"]:
        warnings.append(f"{source}: read_error after {n - 1} records ({_reasons_text(reasons)})")
    return {
        "source": source,
        "records": n,
        "accepted": counts["accepted"],
        "rejected": rejected,
        "reasons": reasons,
        "all_rejected": counts["accepted"] == 0,
    }


def ingest(paths: list[str | os.PathLike], opts: IngestOptions) -> IngestResult:
    """Read every input; return docs, rejects and a manifest whose counts add up."""
    docs: dict[str, list] = {f.name: [] for f in DOCS}
    rejects: dict[str, list] = {f.name: [] for f in REJECTS}
    seen: dict[str, str] = {}  # doc id → "source#record" of the record accepted with it
    per_input = []
    warnings: list[str] = []
    prog = Progress("ingest", total=None, unit="records")

    for raw_path in paths:
        path = Path(raw_path)
        stem = _source_stem(path)
        forced = opts.per_input.get(str(raw_path), {})
        for source, records in _iter_source(path):
            # A DatasetDict's splits are separate namespaces of record ids (the split name is part
            # of the data, unlike the folder's name).
            namespace = source[len(str(path)) :].lstrip("/")
            counts: Counter = Counter()

            def reject(i, raw, reason, detail, obj=None, source=source, counts=counts):
                if raw is None and obj is not None:
                    raw = json.dumps(obj, default=repr, ensure_ascii=False).encode("utf-8", "replace")
                rejects["source"].append(source)
                rejects["record"].append(i)
                rejects["reason"].append(reason)
                rejects["detail"].append(detail[:500])
                rejects["raw"].append((raw or b"")[:RAW_KEEP])
                counts[reason] += 1

            n = 0
            for i, raw, obj, reason, detail in records:
                n += 1
                prog.update(1)
                if reason:
                    reject(i, raw, reason, detail)
                    continue
                if not isinstance(obj, dict):
                    reject(i, raw, "not_an_object", type(obj).__name__, obj)
                    continue
                doc, rejected = _document(obj, opts, namespace, stem, forced, source)
                if rejected is not None:
                    reject(i, raw, *rejected)
                    continue
                text, prompt, doc_id, dup_reason, domain, doc_source = doc
                if doc_id in seen:
                    reject(i, raw, dup_reason, f"{doc_id}: same as {seen[doc_id]}", obj)
                    continue
                seen[doc_id] = f"{source}#{i}"
                docs["doc_id"].append(doc_id)
                docs["text"].append(text)
                docs["domain"].append(domain)
                docs["source"].append(doc_source)
                docs["split"].append(forced.get("split") or split_of(doc_id, opts.split_seed, opts.split_fractions))
                docs["prompt"].append(prompt)
                counts["accepted"] += 1
            per_input.append(_source_summary(source, n, counts, warnings))
    for w in warnings:
        log.warning("%s", w)
    prog.done()

    docs_table = pa.table(docs, schema=DOCS)
    rejects_table = pa.table(rejects, schema=REJECTS)
    manifest = _manifest(docs, docs_table, rejects_table, per_input, warnings)
    total = manifest["records"]
    if total != docs_table.num_rows + rejects_table.num_rows:
        raise AssertionError(f"lost records: {total} != {docs_table.num_rows} + {rejects_table.num_rows}")
    result = IngestResult(docs_table, rejects_table, manifest)
    if docs_table.num_rows == 0:
        lines = [f"  {p['source']}: {p['records']} records, rejected: {_reasons_text(p['reasons'])}" for p in per_input]
        raise EmptyCorpusError(
            f"no document was accepted from {len(paths)} input(s) ({total} records); per input:\n" + "\n".join(lines),
            result,
        )
    return result
