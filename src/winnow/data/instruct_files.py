"""LESS instruction data from the user's own files (``less.data.source: files``).

Three sets, each a file: ``pool`` (the instruction pool LESS selects from), ``target`` (the
reference points LESS matches against: the target tasks' dev items) and ``eval`` (held-out items
the fine-tuned arms are judged on; never seen by matching). Each is a JSONL file (``.jsonl``,
``.jsonl.gz``), a parquet file or a ``datasets`` ``save_to_disk`` folder, holding records of one
of two styles (both may be mixed in one file):

* prompt/response: ``{"prompt": "...", "response": "..."}``;
* chat: ``{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}``
  — the last message must be the assistant's; it is the response, everything before it the prompt.

Optional: ``task`` and ``subtask`` (strings; default ``task = "default"``, ``subtask = task``) and
``id`` (string or int). Field names are mapped with ``fields`` (``less.data.files.fields``).

Rendering: with a chat template (``chat_template``, else the tokenizer's own) every record becomes
``apply_chat_template(messages[:-1], add_generation_prompt=True)`` ⟶ the last message's content
(prompt/response records are the messages user: prompt, assistant: response). Without one,
prompt/response records are used verbatim (``text = prompt + response``) and chat records use a
plain format: ``"{Role}: {content}\\n"`` per message, then ``"Assistant:"`` ⟶ ``" " + response``.

Rows come out in the INSTRUCTIONS schema with ``split`` = train (pool), val (target), test (eval),
``domain`` = ``task``, ``source`` = the set's key, ``doc_id`` = ``{key}/{task}/{id}`` where ``id``
is the record's own id field or the first 16 hex digits of the sha256 of its rendered text, so ids
do not depend on file names or record order. A malformed record is not fatal: it goes to the
rejects table with a reason (``REJECT_REASONS``); a set with no usable record is an error naming
its key.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from winnow.io.tables import INSTRUCTIONS, REJECTS

SETS = {"pool": "train", "target": "val", "eval": "test"}
DEFAULT_FIELDS = {
    "prompt": "prompt",
    "response": "response",
    "messages": "messages",
    "task": "task",
    "subtask": "subtask",
    "id": "id",
}
REJECT_REASONS = (
    "invalid_json",  # a JSONL line that does not parse, or is not an object
    "no_usable_field",  # neither prompt+response nor messages
    "bad_type",  # a field of the wrong type
    "bad_messages",  # messages not a list of {role, content} ending with the assistant's
    "empty_response",
    "duplicate_id",  # the same id (own or content hash) twice in a set
)
MAX_RAW = 4096


def detect_format(path: str | Path) -> str:
    """``jsonl``, ``parquet`` or ``hf_disk`` (a ``save_to_disk`` folder); ValueError otherwise."""
    p = Path(path)
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "state.json").exists():
            return "hf_disk"
        raise ValueError(f"{p}: a folder that is not a datasets save_to_disk folder (no state.json)")
    name = p.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    raise ValueError(f"{p}: unknown format (use .jsonl, .jsonl.gz, .parquet or a save_to_disk folder)")


def check_path(key: str, path: str | Path) -> None:
    """Parse-time check: ``path`` exists and has a readable format; errors name the config key."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"config key {key}: {p} does not exist")
    try:
        detect_format(p)
    except ValueError as e:
        raise ValueError(f"config key {key}: {e}") from None


def read_records(path: str | Path) -> Iterator[tuple[int, Any, bytes]]:
    """(index, record or None if unparseable, raw bytes) of each record of a file."""
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "jsonl":
        opener = gzip.open if p.name.lower().endswith(".gz") else open
        with opener(p, "rb") as f:
            i = 0
            for line in f:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    rec = None
                yield i, rec, line[:MAX_RAW]
                i += 1
        return
    if fmt == "parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(p).to_pylist()
    else:
        import datasets

        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            raise ValueError(f"{p}: a DatasetDict; save one split (a Dataset) per set")
        rows = ds.to_list()
    for i, rec in enumerate(rows):
        yield i, rec, json.dumps(rec, default=str).encode()[:MAX_RAW]


def _messages(rec: dict, fields: dict) -> tuple[list[dict] | None, str | None, str]:
    """(messages, None, "") or (None, reason, detail) of a record."""
    mkey, pkey, rkey = fields["messages"], fields["prompt"], fields["response"]
    if rec.get(mkey) is not None:
        msgs = rec[mkey]
        if not isinstance(msgs, list) or not msgs:
            return None, "bad_messages", f"{mkey} is not a non-empty list"
        out = []
        for m in msgs:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                return None, "bad_messages", f"{mkey}: every message needs string role and content"
            out.append({"role": m["role"], "content": m["content"]})
        if out[-1]["role"] != "assistant":
            return None, "bad_messages", f"{mkey}: the last message is {out[-1]['role']!r}, not 'assistant'"
        if len(out) < 2:
            return None, "bad_messages", f"{mkey}: no message before the assistant's"
        return out, None, ""
    if rec.get(pkey) is None or rec.get(rkey) is None:
        return None, "no_usable_field", f"neither {mkey!r} nor both {pkey!r} and {rkey!r}"
    if not isinstance(rec[pkey], str) or not isinstance(rec[rkey], str):
        return None, "bad_type", f"{pkey!r} and {rkey!r} must be strings"
    return [{"role": "user", "content": rec[pkey]}, {"role": "assistant", "content": rec[rkey]}], None, ""


