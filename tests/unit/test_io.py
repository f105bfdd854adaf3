"""winnow.io: atomic writes (including a writer killed mid-write), parquet tables, token shards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from winnow.io import atomic, shards, tables
from winnow.io.atomic import atomic_path, read_json, write_bytes, write_json, write_text
from winnow.io.shards import open_shard, token_dtype, write_shard
from winnow.io.tables import DOCS, EXAMPLES, IDS, REJECTS, SCORES, SchemaError, read_table, write_table

SRC = Path(atomic.__file__).resolve().parents[2]  # .../src


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


# --------------------------------------------------------------------------------------- atomic


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "out.bin"  # parent folder is created
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.startswith(".tmp-out.bin.")
        assert not target.exists()  # nothing under the final name while the block runs
        tmp.write_bytes(b"payload")
    assert target.read_bytes() == b"payload"
    assert leftovers(target.parent) == []


def test_failure_inside_atomic_path_leaves_no_target_and_no_temp(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half of it")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_failure_inside_atomic_path_keeps_existing_target(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old content")
    with pytest.raises(KeyError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new but incomplete")
            raise KeyError("writer failed")
    assert target.read_bytes() == b"old content"
    assert leftovers(tmp_path) == []


def test_atomic_write_replaces_existing_target(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "first")
    write_text(target, "second ünïcode")
    assert target.read_bytes() == "second ünïcode".encode()
    assert leftovers(tmp_path) == []


def test_atomic_write_respects_umask_like_a_plain_open(tmp_path):
    """mkstemp creates 0600 files; artifacts on a shared project folder must get the usual
    umask-derived mode (same as ``open(path, "w")``), or collaborators cannot read results."""
    old = os.umask(0o022)
    try:
        write_bytes(tmp_path / "atomic.bin", b"x")
        (tmp_path / "plain.bin").write_bytes(b"x")
        write_table(tmp_path / "t.parquet", pa.table({"example_id": [1], "score": [0.5]}), SCORES)
    finally:
        os.umask(old)
    plain = (tmp_path / "plain.bin").stat().st_mode & 0o777
    assert plain == 0o644
    assert (tmp_path / "atomic.bin").stat().st_mode & 0o777 == plain
    assert (tmp_path / "t.parquet").stat().st_mode & 0o777 == plain


_KILL_CHILD = textwrap.dedent(
    """
    import pathlib, sys, time
    sys.path.insert(0, sys.argv[3])
    from winnow.io import atomic

    target, ready = sys.argv[1], pathlib.Path(sys.argv[2])
    data = b"N" * 4_000_000

    def slow_write_bytes(self, payload):
        # Write the first half, tell the parent, then hang: the parent SIGKILLs us mid-write.
        with open(self, "wb") as fh:
            fh.write(payload[: len(payload) // 2])
            fh.flush()
            ready.write_text(str(self))
            time.sleep(120)
            fh.write(payload[len(payload) // 2 :])

    pathlib.Path.write_bytes = slow_write_bytes
    atomic.write_bytes(target, data)
    """
)


@pytest.mark.parametrize("had_old", [True, False], ids=["old-target", "no-target"])
def test_sigkill_mid_write_leaves_old_target_or_nothing(tmp_path, had_old):
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "shard.bin"
    if had_old:
        target.write_bytes(b"old complete artifact")
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, str(target), str(ready), str(SRC)])
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert child.poll() is None, "child exited before reaching the write"
            assert time.monotonic() < deadline, "child never started writing"
            time.sleep(0.02)
        tmp_written = Path(ready.read_text())
        # the half-written data lives under a temp name, not the target's
        assert tmp_written.parent == folder and tmp_written.name.startswith(".tmp-shard.bin.")
        assert tmp_written.stat().st_size == 2_000_000
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if had_old:
        assert target.read_bytes() == b"old complete artifact"
    else:
        assert not target.exists()
    # the documented residue: at most the temp file, never a partial target
    assert sorted(p.name for p in folder.iterdir()) == sorted(([target.name] if had_old else []) + [tmp_written.name])
    # a later (re)run writes the target normally despite the leftover temp file
    write_bytes(target, b"rerun")
    assert target.read_bytes() == b"rerun"


def test_write_json_is_byte_stable_for_equal_dicts(tmp_path):
    a = {"b": 1, "a": {"y": [3, {"q": 1, "p": 2}], "x": None}, "c": "ü"}
    b = {"c": "ü", "a": {"x": None, "y": [3, {"p": 2, "q": 1}]}, "b": 1}
    assert list(a) != list(b)
    write_json(tmp_path / "a.json", a)
    write_json(tmp_path / "b.json", b)
    raw = (tmp_path / "a.json").read_bytes()
    assert raw == (tmp_path / "b.json").read_bytes()
    assert raw.endswith(b"}\n")
    # keys sorted at every level
    assert raw.index(b'"a"') < raw.index(b'"b"') < raw.index(b'"c"')
    assert raw.index(b'"p"') < raw.index(b'"q"')
    assert read_json(tmp_path / "a.json") == a


def test_write_json_numpy_scalars_and_paths(tmp_path):
    write_json(tmp_path / "n.json", {"i": np.int64(3), "f": np.float32(0.5), "p": Path("a/b")})
    assert read_json(tmp_path / "n.json") == {"i": 3, "f": 0.5, "p": "a/b"}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists()
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------- tables


def _sample(schema: pa.Schema) -> pa.Table:
    data = {
        DOCS: {
            "doc_id": ["a/0", "a/1"],
            "text": ["hello", "Q? A."],
            "domain": ["x", "y"],
            "source": ["a.jsonl", "a.jsonl"],
            "split": ["train", "test"],
            "prompt": [None, "Q? "],
        },
        REJECTS: {
            "source": ["a.jsonl"],
            "record": [3],
            "reason": ["invalid_utf8"],
            "detail": ["bad byte"],
            "raw": [b'{"text": "caf\xe9"}'],
        },
        EXAMPLES: {
            "example_id": [2**32 + 0, 2**32 + 1],
            "doc_id": ["a/0", "a/0"],
            "shard": [1, 1],
            "offset": [0, 16],
            "length": [16, 5],
            "loss_start": [0, 0],
            "loss_end": [16, 5],
            "domain": ["x", "x"],
            "split": ["train", "train"],
        },
        SCORES: {"example_id": [5, 7], "score": [0.25, -1.5]},
        IDS: {"example_id": [7, 5], "rank": [0, 1]},
    }
    for s, cols in data.items():
        if s.equals(schema):
            return pa.table(cols, schema=schema)
    raise AssertionError


@pytest.mark.parametrize(
    "schema", [DOCS, REJECTS, EXAMPLES, SCORES, IDS], ids=["docs", "rejects", "examples", "scores", "ids"]
)
def test_table_round_trip(tmp_path, schema):
    table = _sample(schema)
    write_table(tmp_path / "t.parquet", table, schema)
    back = read_table(tmp_path / "t.parquet", schema)
    assert back.schema.equals(schema)
    assert back.to_pydict() == table.to_pydict()
    assert leftovers(tmp_path) == []


def test_write_table_casts_reorders_and_drops_extra_columns(tmp_path):
    raw = pa.table(
        {
            "extra": ["ignored", "ignored"],
            "score": pa.array([0.5, 2.0], pa.float64()),
            "example_id": pa.array([3, 1], pa.int32()),
        }
    )
    write_table(tmp_path / "s.parquet", raw, SCORES)
    back = read_table(tmp_path / "s.parquet", SCORES)
    assert back.column_names == ["example_id", "score"]
    assert back.schema.field("example_id").type == pa.int64()
    assert back.schema.field("score").type == pa.float32()
    assert back.to_pydict() == {"example_id": [3, 1], "score": [0.5, 2.0]}


def test_write_table_missing_column_raises_schema_error(tmp_path):
    with pytest.raises(SchemaError, match="rank"):
        write_table(tmp_path / "ids.parquet", pa.table({"example_id": [1, 2]}), IDS)
    assert not (tmp_path / "ids.parquet").exists()


def test_write_table_refuses_lossy_cast(tmp_path):
    # 1.5 is not an integer id: a safe cast must fail, not truncate to 1
    with pytest.raises((SchemaError, pa.ArrowInvalid)):
        write_table(tmp_path / "s.parquet", pa.table({"example_id": [1.5], "score": [0.0]}), SCORES)
    assert not (tmp_path / "s.parquet").exists()
    with pytest.raises((SchemaError, pa.ArrowInvalid)):  # int64 → int32 overflow (EXAMPLES.shard)
        bad = _sample(EXAMPLES).to_pydict()
        bad["shard"] = [2**40, 1]
        write_table(tmp_path / "e.parquet", pa.table(bad), EXAMPLES)
    assert not (tmp_path / "e.parquet").exists()


def test_read_table_missing_column_raises(tmp_path):
    pq.write_table(pa.table({"example_id": pa.array([1], pa.int64())}), tmp_path / "s.parquet")
    with pytest.raises(SchemaError, match="'score'"):
        read_table(tmp_path / "s.parquet", SCORES)
    # without a schema it reads whatever is there
    assert read_table(tmp_path / "s.parquet").column_names == ["example_id"]


def test_read_table_wrong_type_raises(tmp_path):
    pq.write_table(
        pa.table({"example_id": pa.array([1], pa.int64()), "score": pa.array([0.5], pa.float64())}),
        tmp_path / "s.parquet",
    )
    with pytest.raises(SchemaError, match=r"'score' has type double, expected float"):
        read_table(tmp_path / "s.parquet", SCORES)
    pq.write_table(pa.table({"example_id": ["1"], "rank": [0]}), tmp_path / "i.parquet")
    with pytest.raises(SchemaError, match="'example_id'"):
        read_table(tmp_path / "i.parquet", IDS)


# --------------------------------------------------------------------------------------- shards


def test_token_dtype_boundaries():
    assert token_dtype(1) == np.dtype("<u2")
    assert token_dtype(2**16) == np.dtype("<u2")  # ids 0..65535 fit in uint16
    assert token_dtype(2**16 + 1) == np.dtype("<u4")
    assert token_dtype(200_000) == np.dtype("<u4")
    assert token_dtype(2**16).byteorder in ("<", "=") and token_dtype(2**16).itemsize == 2


@pytest.mark.parametrize(
    "dtype,top", [(np.dtype("<u2"), 2**16 - 1), (np.dtype("<u4"), 2**32 - 1)], ids=["uint16", "uint32"]
)
def test_shard_round_trip(tmp_path, dtype, top):
    tokens = np.array([0, 1, 2, 300, top, 7, top - 1], dtype=np.int64)
    path = tmp_path / "tokens-0.bin"
    write_shard(path, tokens, dtype)
    assert path.stat().st_size == tokens.size * dtype.itemsize
    assert path.read_bytes() == tokens.astype(dtype).tobytes()  # flat little-endian, no header
    back = open_shard(path, dtype.str)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back.astype(np.int64), tokens)
    with pytest.raises((ValueError, TypeError)):
        back[0] = 5  # read-only memory map


@pytest.mark.parametrize(
    "dtype,bad",
    [("<u2", 2**16), ("<u2", -1), ("<u4", 2**32), ("<u4", -5)],
    ids=["u2-over", "u2-neg", "u4-over", "u4-neg"],
)
def test_write_shard_refuses_out_of_range_ids(tmp_path, dtype, bad):
    path = tmp_path / "tokens-0.bin"
    with pytest.raises(ValueError, match="out of range"):
        write_shard(path, np.array([1, bad, 2], dtype=np.int64), np.dtype(dtype))
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_write_shard_refusal_keeps_existing_shard(tmp_path):
    path = tmp_path / "tokens-0.bin"
    write_shard(path, np.array([1, 2, 3]), np.dtype("<u2"))
    with pytest.raises(ValueError):
        write_shard(path, np.array([70_000]), np.dtype("<u2"))
    np.testing.assert_array_equal(open_shard(path, "<u2"), [1, 2, 3])


def test_empty_shard(tmp_path):
    path = tmp_path / "tokens-3.bin"
    write_shard(path, np.zeros(0, dtype=np.int64), np.dtype("<u2"))
    assert path.exists() and path.stat().st_size == 0
    back = open_shard(path, "<u2")
    assert back.shape == (0,) and back.dtype == np.dtype("<u2")


def test_modules_are_the_ones_under_test():
    # guard against the tests silently importing an installed copy instead of src/
    assert Path(tables.__file__).resolve().parent == Path(shards.__file__).resolve().parent == SRC / "winnow" / "io"


@pytest.mark.parametrize("n,spb", [(1, 1), (3, 2), (10, 3), (10_000, 157), (64, 64)])
def test_blocks_tile_the_shards_once(n, spb):
    from winnow.io.shards import block_shards, num_blocks

    blocks = [block_shards(b, spb, n) for b in range(num_blocks(n, spb))]
    assert [s for r in blocks for s in r] == list(range(n))
    assert all(0 < len(r) <= spb for r in blocks)
    with pytest.raises(ValueError, match="does not exist"):
        block_shards(num_blocks(n, spb), spb, n)


def test_shard_paths_follow_the_manifest_layout(tmp_path):
    from winnow.io.shards import BLOCK_LAYOUT, layout_entry, shard_paths

    m = {"shards": {"0": 5, "7": 2}, "layout": layout_entry(BLOCK_LAYOUT, 4, 8)}
    root = tmp_path / "tokens"
    assert shard_paths(m, root / "manifest.json") == {
        0: str(root / "block-0/tokens-0.bin"),
        7: str(root / "block-1/tokens-7.bin"),
    }
    # A manifest without a layout (a store written as flat files next to it)
    assert shard_paths({"shards": {"3": 1}}, root / "manifest.json") == {3: str(root / "tokens-3.bin")}
