"""PMP solver (winnow.methods.pds) against autograd through the unrolled SGD trajectory (float64)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
from _neox import one_thread, random_store, tiny_neox  # noqa: F401 (one_thread: autouse fixture)

from winnow.grads import functional_model, mean_loss_grad, params_of, per_example_grads, tree_add
from winnow.methods.pds import PMPConfig, project_simplex, solve
from winnow.train.batches import ExampleStore, collate

VOCAB, SEQ, PAD = 50, 10, 0


T, B, LR = 4, 3, 0.3
N_PROXY, N_TARGET = 6, 4


def make_store(tmp_path, n: int = 30, seed: int = 0) -> tuple[ExampleStore, np.ndarray]:
    """n examples with ids 1000, 1003, …, random lengths 5..10 and some prompt-masked ones."""
    return random_store(tmp_path, n, SEQ, VOCAB, seed, first_id=1000, stride=3, prompt_frac=0.3)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    return tiny_neox(VOCAB, SEQ, PAD, seed=seed)


# ----------------------------------------------------------------------------------------------
# independent reference: autograd through the unrolled trajectory


def ref_losses(model, params, batch) -> torch.Tensor:
    """ℓ_n with log_softmax/gather (not the library's code path); (b,)."""
    buffers = dict(model.named_buffers())
    logits = torch.func.functional_call(
        model,
        (params, buffers),
        args=(),
        kwargs={"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
    ).logits
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    nll = -logp.gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    mask = batch["loss_mask"][:, 1:].to(nll.dtype)
    return (nll * mask).sum(1) / mask.sum(1).clamp(min=1)


def unrolled_per_step(model, step_batches, gamma0, proxy, target, steps, lr):
    """−dJ_total/dδ_{t,n} for the dynamics
        θ_{t+1} = θ_t − η ∇[base_t(θ_t) + Σ_n (γ0_n + δ_{t,n}) ℓ(x_n, θ_t)],  δ = 0,
    base_t = mean loss of step_batches[t] (or 0 when None). Returns ((T, N) float64, J_t list t=0..T).
    Summing over t gives −dJ_total/dγ for a γ shared by all steps.
    """
    names = [n for n, _ in model.named_parameters()]
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    delta = torch.zeros(steps, proxy["input_ids"].shape[0], dtype=torch.float64, requires_grad=True)
    g0 = torch.as_tensor(gamma0, dtype=torch.float64)
    J_total = 0.0
    Js = [float(ref_losses(model, theta, target).mean().detach())]
    for t in range(steps):
        loss = ((g0 + delta[t]) * ref_losses(model, theta, proxy)).sum()
        if step_batches is not None:
            loss = loss + ref_losses(model, theta, step_batches[t]).mean()
        grads = torch.autograd.grad(loss, [theta[n] for n in names], create_graph=True)
        theta = {n: theta[n] - lr * g for n, g in zip(names, grads)}
        J = ref_losses(model, theta, target).mean()
        Js.append(float(J.detach()))
        J_total = J_total + J
    (d,) = torch.autograd.grad(J_total, [delta])
    return (-d).numpy(), Js


def first_order_grad_gamma(model, step_batches, proxy, target, steps, lr) -> np.ndarray:
    """η Σ_t ⟨∇ℓ_n(θ_t), Σ_{s>t} ∇J(θ_s)⟩: the adjoint with the −η H λ term dropped."""
    theta = params_of(model)
    thetas = [theta]
    for t in range(steps):
        theta = tree_add(theta, mean_loss_grad(model, theta, step_batches[t]), -lr)
        thetas.append(theta)
    grad_J = [mean_loss_grad(model, th, target) for th in thetas]
    out = np.zeros(proxy["input_ids"].shape[0])
    for t in range(steps):
        lam = grad_J[t + 1]
        for s in range(t + 2, steps + 1):
            lam = tree_add(lam, grad_J[s])
        pe = per_example_grads(model, thetas[t], proxy)
        out += lr * sum((pe[k].reshape(len(out), -1) @ lam[k].reshape(-1)).numpy() for k in lam)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pds_store")
    store, ids = make_store(tmp)
    rng = np.random.default_rng(1)
    perm = rng.permutation(ids)
    n_traj = 5 * B  # enough for 5 steps; with T = 4 the last B ids must be ignored
    traj = perm[:n_traj]
    proxy = perm[n_traj : n_traj + N_PROXY]
    target = perm[n_traj + N_PROXY : n_traj + N_PROXY + N_TARGET]
    return store, traj, proxy, target


@pytest.fixture(scope="module")
def released_reference(setup):
    store, traj, proxy, target = setup
    model = functional_model(tiny_model()).eval()
    steps = [collate(store, traj[t * B : (t + 1) * B], SEQ, PAD) for t in range(5)]
    px, tg = collate(store, proxy, SEQ, PAD), collate(store, target, SEQ, PAD)
    per_step5, J5 = unrolled_per_step(model, steps, np.zeros(N_PROXY), px, tg, 5, LR)
    return per_step5, J5


def cfg(**kw) -> PMPConfig:
    base = PMPConfig(steps=T, lr=LR, batch_size=B, interval=1, ckpt_every=2, proxy_batch_size=4, target_batch_size=3)
    return replace(base, **kw)


def run(setup, tmp_path, c: PMPConfig, model=None):
    store, traj, proxy, target = setup
    model = tiny_model() if model is None else model
    return solve(model, store, traj, proxy, target, c, tmp_path, seq_len=SEQ, pad_id=PAD)


def cosine(a, b) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ----------------------------------------------------------------------------------------------


def test_released_matches_autograd_through_unrolled_sgd(setup, tmp_path, released_reference):
    store, traj, proxy, target = setup
    # the reference ran 5 steps; the first 4 θ's are the same trajectory, so rerun it for T = 4
    model = functional_model(tiny_model()).eval()
    steps = [collate(store, traj[t * B : (t + 1) * B], SEQ, PAD) for t in range(T)]
    px, tg = collate(store, proxy, SEQ, PAD), collate(store, target, SEQ, PAD)
    per_step, J_ref = unrolled_per_step(model, steps, np.zeros(N_PROXY), px, tg, T, LR)
    want = per_step.sum(0)

    got, report = run(setup, tmp_path, cfg())
    assert got.shape == (N_PROXY,) and got.dtype == np.float64
    assert cosine(got, want) >= 0.999
    assert rel(got, want) < 1e-8
    np.testing.assert_allclose(report["J"], J_ref, rtol=1e-10)
    assert report["J_total"] == pytest.approx(sum(J_ref[1:]), rel=1e-10)
    assert report["lambda_norm"][0] is None and all(x > 0 for x in report["lambda_norm"][1:])
    assert report["contribution_steps"] == [0, 1, 2, 3]
    assert report["steps"] == T and report["lr"] == LR and report["variant"] == "released"
    for phase in ("forward", "recompute", "hvp", "grad_J", "contributions", "io", "total"):
        assert report["timings_s"][phase] >= 0
    # the test can tell: without the Hessian term (λ_t = Σ_{s≥t} ∇J(θ_s)) the answer is far off
    first_order = first_order_grad_gamma(model, steps, px, tg, T, LR)
    assert rel(first_order, want) > 1e-3
    # the model is untouched (θ_0 is the model's parameters), eval mode restored to train
    fresh = tiny_model()
    model_after = tiny_model()
    solve(model_after, store, traj, proxy, target, cfg(), tmp_path / "again", seq_len=SEQ, pad_id=PAD)
    for (n, a), (_, b) in zip(fresh.named_parameters(), model_after.named_parameters()):
        assert torch.equal(a, b), n
    assert model_after.training and model_after.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("interval", [2, 3])
def test_interval_sums_exact_per_step_contributions(setup, tmp_path, released_reference, interval):
    per_step5, _ = released_reference
    got, report = run(setup, tmp_path, cfg(steps=5, interval=interval))
    want = per_step5[0::interval].sum(0)
    assert report["contribution_steps"] == list(range(0, 5, interval))
    assert rel(got, want) < 1e-8
    # and it is not the full sum
    assert rel(got, per_step5.sum(0)) > 1e-3


def test_segment_recomputation_and_micro_batching_do_not_change_the_answer(setup, tmp_path):
    base, rep = run(setup, tmp_path / "k1", cfg(steps=5, ckpt_every=1))
    for k in (2, 3, 5):
        got, r = run(setup, tmp_path / f"k{k}", cfg(steps=5, ckpt_every=k))
        np.testing.assert_allclose(got, base, rtol=1e-12, atol=0)
        np.testing.assert_allclose(r["lambda_norm"][1:], rep["lambda_norm"][1:], rtol=1e-12)
        saved = sorted(p.name for p in (tmp_path / f"k{k}").glob("theta-*.safetensors"))
        assert saved == [f"theta-{t:06d}.safetensors" for t in sorted(set(range(0, 5, k)) | {5})]
    got, _ = run(setup, tmp_path / "micro", cfg(steps=5, micro_batch_size=1, proxy_batch_size=1, target_batch_size=1))
    np.testing.assert_allclose(got, base, rtol=1e-10, atol=0)


def test_paper_variant_matches_autograd_over_two_outer_epochs(setup, tmp_path):
    store, traj, proxy, target = setup
    px, tg = collate(store, proxy, SEQ, PAD), collate(store, target, SEQ, PAD)
    model = functional_model(tiny_model()).eval()
    gamma0 = np.full(N_PROXY, 1.0 / N_PROXY)
    per_step0, J0 = unrolled_per_step(model, None, gamma0, px, tg, T, LR)
    want0 = per_step0.sum(0)

    got0, rep0 = solve(
        tiny_model(), store, None, proxy, target, cfg(variant="paper"), tmp_path, seq_len=SEQ, pad_id=PAD
    )
    assert cosine(got0, want0) >= 0.999 and rel(got0, want0) < 1e-8
    np.testing.assert_allclose(rep0["J"], J0, rtol=1e-10)
    np.testing.assert_allclose(rep0["gamma"], project_simplex(gamma0 + 1.0 * got0), rtol=1e-12)

    # an outer lr that sends part of the proxy set to zero weight
    alpha = 3.0 / (N_PROXY * (got0.max() - got0.min()))
    gamma1 = project_simplex(gamma0 + alpha * want0)
    assert 0 < (gamma1 > 0).sum() < N_PROXY
    per_step1, _ = unrolled_per_step(model, None, gamma1, px, tg, T, LR)
    want1 = per_step1.sum(0)

    got1, rep1 = solve(
        tiny_model(),
        store,
        None,
        proxy,
        target,
        cfg(variant="paper", outer_epochs=2, outer_lr=alpha),
        tmp_path,
        seq_len=SEQ,
        pad_id=PAD,
    )
    assert cosine(got1, want1) >= 0.999 and rel(got1, want1) < 1e-8
    np.testing.assert_allclose(rep1["gamma"], project_simplex(gamma1 + alpha * want1), atol=1e-10)
    e0, e1 = rep1["epochs"]
    assert e0["reused_trajectory"] and not e1["reused_trajectory"]  # epoch 0 is the first run's
    assert e0["gamma_nonzero_before"] == N_PROXY and e0["gamma_entropy_before"] == pytest.approx(np.log(N_PROXY))
    assert e0["gamma_nonzero"] == (gamma1 > 0).sum() == e1["gamma_nonzero_before"]
    assert e1["J_total"] < e0["J_total"]  # ascent on −dJ_total/dγ lowers the objective
    # the epoch-1 forward only trained on the support of γ1
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "epoch-001" / "batches.parquet").to_pydict()
    assert set(rows["example_id"]) == set(proxy[gamma1 > 0])
    assert len(rows["step"]) == T * int((gamma1 > 0).sum())


def test_trajectory_reuse(setup, tmp_path):
    store, traj, proxy, target = setup
    first, r1 = run(setup, tmp_path, cfg())
    assert not r1["reused_trajectory"]
    assert (tmp_path / "trajectory.json").exists() and (tmp_path / "batches.parquet").exists()
    second, r2 = run(setup, tmp_path, cfg())
    assert r2["reused_trajectory"] and r2["timings_s"]["forward"] == 0.0
    np.testing.assert_array_equal(first, second)
    # backward-only settings do not invalidate the trajectory
    _, r3 = run(setup, tmp_path, cfg(interval=2, proxy_batch_size=2))
    assert r3["reused_trajectory"]
    # anything the forward depends on does
    _, r4 = run(setup, tmp_path, cfg(lr=LR / 2))
    assert not r4["reused_trajectory"]
    _, r5 = run(setup, tmp_path, cfg(lr=LR / 2))
    assert r5["reused_trajectory"]
    other = tiny_model(seed=1)
    _, r6 = run(setup, tmp_path, cfg(lr=LR / 2), model=other)
    assert not r6["reused_trajectory"]
    # an incomplete trajectory (a θ file missing) is recomputed, and gives the same answer
    (tmp_path / "theta-000002.safetensors").unlink()
    again, r7 = run(setup, tmp_path, cfg(lr=LR / 2), model=tiny_model(seed=1))
    assert not r7["reused_trajectory"]
    third, _ = run(setup, tmp_path, cfg(lr=LR / 2), model=tiny_model(seed=1))
    np.testing.assert_array_equal(again, third)


def test_argument_checks(setup, tmp_path):
    store, traj, proxy, target = setup
    model = tiny_model()
    with pytest.raises(ValueError, match="trajectory_ids"):
        solve(model, store, None, proxy, target, cfg(), tmp_path, seq_len=SEQ, pad_id=PAD)
    with pytest.raises(ValueError, match="T·B"):
        solve(model, store, traj[:5], proxy, target, cfg(), tmp_path, seq_len=SEQ, pad_id=PAD)
    with pytest.raises(ValueError, match="duplicates"):
        solve(model, store, traj, np.r_[proxy, proxy[:1]], target, cfg(), tmp_path, seq_len=SEQ, pad_id=PAD)
    with pytest.raises(ValueError, match="variant"):
        solve(model, store, traj, proxy, target, cfg(variant="nope"), tmp_path, seq_len=SEQ, pad_id=PAD)
    with pytest.raises(ValueError, match="outer_epochs"):
        solve(model, store, traj, proxy, target, cfg(outer_epochs=2), tmp_path, seq_len=SEQ, pad_id=PAD)


def test_paper_variant_refuses_a_contribution_interval():
    """Algorithm 1's g = −dJ_total/dγ sums the proxy contributions over every step; with
    ``interval`` > 1 the paper variant would ascend along a sparser sum that is not that gradient,
    so it is refused, naming the config key."""
    for interval in (2, 10):
        with pytest.raises(ValueError, match=r"pds\.solver\.interval.*paper"):
            PMPConfig(variant="paper", interval=interval).validate()
    PMPConfig(variant="paper", interval=1).validate()
    PMPConfig(variant="released", interval=10).validate()  # the released code's interval stays


# ----------------------------------------------------------------------------------------------
# simplex projection


def brute_force_projection(v: np.ndarray) -> np.ndarray:
    """Minimise ‖x − v‖ over the simplex by trying every support S: x_S = v_S − mean shift."""
    best, best_d = None, np.inf
    n = len(v)
    for r in range(1, n + 1):
        for S in itertools.combinations(range(n), r):
            S = list(S)
            x = np.zeros(n)
            x[S] = v[S] - (v[S].sum() - 1.0) / len(S)
            if (x >= -1e-15).all():
                d = np.linalg.norm(x - v)
                if d < best_d:
                    best, best_d = x, d
    return best


def test_project_simplex():
    rng = np.random.default_rng(0)
    for _trial in range(200):
        n = int(rng.integers(1, 7))
        v = rng.normal(scale=rng.choice([0.1, 1.0, 5.0]), size=n)
        x = project_simplex(v)
        assert x.shape == (n,) and (x >= 0).all() and x.sum() == pytest.approx(1.0, abs=1e-12)
        # KKT: x = max(v − τ, 0) for one τ
        pos = x > 0
        tau = (v - x)[pos]
        assert np.ptp(tau) < 1e-12 and (v[~pos] <= tau[0] + 1e-12).all()
        np.testing.assert_allclose(x, brute_force_projection(v), atol=1e-12)
        # no feasible point is closer: random Dirichlet points, vertices, and perturbations of x
        d = np.linalg.norm(x - v)
        cands = list(rng.dirichlet(np.ones(n), size=50)) + list(np.eye(n))
        for _ in range(50):
            y = project_simplex(x + rng.normal(scale=1e-3, size=n))
            cands.append(y)
        assert all(np.linalg.norm(c - v) >= d - 1e-12 for c in cands)
    # already on the simplex: unchanged; uniform shift invariance
    p = rng.dirichlet(np.ones(10))
    np.testing.assert_allclose(project_simplex(p), p, atol=1e-15)
    np.testing.assert_allclose(project_simplex(p + 7.0), p, atol=1e-12)
    with pytest.raises(ValueError):
        project_simplex(np.zeros((2, 2)))
