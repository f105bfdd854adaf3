"""The three oracles (sequential reference implementation, batched exact, first-order
approximation) and :func:`probe`, which runs one from example ids."""

from __future__ import annotations

import contextlib
import functools
import os
import time

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from winnow.grads import Batch, eval_mode
from winnow.methods.mates.config import OracleConfig, OracleResult, ProbeState
from winnow.methods.mates.reference import _plain_ref_loss, _Reference
from winnow.methods.mates.update import (
    References,
    _amp,
    _batch_to,
    _chunks,
    _n,
    _reference_batches,
    _slice,
    _state_on,
    _sync,
    adamw_displacement_parts,
    adamw_update,
    candidate_grads,
    clip_gradients_,
)
from winnow.train.batches import ExampleStore, collate
from winnow.train.optim import trainer_param_groups

# ----------------------------------------------------------------------------------------------
# the plain sequential probe (reference implementation)


def _masked_ce_sum(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """The trainer's ``masked_ce_sum`` except that float64 logits stay float64 (the trainer
    casts to float32, which would cap the float64 exactness checks); identical for fp32/bf16."""
    pred = logits[:, :-1]
    pred = pred.float() if pred.dtype in (torch.float16, torch.bfloat16) else pred
    ce = F.cross_entropy(pred.reshape(-1, pred.size(-1)), input_ids[:, 1:].reshape(-1), reduction="none")
    return (ce * loss_mask[:, 1:].reshape(-1)).sum()


def _restore(model, opt, named: dict, state: ProbeState, scalar: torch.dtype, reload_dir) -> None:
    """Parameters and AdamW state back to ``state`` (``reload_dir``: re-read from that checkpoint)."""
    if reload_dir is not None:
        from winnow.models.checkpoint import load_checkpoint

        load_checkpoint(reload_dir, model, opt)
        return
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(state.params[n])
            if state.step[n] == 0:
                opt.state.pop(p, None)  # AdamW initialises zero moments itself
                continue
            st = opt.state[p]
            if "exp_avg" not in st:
                st["step"] = torch.tensor(state.step[n], dtype=scalar)
                st["exp_avg"] = state.exp_avg[n].clone()
                st["exp_avg_sq"] = state.exp_avg_sq[n].clone()
            else:
                st["step"].fill_(state.step[n])
                st["exp_avg"].copy_(state.exp_avg[n])
                st["exp_avg_sq"].copy_(state.exp_avg_sq[n])


def _trainer_step(model, opt, x: Batch, cfg: OracleConfig, device: torch.device) -> None:
    """The trainer's step on batch ``x``: token-mean CE, ``clip_grad_norm_``, ``opt.step()``."""
    opt.zero_grad(set_to_none=True)
    with _amp(cfg, device):
        logits = model(input_ids=x["input_ids"], attention_mask=x["attention_mask"], use_cache=False).logits
    n_targets = int(x["loss_mask"][:, 1:].sum())
    (_masked_ce_sum(logits, x["input_ids"], x["loss_mask"]) / max(n_targets, 1)).backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


def sequential_oracle(
    model: torch.nn.Module,
    state: ProbeState,
    candidates: Batch,
    reference: References,
    cfg: OracleConfig | None = None,
    foreach: bool | None = None,
    reload_dir: str | os.PathLike | None = None,
) -> OracleResult:
    """One real ``torch.optim.AdamW`` step per candidate, then ℒ_ref; one candidate at a time.

    Before each candidate the model's parameters and the optimizer state are restored from
    ``state`` in memory (``copy_``). The step is the trainer's: the candidate's token-mean CE
    (``masked_ce_sum`` / target count), ``clip_grad_norm_``, ``optimizer.step()`` with the
    trainer's parameter groups; ``foreach`` defaults to the trainer's choice (CUDA only).
    The model's parameters are restored to their values on entry when done.

    ``reload_dir`` (benchmarks only): restore by re-reading that checkpoint from disk for every
    candidate (model + optimizer state), as the original MATES loop does. It must hold ``state``.
    """
    cfg = state.config if cfg is None else cfg
    state = _state_on(state, model)
    device = next(model.parameters()).device
    foreach = device.type == "cuda" if foreach is None else foreach
    named = dict(model.named_parameters())
    entry = {n: p.detach().clone() for n, p in named.items()}
    opt = torch.optim.AdamW(
        trainer_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, foreach=foreach
    )
    ref_batches = _reference_batches(reference, cfg.reference_batch_size, device)
    candidates = _batch_to(candidates, device)
    scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32

    restore = functools.partial(_restore, model, opt, named, state, scalar, reload_dir)

    after = np.zeros(_n(candidates), dtype=np.float64)
    t_restore = t_step = t_ref = 0.0
    with eval_mode(model, eager=False):
        restore()
        before = _plain_ref_loss(model, ref_batches, cfg)
        try:
            for i in range(_n(candidates)):
                t0 = time.perf_counter()
                restore()
                for group in opt.param_groups:  # a reload brings the checkpoint's lr back
                    group["lr"] = cfg.lr
                    group["betas"], group["eps"] = cfg.betas, cfg.eps
                opt.param_groups[0]["weight_decay"], opt.param_groups[1]["weight_decay"] = cfg.weight_decay, 0.0
                _sync(device)
                t1 = time.perf_counter()
                _trainer_step(model, opt, _slice(candidates, i, i + 1), cfg, device)
                _sync(device)
                t2 = time.perf_counter()
                after[i] = _plain_ref_loss(model, ref_batches, cfg)
                t3 = time.perf_counter()
                t_restore, t_step, t_ref = t_restore + t1 - t0, t_step + t2 - t1, t_ref + t3 - t2
        finally:
            opt.state.clear()
            with torch.no_grad():
                for n, p in named.items():
                    p.copy_(entry[n])
    timings = {"restore_s": t_restore, "step_s": t_step, "reference_s": t_ref}
    return OracleResult(before, after, "sequential", timings)


# ----------------------------------------------------------------------------------------------
# the batched exact oracle and the first-order approximation


@contextlib.contextmanager
def _probing(model: torch.nn.Module, state: ProbeState, reference, cfg: OracleConfig):
    """``(state on the model's device, device, prepared reference)``, inside eval mode with eager
    attention and no autograd (the functional oracles take their gradients themselves)."""
    state = _state_on(state, model)
    device = next(model.parameters()).device
    with eval_mode(model, eager=True), torch.no_grad():
        ref = _Reference(model, _reference_batches(reference, cfg.reference_batch_size, device), cfg)
        ref.check_head_path(state.params)
        yield state, device, ref


def _chunk_grads(model, state: ProbeState, candidates: Batch, cfg: OracleConfig, device, timings: dict):
    """``(i, j, gradients of candidates[i:j])`` per chunk of ``cfg.candidates_per_batch``; the
    time they take is added to ``timings["grads_s"]``."""
    for i, j in _chunks(_n(candidates), cfg.candidates_per_batch):
        t0 = time.perf_counter()
        grads = candidate_grads(model, state.params, _slice(candidates, i, j), cfg)
        _sync(device)
        timings["grads_s"] += time.perf_counter() - t0
        yield i, j, grads


def batched_oracle(
    model: torch.nn.Module, state: ProbeState, candidates: Batch, reference: References, cfg: OracleConfig | None = None
) -> OracleResult:
    """The exact oracle for K = ``cfg.candidates_per_batch`` candidates at a time (see module doc).

    Equals :func:`sequential_oracle` up to floating-point rounding. ``state`` and the model are
    never written (the model's attention is switched to eager while it runs, then back).
    With ``cfg.first_order`` this returns :func:`first_order_oracle` (an approximation).
    """
    cfg = state.config if cfg is None else cfg
    if cfg.first_order:
        return first_order_oracle(model, state, candidates, reference, cfg)
    timings = {"grads_s": 0.0, "update_s": 0.0, "reference_s": 0.0}
    with _probing(model, state, reference, cfg) as (state, device, ref):
        before = ref.total(state.params)
        candidates = _batch_to(candidates, device)
        after = np.zeros(_n(candidates), dtype=np.float64)
        for i, j, grads in _chunk_grads(model, state, candidates, cfg, device, timings):
            t1 = time.perf_counter()
            stacked = adamw_update(state, grads, cfg)
            _sync(device)
            t2 = time.perf_counter()
            after[i:j] = ref.stacked(stacked)
            del stacked
            timings["update_s"] += t2 - t1
            timings["reference_s"] += time.perf_counter() - t2
    timings["head_at_targets"] = ref.parts is not None
    return OracleResult(before, after, "batched", timings)


def first_order_oracle(
    model: torch.nn.Module, state: ProbeState, candidates: Batch, reference: References, cfg: OracleConfig | None = None
) -> OracleResult:
    """APPROXIMATION: delta(x) ≈ ⟨∇ℒ_ref(θ), θ'_x − θ⟩ with θ'_x the exact AdamW step.

    One reference gradient per call; per candidate one gradient and the update (no reference
    forward). ``ref_loss_after`` = before + the approximate delta; ``method`` = "first_order".
    The displacement θ'_x − θ = −ηλ_p θ − step_size · m'/denom is formed directly (not as a
    difference of two close parameter vectors).
    """
    cfg = state.config if cfg is None else cfg
    timings = {"reference_grad_s": 0.0, "grads_s": 0.0, "update_s": 0.0}
    with _probing(model, state, reference, cfg) as (state, device, ref):
        t0 = time.perf_counter()
        before = ref.total(state.params)
        gref = ref.grad(state.params)
        _sync(device)
        timings["reference_grad_s"] = time.perf_counter() - t0
        candidates = _batch_to(candidates, device)
        delta = np.zeros(_n(candidates), dtype=np.float64)
        for i, j, grads in _chunk_grads(model, state, candidates, cfg, device, timings):
            t1 = time.perf_counter()
            clip_gradients_(grads, cfg.grad_clip)
            dots = torch.zeros(j - i, dtype=torch.float64, device=device)
            for name in list(grads):
                theta = state.params[name]
                m_new, denom, step_size, decay = adamw_displacement_parts(
                    theta, state.exp_avg[name], state.exp_avg_sq[name], state.step[name], grads.pop(name), cfg
                )
                disp = m_new.div_(denom).mul_(-step_size)
                if decay != 1:
                    disp.add_(theta, alpha=decay - 1)
                dots += (disp * gref[name]).reshape(j - i, -1).sum(1).double()
                del m_new, denom, disp
            delta[i:j] = dots.cpu().numpy()
            _sync(device)
            timings["update_s"] += time.perf_counter() - t1
    return OracleResult(before, before + delta, "first_order", timings)


# ----------------------------------------------------------------------------------------------
# from example ids


def probe(
    model: torch.nn.Module,
    state: ProbeState,
    store: ExampleStore,
    candidate_ids,
    reference_ids,
    seq_len: int,
    pad_id: int,
    cfg: OracleConfig | None = None,
    reference_seq_len: int | None = None,
    method: str = "batched",
) -> tuple[pa.Table, OracleResult]:
    """Collate candidates and reference examples from ``store`` and run an oracle.

    ``method``: "batched" (exact; first-order if ``cfg.first_order``), "sequential" or
    "first_order". Returns the :data:`ORACLE` table (candidate order) and the raw result.
    """
    cfg = state.config if cfg is None else cfg
    candidate_ids = np.asarray(candidate_ids, dtype=np.int64)
    reference_ids = np.asarray(reference_ids, dtype=np.int64)
    rlen = seq_len if reference_seq_len is None else reference_seq_len
    cands = collate(store, candidate_ids, seq_len, pad_id)
    refs = [
        collate(store, reference_ids[i:j], rlen, pad_id)
        for i, j in _chunks(len(reference_ids), cfg.reference_batch_size)
    ]
    fn = {"batched": batched_oracle, "sequential": sequential_oracle, "first_order": first_order_oracle}[method]
    result = fn(model, state, cands, refs, cfg)
    return result.table(candidate_ids), result
