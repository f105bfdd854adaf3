"""The GPU fast paths' building blocks, checked against plain autograd on the CPU.

``winnow.train.fused_ce`` (the LM head fused into the loss, gradients computed in the forward)
against ``F.cross_entropy`` + autograd; ``winnow.models.attention.CAUSAL_SDPA`` against
transformers' ``sdpa`` (same outputs, and under ``torch.compile`` SDPA really gets ``is_causal``
without a mask tensor).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _neox import one_thread, tiny_neox  # noqa: F401 (autouse fixture)

from winnow.models import attention
from winnow.train.fused_ce import fused_forward_ce_sum, linear_ce_sum
from winnow.train.trainer import forward_ce_sum


def _reference(h, w, targets, mask, compute_dtype):
    logits = (h.to(compute_dtype) @ w.to(compute_dtype).t()).float()
    return (F.cross_entropy(logits, targets, reduction="none") * mask).sum()


def _loss_and_grads(fn, h0, w0, targets, mask, compute_dtype):
    h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    loss = fn(h, w, targets, mask, compute_dtype)
    (2.5 * loss).backward()  # the upstream gradient scales both
    return loss.detach(), h.grad, w.grad


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("chunk", [5, 64])  # 5 does not divide n: the last chunk is short
def test_linear_ce_sum_matches_autograd(chunk):
    g = torch.Generator().manual_seed(0)
    n, d, v = 23, 8, 37
    h0 = torch.randn(n, d, generator=g, dtype=torch.float64)
    w0 = torch.randn(v, d, generator=g, dtype=torch.float64)
    targets = torch.randint(0, v, (n,), generator=g)
    mask = torch.rand(n, generator=g) > 0.3

    def ours(*a):
        return linear_ce_sum(*a[:4], chunk=chunk, compute_dtype=a[4])

    exact = _loss_and_grads(_reference, h0, w0, targets, mask, torch.float64)
    fused = _loss_and_grads(ours, h0, w0, targets, mask, torch.float64)
    # fp64 GEMMs, fp32 softmax on both sides (as in the trainer's masked_ce_sum): fp32 rounding apart
    for ref, got in zip(exact, fused):
        assert got.dtype == ref.dtype
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert exact[2].abs().sum() > 0
    # bf16 GEMMs: no further from the exact values than autograd under the same bf16 casts
    auto16 = _loss_and_grads(_reference, h0, w0, targets, mask, torch.bfloat16)
    fused16 = _loss_and_grads(ours, h0, w0, targets, mask, torch.bfloat16)
    for ref, a16, f16 in zip(exact, auto16, fused16):
        assert f16.dtype == ref.dtype
        assert _rel(f16, ref) <= 2 * _rel(a16, ref) + 1e-3, (_rel(f16, ref), _rel(a16, ref))


def test_masked_rows_get_no_gradient():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([True, False, True, False, False, True])
    linear_ce_sum(h, w, torch.arange(6), mask, chunk=4).backward()
    assert h.grad[~mask].abs().max() == 0 and h.grad[mask].abs().min() > 0


def test_fused_forward_equals_the_trainer_forward_on_a_tiny_neox():
    model = tiny_neox(vocab=41, seq=12, pad=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 41, (3, 12), generator=g)
    loss_mask = torch.rand(3, 12, generator=g) > 0.25
    out = []
    for fn, kw in ((forward_ce_sum, {}), (fused_forward_ce_sum, {"chunk": 7})):
        model.zero_grad()
        loss = fn(model, ids, None, loss_mask, False, **kw)
        (loss / 10).backward()
        out.append((loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}))
    # fp64 weights, fp32 softmax on both sides: agreement to fp32 rounding
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-6, atol=1e-6)
    assert out[0][1].keys() == out[1][1].keys()
    for k, ref in out[0][1].items():
        torch.testing.assert_close(out[1][1][k], ref, rtol=1e-5, atol=1e-7, msg=k)


def test_causal_mask_function_skips_only_when_valid():
    attention.register()
    kw = dict(batch_size=2, q_length=5, kv_length=5, device="cpu", dtype=torch.float32)
    assert attention._causal_sdpa_mask(**kw) is None
    padded = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    mask = attention._causal_sdpa_mask(**kw, attention_mask=padded)
    assert mask is not None and mask.shape == (2, 1, 5, 5) and not bool(mask[1, 0, 4, 4])
    # transformers forbids the skip (extra mask functions, packed sequences): the mask is built
    assert attention._causal_sdpa_mask(**kw, allow_is_causal_skip=False) is not None


def _sdpa_calls(fn, *args) -> list[tuple]:
    """(is_causal, attn_mask, n positional args) of each SDPA call in ``torch.compile(fn)``'s graph."""
    graphs = []

    def record(gm, inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    try:
        torch.compile(fn, backend=record)(*args)
    finally:
        torch._dynamo.reset()
    return [
        (n.kwargs.get("is_causal"), n.kwargs.get("attn_mask"), len(n.args))
        for gm in graphs
        for n in gm.graph.nodes
        if n.target is F.scaled_dot_product_attention
    ]


def test_trainer_forward_under_compile_gets_sdpa_is_causal(tmp_path):
    model = tiny_neox(vocab=41, seq=12, pad=0, dtype=torch.float32)
    model.set_attn_implementation("sdpa")
    ids = torch.randint(1, 41, (2, 12), generator=torch.Generator().manual_seed(3))
    loss_mask = torch.ones(2, 12, dtype=torch.bool)
    padding = torch.ones(2, 12, dtype=torch.long)
    padding[1, 8:] = 0

    def logits(m, ids, am):
        return m(input_ids=ids, attention_mask=am).logits

    ref, ref_padded = logits(model, ids, None), logits(model, ids, padding)
    ref_loss = forward_ce_sum(model, ids, None, loss_mask, False)
    assert attention.use_causal_sdpa(model)
    assert model.config._attn_implementation == attention.CAUSAL_SDPA
    calls = _sdpa_calls(forward_ce_sum, model, ids, None, loss_mask, False)
    assert len(calls) == 2 and all(c == (True, None, 3) for c in calls), calls
    torch.testing.assert_close(forward_ce_sum(model, ids, None, loss_mask, False), ref_loss)
    torch.testing.assert_close(logits(model, ids, None), ref, rtol=1e-5, atol=1e-5)
    # a padded batch is still masked: same outputs as sdpa's, and a mask tensor in the graph
    torch.testing.assert_close(logits(model, ids, padding), ref_padded, rtol=1e-5, atol=1e-5)
    assert all(c[1] is not None for c in _sdpa_calls(logits, model, ids, padding))
    model.save_pretrained(tmp_path)
    assert attention.CAUSAL_SDPA not in (tmp_path / "config.json").read_text()


def test_scorer_cuda_forward_under_compile_gets_sdpa_is_causal():
    from winnow import scorer as S

    cfg = S.ScorerConfig(
        backbone={
            "hidden_size": 16,
            "num_layers": 2,
            "num_heads": 2,
            "intermediate_size": 32,
            "max_position_embeddings": 16,
        }
    )
    model = S.build_scorer(cfg, 41, eos_id=1, pad_id=0).eval()
    ids = torch.randint(2, 41, (2, 12), generator=torch.Generator().manual_seed(4))
    am = torch.ones(2, 12, dtype=torch.long)
    am[1, 7:] = 0
    ids[1, 7:] = 0
    with torch.no_grad():
        ref = model(ids, am)
        fast = S._CudaScorer(model, 2, 12, compile=False)  # casts the backbone to bf16
        model.backbone.float()
        assert model.backbone.config._attn_implementation == attention.CAUSAL_SDPA
        calls = _sdpa_calls(fast._forward, ids, am)
        assert calls and all(c == (True, None, 3) for c in calls), calls
        # the weights went through bf16 and back: equal up to that rounding
        torch.testing.assert_close(fast._forward(ids, am), ref, rtol=0, atol=5e-3)


def test_causal_sdpa_leaves_other_attentions_alone():
    model = tiny_neox(vocab=41, seq=12, pad=0, dtype=torch.float32)
    model.set_attn_implementation("eager")
    assert not attention.use_causal_sdpa(model)
    assert model.config._attn_implementation == "eager"
