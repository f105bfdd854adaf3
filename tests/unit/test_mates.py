"""MATES oracle (winnow.methods.mates): the batched probe against real torch.optim.AdamW steps.

Tiny GPT-NeoX (hidden 16, 2 layers, vocab 50, sequences ≤ 12) in float32 and float64, with a
non-trivial optimizer state (three trainer-style AdamW steps first, so m, v ≠ 0 and the bias
correction is not the first step's), weight decay on, and the clip threshold set between the
candidates' gradient norms so that clipping is active for some candidates and not for others.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from _neox import one_thread, random_store, tiny_neox  # noqa: F401 (one_thread: autouse fixture)

from winnow.grads import functional_model
from winnow.methods.mates import (
    ORACLE,
    OracleConfig,
    adamw_update,
    batched_oracle,
    candidate_grads,
    clip_coefficients,
    first_order_agreement,
    first_order_oracle,
    load_state,
    probe,
    sequential_oracle,
    state_from_optimizer,
    trainer_param_groups,
)
from winnow.train.batches import ExampleStore, collate
from winnow.train.schedules import lr_at

VOCAB, SEQ, PAD = 50, 12, 0
N_CAND, N_REF = 7, 7


def tiny_model(dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    return tiny_neox(VOCAB, SEQ, PAD, seed=seed, dtype=dtype)


def rand_batch(n: int, seed: int, last: int | None = None, prompt_every: int = 0, empty: int | None = None) -> dict:
    """Right-padded random sequences of lengths 4..SEQ.

    last: loss only on the last ``last`` tokens (LAMBADA-like); prompt_every: every k-th row has
    its first 3 tokens masked (a prompt); empty: that row has no target positions at all.
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((n, SEQ), PAD, dtype=torch.long)
    attn = torch.zeros(n, SEQ, dtype=torch.long)
    lm = torch.zeros(n, SEQ, dtype=torch.bool)
    for r in range(n):
        length = int(torch.randint(4, SEQ + 1, (1,), generator=g))
        ids[r, :length] = torch.randint(2, VOCAB, (length,), generator=g)
        attn[r, :length] = 1
        start = 1
        if last is not None:
            start = max(length - last, 1)
        elif prompt_every and r % prompt_every == 0:
            start = 3
        lm[r, start:length] = True
    if empty is not None:
        lm[empty] = False
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": lm}


