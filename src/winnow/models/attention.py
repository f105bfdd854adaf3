"""SDPA whose causal kernel survives ``torch.compile``.

transformers' ``sdpa`` implementation hands SDPA ``is_causal=True`` (no mask tensor) when the
padding mask is absent, so that the fused causal kernels run. Under ``torch.compile`` with torch
< 2.14 it never does: dynamo reports every compiled region as an export, and
``masking_utils._ignore_causal_mask_sdpa`` then builds the full ``(b, 1, t, t)`` boolean mask,
which sends SDPA to its masked kernels (what that costs: benchmarks/RESULTS.md).

:data:`CAUSAL_SDPA` is the same attention function (transformers' ``sdpa_attention_forward``)
with a mask function that returns no mask exactly when the skip is valid whatever the tracing
state: no padding mask, the plain causal mask function, and queries and keys the same positions
(no cache). Otherwise it defers to transformers' ``sdpa_mask``, so a padded batch is still masked.
"""

from __future__ import annotations

import torch

CAUSAL_SDPA = "winnow_sdpa_causal"

_registered = False


def _static_zero(x) -> bool:
    return isinstance(x, int) and x == 0


def _causal_sdpa_mask(*args, **kwargs):
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    names = ("batch_size", "q_length", "kv_length", "q_offset", "kv_offset", "mask_function", "attention_mask")
    kw = {**dict(zip(names, args)), **kwargs}
    if (
        kw.get("attention_mask") is None
        and kw.get("allow_is_causal_skip", True)
        and kw.get("mask_function", causal_mask_function) is causal_mask_function
        and kw.get("local_size") is None
        and _static_zero(kw.get("q_offset", 0))
        and _static_zero(kw.get("kv_offset", 0))
        and kw["q_length"] == kw["kv_length"]
    ):
        return None
    return sdpa_mask(**kw)


def register() -> str:
    """Register :data:`CAUSAL_SDPA` with transformers (idempotent); returns its name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(CAUSAL_SDPA, sdpa_attention_forward)
        AttentionMaskInterface.register(CAUSAL_SDPA, _causal_sdpa_mask)
        _registered = True
    return CAUSAL_SDPA


def supports(model: torch.nn.Module) -> bool:
    """Whether ``model`` runs transformers' ``sdpa`` attention and can switch to :data:`CAUSAL_SDPA`."""
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    return impl in ("sdpa", CAUSAL_SDPA) and hasattr(model, "set_attn_implementation")


def use_causal_sdpa(model: torch.nn.Module) -> bool:
    """Switch ``model`` from ``sdpa`` to :data:`CAUSAL_SDPA` (a no-op for other attentions).

    Returns whether ``model`` now runs :data:`CAUSAL_SDPA`. Not undone: the function is the same,
    and ``save_pretrained`` does not write the implementation, so checkpoints load without Winnow.
    """
    if not supports(model):
        return False
    if model.config._attn_implementation != CAUSAL_SDPA:
        model.set_attn_implementation(register())
    return True
