from __future__ import annotations

import math

import pytest
import torch
from _tiny import make_docs, make_model, offline_env, train_tokenizer

from winnow.eval.perplexity import ALL, domain_perplexity, rolling_windows

torch.set_num_threads(1)

PREFIX = 0


@pytest.fixture(scope="module", autouse=True)
def _offline(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        offline_env(tmp_path_factory.mktemp("hf"), mp)
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    docs = make_docs(n_per_domain=3, sentences=3, seed=1)
    texts = [d["text"] for d in docs] + ["Café naïve — résumé über straße."]
    tok = train_tokenizer(texts, vocab_size=300)
    model = make_model(tok, max_positions=128, seed=0)
    pairs = [(d["domain"], d["text"]) for d in docs]
    pairs.append(("unicode", "Café naïve — résumé über straße. The crew found the anchor."))
    return tok, model, pairs


def _logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[i+1] | ids[:i+1]) for i in 0..len-2, float64, one unbatched forward: shape [len-1]."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids[:-1]])).logits[0].double()
    return logits.log_softmax(-1).gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)


# ---------------------------------------------------------------- windows


def _lm_eval_windows(tokens, max_len, context_len):
    """lm-eval's own windows, laid out as in HFLM._loglikelihood_tokens."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    out = []
    for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(tokens, PREFIX, max_len, context_len)):
        seq = (ctx + cont)[-(max_len + 1) :]
        out.append((seq, [False] * (len(seq) - len(cont)) + [True] * len(cont)))
    return out


@pytest.mark.parametrize("n", [0, 1, 5, 7, 8, 9, 16, 17, 23, 40])
@pytest.mark.parametrize("max_len,context_len", [(1, 1), (4, 1), (8, 1), (8, 3), (8, 8)])
def test_rolling_windows_match_lm_eval_and_cover_each_token_once(n, max_len, context_len):
    tokens = list(range(100, 100 + n))
    wins = rolling_windows(tokens, max_len, PREFIX, context_len=context_len)
    assert wins == _lm_eval_windows(tokens, max_len, context_len)
    predicted = [t for seq, mask in wins for t, m in zip(seq, mask, strict=True) if m]
    assert predicted == tokens  # every token exactly once, in order
    for i, (seq, mask) in enumerate(wins):
        assert len(seq) == len(mask) <= max_len + 1 and not mask[0]
        assert (seq[0] == PREFIX) == (i == 0)


def test_rolling_windows_lm_eval_docstring_example():
    wins = rolling_windows(list(range(10)), 4, -1)
    model_inputs = [(seq[:-1], [t for t, m in zip(seq, mask, strict=True) if m]) for seq, mask in wins]
    assert model_inputs == [
        ([-1, 0, 1, 2], [0, 1, 2, 3]),
        ([3, 4, 5, 6], [4, 5, 6, 7]),
        ([5, 6, 7, 8], [8, 9]),
    ]


# ---------------------------------------------------------------- log-likelihood


def test_full_window_equals_single_forward_pass(tiny):
    tok, model, pairs = tiny
    res = domain_perplexity(model, tok, pairs, max_len=128, batch_size=3, device="cpu")
    expected: dict[str, float] = {}
    for domain, text in pairs:
        ids = tok.encode(text, add_special_tokens=False)
        assert len(ids) < 128
        expected[domain] = expected.get(domain, 0.0) + float(_logprobs(model, [tok.eos_token_id] + ids).sum())
    for domain, value in expected.items():
        assert res[domain]["sum_logprob"] == pytest.approx(value, rel=1e-5)
    assert res[ALL]["sum_logprob"] == pytest.approx(sum(expected.values()), rel=1e-5)


def _context_by_rule(ids: list[int], t: int, max_len: int, prefix: int) -> list[int]:
    """The tokens token ``t`` is predicted from under lm-eval's rolling rule (context_len=1),
    written independently of rolling_windows: chunks of max_len after the first window, each
    read from one token before its start, except the final short chunk, which is read from a full
    window ending just before the document's last token."""
    if t < max_len:
        return [prefix] + ids[:t]
    chunk_start = max_len * (t // max_len)
    chunk_end = min(chunk_start + max_len, len(ids))
    return ids[chunk_end - max_len - 1 : t]


@pytest.mark.parametrize("max_len", [8, 16])
def test_rolling_equals_per_token_loop(tiny, max_len):
    tok, model, pairs = tiny
    res = domain_perplexity(model, tok, pairs, max_len=max_len, batch_size=4, device="cpu")
    expected: dict[str, float] = {}
    sliding: dict[str, float] = {}
    for domain, text in pairs:
        ids = tok.encode(text, add_special_tokens=False)
        assert len(ids) > 2 * max_len  # several windows, including a short last one
        full = [tok.eos_token_id] + ids
        for t in range(len(ids)):
            ctx = _context_by_rule(ids, t, max_len, tok.eos_token_id)
            assert 1 <= len(ctx) <= max_len
            lp = float(_logprobs(model, ctx + [ids[t]])[-1])
            expected[domain] = expected.get(domain, 0.0) + lp
            # A different (sliding, always-full) context: must give a clearly different sum, or
            # this test could not tell a wrong context from a right one.
            slide = full[max(0, t + 1 - max_len) : t + 1]
            sliding[domain] = sliding.get(domain, 0.0) + float(_logprobs(model, slide + [ids[t]])[-1])
    for domain, value in expected.items():
        assert res[domain]["sum_logprob"] == pytest.approx(value, rel=1e-5)
        assert abs(sliding[domain] - value) > 1e-3 * abs(value)


def test_per_document_sums_add_up_to_the_domains(tiny):
    tok, model, pairs = tiny
    per_doc: list[dict] = []
    res = domain_perplexity(model, tok, pairs, max_len=8, batch_size=3, device="cpu", per_doc=per_doc)
    assert [d["domain"] for d in per_doc] == [dom for dom, _ in pairs]
    for domain in {dom for dom, _ in pairs}:
        mine = [d for d in per_doc if d["domain"] == domain]
        assert sum(d["sum_logprob"] for d in mine) == pytest.approx(res[domain]["sum_logprob"], rel=1e-12)
        assert sum(d["n_tokens"] for d in mine) == res[domain]["n_tokens"]
    # each document alone gives its own sum: the per-document split is the document's
    alone = domain_perplexity(model, tok, [pairs[0]], max_len=8, batch_size=3, device="cpu")
    assert per_doc[0]["sum_logprob"] == pytest.approx(alone[pairs[0][0]]["sum_logprob"], rel=1e-9)


def test_matches_lm_eval_hflm_loglikelihood_rolling(tiny):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    tok, model, pairs = tiny
    lm = HFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=4, max_length=16)
    reqs = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0) for _, text in pairs]
    theirs = lm.loglikelihood_rolling(reqs, disable_tqdm=True)
    for (domain, text), value in zip(pairs, theirs, strict=True):
        ours = domain_perplexity(model, tok, [(domain, text)], max_len=16, batch_size=2, device="cpu")
        assert ours[domain]["sum_logprob"] == pytest.approx(value, rel=1e-5)