def trainer_steps(model: torch.nn.Module, lr: float, steps: int = 3) -> torch.optim.AdamW:
    """A few steps as winnow.train.trainer takes them (groups, token-mean loss, clip 1.0)."""
    opt = torch.optim.AdamW(trainer_param_groups(model, 0.1), lr=lr, betas=(0.9, 0.95), eps=1e-8)
    for s in range(steps):
        b = rand_batch(4, 100 + s)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, VOCAB), b["input_ids"][:, 1:].reshape(-1), reduction="none"
        )
        mask = b["loss_mask"][:, 1:].reshape(-1)
        ((ce * mask).sum() / mask.sum()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return opt


def make_setup(dtype: torch.dtype, lr: float = 1e-2, n_cand: int = N_CAND, seed: int = 0) -> dict:
    model = tiny_model(dtype, seed)
    opt = trainer_steps(model, lr)
    model.eval()
    cands = rand_batch(n_cand, 7 + seed, prompt_every=3, empty=1)
    ref = [rand_batch(3, 8, last=2), rand_batch(3, 9, last=1), rand_batch(1, 10)]  # uneven micro-batches
    cfg = OracleConfig(lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, grad_clip=0.0, candidates_per_batch=3)
    state = state_from_optimizer(model, opt, cfg)
    # clip between the candidates' gradient norms: active for about half of them
    functional_model(model)
    grads = candidate_grads(model, state.params, cands, cfg)
    norms = sum(g.double().pow(2).reshape(n_cand, -1).sum(1) for g in grads.values()).sqrt()
    model.set_attn_implementation("sdpa")
    nonzero = np.sort(norms.numpy()[norms.numpy() > 1e-3])
    clip = float((nonzero[len(nonzero) // 2 - 1] + nonzero[len(nonzero) // 2]) / 2)
    state.config = cfg = replace(cfg, grad_clip=clip)
    return {"model": model, "opt": opt, "state": state, "cands": cands, "ref": ref, "cfg": cfg, "norms": norms}


@pytest.fixture(scope="module", params=[torch.float32, torch.float64], ids=["fp32", "fp64"])
def setup(request) -> dict:
    s = make_setup(request.param)
    s["dtype"] = request.param
    s["seq"] = sequential_oracle(s["model"], s["state"], s["cands"], s["ref"])
    return s


TOL = {torch.float32: {"after": 1e-5, "delta_abs": 1e-5}, torch.float64: {"after": 1e-12, "delta_abs": 1e-12}}


def test_setup_is_not_trivial(setup):
    state, cfg, norms = setup["state"], setup["cfg"], setup["norms"]
    assert all(s == 3.0 for s in state.step.values())  # bias correction at step 4, not 1
    assert all(float(v.abs().max()) > 0 for v in state.exp_avg_sq.values())
    assert (norms > cfg.grad_clip).sum() >= 2 and ((norms < cfg.grad_clip) & (norms > 0)).sum() >= 2
    assert float(norms[1]) == 0.0  # the candidate without target positions: zero gradient
    assert cfg.weight_decay > 0
    assert np.all(np.isfinite(setup["seq"].delta)) and np.ptp(setup["seq"].delta) > 1e-3


@pytest.mark.parametrize(
    "grad_mode,reference_mode,head,attention,left_pad",
    [
        ("vmap", "vmap", True, "sdpa", False),  # the default
        ("loop", "loop", False, "sdpa", False),
        ("vmap", "loop", False, None, False),  # reference forwards with the gradients' eager attention
        ("vmap", "vmap", True, None, True),  # left-padded reference rows: the padding mask is kept
    ],
)
def test_batched_equals_sequential(setup, grad_mode, reference_mode, head, attention, left_pad):
    cfg = replace(
        setup["cfg"],
        grad_mode=grad_mode,
        reference_mode=reference_mode,
        head_at_targets=head,
        reference_attention=attention,
    )
    ref, seq = setup["ref"], setup["seq"]
    if left_pad:
        ref = [left_padded(b) for b in ref]
        seq = sequential_oracle(setup["model"], setup["state"], setup["cands"], ref)
    bat = batched_oracle(setup["model"], setup["state"], setup["cands"], ref, cfg)
    tol = TOL[setup["dtype"]]
    rel_after = np.max(np.abs(bat.ref_loss_after - seq.ref_loss_after) / np.abs(seq.ref_loss_after))
    abs_delta = np.max(np.abs(bat.delta - seq.delta))
    print(
        f"\n{setup['dtype']} grads {grad_mode}, reference {reference_mode}/head={head}/{attention}/left_pad={left_pad}: "
        f"rel err after {rel_after:.2e}, abs err delta {abs_delta:.2e} "
        f"(|delta| {np.abs(seq.delta).min():.3g}..{np.abs(seq.delta).max():.3g}, loss {seq.ref_loss_before:.4f})"
    )
    assert bat.method == "batched" and not bat.approximate
    assert bat.timings["head_at_targets"] == head
    assert abs(bat.ref_loss_before - seq.ref_loss_before) <= tol["after"] * seq.ref_loss_before
    assert rel_after <= tol["after"]
    # delta is a difference of two O(ℒ_ref) numbers: its error is bounded at the scale of the loss
    assert abs_delta <= tol["delta_abs"] * seq.ref_loss_before
    if setup["dtype"] == torch.float64:
        assert np.max(np.abs(bat.delta - seq.delta) / np.abs(seq.delta)) <= 1e-9


def left_padded(b: dict) -> dict:
    """The same rows moved to the right end (pads first), so the padding mask cannot be dropped."""
    out = {k: torch.zeros_like(v) for k, v in b.items()}
    for r in range(b["input_ids"].shape[0]):
        n = int(b["attention_mask"][r].sum())
        for k in b:
            out[k][r, SEQ - n :] = b[k][r, :n]
    return out


def test_sequential_foreach_and_single_tensor_agree(setup):
    """torch's foreach and single-tensor AdamW give the same probe (the trainer uses foreach on CUDA)."""
    fe = sequential_oracle(setup["model"], setup["state"], setup["cands"], setup["ref"], foreach=True)
    np.testing.assert_allclose(fe.ref_loss_after, setup["seq"].ref_loss_after, rtol=TOL[setup["dtype"]]["after"])


def test_state_and_model_are_restored_bit_for_bit(setup):
    model, state = setup["model"], setup["state"]
    snap = state.clone()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    attn, training = model.config._attn_implementation, model.training
    batched_oracle(model, state, setup["cands"], setup["ref"])
    first_order_oracle(model, state, setup["cands"], setup["ref"])
    sequential_oracle(model, state, setup["cands"], setup["ref"])
    for name in params:
        assert torch.equal(dict(model.named_parameters())[name].detach(), params[name]), name
        for a, b in ((state.params, snap.params), (state.exp_avg, snap.exp_avg), (state.exp_avg_sq, snap.exp_avg_sq)):
            assert torch.equal(a[name], b[name]), name
    assert state.step == snap.step
    assert model.config._attn_implementation == attn and model.training == training


@pytest.mark.parametrize("fresh", [False, True], ids=["state", "step0"])
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_explicit_adamw_equals_torch_step(setup, fresh, foreach):
    """adamw_update on one example's gradient == clip_grad_norm_ + torch.optim.AdamW.step()."""
    src = setup["model"]
    model = copy.deepcopy(src)
    if fresh:  # no optimizer state yet (first step: zero moments, bias correction of step 1)
        opt = torch.optim.AdamW(trainer_param_groups(model, 0.1), lr=1e-2, betas=(0.9, 0.95), foreach=foreach)
    else:
        opt = torch.optim.AdamW(trainer_param_groups(model, 0.1), lr=1e-2, betas=(0.9, 0.95), foreach=foreach)
        opt.load_state_dict(copy.deepcopy(setup["opt"].state_dict()))  # load_state_dict shares tensors
    cfg = setup["cfg"]
    for group in opt.param_groups:
        group["lr"] = cfg.lr
    state = state_from_optimizer(model, opt, cfg)
    functional_model(model)
    x = {k: v[2:3] for k, v in setup["cands"].items()}  # a candidate whose gradient gets clipped
    g = candidate_grads(model, state.params, x, cfg)
    assert float(clip_coefficients(g, cfg.grad_clip)) < 1.0
    named = dict(model.named_parameters())
    for n, p in named.items():
        p.grad = g[n][0].clone()
    ours = adamw_update(state, {k: v.clone() for k, v in g.items()}, cfg)
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    worst = max(float((named[n].detach() - ours[n][0]).abs().max() / named[n].detach().abs().max()) for n in named)
    print(f"\nexplicit AdamW vs torch ({setup['dtype']}, foreach={foreach}, fresh={fresh}): max rel diff {worst:.1e}")
    assert worst <= (1e-6 if setup["dtype"] == torch.float32 else 1e-14)
    assert worst == 0.0 or foreach  # the single-tensor path is reproduced op for op


def test_first_order_correlates_with_exact():
    """First-order approximation vs the exact oracle: Spearman reported, > 0 asserted (small lr)."""
    rows = []
    for lr in (1e-4, 1e-2):
        s = make_setup(torch.float64, lr=lr, n_cand=12, seed=1)
        exact = batched_oracle(s["model"], s["state"], s["cands"], s["ref"])
        approx = batched_oracle(s["model"], s["state"], s["cands"], s["ref"], replace(s["cfg"], first_order=True))
        assert approx.method == "first_order" and approx.approximate
        assert approx.ref_loss_before == pytest.approx(exact.ref_loss_before, rel=1e-12)
        agree = first_order_agreement(exact, approx)
        rows.append((lr, agree))
        print(f"\nfirst-order vs exact, lr {lr:g}: {agree}")
    small = rows[0][1]
    assert small["spearman"] > 0
    # at a small step the linearisation is close in value too (error O(lr²) vs delta O(lr));
    # observed max |diff| ≈ 0.004 × std of the exact deltas at lr 1e-4
    assert small["max_abs_diff"] <= 0.05 * small["exact_delta_std"]


# ----------------------------------------------------------------------------------------------
# from a trainer checkpoint on disk, through an ExampleStore


def make_store(tmp_path, n: int = 24, seed: int = 0) -> tuple[ExampleStore, np.ndarray]:
    return random_store(tmp_path, n, SEQ, VOCAB, seed, first_id=500, stride=2, prompt_frac=0.3)


def test_load_state_reads_a_trainer_checkpoint(tmp_path):
    from safetensors.torch import load_file

    from winnow.train.trainer import TrainConfig, train

    store, ids = make_store(tmp_path)
    tcfg = TrainConfig(
        steps=5,
        batch_size=4,
        micro_batch_size=2,
        seq_len=SEQ,
        lr=2e-2,
        schedule="cosine",
        warmup_steps=2,
        weight_decay=0.05,
        betas=(0.8, 0.9),
        eps=1e-7,
        grad_clip=0.5,
        ckpt_every=3,
        keep_checkpoints=2,
        precision="fp32",
        log_every_s=1e9,
    )
    model = tiny_model(torch.float32, seed=3)
    train(model, store, ids[:16], tcfg, tmp_path / "final", tmp_path / "ckpts", PAD)
    ckpt = tmp_path / "ckpts" / "step-00000003"
    fresh = tiny_model(torch.float32, seed=4)
    state = load_state(ckpt, fresh)
    cfg = state.config
    assert state.schedule_step == 3
    assert cfg.lr == lr_at(3, 2e-2, 5, "cosine", 2, tcfg.min_lr_ratio, tcfg.decay_frac, tcfg.half_life)
    assert (cfg.betas, cfg.eps, cfg.weight_decay, cfg.grad_clip) == ((0.8, 0.9), 1e-7, 0.05, 0.5)
    weights, moments = load_file(str(ckpt / "model.safetensors")), load_file(str(ckpt / "optimizer.safetensors"))
    for n, _ in fresh.named_parameters():
        assert torch.equal(state.params[n], weights[n])
        assert torch.equal(state.exp_avg[n], moments[f"{n}.exp_avg"])
        assert torch.equal(state.exp_avg_sq[n], moments[f"{n}.exp_avg_sq"])
        assert state.step[n] == 3.0
    final = load_state(tmp_path / "final", fresh)  # the end of the run: the lr of step 5
    assert final.config.lr == lr_at(5, 2e-2, 5, "cosine", 2, tcfg.min_lr_ratio)
    assert load_state(ckpt, lr=1e-3, candidates_per_batch=2).config.lr == 1e-3  # given, not read
    assert set(load_state(ckpt).params) == set(state.params)  # names from the moments alone

    # probe the loaded state through the store: batched == sequential, ORACLE table
    fresh.load_state_dict(weights, strict=True)
    cfg = replace(cfg, candidates_per_batch=3, reference_batch_size=4)
    cand_ids, ref_ids = ids[16:], ids[:10]
    table, bat = probe(fresh, state, store, cand_ids, ref_ids, SEQ, PAD, cfg)
    seq_table, seq = probe(fresh, state, store, cand_ids, ref_ids, SEQ, PAD, cfg, method="sequential")
    assert table.schema.equals(ORACLE) and table.column_names == [
        "example_id",
        "ref_loss_before",
        "ref_loss_after",
        "delta",
    ]
    assert table["example_id"].to_pylist() == cand_ids.tolist()
    np.testing.assert_allclose(table["ref_loss_after"].to_numpy(), seq_table["ref_loss_after"].to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(bat.delta, table["delta"].to_numpy())

    # the original loop's restore (reload the checkpoint from disk per candidate) gives the same
    x = collate(store, cand_ids[:3], SEQ, PAD)
    refs = collate(store, ref_ids, SEQ, PAD)
    mem = sequential_oracle(fresh, state, x, refs, cfg)
    disk = sequential_oracle(fresh, state, x, refs, cfg, reload_dir=ckpt)
    np.testing.assert_array_equal(mem.ref_loss_after, disk.ref_loss_after)
    np.testing.assert_allclose(mem.ref_loss_after, seq.ref_loss_after[:3], rtol=1e-12)


def test_cuda_fast_paths_compute_the_same_function(setup, monkeypatch):
    """The compiled CUDA paths (``cfg.compile``), run here uncompiled on the CPU: the per-candidate
    reverse-mode loop equals vmap's gradients and the fused update equals :func:`adamw_update`
    (the compiled kernels on the GPU are checked against the sequential probe by bench_mates)."""
    from winnow.methods.mates import update as mates

    monkeypatch.setattr(mates, "_single_loss_compiled", mates._single_loss)
    monkeypatch.setattr(mates, "_adamw_one_compiled", mates._adamw_one)
    model, state, cands = setup["model"], setup["state"], setup["cands"]
    cfg = replace(setup["cfg"], grad_mode="loop", compile=True)
    tol = 1e-5 if setup["dtype"] == torch.float32 else 1e-12
    functional_model(model)
    try:
        want = candidate_grads(model, state.params, cands, replace(cfg, compile=False, grad_mode="vmap"))
        got = mates._loop_grads_compiled(model, state.params, cands, cfg)
    finally:
        model.set_attn_implementation("sdpa")
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=tol, atol=tol), name
    fused = mates._adamw_update_fused(state, {k: v.clone() for k, v in want.items()}, cfg, clip=True)
    plain = adamw_update(state, {k: v.clone() for k, v in want.items()}, replace(cfg, compile=False))
    for name in plain:
        assert torch.allclose(fused[name], plain[name], rtol=tol, atol=tol * 1e-2), name
