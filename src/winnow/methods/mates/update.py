"""Functional building blocks of the batched oracle: batch helpers, per-candidate gradients,
clipping and the AdamW step on K parameter copies at once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch.func import grad

from winnow.grads import Batch, Params, per_example_grads, per_example_loss
from winnow.methods.mates.config import BATCH_KEYS, CLIP_EPS, OracleConfig, ProbeState

References = Batch | Sequence[Batch]  # one reference batch, or micro-batches of it

# ----------------------------------------------------------------------------------------------
# helpers


def _amp(cfg: OracleConfig, device: torch.device):
    if cfg.amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _n(batch: Batch) -> int:
    return int(batch["input_ids"].shape[0])


def _slice(batch: Batch, i: int, j: int) -> Batch:
    return {k: batch[k][i:j] for k in BATCH_KEYS}


def _batch_to(batch: Batch, device: torch.device) -> Batch:
    return {k: batch[k].to(device) for k in BATCH_KEYS}


def _reference_batches(reference: References, size: int, device: torch.device) -> list[Batch]:
    """A dict is cut into micro-batches of ``size``; a list is used as given."""
    if isinstance(reference, dict):
        n = _n(reference)
        out = [_slice(reference, i, min(i + size, n)) for i in range(0, n, size)]
    else:
        out = list(reference)
    if not out:
        raise ValueError("empty reference set")
    return [_batch_to(b, device) for b in out]


def _state_on(state: ProbeState, model: torch.nn.Module) -> ProbeState:
    p0 = next(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    if set(names) != set(state.params):
        extra, missing = set(state.params) - set(names), set(names) - set(state.params)
        raise KeyError(f"state and model parameters differ: missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}")
    return state.to(p0.device, p0.dtype)


# ----------------------------------------------------------------------------------------------
# functional building blocks of the batched oracle


def adamw_displacement_parts(
    theta: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: float,
    g: torch.Tensor,
    cfg: OracleConfig,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """``(m', denom, step_size, decay)`` of one AdamW step on stacked (clipped) gradients.

    ``g`` is ``(K, *shape)``; ``m'`` and ``denom`` come back ``(K, *shape)`` (``g`` is consumed:
    its storage may be reused). θ' = θ·decay − step_size · m' / denom. The ops mirror torch's
    single-tensor AdamW (lerp, mul+addcmul, sqrt/÷√bc2/+ε) so fp32 results agree to rounding.
    """
    beta1, beta2 = cfg.betas
    s = step + 1.0
    bias1 = 1 - beta1**s
    bias2 = 1 - beta2**s
    step_size = cfg.lr / bias1
    bias2_sqrt = bias2**0.5
    m_new = torch.lerp(exp_avg.expand_as(g), g, 1 - beta1)
    v_new = torch.addcmul(exp_avg_sq * beta2, g, g, value=1 - beta2)
    del g
    denom = v_new.sqrt_().div_(bias2_sqrt).add_(cfg.eps)
    wd = cfg.weight_decay if theta.ndim >= 2 else 0.0
    decay = 1 - cfg.lr * wd
    return m_new, denom, step_size, decay


def adamw_update(state: ProbeState, grads: Params, cfg: OracleConfig | None = None, clip: bool = True) -> Params:
    """θ' for each of K candidates: ``{name: (K, *shape)}``, from per-candidate gradients.

    ``grads`` are unclipped ``(K, *shape)`` gradients (consumed: entries are popped as they are
    used, so the gradients and the updated copies are not all alive at once). ``clip``: apply
    the per-candidate global-norm clip of ``cfg.grad_clip``. θ, m, v in ``state`` are not written.
    """
    cfg = state.config if cfg is None else cfg
    if cfg.compile and grads and next(iter(grads.values())).is_cuda:
        return _adamw_update_fused(state, grads, cfg, clip)
    if clip:
        clip_gradients_(grads, cfg.grad_clip)
    out: Params = {}
    for name in list(grads):
        g = grads.pop(name)
        theta = state.params[name]
        m_new, denom, step_size, decay = adamw_displacement_parts(
            theta, state.exp_avg[name], state.exp_avg_sq[name], state.step[name], g, cfg
        )
        del g
        base = theta * decay if decay != 1 else theta
        # torch: param.addcdiv_(exp_avg, denom, value=-step_size) on the decayed param
        out[name] = torch.addcdiv(base, m_new, denom, value=-step_size)
        del m_new, denom
    return out


def _adamw_one(theta, exp_avg, exp_avg_sq, g, coef, beta1, beta2, bias2_sqrt, eps, step_size, decay):
    # the ops of clip_gradients_ + adamw_displacement_parts + addcdiv, in the same order, so that
    # inductor emits one elementwise kernel: the K×|θ| intermediates (m', v', denom) never reach
    # memory, which is most of the eager update's time
    if coef is not None:
        g = g * coef.view(-1, *([1] * (g.ndim - 1))).to(g.dtype)
    m_new = torch.lerp(exp_avg.expand_as(g), g, 1 - beta1)
    v_new = torch.addcmul(exp_avg_sq * beta2, g, g, value=1 - beta2)
    denom = v_new.sqrt().div(bias2_sqrt).add(eps)
    base = theta * decay if decay != 1 else theta
    return torch.addcdiv(base, m_new, denom, value=-step_size)


_adamw_one_compiled = None


def _adamw_update_fused(state: ProbeState, grads: Params, cfg: OracleConfig, clip: bool) -> Params:
    """:func:`adamw_update` with the per-tensor update compiled into one kernel (CUDA)."""
    global _adamw_one_compiled
    if _adamw_one_compiled is None:
        _adamw_one_compiled = torch.compile(_adamw_one, dynamic=True)
    coef = clip_coefficients(grads, cfg.grad_clip) if clip else None
    beta1, beta2 = cfg.betas
    out: Params = {}
    for name in list(grads):
        g = grads.pop(name)
        theta = state.params[name]
        s = state.step[name] + 1.0
        wd = cfg.weight_decay if theta.ndim >= 2 else 0.0
        out[name] = _adamw_one_compiled(
            theta,
            state.exp_avg[name],
            state.exp_avg_sq[name],
            g,
            coef,
            beta1,
            beta2,
            (1 - beta2**s) ** 0.5,
            cfg.eps,
            cfg.lr / (1 - beta1**s),
            1 - cfg.lr * wd,
        )
        del g
    return out


def clip_coefficients(grads: Params, max_norm: float) -> torch.Tensor | None:
    """Per-candidate ``min(1, max_norm / (‖g_k‖ + 1e-6))`` over all tensors, ``(K,)``; None if off."""
    if max_norm <= 0:
        return None
    norms = [
        torch.linalg.vector_norm(g, 2, dim=tuple(range(1, g.ndim))) if g.ndim > 1 else g.abs() for g in grads.values()
    ]
    total = torch.linalg.vector_norm(torch.stack(norms), 2, dim=0)
    return torch.clamp(max_norm / (total + CLIP_EPS), max=1.0)


def clip_gradients_(grads: Params, max_norm: float) -> torch.Tensor | None:
    """Scale each candidate's gradient in place by its clip coefficient (as clip_grad_norm_)."""
    coef = clip_coefficients(grads, max_norm)
    if coef is not None:
        for g in grads.values():
            g.mul_(coef.view(-1, *([1] * (g.ndim - 1))).to(g.dtype))
    return coef


