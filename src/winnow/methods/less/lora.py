"""LoRA adapters, their checkpoints and per-example LoRA gradients (plain and Adam-preconditioned)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from winnow.grads import Batch, eval_mode, per_example_grads, per_example_loss

DEFAULT_TARGET_MODULES = ("query_key_value", "dense")  # GPT-NeoX attention qkv and attention output
KINDS = ("adam", "sgd")


# ----------------------------------------------------------------------------------------------
# LoRA


def add_lora(
    model: torch.nn.Module,
    r: int = 128,
    alpha: float = 512,
    dropout: float = 0.1,
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    seed: int = 0,
) -> torch.nn.Module:
    """Wrap ``model`` with LoRA adapters (peft ``LoraConfig`` + ``get_peft_model``); returns the peft model.

    ``model`` is modified in place (peft injects the adapter layers into it) and its base weights are
    frozen. A is initialised by peft (Kaiming-uniform) from a CPU RNG seeded with ``seed`` (the global
    RNG state is restored afterwards); B is zero. The default targets are GPT-NeoX's attention qkv
    and attention output projections (peft matches module-name suffixes, so "dense" does not match
    the MLP's ``dense_h_to_4h``/``dense_4h_to_h``).
    """
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=int(r),
        lora_alpha=alpha,
        lora_dropout=float(dropout),
        target_modules=list(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    # peft builds the adapter linears on the CPU and moves them next to the base layer afterwards.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' is_gradient_checkpointing
        torch.manual_seed(int(seed))
        return get_peft_model(model, cfg)


def lora_param_names(model: torch.nn.Module) -> list[str]:
    """Trainable LoRA parameters, sorted: this order defines the flattened gradient layout."""
    names = sorted(n for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n)
    if not names:
        raise ValueError("the model has no trainable LoRA parameters (call add_lora first)")
    return names


def lora_size(model: torch.nn.Module, names: Sequence[str]) -> int:
    """P: the number of values in the flattened LoRA gradient."""
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


def load_lora_checkpoint(
    base_model: torch.nn.Module, ckpt_dir: str | os.PathLike, lora_cfg: dict
) -> tuple[torch.nn.Module, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Rebuild the peft model on ``base_model`` and load a trainer checkpoint of it.

    Args:
        base_model: a model of the checkpoint's base architecture (modified in place by peft; its
            weights are overwritten with the checkpoint's, which hold base and LoRA weights).
        ckpt_dir: a folder of :mod:`winnow.models.checkpoint` written while training the peft model.
        lora_cfg: keyword arguments of :func:`add_lora` (r, alpha, dropout, target_modules, seed).
    Returns:
        The peft model (base weights frozen, device of ``base_model``) and the AdamW moments of its
        LoRA parameters ``{name: (exp_avg, exp_avg_sq)}`` (CPU, float32, each the parameter's
        shape); empty when the checkpoint has no optimizer.safetensors.
    Raises:
        KeyError: optimizer.safetensors exists but lacks some LoRA parameter's moments.
    """
    from winnow.io.artifacts import load_tensors
    from winnow.models.checkpoint import load_weights

    model = add_lora(base_model, **lora_cfg)
    load_weights(model, ckpt_dir)
    opt_path = Path(ckpt_dir) / "optimizer.safetensors"
    if not opt_path.exists():
        return model, {}
    tensors = load_tensors(opt_path)
    names = lora_param_names(model)
    missing = [n for n in names if f"{n}.exp_avg" not in tensors or f"{n}.exp_avg_sq" not in tensors]
    if missing:
        raise KeyError(f"{opt_path}: no AdamW moments for {len(missing)} LoRA parameters, e.g. {missing[:2]}")
    moments = {n: (tensors[f"{n}.exp_avg"].float(), tensors[f"{n}.exp_avg_sq"].float()) for n in names}
    return model, moments


def flat_moments(
    moments: dict[str, tuple[torch.Tensor, torch.Tensor]], names: Sequence[str], device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(exp_avg (P,), exp_avg_sq (P,))`` float32, flattened in ``names`` order."""
    m = torch.cat([moments[n][0].reshape(-1) for n in names]).to(device=device, dtype=torch.float32)
    v = torch.cat([moments[n][1].reshape(-1) for n in names]).to(device=device, dtype=torch.float32)
    return m, v


def per_example_lora_grads(
    model: torch.nn.Module, batch: Batch, names: Sequence[str], chunk_size: int | None = None
) -> torch.Tensor:
    """∇_LoRA ℓ(z_n) for every example of ``batch``: ``(b, P)`` float32, flattened in ``names`` order.

    ℓ is the token-mean CE over the example's ``loss_mask`` positions (nats); examples without
    target positions get a zero row. One ``vmap(grad)`` over the batch, differentiating only the
    LoRA parameters (base weights are constants). The model runs in eval mode, so LoRA dropout is
    off and a feature depends on the example alone, and with eager attention (``vmap`` does not go
    through SDPA); both are restored afterwards. Under bf16 autocast (set by the
    caller) the gradients are still float32 (fp32 parameters).

    Memory: b × P values for the gradients (twice, while flattening) plus one batch's activations;
    ``chunk_size`` bounds how many examples vmap runs at once.
    """
    named = dict(model.named_parameters())
    params = {n: named[n].detach() for n in names}
    with eval_mode(model):
        grads = per_example_grads(model, params, batch, chunk_size=chunk_size)
    b = int(batch["input_ids"].shape[0])
    return torch.cat([grads.pop(n).reshape(b, -1).float() for n in names], dim=1)


def per_example_lora_grads_hooks(model: torch.nn.Module, batch: Batch, names: Sequence[str]) -> torch.Tensor:
    """Same as :func:`per_example_lora_grads` (``(b, P)`` float32, ``names`` order) from ONE batched
    backward instead of a per-example one.

    Every LoRA factor is a bias-free ``nn.Linear`` y = W x, so ∂ℓ_n/∂W = Σ_t (∂ℓ_n/∂y_{n,t}) x_{n,t}ᵀ.
    Examples of a causal-LM batch do not interact (no batch statistics; padding is masked and
    carries no loss), so the backward of Σ_n ℓ_n hands every layer ∂ℓ_n/∂y_n for all n at once;
    forward hooks keep x, tensor hooks keep ∂/∂y, and one einsum per factor forms the b gradients.
    Exact, not an approximation (checked against vmap(grad) in tests/unit/test_less.py). Memory:
    the activations of one batch plus b × P for the result. Eval mode, as the vmap version.
    """
    modules = dict(model.named_modules())
    named = dict(model.named_parameters())
    owners = []
    for n in names:
        mod_name, _, leaf = n.rpartition(".")
        mod = modules.get(mod_name)
        if leaf != "weight" or not isinstance(mod, torch.nn.Linear) or mod.bias is not None:
            raise ValueError(f"{n}: the hook path needs bias-free nn.Linear LoRA factors")
        owners.append((n, mod))
    inputs: dict[str, torch.Tensor] = {}
    grads_out: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name: str):
        def fwd(_mod, args, out):
            inputs[name] = args[0].detach()
            out.register_hook(lambda g: grads_out.__setitem__(name, g.detach()))

        return fwd

    try:
        for n, mod in owners:
            handles.append(mod.register_forward_hook(keep(n)))
        with eval_mode(model, eager=False):  # plain reverse mode: SDPA attention is fine
            losses = per_example_loss(model, {n: named[n] for n in names}, batch)
            torch.autograd.grad(losses.sum(), [named[n] for n in names], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    b = int(batch["input_ids"].shape[0])
    cols = []
    for n, _ in owners:
        x, g = inputs[n].float(), grads_out[n].float()  # (b, t, in), (b, t, out)
        cols.append(torch.einsum("bto,bti->boi", g, x).reshape(b, -1))
    return torch.cat(cols, dim=1)


def adam_features(
    g: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> torch.Tensor:
    """LESS's Adam-preconditioned gradient Γ = m' / √(v' + ε): ``(b, P)`` from g ``(b, P)``, m, v ``(P,)``.

    One simulated Adam step without bias correction: m' = β1 m + (1−β1) g, v' = β2 v + (1−β2) g².
    ε sits inside the square root, as in LESS's code (not torch's √v̂ + ε).
    """
    m = exp_avg.to(g.device, g.dtype)
    v = exp_avg_sq.to(g.device, g.dtype)
    m_new = torch.add(m * beta1, g, alpha=1.0 - beta1)
    v_new = torch.addcmul(v * beta2, g, g, value=1.0 - beta2)
    # in place: the same operations in the same order as m_new / sqrt(v_new + eps), with two (b, P)
    # temporaries instead of five (each as large as the gradients)
    return m_new.div_(v_new.add_(eps).sqrt_())
