"""The shared scorer stage: label normalisation, fit quality, best-step selection, resumable
scoring, retokenisation for a scorer with its own tokenizer."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from _tiny import offline_env, train_tokenizer

from winnow import scorer as S
from winnow.io.atomic import read_json
from winnow.io.shards import token_dtype, write_shard
from winnow.io.tables import EXAMPLES
from winnow.scorer import inference
from winnow.train.batches import ExampleStore

ROOT = Path(__file__).resolve().parents[2]
SEQ = 64
BACKBONE = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "max_position_embeddings": SEQ}


@pytest.fixture(scope="module", autouse=True)
def _env(tmp_path_factory):
    # Small CPU ops are several times slower with 2 threads on a shared 2-core box than with 1.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        offline_env(tmp_path_factory.mktemp("hf"), mp)
        yield
    torch.set_num_threads(threads)


def _texts(n: int = 600, seed: int = 0) -> list[str]:
    """Real-text snippets of 40–300 characters from the test corpus (several domains)."""
    with gzip.open(ROOT / "tests/data/tiny_corpus.jsonl.gz", "rt") as fh:
        docs = [json.loads(line)["text"] for line in fh]
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for text in docs:
        pos = 0
        while pos < len(text) and len(out) < n:
            k = int(rng.integers(40, 300))
            out.append(text[pos : pos + k])
            pos += k
    return out


def _store(tmp: Path, texts: list[str], tok, first_id: int = 1000) -> tuple[ExampleStore, np.ndarray]:
    """One shard of ``tokens(text) + [eos]`` (≤ SEQ tokens) per text, ids first_id, first_id + 1, …"""
    rows: dict[str, list] = {f.name: [] for f in EXAMPLES}
    pieces, offset = [], 0
    for i, text in enumerate(texts):
        ids = (tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])[:SEQ]
        pieces.append(np.asarray(ids))
        row = {
            "example_id": first_id + i,
            "doc_id": f"d{i}",
            "shard": 0,
            "offset": offset,
            "length": len(ids),
            "loss_start": 0,
            "loss_end": len(ids),
            "domain": "x",
            "split": "train",
        }
        for k, v in row.items():
            rows[k].append(v)
        offset += len(ids)
    dtype = token_dtype(len(tok))
    write_shard(tmp / "tokens-0.bin", np.concatenate(pieces), dtype)
    store = ExampleStore(pa.table(rows, schema=EXAMPLES), {0: tmp / "tokens-0.bin"}, dtype.str)
    return store, np.asarray(rows["example_id"], dtype=np.int64)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scorer_data")
    texts = _texts()
    tok = train_tokenizer(texts, vocab_size=300)
    store, ids = _store(tmp, texts, tok)
    # Learnable by a mean-pooled model: the share of tokens that carry a capital or punctuation.
    marked = np.array([any(c.isupper() or c in ",.;:'!?" for c in tok.decode([t])) for t in range(len(tok))])
    labels = np.array([marked[store.get(e)[0]].mean() for e in ids])
    return {"tmp": tmp, "texts": texts, "tok": tok, "store": store, "ids": ids, "labels": labels}


def _cfg(**kw) -> S.ScorerConfig:
    base = dict(
        backbone=BACKBONE,
        max_len=SEQ,
        lr=3e-3,
        epochs=4,
        batch_size=16,
        eval_batch_size=32,
        eval_every=20,
        warmup_steps=10,
        seed=0,
    )
    base.update(kw)
    return S.ScorerConfig(**base)


@pytest.fixture(scope="module")
def fitted(data):
    out = data["tmp"] / "scorer"
    report = S.fit_scorer(data["store"], data["ids"], data["labels"], _cfg(), out, tokenizer=data["tok"])
    return out, report


# ---------------------------------------------------------------------------------------------


def test_label_norm_zscores_with_train_stats_and_clips():
    y = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    norm = S.LabelNorm.fit(y, clip=3.0)
    assert norm.mean == pytest.approx(2.0) and norm.std == pytest.approx(np.sqrt(2.0))
    np.testing.assert_allclose(norm.apply(y), (y - 2.0) / np.sqrt(2.0))
    np.testing.assert_allclose(norm.apply([2.0 + 10 * np.sqrt(2.0), 2.0 - 4 * np.sqrt(2.0), 2.0]), [3.0, -3.0, 0.0])
    assert S.LabelNorm.fit(np.full(4, 7.0)).std == 1.0  # constant labels: finite z, not a division by 0
    with pytest.raises(ValueError):
        S.LabelNorm.fit(np.array([1.0, np.nan]))


def test_fit_normalises_with_the_training_split_only(data, tmp_path):
    ids, labels = data["ids"][:120], data["labels"][:120].copy()
    val = ids[:20]
    labels[0] = 1e6  # a validation outlier: must neither shift the stats nor escape the clip
    out = tmp_path / "norm"
    S.fit_scorer(data["store"], ids, labels, _cfg(epochs=0.2, eval_every=100), out, tokenizer=data["tok"], val_ids=val)
    meta = read_json(out / "scorer.json")
    train_labels = labels[20:]
    assert meta["label_norm"]["mean"] == pytest.approx(train_labels.mean())
    assert meta["label_norm"]["std"] == pytest.approx(train_labels.std())
    v = pq.read_table(out / "val.parquet").to_pydict()
    assert v["example_id"] == sorted(val.tolist())
    assert v["target"][0] == 3.0
    expected = np.clip((labels[:20] - train_labels.mean()) / train_labels.std(), -3, 3)
    np.testing.assert_allclose(v["target"], expected, rtol=1e-6, atol=1e-6)
    assert meta["report"]["n_train"] == 100 and meta["report"]["n_val"] == 20


def test_the_scorer_reports_winnow_stats_spearman_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 200).astype(float)  # many ties
    b = a + rng.normal(0, 2, 200)
    b[:50] = np.round(b[:50])
    assert S.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert np.isnan(S.spearman(np.ones(5), np.arange(5.0)))


def test_fit_learns_and_best_checkpoint_reproduces_val_metrics(data, fitted, tmp_path):
    out, report = fitted
    assert report["val_spearman"] > 0.7, report
    assert report["n_train"] + report["n_val"] == len(data["ids"])
    assert report["n_val"] == int(np.ceil(0.1 * len(data["ids"])))
    assert {p.name for p in out.iterdir()} == {
        "model.safetensors",
        "config.json",
        "scorer.json",
        "val.parquet",
        "tokenizer",
    }
    best = max(report["curve"], key=lambda c: c["val_spearman"])
    assert report["best_step"] == best["step"] and report["val_spearman"] == best["val_spearman"]

    val = pq.read_table(out / "val.parquet").to_pydict()
    S.score_ids(out, data["store"], val["example_id"], 32, tmp_path / "val_scores.parquet")
    scores = pq.read_table(tmp_path / "val_scores.parquet")
    assert scores.schema.field("example_id").type == pa.int64() and scores.schema.field("score").type == pa.float32()
    assert scores["example_id"].to_pylist() == val["example_id"]
    pred = scores["score"].to_numpy()
    np.testing.assert_allclose(pred, val["prediction"], atol=1e-6)
    m = S.val_metrics(pred, np.asarray(val["target"], dtype=np.float64))
    assert m["spearman"] == pytest.approx(report["val_spearman"], abs=1e-6)
    assert m["mse"] == pytest.approx(report["val_mse"], rel=1e-4)


def test_selection_keeps_the_best_step_not_the_last(data, tmp_path):
    ids, labels = data["ids"][:300], data["labels"][:300]

    def sabotage(step, entry, model):
        # Flip the head after the step-40 evaluation: the next one ranks the validation set
        # backwards and the remaining steps (low lr at the end of the cosine) only partly recover.
        if step == 40:
            with torch.no_grad():
                model.head.weight.neg_()
                model.head.bias.neg_()

    out = tmp_path / "sel"
    report = S.fit_scorer(
        data["store"], ids, labels, _cfg(epochs=4, eval_every=10), out, tokenizer=data["tok"], on_eval=sabotage
    )
    curve = {c["step"]: c for c in report["curve"]}
    last = report["curve"][-1]
    assert report["best_step"] <= 40 < last["step"]
    assert curve[50]["val_spearman"] < 0
    assert last["val_spearman"] < report["val_spearman"] - 0.05
    assert curve[report["best_step"]]["val_spearman"] == max(c["val_spearman"] for c in report["curve"])
    assert read_json(out / "scorer.json")["best_step"] == report["best_step"]

    val = pq.read_table(out / "val.parquet")["example_id"].to_numpy()
    S.score_ids(out, data["store"], val, 32, tmp_path / "s.parquet")
    pred = pq.read_table(tmp_path / "s.parquet")["score"].to_numpy()
    target = pq.read_table(out / "val.parquet")["target"].to_numpy().astype(np.float64)
    m = S.val_metrics(pred, target)
    assert m["spearman"] == pytest.approx(curve[report["best_step"]]["val_spearman"], abs=1e-6)
    assert m["mse"] == pytest.approx(curve[report["best_step"]]["val_mse"], rel=1e-4)


class _Killed(Exception):
    pass


def _kill_after(monkeypatch, n_batches: int) -> None:
    real = S._predict_batch
    calls = {"n": 0}

    def dying(*args, **kw):
        if calls["n"] == n_batches:
            raise _Killed
        calls["n"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(inference, "_predict_batch", dying)  # where score_ids looks it up


def test_score_ids_resumes_to_identical_bytes(data, fitted, tmp_path, monkeypatch):
    model_dir, _ = fitted
    ids = data["ids"][::-1].copy()  # any order; the output keeps it
    clean = tmp_path / "clean.parquet"
    S.score_ids(model_dir, data["store"], ids, 16, clean, state_path=tmp_path / "clean-state/state.json", flush_every=4)
    assert not list((tmp_path / "clean-state").iterdir())  # parts and state cleaned up

    out, state = tmp_path / "resumed.parquet", tmp_path / "st/state.json"
    with monkeypatch.context() as mp:
        _kill_after(mp, 13)  # 3 flushed parts (12 batches) + 1 batch that is lost
        with pytest.raises(_Killed):
            S.score_ids(model_dir, data["store"], ids, 16, out, state_path=state, flush_every=4)
    assert not out.exists()
    saved = read_json(state)
    assert saved["next_index"] == 12 * 16 and len(saved["parts"]) == 3
    info = S.score_ids(model_dir, data["store"], ids, 16, out, state_path=state, flush_every=4)
    assert info["resumed_at"] == 12 * 16
    assert out.read_bytes() == clean.read_bytes()
    assert not state.exists() and not list(state.parent.glob("*part*"))


def test_score_state_of_other_ids_is_discarded(data, fitted, tmp_path, monkeypatch):
    model_dir, _ = fitted
    ids = data["ids"]
    state = tmp_path / "st/state.json"
    with monkeypatch.context() as mp:
        _kill_after(mp, 9)
        with pytest.raises(_Killed):
            S.score_ids(model_dir, data["store"], ids, 16, tmp_path / "a.parquet", state_path=state, flush_every=2)
    assert read_json(state)["next_index"] == 8 * 16

    other = ids[5:].copy()  # shifted list: every position now holds another id
    info = S.score_ids(model_dir, data["store"], other, 16, tmp_path / "b.parquet", state_path=state, flush_every=2)
    assert info["resumed_at"] == 0
    S.score_ids(model_dir, data["store"], other, 16, tmp_path / "fresh.parquet")
    assert (tmp_path / "b.parquet").read_bytes() == (tmp_path / "fresh.parquet").read_bytes()
    got = pq.read_table(tmp_path / "b.parquet")["example_id"].to_numpy()
    np.testing.assert_array_equal(got, other)


def test_retokenize_roundtrip_and_fit_with_scorer_tokenizer(data, tmp_path):
    src = data["tok"]
    dst = train_tokenizer(data["texts"], vocab_size=500)
    assert src.get_vocab() != dst.get_vocab()
    ids = data["ids"][:200]
    mapping = S.retokenize(data["store"], ids, src, dst, max_len=48)
    assert sorted(mapping) == sorted(ids.tolist())
    for eid in ids[:50].tolist():
        tokens = data["store"].get(eid)[0]
        text = src.decode(tokens.tolist(), skip_special_tokens=True)
        assert len(mapping[eid]) <= 48
        full = S.retokenize(data["store"], [eid], src, dst, max_len=None)[eid]
        assert dst.decode(full, skip_special_tokens=True) == text
        assert mapping[eid] == full[:48]
        if tokens[-1] == src.eos_token_id:  # the corpus EOS becomes the scorer's EOS
            assert full[-1] == dst.eos_token_id and full.count(dst.eos_token_id) == 1

    check = S.roundtrip_check(data["store"], ids, src, dst, n=32, seed=1, max_len=48)
    assert check["passed"] and check["n_checked"] == 32 and check["min_ratio"] >= 0.9
    assert {s["example_id"] for s in check["samples"]} <= set(ids.tolist())
    assert check == S.roundtrip_check(data["store"], ids, src, dst, n=32, seed=1, max_len=48)  # seeded

    S.write_token_lists(tmp_path / "retok.parquet", mapping)
    assert S.read_token_lists(tmp_path / "retok.parquet") == mapping

    # The same fit/score code runs on the retokenized inputs through an encoder.
    out = tmp_path / "retok-scorer"
    enc = S.dict_encoder(mapping)
    report = S.fit_scorer(
        None, ids, data["labels"][:200], _cfg(max_len=48, epochs=1, eval_every=100), out, tokenizer=dst, encoder=enc
    )
    meta = read_json(out / "scorer.json")
    assert meta["inputs"] == "encoder" and meta["tokenizer"]["vocab_size"] == len(dst)
    assert report["n_val"] == 20
    with pytest.raises(ValueError, match="encoder"):
        S.score_ids(out, data["store"], ids[:10], 8, tmp_path / "x.parquet")
    S.score_ids(out, None, ids[:10], 8, tmp_path / "x.parquet", encoder=enc)
    assert pq.read_table(tmp_path / "x.parquet").num_rows == 10


def test_roundtrip_check_fails_for_a_lossy_tokenizer(data):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # A word-level vocabulary of a few words: most text becomes [UNK] and is lost on decode.
    words = {"[UNK]": 0, "<eos>": 1, "the": 2, "and": 3, "of": 4}
    tok = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    lossy = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<eos>", pad_token="<eos>")
    check = S.roundtrip_check(data["store"], data["ids"], data["tok"], lossy, n=8)
    assert not check["passed"] and check["n_failed"] > 0 and check["min_ratio"] < 0.9


def test_token_ids_beyond_the_scorer_vocabulary_fail_early(data, tmp_path):
    small = dict(BACKBONE, vocab_size=100)  # corpus ids go up to 299
    with pytest.raises(ValueError, match="vocabulary"):
        S.fit_scorer(data["store"], data["ids"][:50], data["labels"][:50], _cfg(backbone=small), tmp_path / "v")


def test_pretrained_local_backbone_with_last_pooling(data, tmp_path):
    from _tiny import save_tiny

    from winnow.data.tokenizer import load

    model_dir, tok_dir = save_tiny(tmp_path / "pre", data["texts"][:200], max_positions=SEQ)
    tok = load(tok_dir)
    store, ids = _store(tmp_path, data["texts"][:120], tok, first_id=0)
    labels = np.arange(len(ids), dtype=np.float64)
    cfg = _cfg(backbone=None, pretrained=str(model_dir), pooling="last", epochs=0.5, eval_every=100)
    report = S.fit_scorer(store, ids, labels, cfg, tmp_path / "out", tokenizer=tok)
    model, meta = S.load_scorer(tmp_path / "out")
    assert meta["config"]["pretrained"] == str(model_dir) and meta["config"]["pooling"] == "last"
    assert type(model.backbone).__name__ == "GPTNeoXModel" and report["n_val"] == 12
    # The backbone starts from the folder's weights, not from a random init.
    from safetensors.torch import load_file

    src = load_file(str(model_dir / "model.safetensors"))
    fresh = S.build_scorer(cfg, None, None, tok.pad_token_id).backbone.state_dict()
    for name, value in fresh.items():
        torch.testing.assert_close(value, src[f"gpt_neox.{name}"])
    with pytest.raises(FileNotFoundError):
        S.fit_scorer(
            store, ids, labels, _cfg(backbone=None, pretrained=str(tmp_path / "nope")), tmp_path / "x", tokenizer=tok
        )


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_causal_backbone_needs_no_padding_mask(pooling):
    """score_ids' CUDA path runs the backbone without the padding mask (fused causal kernels): for a
    causal backbone and right padding that is the same function, whatever the pooling."""
    bb = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "max_position_embeddings": 32}
    model = S.build_scorer(S.ScorerConfig(backbone=bb, max_len=16, pooling=pooling), 60, 0, 0).eval()
    assert model.backbone.config.model_type in S.CAUSAL_BACKBONES
    rng = np.random.default_rng(0)
    seqs = [rng.integers(2, 60, size=n).tolist() for n in (16, 1, 7, 0, 12)]
    ids, attn = S.pad_batch(seqs, 0, 16)
    with torch.no_grad():
        masked = model(ids, attn)
        unmasked = model(ids, attn, backbone_mask=False)
    assert torch.allclose(masked, unmasked, rtol=1e-5, atol=1e-6)


def test_scored_batches_pipelined_in_order():
    """The CUDA path fetches batch i after launching batch i+1: the scores still come out in order,
    one array per batch (what the resumable parts are cut from)."""

    class Lagged:
        def __init__(self):
            self.launched = []

        def launch(self, seqs, pad_id):
            self.launched.append(len(seqs))
            return np.asarray([s[0] for s in seqs], dtype=np.float32)

        @staticmethod
        def fetch(handle):
            return handle

    ids = np.arange(23)
    fast = Lagged()
    got = list(S._scored_batches(None, lambda e: [int(e) * 2], ids, 5, 4, 0, 8, None, False, fast))
    assert [len(g) for g in got] == [4, 4, 4, 4, 2] and fast.launched == [4, 4, 4, 4, 2]
    assert np.array_equal(np.concatenate(got), 2 * ids[5:].astype(np.float32))
