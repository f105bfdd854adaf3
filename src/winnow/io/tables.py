"""Parquet tables with explicit schemas: docs, rejects, examples, scores, id lists.

Every table the workflow passes between rules is declared here once, so a reader can
check what it got (``read_table(path, SCHEMA)`` raises on a missing or mistyped column).
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from winnow.io.atomic import atomic_path

DOCS = pa.schema(
    [
        ("doc_id", pa.string()),
        ("text", pa.string()),
        ("domain", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),  # train | val | test, from a seeded hash of doc_id
        # For prompt/response records: the prompt, a prefix of ``text`` (loss on the rest only);
        # null for plain text.
        ("prompt", pa.string()),
    ]
)

# Instruction examples built from plain-text docs (winnow.data.instruct): one row per example,
# the DOCS columns (``domain`` = the task, ``prompt`` = a prefix of ``text``, the loss is on the
# rest; ``split`` = the split of the source document) plus the task and its subtask.
INSTRUCTIONS = pa.schema(
    [
        *DOCS,
        ("task", pa.string()),
        ("subtask", pa.string()),
    ]
)

REJECTS = pa.schema(
    [
        ("source", pa.string()),  # input file the record came from
        ("record", pa.int64()),  # 0-based record index within that file (line or row)
        ("reason", pa.string()),  # one of winnow.data.ingest.REASONS
        ("detail", pa.string()),
        ("raw", pa.binary()),  # the record's bytes, truncated to 4 KiB, so nothing is lost silently
    ]
)

EXAMPLES = pa.schema(
    [
        ("example_id", pa.int64()),
        ("doc_id", pa.string()),
        ("shard", pa.int32()),
        ("offset", pa.int64()),  # token offset of the example inside its shard
        ("length", pa.int32()),  # tokens in the example (≤ seq_len)
        ("loss_start", pa.int32()),  # loss is on tokens [loss_start, loss_end) of the example
        ("loss_end", pa.int32()),
        ("domain", pa.string()),
        ("split", pa.string()),
    ]
)

SCORES = pa.schema([("example_id", pa.int64()), ("score", pa.float32())])

IDS = pa.schema(
    [
        ("example_id", pa.int64()),
        ("rank", pa.int64()),  # 0 = best; order in which a trainer may consume them
    ]
)


# LESS: the task and subtask of every example of the instruction store (matching aggregates over
# the target's subtasks; the evals report the loss per subtask).
SUBTASKS = pa.schema([("example_id", pa.int64()), ("task", pa.string()), ("subtask", pa.string())])


class SchemaError(ValueError):
    pass


def write_table(path: str | os.PathLike, table: pa.Table, schema: pa.Schema) -> None:
    """Cast ``table`` to ``schema`` (column order and types) and write it atomically."""
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise SchemaError(f"{path}: missing columns {missing}")
    table = table.select(schema.names).cast(schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_table(path: str | os.PathLike, schema: pa.Schema | None = None, filters=None) -> pa.Table:
    """``filters`` (pyarrow's DNF list) skips row groups whose statistics rule them out."""
    table = pq.read_table(path, filters=filters)
    if schema is not None:
        check_schema(table, schema, str(path))
    return table


def check_schema(table: pa.Table, schema: pa.Schema, where: str = "table") -> None:
    for field in schema:
        if field.name not in table.column_names:
            raise SchemaError(f"{where}: missing column {field.name!r}")
        got = table.schema.field(field.name).type
        if not got.equals(field.type):
            raise SchemaError(f"{where}: column {field.name!r} has type {got}, expected {field.type}")