def candidate_grads(model: torch.nn.Module, params: Params, batch: Batch, cfg: OracleConfig) -> Params:
    """∇_θ ℓ(x_k, θ) for every candidate of ``batch``: ``{name: (K, *shape)}``.

    ``grad_mode="vmap"`` needs eager attention (:func:`winnow.grads.functional_model`; the
    oracles switch the model themselves).
    """
    device = next(iter(params.values())).device
    if cfg.compile and cfg.grad_mode == "loop" and device.type == "cuda":
        return _loop_grads_compiled(model, params, batch, cfg)
    with _amp(cfg, device):
        if cfg.grad_mode == "vmap":
            return per_example_grads(model, params, batch)
        gs = []
        for i in range(_n(batch)):
            x = _slice(batch, i, i + 1)
            gs.append(grad(lambda p, x=x: per_example_loss(model, p, x)[0])(params))
    return {k: torch.stack([g[k] for g in gs]) for k in params}


def _single_loss(model: torch.nn.Module, params: Params, batch: Batch) -> torch.Tensor:
    return per_example_loss(model, params, batch)[0]


_single_loss_compiled = None


def _loop_grads_compiled(model: torch.nn.Module, params: Params, batch: Batch, cfg: OracleConfig) -> Params:
    """``grad_mode="loop"`` with ``cfg.compile`` on CUDA: one ordinary reverse pass per candidate.

    The vmapped gradient needs eager attention and runs its matmuls as batched per-candidate
    products; a plain backward of one sequence through the compiled forward, with the fused SDPA
    causal kernels, does the same arithmetic faster. Same function (token-mean CE).
    """
    global _single_loss_compiled
    if _single_loss_compiled is None:
        _single_loss_compiled = torch.compile(_single_loss, dynamic=False)
    k = _n(batch)
    names = list(params)
    out = {n: torch.empty((k, *p.shape), dtype=p.dtype, device=p.device) for n, p in params.items()}
    with torch.enable_grad(), _attention(model, cfg.reference_attention), _amp(cfg, next(iter(params.values())).device):
        for i in range(k):
            leaf = {n: params[n].detach().requires_grad_() for n in names}
            loss = _single_loss_compiled(model, leaf, _causal_only(_slice(batch, i, i + 1)))
            for n, g in zip(names, torch.autograd.grad(loss, [leaf[n] for n in names])):
                out[n][i].copy_(g)
    return out


def _causal_only(batch: Batch) -> Batch:
    """The batch with an all-ones attention mask when the padding mask is redundant.

    For right-padded rows of a causal LM with positions 0..t−1 (GPT-NeoX, Llama-like), a real
    query i only attends keys ≤ i, which are all real, so the padding mask changes nothing at the
    positions that carry loss (checked: every target position and its input are real tokens).
    An all-ones mask lets SDPA run its fused causal kernels instead of a masked one.
    """
    am, lm = batch["attention_mask"].bool(), batch["loss_mask"].bool()
    right_padded = bool((am[:, 1:] <= am[:, :-1]).all())
    targets_real = not bool((lm[:, 1:] & ~(am[:, 1:] & am[:, :-1])).any())
    if not (right_padded and targets_real):
        return batch
    return {**batch, "attention_mask": torch.ones_like(batch["attention_mask"])}


@contextlib.contextmanager
def _attention(model: torch.nn.Module, impl: str | None) -> Iterator[None]:
    """Use attention implementation ``impl`` inside (None: unchanged), then switch back."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    if impl is None or before is None or before == impl or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation(impl)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def _chunks(n: int, k: int) -> Iterator[tuple[int, int]]:
    for i in range(0, n, k):
        yield i, min(i + k, n)