def render(
    messages: list[dict], chat_template: str | None, tokenizer=None, plain_pair: bool = False
) -> tuple[str, str]:
    """(prompt, response) of messages whose last one is the assistant's response."""
    response = messages[-1]["content"]
    if chat_template is not None:
        prompt = tokenizer.apply_chat_template(
            messages[:-1], chat_template=chat_template, add_generation_prompt=True, tokenize=False
        )
        return prompt, response
    if plain_pair:
        return messages[0]["content"], response
    prompt = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages[:-1]) + "Assistant:"
    return prompt, " " + response


def template_of(tokenizer, chat_template: str | None) -> str | None:
    """The template to use: the configured one, else the tokenizer's own, else None (plain)."""
    if chat_template is not None:
        return chat_template
    return getattr(tokenizer, "chat_template", None) if tokenizer is not None else None


def _set_path(files: dict[str, str], key: str) -> str:
    """The configured file of set ``key``, which must exist."""
    path = files.get(key)
    if not path:
        raise ValueError(f"config key less.data.files.{key} is required with less.data.source: files")
    if not Path(path).exists():
        raise ValueError(f"less.data.files.{key}: {path} does not exist")
    return path


def build_from_files(
    files: dict[str, str], fields: dict | None = None, tokenizer=None, chat_template: str | None = None
) -> tuple[pa.Table, pa.Table, dict]:
    """(INSTRUCTIONS rows of all three sets, REJECTS rows, counts per set) from ``files``
    (``{"pool": path, "target": path, "eval": path}``)."""
    fields = {**DEFAULT_FIELDS, **{k: v for k, v in (fields or {}).items() if v}}
    template = template_of(tokenizer, chat_template)
    rows: list[dict] = []
    rejects: list[dict] = []
    counts: dict[str, dict] = {}
    for key, split in SETS.items():
        path = _set_path(files, key)
        seen: set[str] = set()
        n_ok, n_bad, n_records = 0, 0, 0

        def reject(i, reason, detail, raw, key=key):
            rejects.append({"source": key, "record": i, "reason": reason, "detail": detail, "raw": raw})

        for i, rec, raw in read_records(path):
            n_records += 1
            if not isinstance(rec, dict):
                reject(i, "invalid_json", "not a JSON object", raw)
                n_bad += 1
                continue
            msgs, reason, detail = _messages(rec, fields)
            if msgs is None:
                reject(i, reason, detail, raw)
                n_bad += 1
                continue
            if not msgs[-1]["content"].strip():
                reject(i, "empty_response", "the response is empty", raw)
                n_bad += 1
                continue
            task, subtask, own_id = rec.get(fields["task"]), rec.get(fields["subtask"]), rec.get(fields["id"])
            if (task is not None and not isinstance(task, str)) or (
                subtask is not None and not isinstance(subtask, str)
            ):
                reject(i, "bad_type", f"{fields['task']!r} and {fields['subtask']!r} must be strings", raw)
                n_bad += 1
                continue
            task = task or "default"
            subtask = subtask or task
            plain_pair = rec.get(fields["messages"]) is None
            prompt, response = render(msgs, template, tokenizer, plain_pair=plain_pair)
            text = prompt + response
            rid = str(own_id) if own_id is not None else hashlib.sha256(text.encode()).hexdigest()[:16]
            doc_id = f"{key}/{task}/{rid}"
            if doc_id in seen:
                reject(i, "duplicate_id", f"id {rid!r} already seen in this set", raw)
                n_bad += 1
                continue
            seen.add(doc_id)
            rows.append(
                {
                    "doc_id": doc_id,
                    "text": text,
                    "domain": task,
                    "source": key,
                    "split": split,
                    "prompt": prompt,
                    "task": task,
                    "subtask": subtask,
                }
            )
            n_ok += 1
        if n_records == 0:
            raise ValueError(f"less.data.files.{key}: {path} holds no records")
        if n_ok == 0:
            reasons = sorted({r["reason"] for r in rejects if r["source"] == key})
            raise ValueError(f"less.data.files.{key}: {path} has no usable record (rejected: {', '.join(reasons)})")
        counts[key] = {"records": n_records, "accepted": n_ok, "rejected": n_bad}
    counts["chat_template"] = "configured" if chat_template else ("tokenizer" if template else "plain")
    return (
        pa.Table.from_pylist(rows, schema=INSTRUCTIONS),
        pa.Table.from_pylist(rejects, schema=REJECTS),
        counts,
    )
