"""winnow.grads: batched torch.func primitives against plain autograd / finite differences (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _neox import one_thread, padded_batch, tiny_neox  # noqa: F401 (one_thread: autouse fixture)

from winnow.grads import (
    functional_model,
    hvp,
    loss_and_jvp,
    loss_jvp,
    mean_loss,
    mean_loss_grad,
    mean_loss_value_and_grad,
    params_of,
    per_example_grads,
    per_example_loss,
    tree_add,
    tree_dot,
    tree_norm,
    tree_scale,
    tree_sub,
    tree_zeros_like,
)

VOCAB, SEQ, PAD = 50, 10, 0


def tiny_model(seed: int = 0, eager: bool = True) -> torch.nn.Module:
    model = tiny_neox(VOCAB, SEQ, PAD, seed=seed).eval()
    return functional_model(model) if eager else model


def tiny_batch(seed: int, spec: list[tuple[int, int, int]]) -> dict[str, torch.Tensor]:
    return padded_batch(seed, spec, VOCAB, SEQ, PAD)


SPEC_A = [(10, 0, 10), (7, 0, 7), (9, 4, 9), (5, 0, 5)]
SPEC_B = [(8, 2, 8), (10, 0, 6), (6, 0, 6)]


def direct_losses(model, batch) -> torch.Tensor:
    """Reference ℓ_n: each example alone, unpadded, with the model's own parameters (autograd)."""
    out = []
    for r in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][r].sum())
        ids = batch["input_ids"][r : r + 1, :n]
        logits = model(input_ids=ids).logits[0]
        pos = torch.nonzero(batch["loss_mask"][r, :n]).flatten()
        if len(pos) == 0:
            out.append(logits.sum() * 0.0)
            continue
        out.append(F.cross_entropy(logits[pos - 1], ids[0, pos]))
    return torch.stack(out)


def flat(g: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in g.values()])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def autograd_grad(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    names, ps = zip(*model.named_parameters())
    gs = torch.autograd.grad(loss, ps, allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(p)) for n, p, g in zip(names, ps, gs)}


def random_vec(params, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}


def test_per_example_loss_matches_unpadded_direct_forward():
    model = tiny_model()
    batch = tiny_batch(0, SPEC_A + [(6, 6, 6)])  # last example has no target positions
    got = per_example_loss(model, params_of(model), batch)
    with torch.no_grad():
        want = direct_losses(model, batch)
    assert got.shape == (5,) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert got[-1] == 0.0


def test_eager_and_sdpa_losses_agree():
    sdpa = tiny_model(eager=False)
    assert sdpa.config._attn_implementation == "sdpa"
    batch = tiny_batch(1, SPEC_A)
    before = per_example_loss(sdpa, params_of(sdpa), batch)
    model = functional_model(sdpa)
    assert model is sdpa and model.config._attn_implementation == "winnow_eager"
    after = per_example_loss(model, params_of(model), batch)
    torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-12)


def test_forward_mode_functions_refuse_sdpa():
    model = tiny_model(eager=False)
    params = params_of(model)
    batch = tiny_batch(0, SPEC_A)
    with pytest.raises(ValueError, match="functional_model"):
        loss_jvp(model, params, batch, params)
    with pytest.raises(ValueError, match="functional_model"):
        hvp(model, params, batch, params)
    with pytest.raises(ValueError, match="functional_model"):
        per_example_grads(model, params, batch)
    # reverse mode is fine under sdpa
    g = mean_loss_grad(model, params, batch)
    assert set(g) == set(params)