def test_batch_size_does_not_change_result(tiny):
    tok, model, pairs = tiny
    a = domain_perplexity(model, tok, pairs, max_len=8, batch_size=1, device="cpu")
    b = domain_perplexity(model, tok, iter(pairs), max_len=8, batch_size=7, device="cpu")
    for domain in a:
        assert b[domain]["sum_logprob"] == pytest.approx(a[domain]["sum_logprob"], rel=1e-6)


# ---------------------------------------------------------------- counts and formulas


def test_counts_and_formulas(tiny):
    tok, model, pairs = tiny
    model.train()
    pairs = pairs + [("sea", "")]  # an empty document counts as a document with nothing in it
    res = domain_perplexity(model, tok, pairs, max_len=16, batch_size=5, device="cpu")
    assert model.training  # mode restored
    assert set(res) == {d for d, _ in pairs} | {ALL}
    keys = ["sum_logprob", "n_tokens", "n_chars", "n_words", "n_bytes", "n_docs"]
    for domain in {d for d, _ in pairs}:
        texts = [t for d, t in pairs if d == domain]
        r = res[domain]
        assert r["n_docs"] == len(texts)
        assert r["n_tokens"] == sum(len(tok.encode(t, add_special_tokens=False)) for t in texts)
        assert r["n_chars"] == sum(len(t) for t in texts)
        assert r["n_words"] == sum(len(t.split()) for t in texts)
        assert r["n_bytes"] == sum(len(t.encode("utf-8")) for t in texts)
        s = r["sum_logprob"]
        assert s < 0
        assert r["ppl_token"] == pytest.approx(math.exp(-s / r["n_tokens"]))
        assert r["ppl_word"] == pytest.approx(math.exp(-s / r["n_words"]))
        assert r["ppl_char"] == pytest.approx(math.exp(-s / r["n_chars"]))
        assert r["bits_per_byte"] == pytest.approx(-s / r["n_bytes"] / math.log(2))
    assert res["unicode"]["n_bytes"] > res["unicode"]["n_chars"]
    for key in keys:
        assert res[ALL][key] == pytest.approx(sum(res[d][key] for d in res if d != ALL))
    # A random model over a ~300-token vocabulary: per-token perplexity is of the vocabulary's order.
    assert 10 < res[ALL]["ppl_token"] < 1e5


def test_max_len_beyond_position_table_is_refused(tiny):
    tok, model, pairs = tiny
    with pytest.raises(ValueError, match="max_position_embeddings"):
        domain_perplexity(model, tok, pairs, max_len=129, batch_size=2, device="cpu")
