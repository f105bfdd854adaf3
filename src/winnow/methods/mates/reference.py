"""The reference loss of K updated parameter copies: micro-batches, target positions and the LM
head on target positions only."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from winnow.grads import Batch, Params, per_example_loss
from winnow.methods.mates.config import OracleConfig
from winnow.methods.mates.update import _amp, _attention, _causal_only, _n

log = logging.getLogger(__name__)


def _plain_ref_loss(model: torch.nn.Module, ref_batches: list[Batch], cfg: OracleConfig) -> float:
    """ℒ_ref with ordinary forwards of ``model`` (as winnow.eval.loss); float64 host value."""
    device = next(model.parameters()).device
    total, n = 0.0, 0
    with torch.no_grad():
        for b in ref_batches:
            with _amp(cfg, device):
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
            logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
            ce = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), b["input_ids"][:, 1:].reshape(-1), reduction="none"
            ).view(_n(b), -1)
            mask = b["loss_mask"][:, 1:].to(ce.dtype)
            total += float(((ce * mask).sum(1) / mask.sum(1).clamp(min=1)).double().sum())
            n += _n(b)
    return total / n


class _Reference:
    """The reference set prepared once: micro-batches, target positions and weights on device.

    ℒ_ref(θ) = Σ_j w_j CE_j over all target positions j, w_j = 1 / (N · c_e(j)) (c_e = the
    example's target count), i.e. the mean over examples of the per-example token mean.
    """

    def __init__(self, model: torch.nn.Module, ref_batches: list[Batch], cfg: OracleConfig):
        self.model, self.batches, self.cfg = model, ref_batches, cfg
        self.n = sum(_n(b) for b in ref_batches)
        # one graph per micro-batch shape; dynamic shapes would lose the fused SDPA causal kernels
        on_cuda = bool(ref_batches) and ref_batches[0]["input_ids"].device.type == "cuda"
        self._loss = torch.compile(self._loss_eager, dynamic=False) if cfg.compile and on_cuda else self._loss_eager
        self.parts = _head_parts(model) if cfg.head_at_targets else None
        self.prepared = []
        for b in ref_batches:
            ids, lm = b["input_ids"], b["loss_mask"].bool()
            tmask = torch.zeros_like(lm)
            tmask[:, :-1] = lm[:, 1:]  # hidden state at i predicts token i+1
            counts = tmask.sum(1).clamp(min=1)
            flat = tmask.reshape(-1).nonzero().squeeze(1)
            ex = torch.div(flat, ids.shape[1], rounding_mode="floor")
            # next tokens, shifted; the last column's placeholder is never selected (tmask is 0 there)
            tgt = torch.cat([ids[:, 1:], ids[:, :1]], dim=1).reshape(-1).index_select(0, flat)
            w_ex = torch.full((_n(b),), 1.0 / self.n, device=ids.device, dtype=torch.float64)
            self.prepared.append({"pos": flat, "tgt": tgt, "w": 1.0 / (self.n * counts[ex].double()), "w_ex": w_ex})
            self.prepared[-1]["batch"] = _causal_only(b)

    def loss(self, params: Params, i: int) -> torch.Tensor:
        """Σ over micro-batch i of w_j CE_j (0-d; a function of ``params``, vmap/grad friendly)."""
        return self._loss_eager(params, i)

    def forward_loss(self, params: Params, i: int) -> torch.Tensor:
        """:meth:`loss` for the no-grad reference passes (compiled when ``cfg.compile`` on CUDA)."""
        if self.parts is None:  # the full-head fallback keeps the eager path
            return self._loss_eager(params, i)
        return self._loss(params, i)

    def _loss_eager(self, params: Params, i: int) -> torch.Tensor:
        prep = self.prepared[i]
        b = prep["batch"]
        device = next(iter(params.values())).device
        with _amp(self.cfg, device):
            if self.parts is None:
                losses = per_example_loss(self.model, params, b)
                return (losses * prep["w_ex"].to(losses.dtype)).sum()
            backbone, prefix, head_w, head_b = self.parts
            sub = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
            buffers = {k[len(prefix) :]: v for k, v in self.model.named_buffers() if k.startswith(prefix)}
            hidden = functional_call(
                backbone,
                (sub, buffers),
                args=(),
                kwargs={"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "use_cache": False},
            ).last_hidden_state
            h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, prep["pos"])
            logits = F.linear(h, params[head_w], params[head_b] if head_b else None)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        ce = F.cross_entropy(logits, prep["tgt"], reduction="none")
        return (ce * prep["w"].to(ce.dtype)).sum()

    def total(self, params: Params) -> float:
        with torch.no_grad(), _attention(self.model, self.cfg.reference_attention):
            return float(sum(self.forward_loss(params, i).double() for i in range(len(self.batches))))

    def stacked(self, stacked: Params) -> np.ndarray:
        """ℒ_ref of K models at once: ``{name: (K, *shape)}`` → ``(K,)`` float64."""
        k = next(iter(stacked.values())).shape[0]
        out = torch.zeros(k, dtype=torch.float64, device=next(iter(stacked.values())).device)
        with torch.no_grad(), _attention(self.model, self.cfg.reference_attention), warnings.catch_warnings():
            # CPU SDPA has no vmap batching rule: torch loops over the K copies (and says so)
            warnings.filterwarnings("ignore", message=".*not yet implemented the batching rule.*")
            for i in range(len(self.batches)):
                if self.cfg.reference_mode == "vmap":
                    out += vmap(lambda p, i=i: self.loss(p, i))(stacked).double()
                else:
                    out += torch.stack(
                        [self.forward_loss({n: v[j] for n, v in stacked.items()}, i) for j in range(k)]
                    ).double()
        return out.cpu().numpy()

    def grad(self, params: Params) -> Params:
        """∇_θ ℒ_ref (accumulated over the micro-batches)."""
        total: Params | None = None
        with _attention(self.model, self.cfg.reference_attention):
            for i in range(len(self.batches)):
                g = grad(lambda p, i=i: self.loss(p, i))(params)
                total = g if total is None else {k: total[k] + g[k] for k in total}
        return total

    def check_head_path(self, params: Params) -> None:
        """Compare the target-positions head with the full forward on micro-batch 0; else fall back."""
        if self.parts is None:
            return
        with torch.no_grad(), _attention(self.model, self.cfg.reference_attention):
            fast = float(self.loss(params, 0))
            parts, self.parts = self.parts, None
            full = float(self.loss(params, 0))
            self.parts = parts
        tol = 1e-2 if self.cfg.amp else 1e-4
        if not math.isfinite(fast) or abs(fast - full) > tol * max(abs(full), 1e-3):
            log.warning(
                "mates: LM head on target positions disagrees with the full forward (%.6g vs %.6g); "
                "using the full forward",
                fast,
                full,
            )
            self.parts = None


def _head_parts(model: torch.nn.Module):
    """(backbone, 'prefix.', head weight name, head bias name | None), or None if not applicable.

    Applies to HF causal LMs whose logits are ``output_embeddings(backbone(...).last_hidden_state)``
    (GPT-NeoX, Llama-like); models with logit scaling/soft-capping are excluded.
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    try:
        backbone, head = model.base_model, model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if backbone is model or not isinstance(head, torch.nn.Linear):
        return None
    names = {id(m): n for n, m in model.named_modules()}
    prefix = names.get(id(backbone))
    if not prefix:
        return None
    pnames = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    first = {id(p): n for n, p in model.named_parameters()}  # the canonical (de-duplicated) names
    w = first.get(id(head.weight)) or pnames.get(id(head.weight))
    b = first.get(id(head.bias)) if head.bias is not None else None
    return (backbone, prefix + ".", w, b) if w else None
