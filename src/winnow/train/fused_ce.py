"""Output projection + next-token cross-entropy without materialising the full logits.

The LM head of a small model is a large share of a training step: for Pythia-160M's shape at
32 × 1024 tokens the logits are 32,768 × 50,304 (3.3 GB in bf16, 6.6 GB in fp32). This module
computes ``sum_i mask_i · CE(h_i · Wᵀ, target_i)`` a chunk of rows at a time and, like the
fused linear-cross-entropy kernels of Liger and Apple's "cut cross-entropy", computes the
gradients for ``h`` and ``W`` in the forward pass (the loss is a scalar, so the backward only
scales them by the upstream gradient). Peak memory for the head falls from the full logits to
one chunk; the arithmetic is the same three GEMMs as autograd's.

Numerics match :func:`winnow.train.trainer.masked_ce_sum` on logits of the same dtype: the
logits come out of the GEMM in the compute dtype (bf16 under autocast), the softmax and the loss
are taken in fp32, the logit gradient is cast back to the compute dtype for its two GEMMs (what
autograd does under autocast), and W's gradient is accumulated in fp32.

Status: measured, not the trainer's default (same step time as the plain head, less peak memory:
benchmarks/RESULTS.md, ``bench_train.py --variants fused``).
"""

from __future__ import annotations

import torch


def _ce_chunk(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked CE sum (fp32 scalar, nats) and d(sum)/d(logits) in the logits' dtype, shape ``(c, V)``."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1)
    m = mask.to(x.dtype)
    tgt = x.gather(1, targets[:, None]).squeeze(1)
    loss = ((lse - tgt) * m).sum()
    p = torch.exp(x - lse[:, None])
    onehot = torch.zeros_like(p).scatter_(1, targets[:, None], 1.0)
    grad = ((p - onehot) * m[:, None]).to(logits.dtype)
    return loss, grad


_compiled_chunk = None


def _chunk_fn(device: torch.device):
    """``_ce_chunk``, compiled on CUDA (one reduction + one pointwise kernel over the chunk)."""
    global _compiled_chunk
    if device.type != "cuda":
        return _ce_chunk
    if _compiled_chunk is None:
        _compiled_chunk = torch.compile(_ce_chunk, dynamic=False)
    return _compiled_chunk


class _LinearCESum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, mask, chunk: int, compute_dtype):
        n = h.size(0)
        hc_all = h.to(compute_dtype)
        w = weight.to(compute_dtype)
        grad_h = torch.empty_like(hc_all)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        fn = _chunk_fn(h.device)
        for s in range(0, n, chunk):
            hc = hc_all[s : s + chunk]
            loss, g = fn(hc @ w.t(), targets[s : s + chunk], mask[s : s + chunk])
            total += loss
            grad_h[s : s + chunk] = g @ w
            grad_w += (g.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.h_dtype, ctx.w_dtype = h.dtype, weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = (grad_h.float() * grad_out).to(ctx.h_dtype)
        gw = (grad_w * grad_out).to(ctx.w_dtype)
        return gh, gw, None, None, None, None


def linear_ce_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    chunk: int = 8192,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``Σ_i mask_i · CE(hidden_i · weightᵀ, targets_i)`` (nats, fp32 scalar), differentiable in both.

    Args:
        hidden: ``(n, d)`` final hidden states (after the last layer norm).
        weight: ``(V, d)`` output projection (the LM head's weight, no bias).
        targets: ``(n,)`` int64 next-token ids.
        mask: ``(n,)`` bool, the positions that count.
        chunk: rows a GEMM (a chunk's logits are ``chunk × V`` in ``compute_dtype``).
        compute_dtype: the GEMMs' dtype (default: bf16 if autocast is on for the device, else
            ``hidden``'s dtype).
    """
    if compute_dtype is None:
        dt = hidden.device.type
        compute_dtype = torch.get_autocast_dtype(dt) if torch.is_autocast_enabled(dt) else hidden.dtype
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearCESum.apply(hidden, weight, targets, mask, int(chunk), compute_dtype)


def backbone_hidden(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, use_bf16: bool
) -> torch.Tensor:
    """The causal LM's final hidden states ``(b, t, d)`` (after its last layer norm), no LM head."""
    with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        # use_cache: see winnow.train.trainer.forward_ce_sum
        return model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True).last_hidden_state


def fused_forward_ce_sum(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    loss_mask: torch.Tensor,
    use_bf16: bool,
    hidden_fn=backbone_hidden,
    chunk: int = 8192,
) -> torch.Tensor:
    """The trainer's ``forward_ce_sum`` with the LM head fused into the loss (:func:`linear_ce_sum`).

    The same function of the weights (the head's GEMMs in bf16 under ``use_bf16``, the softmax in
    fp32); the full ``(b, t, V)`` logits never exist. ``hidden_fn`` is :func:`backbone_hidden` or a
    compiled copy of it.
    """
    h = hidden_fn(model, input_ids, attention_mask, use_bf16)
    b, t, d = h.shape
    # every position predicts the next token; the last has none (target 0, masked out)
    pad = torch.zeros((b, 1), dtype=input_ids.dtype, device=input_ids.device)
    targets = torch.cat([input_ids[:, 1:], pad], dim=1).reshape(-1)
    mask = torch.cat([loss_mask[:, 1:], torch.zeros_like(pad, dtype=torch.bool)], dim=1).reshape(-1)
    weight = model.get_output_embeddings().weight
    dtype = torch.bfloat16 if use_bf16 else h.dtype
    return linear_ce_sum(h.reshape(b * t, d), weight, targets, mask, chunk=chunk, compute_dtype=dtype)
