"""winnow.data.tokenizer.train_bpe and winnow.data.tokenize: determinism, packing, loss regions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _tiny import offline_env

from winnow.data.tokenize import ID_STRIDE, make_example_id, shard_of, tokenize_shard
from winnow.data.tokenizer import EOS, load, train_bpe
from winnow.io.tables import DOCS, EXAMPLES
from winnow.params import schema_params

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "data" / "default_corpus" / "corpus.parquet"
SEQ_LEN = 32
NUM_SHARDS = 3


def corpus_texts(max_chars: int) -> list[str]:
    texts, n = [], 0
    for t in pq.read_table(CORPUS, columns=["text"])["text"].to_pylist():
        texts.append(t)
        n += len(t)
        if n >= max_chars:
            break
    return texts


@pytest.fixture(scope="module")
def hf_env(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    offline_env(tmp_path_factory.mktemp("hf"), mp)
    mp.setenv("RAYON_NUM_THREADS", "1")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def tok_dir(hf_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_bpe(corpus_texts(20_000), vocab_size=400, out_dir=out)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load(tok_dir)


def test_train_bpe_is_deterministic(hf_env, tok_dir, tmp_path):
    again = tmp_path / "again"
    train_bpe(corpus_texts(20_000), vocab_size=400, out_dir=again)
    ref = (tok_dir / "tokenizer.json").read_bytes()
    assert (again / "tokenizer.json").read_bytes() == ref
    # another process (new hash seeds) with two threads gives the same bytes
    third = tmp_path / "third"
    code = (
        "import sys; from winnow.data.tokenizer import train_bpe; import test_tokenize as t;"
        "train_bpe(t.corpus_texts(20_000), vocab_size=400, out_dir=sys.argv[1])"
    )
    env = {**os.environ, "RAYON_NUM_THREADS": "2", "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{Path(__file__).parent}"}
    subprocess.run([sys.executable, "-c", code, str(third)], check=True, env=env, timeout=120)
    assert (third / "tokenizer.json").read_bytes() == ref
    # a different corpus gives a different tokenizer (the comparison can fail)
    other = tmp_path / "other"
    train_bpe(corpus_texts(20_000)[5:], vocab_size=400, out_dir=other)
    assert (other / "tokenizer.json").read_bytes() != ref


def test_trained_tokenizer_folder(tok, tok_dir):
    assert not [p for p in tok_dir.parent.iterdir() if p.name.startswith(".tmp-")]
    assert len(tok) <= 400
    assert tok.eos_token == EOS and tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    text = "Thou shalt not — naïve café 123"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # byte-level: lossless


PROMPT_DOCS = [
    # (doc_id, prompt, response)
    ("qa/short", "Q: capital of France?\nA: ", "Paris."),
    ("qa/empty-prompt", "", "Just a response with no prompt at all."),
    ("qa/long-prompt", "Context: " + "the river runs to the sea and " * 8 + "\nQ: where? A: ", "To the sea."),
    ("qa/long-response", "Q: recite\nA: ", "and the earth was without form, and void; " * 6),
]


def _fill_to_exact(tok, n_tokens: int) -> str:
    """A text that tokenizes to exactly ``n_tokens`` tokens, so text + eos leaves a lone eos piece."""
    text = " ".join(corpus_texts(5000)[:3])
    for c in range(n_tokens, len(text)):  # token counts grow by small steps with the prefix
        if len(tok(text[:c], add_special_tokens=False)["input_ids"]) == n_tokens and text[c - 1].strip():
            return text[:c]
    raise AssertionError("no prefix with the exact token count")


@pytest.fixture(scope="module")
def docs(tok) -> pa.Table:
    texts = corpus_texts(12_000)
    rows = []
    for i, t in enumerate(texts[:40]):
        rows.append(
            {"doc_id": f"c/{i}", "text": t, "domain": f"d{i % 2}", "split": ["train", "val"][i % 2], "prompt": None}
        )
    for doc_id, p, r in PROMPT_DOCS:
        rows.append({"doc_id": doc_id, "text": p + r, "domain": "qa", "split": "test", "prompt": p})
    rows.append(
        {"doc_id": "exact/full", "text": _fill_to_exact(tok, SEQ_LEN), "domain": "x", "split": "train", "prompt": None}
    )
    for r in rows:
        r["source"] = "test"
    return pa.Table.from_pylist(rows, schema=DOCS)


@pytest.fixture(scope="module")
def shards(docs, tok):
    return {s: tokenize_shard(docs, tok, s, NUM_SHARDS, SEQ_LEN, batch_docs=7) for s in range(NUM_SHARDS)}


def _by_doc(examples: pa.Table) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in examples.to_pylist():
        out.setdefault(row["doc_id"], []).append(row)
    return out


def test_every_doc_in_exactly_its_shard(docs, shards):
    all_ids = docs["doc_id"].to_pylist()
    seen = []
    for s, (_, examples, stats) in shards.items():
        mine = {d for d in all_ids if shard_of(d, NUM_SHARDS) == s}
        assert set(examples["doc_id"].to_pylist()) == mine  # every doc of the shard, no other shard's
        assert stats["docs"] == len(mine)
        seen += sorted(mine)
    assert sorted(seen) == sorted(all_ids)
    assert len({shard_of(d, NUM_SHARDS) for d in all_ids}) == NUM_SHARDS  # every shard gets docs


def test_example_ids_offsets_lengths(shards):
    for s, (tokens, examples, stats) in shards.items():
        assert examples.schema.equals(EXAMPLES)
        cols = examples.to_pydict()
        n = examples.num_rows
        assert cols["example_id"] == [s * 2**32 + i for i in range(n)]
        assert cols["example_id"] == [make_example_id(s, i) for i in range(n)]
        assert set(cols["shard"]) == {s}
        assert all(2 <= length <= SEQ_LEN for length in cols["length"])
        offsets = np.array(cols["offset"])
        lengths = np.array(cols["length"])
        assert offsets[0] == 0
        np.testing.assert_array_equal(offsets[1:], (offsets + lengths)[:-1])  # contiguous, no gaps
        assert offsets[-1] + lengths[-1] == tokens.size == stats["tokens"]
        assert cols["loss_end"] == cols["length"]
        assert stats["examples"] == n
    assert ID_STRIDE == 2**32


def test_plain_docs_round_trip(docs, shards, tok):
    rows = {d["doc_id"]: d for d in docs.to_pylist()}
    dropped = 0
    for tokens, examples, stats in shards.values():
        for doc_id, exs in _by_doc(examples).items():
            doc = rows[doc_id]
            if doc["prompt"] is not None:
                continue
            assert [e["offset"] for e in exs] == sorted(e["offset"] for e in exs)
            assert all(e["loss_start"] == 0 for e in exs)
            assert all(e["domain"] == doc["domain"] and e["split"] == doc["split"] for e in exs)
            got = np.concatenate([tokens[e["offset"] : e["offset"] + e["length"]] for e in exs]).tolist()
            full = tok(doc["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            assert all(e["length"] == SEQ_LEN for e in exs[:-1])  # only the last piece is short
            if len(full) % SEQ_LEN == 1:  # a lone final token (the eos) carries no loss: dropped
                assert got == full[:-1]
                assert tok.decode(got) == doc["text"]
                dropped += 1
            else:
                assert got == full
                assert tok.decode(got) == doc["text"] + EOS
        dropped_stat = stats.get("dropped_pieces", 0)
        assert dropped_stat == stats.get("dropped_tokens", 0)
    assert dropped == sum(s[2].get("dropped_pieces", 0) for s in shards.values()) >= 1  # exact/full


def test_prompt_response_loss_region(docs, shards, tok):
    found = 0
    for tokens, examples, _ in shards.values():
        for e in examples.to_pylist():
            spec = {d: (p, r) for d, p, r in PROMPT_DOCS}.get(e["doc_id"])
            if spec is None:
                continue
            found += 1
            prompt, response = spec
            piece = tokens[e["offset"] : e["offset"] + e["length"]].tolist()
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            r_ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            assert e["length"] <= SEQ_LEN and e["loss_end"] == e["length"]
            head, tail = piece[: e["loss_start"]], piece[e["loss_start"] :]
            if len(p_ids) + len(r_ids) <= SEQ_LEN:  # fits: whole prompt, loss on the response
                assert e["loss_start"] == len(p_ids)
                assert tok.decode(head) == prompt
                assert tok.decode(tail) == response + EOS
            elif len(r_ids) <= SEQ_LEN - 1:  # prompt's tail kept so the response fits
                assert e["doc_id"] == "qa/long-prompt"
                assert e["length"] == SEQ_LEN and tail == r_ids
                assert head == p_ids[len(p_ids) - e["loss_start"] :]
                assert tok.decode(tail) == response + EOS
            else:  # response alone too long: one prompt token of context, response cut
                assert e["doc_id"] == "qa/long-response"
                assert e["loss_start"] == 1 and head == p_ids[-1:]
                assert tail == r_ids[: SEQ_LEN - 1]
    assert found == len(PROMPT_DOCS)  # one example per prompt/response doc


def test_shard_assignment_independent_of_table_order(docs, shards, tok):
    perm = np.random.default_rng(1).permutation(docs.num_rows)
    shuffled = docs.take(pa.array(perm))
    for s, (tokens, examples, stats) in shards.items():
        t2, e2, st2 = tokenize_shard(shuffled, tok, s, NUM_SHARDS, SEQ_LEN)
        assert set(e2["doc_id"].to_pylist()) == set(examples["doc_id"].to_pylist())
        assert st2 == stats
        a, b = _by_doc(examples), _by_doc(e2)
        for doc_id in a:
            toks_a = [tokens[x["offset"] : x["offset"] + x["length"]].tolist() for x in a[doc_id]]
            toks_b = [t2[x["offset"] : x["offset"] + x["length"]].tolist() for x in b[doc_id]]
            assert toks_a == toks_b
    assert {shard_of(f"x/{i}", 7) for i in range(200)} == set(range(7))


def test_empty_shard_and_seq_len_check(docs, tok):
    one = docs.slice(0, 1)
    other = next(s for s in range(NUM_SHARDS) if s != shard_of(one["doc_id"][0].as_py(), NUM_SHARDS))
    tokens, examples, stats = tokenize_shard(one, tok, other, NUM_SHARDS, SEQ_LEN)
    assert tokens.size == 0 and examples.num_rows == 0 and examples.schema.equals(EXAMPLES)
    assert stats["examples"] == 0
    with pytest.raises(ValueError, match="seq_len"):
        tokenize_shard(docs, tok, 0, NUM_SHARDS, 1)


# ---- issue 9: the vectorised tokenize_shard against the per-piece loop it replaced ----------------
def _loop_tokenize_shard(docs, tokenizer, shard, num_shards, seq_len, batch_docs=256):
    """The implementation before issue 9 (HF call per batch, a Python loop per piece), verbatim
    but for the progress display: the reference the faster path must reproduce exactly."""
    from collections import Counter

    from winnow.data.tokenize import _encode, _prompt_response_pieces

    eos = tokenizer.eos_token_id
    cols = docs.select(["doc_id", "text", "domain", "split", "prompt"]).to_pydict()
    rows = [i for i, d in enumerate(cols["doc_id"]) if shard_of(d, num_shards) == shard]
    out_tokens, ex, stats, offset = [], {f.name: [] for f in EXAMPLES}, Counter(), 0
    for start in range(0, len(rows), batch_docs):
        batch = rows[start : start + batch_docs]
        texts = [cols["text"][i] for i in batch]
        enc = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        for j, i in enumerate(batch):
            prompt = cols["prompt"][i]
            if prompt is not None:
                p_ids = _encode(tokenizer, prompt)
                r_ids = _encode(tokenizer, cols["text"][i][len(prompt) :])
                pieces = _prompt_response_pieces(p_ids + r_ids + [eos], len(p_ids), seq_len)
            else:
                ids = enc[j] + [eos]
                pieces = [(ids[k : k + seq_len], 0) for k in range(0, len(ids), seq_len)]
            stats["docs"] += 1
            for piece, loss_start in pieces:
                if len(piece) < 2 or loss_start >= len(piece):
                    stats["dropped_pieces"] += 1
                    stats["dropped_tokens"] += len(piece)
                    continue
                ex["example_id"].append(make_example_id(shard, len(ex["example_id"])))
                ex["doc_id"].append(cols["doc_id"][i])
                ex["shard"].append(shard)
                ex["offset"].append(offset)
                ex["length"].append(len(piece))
                ex["loss_start"].append(loss_start)
                ex["loss_end"].append(len(piece))
                ex["domain"].append(cols["domain"][i])
                ex["split"].append(cols["split"][i])
                out_tokens.append(np.asarray(piece, dtype=np.int64))
                offset += len(piece)
                stats["tokens"] += len(piece)
    tokens = np.concatenate(out_tokens) if out_tokens else np.zeros(0, dtype=np.int64)
    stats["examples"] = len(ex["example_id"])
    return tokens, pa.table(ex, schema=EXAMPLES), dict(stats)


def _assert_same(new, old):
    assert new[0].dtype == old[0].dtype == np.int64
    np.testing.assert_array_equal(new[0], old[0])
    assert new[0].tobytes() == old[0].tobytes()
    assert new[1].schema.equals(EXAMPLES) and new[1].equals(old[1])
    assert new[2] == old[2]


@pytest.mark.parametrize("seq_len", [2, 3, SEQ_LEN, 1000])
def test_vectorised_path_equals_the_loop(docs, tok, seq_len):
    special = pa.Table.from_pylist(
        [{"doc_id": "sp/1", "text": f"a literal {EOS} inside", "domain": "x", "source": "t", "split": "train", "prompt": None},
         {"doc_id": "sp/2", "text": "x", "domain": "x", "source": "t", "split": "train", "prompt": None}],
        schema=DOCS,
    )  # fmt: skip
    table = pa.concat_tables([docs, special])
    for shard in range(NUM_SHARDS):
        for batch_docs in (1, 7, 256):
            new = tokenize_shard(table, tok, shard, NUM_SHARDS, seq_len, batch_docs=batch_docs)
            _assert_same(new, _loop_tokenize_shard(table, tok, shard, NUM_SHARDS, seq_len, batch_docs))


def test_vectorised_path_equals_the_loop_on_the_corpus(tok):
    from winnow.data.ingest import IngestOptions, ingest

    opts = IngestOptions(domain_field="domain", id_field="doc_id", max_chars=200_000)
    corpus = ingest([str(CORPUS)], opts).docs.slice(0, 600)
    for shard in range(2):
        _assert_same(tokenize_shard(corpus, tok, shard, 2, 128), _loop_tokenize_shard(corpus, tok, shard, 2, 128))
    # an empty shard
    _assert_same(
        tokenize_shard(corpus.slice(0, 0), tok, 0, 2, 128), _loop_tokenize_shard(corpus.slice(0, 0), tok, 0, 2, 128)
    )


def test_blocks_of_shards_through_the_cli_equal_tokenize_shard(docs, tok, tok_dir, shards, tmp_path):
    """`data tokenize` writes a block's shards exactly as tokenize_shard makes them from all docs;
    `data merge-examples` gathers every block, and the manifest's layout leads readers to the files."""
    from winnow.cli import main as cli
    from winnow.io.shards import open_shard
    from winnow.io.tables import write_table
    from winnow.train.batches import open_store

    docs_path = tmp_path / "docs.parquet"
    write_table(docs_path, docs, DOCS)
    common = ["--params", schema_params("data tokenize", shards_per_block=2, num_shards=NUM_SHARDS, seq_len=SEQ_LEN)]
    blocks = [tmp_path / "tokens" / f"block-{b}" for b in (0, 1)]  # shards {0, 1} and {2}
    for b, out in enumerate(blocks):
        cli(["data", "tokenize", "--docs", str(docs_path), "--tokenizer", str(tok_dir / "tokenizer.json"),
             "--block", str(b), *common, "--out", str(out)])  # fmt: skip
    assert sorted(p.name for p in blocks[1].iterdir() if not p.name.endswith(".prov.json")) == [
        "examples-2.parquet",
        "tokens-2.bin",
    ]
    examples, manifest = tmp_path / "tokens/examples.parquet", tmp_path / "tokens/manifest.json"
    merge = ["data", "merge-examples", "--tokenizer", str(tok_dir / "tokenizer.json"), *common]
    cli([*merge, "--blocks", *map(str, blocks), "--out", str(examples), "--manifest", str(manifest)])
    store, man = open_store(examples, manifest)
    assert man["layout"] == {"tokens": "block-{block}/tokens-{shard}.bin", "shards_per_block": 2, "num_shards": 3}
    for s, (tokens, table, _) in shards.items():
        block = blocks[s // 2]
        assert np.array_equal(open_shard(block / f"tokens-{s}.bin", man["dtype"]), tokens)
        assert pq.read_table(block / f"examples-{s}.parquet").equals(table)
        for eid, off, n in zip(*(table[c].to_pylist() for c in ("example_id", "offset", "length")), strict=True):
            assert np.array_equal(store.get(eid)[0], tokens[off : off + n])
    # A block store keeps only its shards' examples (a scoring job of one block).
    part, _ = open_store(examples, manifest, only_shards=range(2, 3))
    assert set(part.shards) == {2} and set(part.cols["shard"].tolist()) == {2}
    with pytest.raises(ValueError, match="must name blocks 0..1"):
        cli([*merge, "--blocks", str(blocks[0]), "--out", str(examples), "--manifest", str(manifest)])
