"""Batched gradient primitives on causal LMs with ``torch.func`` (shared by PDS, MATES, LESS).

Vectors in parameter space are ``dict[name, Tensor]`` keyed like ``model.named_parameters()``
("param dicts"). Every function is functional: the model's own parameters are never read for the
computation nor changed; ``params`` is what is differentiated, and ``model`` supplies the
architecture (and buffers).

Per-example loss: ℓ(x, θ) = token-mean next-token cross-entropy (nats) over the example's target
positions (``loss_mask``, see :func:`winnow.train.batches.collate`); an example without target
positions has ℓ = 0. A batch is the dict ``collate`` returns: ``input_ids``/``attention_mask``/
``loss_mask``, all ``(b, t)``.

Attention and torch.func (torch 2.13, transformers 5.23, checked on CPU):
- forward-mode AD (``jvp``: :func:`hvp`, :func:`loss_jvp`) fails under the default "sdpa"
  attention: ``_scaled_dot_product_flash_attention_for_cpu`` has no forward-AD formula
  (NotImplementedError); the fused CUDA kernels have none either;
- ``vmap`` (:func:`per_example_grads`) fails under "sdpa" too: transformers' SDPA mask helper
  (``masking_utils._ignore_causal_mask_sdpa``) branches on tensor values.
Both work with eager attention, which computes the same function. Call :func:`functional_model`
once before using those three functions (they refuse an "sdpa" model with a message saying so);
plain reverse mode (:func:`per_example_loss`, :func:`mean_loss_grad`) works with either.

:func:`functional_model` selects "winnow_eager", registered here: HF's eager attention except that
a float64 model also gets its softmax in float64 (HF's eager runs the softmax in float32 whatever
the dtype, which caps float64 exactness checks at ~1e-8 relative). Other dtypes call the model's
own ``eager_attention_forward`` unchanged.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, grad_and_value, jvp, vmap

Params = dict[str, torch.Tensor]
Batch = dict[str, torch.Tensor]
Weights = torch.Tensor | Sequence[torch.Tensor] | None

BATCH_KEYS = ("input_ids", "attention_mask", "loss_mask")


# ----------------------------------------------------------------------------------------------
# model preparation


EAGER_IMPL = "winnow_eager"
_EAGER_NAMES = ("eager", EAGER_IMPL)


def _model_eager_attention(module: torch.nn.Module) -> Callable:
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        raise ValueError(f"{type(module).__name__}: its modeling file has no eager_attention_forward")
    return fn


def _winnow_eager_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """query ``(b, h, q, d)``, key/value ``(b, h_kv, k, d)`` → ``(b, q, h, d)`` output, weights."""
    exotic = any(kwargs.get(k) is not None for k in ("softcap", "sinks", "s_aux"))
    if query.dtype != torch.float64 or exotic:
        return _model_eager_attention(module)(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    rep = query.shape[1] // key.shape[1]
    if rep > 1:  # grouped-query attention
        key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask[:, :, :, : key.shape[-2]]
    weights = F.softmax(weights, dim=-1)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _register_eager() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask

    AttentionInterface.register(EAGER_IMPL, _winnow_eager_attention)
    AttentionMaskInterface.register(EAGER_IMPL, eager_mask)


def functional_model(model: torch.nn.Module) -> torch.nn.Module:
    """Switch ``model`` (in place) to eager attention so that ``jvp`` and ``vmap`` go through it.

    Uses "winnow_eager" (see the module docstring). Returns the same module; models without an HF
    config are left alone. The computed function is unchanged (same math as "sdpa").
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) == EAGER_IMPL:
        return model
    _register_eager()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(EAGER_IMPL)
    else:  # older transformers: the attention modules read the config at call time
        config._attn_implementation = EAGER_IMPL
    return model


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module, eager: bool = True) -> Iterator[None]:
    """Eval mode (dropout off: a per-example quantity then depends on the example alone) and, with
    ``eager``, :func:`functional_model`'s eager attention for forward-mode AD and vmap; both are
    restored on exit."""
    config = getattr(model, "config", None)
    attn_before = getattr(config, "_attn_implementation", None)
    was_training = model.training
    if eager:
        functional_model(model)
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
        if eager and attn_before is not None and config._attn_implementation != attn_before:
            model.set_attn_implementation(attn_before)


def params_of(model: torch.nn.Module) -> Params:
    """Detached views of the model's parameters (shared storage; nothing is copied)."""
    return {name: p.detach() for name, p in model.named_parameters()}


def _require_eager(model: torch.nn.Module, what: str) -> None:
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", "eager") if config is not None else "eager"
    if impl not in _EAGER_NAMES:
        raise ValueError(
            f"{what} needs eager attention (torch.func jvp/vmap do not go through {impl!r} attention); "
            "call winnow.grads.functional_model(model) first"
        )