def test_mean_loss_grad_matches_autograd_over_micro_batches():
    model = tiny_model()
    a, b = tiny_batch(0, SPEC_A), tiny_batch(1, SPEC_B)
    params = params_of(model)
    value, got = mean_loss_value_and_grad(model, params, [a, b])
    losses = torch.cat([direct_losses(model, a), direct_losses(model, b)])
    want = autograd_grad(model, losses.mean())
    assert set(got) == set(want)
    assert rel_err(flat(got), flat(want)) < 1e-10
    torch.testing.assert_close(value, losses.mean().detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(mean_loss(model, params, [a, b]), value, rtol=1e-12, atol=0)
    # one batch given as a dict is the same as a one-element list
    assert rel_err(flat(mean_loss_grad(model, params, a)), flat(mean_loss_grad(model, params, [a]))) == 0.0


def test_weighted_loss_grad_matches_autograd():
    model = tiny_model()
    a, b = tiny_batch(0, SPEC_A), tiny_batch(1, SPEC_B)
    w = torch.rand(7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    losses = torch.cat([direct_losses(model, a), direct_losses(model, b)])
    want = autograd_grad(model, (w * losses).sum())
    params = params_of(model)
    got_flat = mean_loss_grad(model, params, [a, b], weights=w)
    got_split = mean_loss_grad(model, params, [a, b], weights=[w[:4], w[4:]])
    assert rel_err(flat(got_flat), flat(want)) < 1e-10
    assert rel_err(flat(got_split), flat(want)) < 1e-10
    with pytest.raises(ValueError):
        mean_loss_grad(model, params, [a, b], weights=w[:5])


def test_hvp_matches_central_differences_of_gradients():
    model = tiny_model()
    params = params_of(model)
    a, b = tiny_batch(0, SPEC_A), tiny_batch(1, SPEC_B)
    w = torch.rand(7, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    v = random_vec(params, 5)
    for weights in (None, w):
        got = hvp(model, params, [a, b], v, weights=weights)
        eps = 1e-4
        gp = mean_loss_grad(model, tree_add(params, v, eps), [a, b], weights=weights)
        gm = mean_loss_grad(model, tree_add(params, v, -eps), [a, b], weights=weights)
        fd = tree_scale(tree_sub(gp, gm), 1.0 / (2 * eps))
        assert rel_err(flat(got), flat(fd)) < 1e-4
        # symmetric operator: <u, Hv> = <Hu, v>
        u = random_vec(params, 6)
        hu = hvp(model, params, [a, b], u, weights=weights)
        assert abs(float(tree_dot(u, got) - tree_dot(hu, v))) < 1e-8 * float(tree_norm(hu) * tree_norm(v))


def loop_grads(model, batch) -> list[dict[str, torch.Tensor]]:
    """Per-example gradients by one backward pass per (unpadded) example."""
    out = []
    for r in range(batch["input_ids"].shape[0]):
        one = {k: v[r : r + 1] for k, v in batch.items()}
        out.append(autograd_grad(model, direct_losses(model, one)[0]))
    return out


def test_loss_jvp_equals_per_example_gradients_dot_tangent():
    model = tiny_model()
    params = params_of(model)
    batch = tiny_batch(2, SPEC_A + SPEC_B)
    tangent = random_vec(params, 7)
    want = torch.stack([tree_dot(g, tangent) for g in loop_grads(model, batch)])
    got = loss_jvp(model, params, batch, tangent)
    assert got.shape == (7,)
    assert rel_err(got, want) < 1e-6
    value, deriv = loss_and_jvp(model, params, batch, tangent)
    torch.testing.assert_close(deriv, got, rtol=0, atol=0)
    torch.testing.assert_close(value, per_example_loss(model, params, batch).detach(), rtol=1e-12, atol=1e-12)


def test_per_example_grads_vmap_equals_loop():
    model = tiny_model()
    params = params_of(model)
    batch = tiny_batch(3, SPEC_A + [(6, 6, 6)])
    got = per_example_grads(model, params, batch)
    chunked = per_example_grads(model, params, batch, chunk_size=2)
    loop = loop_grads(model, batch)
    for name, p in params.items():
        assert got[name].shape == (5, *p.shape)
    for r, g in enumerate(loop):
        assert rel_err(flat({k: got[k][r] for k in g}), flat(g)) < 1e-10 if r < 4 else flat(g).abs().max() == 0
        assert rel_err(flat({k: chunked[k][r] for k in g}), flat({k: got[k][r] for k in g})) < 1e-12 if r < 4 else True
    assert float(flat({k: got[k][4] for k in got}).abs().max()) == 0.0
    # the mean of per-example gradients is the mean-loss gradient
    mean = {k: v.mean(0) for k, v in got.items()}
    assert rel_err(flat(mean), flat(mean_loss_grad(model, params, batch))) < 1e-10


def test_tree_helpers():
    a = {"x": torch.tensor([1.0, 2.0]), "y": torch.tensor([[3.0]])}
    b = {"x": torch.tensor([0.5, -1.0]), "y": torch.tensor([[2.0]])}
    assert float(tree_dot(a, b)) == pytest.approx(0.5 - 2.0 + 6.0)
    assert float(tree_norm(a)) == pytest.approx(14.0**0.5)
    assert torch.equal(tree_add(a, b, 2.0)["x"], torch.tensor([2.0, 0.0]))
    assert torch.equal(tree_sub(a, b)["y"], torch.tensor([[1.0]]))
    assert torch.equal(tree_scale(a, 3.0)["x"], torch.tensor([3.0, 6.0]))
    assert float(tree_norm(tree_zeros_like(a))) == 0.0


def test_winnow_eager_is_stock_eager_below_float64():
    """Outside float64 the registered attention defers to the model's own eager code (same bits)."""
    stock = tiny_model(eager=False).float()
    stock.set_attn_implementation("eager")
    ours = functional_model(tiny_model(eager=False).float())
    batch = tiny_batch(4, SPEC_A)
    a = per_example_loss(stock, params_of(stock), batch)
    b = per_example_loss(ours, params_of(ours), batch)
    assert a.dtype == torch.float32 and torch.equal(a, b)