# ----------------------------------------------------------------------------------------------
# losses


def _device_of(params: Params) -> torch.device:
    return next(iter(params.values())).device


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: batch[k].to(device, non_blocking=True) for k in BATCH_KEYS}


def per_example_loss(model: torch.nn.Module, params: Params, batch: Batch) -> torch.Tensor:
    """ℓ(x_n, θ) for every example of ``batch``: ``(b,)``, nats, dtype of the logits (≥ float32).

    ``params`` may be a subset of the parameters (the rest are the module's own); buffers are the
    module's.
    """
    batch = _to(batch, _device_of(params))
    buffers = dict(model.named_buffers())
    out = functional_call(
        model,
        (params, buffers),
        args=(),
        kwargs={"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False},
    )
    logits = out.logits  # (b, t, V)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # CE in half precision loses the small differences that matter here
    # Shift the targets, not the logits: slicing logits[:, :-1] would copy the (b, t, V) tensor
    # (and its tangent under jvp); the last position gets a placeholder target and weight 0.
    ids, loss_mask = batch["input_ids"], batch["loss_mask"]
    targets = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)
    mask = torch.cat([loss_mask[:, 1:], torch.zeros_like(loss_mask[:, :1])], dim=1).to(logits.dtype)
    b, t = targets.shape
    ce = F.cross_entropy(logits.reshape(b * t, -1), targets.reshape(-1), reduction="none").view(b, t)
    return (ce * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _as_batches(batches: Batch | Sequence[Batch]) -> list[Batch]:
    return [batches] if isinstance(batches, dict) else list(batches)


def _split_weights(
    batches: list[Batch], weights: Weights, device: torch.device, dtype: torch.dtype
) -> list[torch.Tensor]:
    """Per-micro-batch weight vectors ``(b_i,)``; None → 1/N_total each (the mean)."""
    sizes = [int(b["input_ids"].shape[0]) for b in batches]
    if weights is None:
        n = sum(sizes)
        return [torch.full((s,), 1.0 / n, device=device, dtype=dtype) for s in sizes]
    if isinstance(weights, torch.Tensor):
        if weights.ndim != 1 or weights.numel() != sum(sizes):
            raise ValueError(f"weights has shape {tuple(weights.shape)}, expected ({sum(sizes)},)")
        return [w.to(device, dtype) for w in torch.split(weights, sizes)]
    weights = list(weights)
    if [int(w.numel()) for w in weights] != sizes:
        raise ValueError(f"weights sizes {[int(w.numel()) for w in weights]} do not match batch sizes {sizes}")
    return [torch.as_tensor(w).to(device, dtype) for w in weights]


def _weighted_loss_fn(model: torch.nn.Module, batch: Batch, w: torch.Tensor) -> Callable[[Params], torch.Tensor]:
    def f(p: Params) -> torch.Tensor:
        return (w * per_example_loss(model, p, batch)).sum()

    return f


def _loss_dtype(params: Params) -> torch.dtype:
    dtype = next(iter(params.values())).dtype
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def mean_loss_value_and_grad(
    model: torch.nn.Module, params: Params, batches: Batch | Sequence[Batch], weights: Weights = None
) -> tuple[torch.Tensor, Params]:
    """``(L, ∇_θ L)`` with L = mean of ℓ over all examples of ``batches`` or Σ_n w_n ℓ_n.

    Args:
        batches: one batch or a list of micro-batches (gradients are accumulated, so only one
            micro-batch's activations are alive at a time).
        weights: None (mean), one ``(N_total,)`` tensor in batch order, or one ``(b_i,)`` per batch.
    Returns:
        L as a 0-d tensor and the gradient as a param dict (same dtypes as ``params``).
    """
    batches = _as_batches(batches)
    ws = _split_weights(batches, weights, _device_of(params), _loss_dtype(params))
    total_g: Params | None = None
    total_v = torch.zeros((), device=_device_of(params), dtype=_loss_dtype(params))
    for batch, w in zip(batches, ws):
        g, v = grad_and_value(_weighted_loss_fn(model, batch, w))(params)
        total_g = g if total_g is None else tree_add(total_g, g)
        total_v = total_v + v.detach()
    assert total_g is not None, "no batches given"
    return total_v, total_g


def mean_loss_grad(
    model: torch.nn.Module, params: Params, batches: Batch | Sequence[Batch], weights: Weights = None
) -> Params:
    """∇_θ of the mean loss (or of Σ_n w_n ℓ_n); see :func:`mean_loss_value_and_grad`."""
    return mean_loss_value_and_grad(model, params, batches, weights)[1]


@torch.no_grad()
def mean_loss(
    model: torch.nn.Module, params: Params, batches: Batch | Sequence[Batch], weights: Weights = None
) -> torch.Tensor:
    """The loss value only (no graph): 0-d tensor."""
    batches = _as_batches(batches)
    ws = _split_weights(batches, weights, _device_of(params), _loss_dtype(params))
    return sum((w * per_example_loss(model, params, b)).sum() for b, w in zip(batches, ws))


def hvp(
    model: torch.nn.Module,
    params: Params,
    batches: Batch | Sequence[Batch],
    vec: Params,
    weights: Weights = None,
) -> Params:
    """H v, H = ∇²_θ of the same loss as :func:`mean_loss_grad`, by forward-over-reverse.

    ``jvp`` of ``θ ↦ ∇_θ L_mb(θ)`` along ``vec`` for each micro-batch, summed (the HVP is linear
    in the loss). Cost ≈ 2-3 forward+backward passes; no Hessian is built. Needs eager attention.
    """
    _require_eager(model, "hvp")
    batches = _as_batches(batches)
    ws = _split_weights(batches, weights, _device_of(params), _loss_dtype(params))
    out: Params | None = None
    for batch, w in zip(batches, ws):
        _, hv = jvp(grad(_weighted_loss_fn(model, batch, w)), (params,), (vec,))
        out = hv if out is None else tree_add(out, hv)
    assert out is not None, "no batches given"
    return out


def loss_jvp(model: torch.nn.Module, params: Params, batch: Batch, tangent: Params) -> torch.Tensor:
    """⟨∇_θ ℓ(x_n, θ), tangent⟩ for every example: ``(b,)``.

    One forward-mode pass of the vector-valued map θ ↦ (ℓ_1, …, ℓ_b) along ``tangent``: the
    directional derivatives of all examples at once, without any per-example gradient. Cost ≈ 2-3
    forward passes of the batch. Needs eager attention.
    """
    return loss_and_jvp(model, params, batch, tangent)[1]


def loss_and_jvp(
    model: torch.nn.Module, params: Params, batch: Batch, tangent: Params
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ℓ (b,), ⟨∇ℓ, tangent⟩ (b,))`` from the same forward-mode pass (see :func:`loss_jvp`)."""
    _require_eager(model, "loss_jvp")
    value, deriv = jvp(lambda p: per_example_loss(model, p, batch), (params,), (tangent,))
    return value.detach(), deriv.detach()


def per_example_grads(model: torch.nn.Module, params: Params, batch: Batch, chunk_size: int | None = None) -> Params:
    """∇_θ ℓ(x_n, θ) for every example: param dict of ``(b, *shape)`` tensors (``vmap`` of ``grad``).

    Memory is b × |θ|; ``chunk_size`` bounds how many examples vmap runs at once. Needs eager
    attention.
    """
    _require_eager(model, "per_example_grads")
    batch = _to(batch, _device_of(params))

    def one(p: Params, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        single = {"input_ids": input_ids[None], "attention_mask": attention_mask[None], "loss_mask": loss_mask[None]}
        return per_example_loss(model, p, single)[0]

    return vmap(grad(one), in_dims=(None, 0, 0, 0), chunk_size=chunk_size)(
        params, batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    )


# ----------------------------------------------------------------------------------------------
# param-dict vector algebra (keys of the first argument; all inputs share keys)


def tree_zeros_like(a: Params) -> Params:
    return {k: torch.zeros_like(v) for k, v in a.items()}


def tree_add(a: Params, b: Params, alpha: float = 1.0) -> Params:
    """a + alpha · b."""
    return {k: a[k].add(b[k], alpha=alpha) for k in a}


def tree_sub(a: Params, b: Params) -> Params:
    return {k: a[k] - b[k] for k in a}


def tree_scale(a: Params, c: float) -> Params:
    return {k: v * c for k, v in a.items()}


def tree_dot(a: Params, b: Params) -> torch.Tensor:
    """⟨a, b⟩ as a float64 0-d tensor (per-tensor dots in the native dtype, summed in float64)."""
    total = torch.zeros((), dtype=torch.float64, device=next(iter(a.values())).device)
    for k in a:
        total = total + torch.dot(a[k].reshape(-1), b[k].reshape(-1)).to(torch.float64)
    return total


def tree_norm(a: Params) -> torch.Tensor:
    return tree_dot(a, a).sqrt()


def tree_detach(a: Params) -> Params:
    return {k: v.detach() for k, v in a.items()}


def tree_to(a: Params, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Params:
    return {k: v.to(device=device, dtype=dtype) for k, v in a.items()}
