"""MATES oracle influence: one AdamW step on one candidate, then the reference loss.

For each candidate x: delta(x) = ℒ_ref(θ'_x) − ℒ_ref(θ), with θ'_x one step of the trainer's AdamW
(its parameter groups, moments, step count, clipping and next learning rate) on x alone; lower =
the step helps the reference task. Losses are token-mean next-token CE in nats. Three ways:
:func:`sequential_oracle` (a real ``torch.optim.AdamW``, the reference), :func:`batched_oracle` (the
same numbers for K candidates at a time, functional; peak ≈ 2·K·|θ| values plus activations) and
:func:`first_order_oracle` (an approximation, flagged in the result; :func:`first_order_agreement`
reports its rank correlation with the exact oracle). :func:`load_state` reads a checkpoint of
:mod:`winnow.models.checkpoint` once; nothing touches the disk inside the probe loops.

See docs/methods/mates.md for the equations, the differences from MATES's released code and the
checks.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from winnow.grads import Batch, Params, eval_mode, per_example_grads, per_example_loss
from winnow.io.artifacts import load_tensors
from winnow.io.atomic import read_json
from winnow.train.batches import ExampleStore, collate
from winnow.train.schedules import lr_at

log = logging.getLogger(__name__)

ORACLE = pa.schema(
    [
        ("example_id", pa.int64()),
        ("ref_loss_before", pa.float64()),  # ℒ_ref(θ), the same for every row
        ("ref_loss_after", pa.float64()),  # ℒ_ref(θ'_x)
        ("delta", pa.float64()),  # after − before; lower = better
    ]
)

CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: coef = max_norm / (total_norm + 1e-6)
BATCH_KEYS = ("input_ids", "attention_mask", "loss_mask")


# ----------------------------------------------------------------------------------------------
# configuration and state


@dataclass
class OracleConfig:
    """Hyper-parameters of the probe step and how the batched oracle is run.

    ``lr`` is the learning rate the trainer would use for its next step (:meth:`from_trainer_state`
    computes it with :func:`winnow.train.schedules.lr_at`); ``weight_decay`` applies to ≥ 2-D
    tensors only (decoupled); ``grad_clip`` ≤ 0 disables clipping.
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    candidates_per_batch: int = 8  # K: candidates probed at once (memory ≈ 2·K·|θ| + activations)
    reference_batch_size: int = 128  # reference examples per forward (per candidate copy)
    first_order: bool = False  # batched_oracle → first_order_oracle (an approximation)
    grad_mode: str = "vmap"  # per-candidate gradients: "vmap" (vmap of grad) or "loop"
    # the K updated models' reference loss: "loop" = K functional calls sharing the reference
    # micro-batch (faster on an H200: fused bias matmuls), "vmap" = one call over stacked params
    reference_mode: str = "loop"
    head_at_targets: bool = True  # LM head only on target positions of the reference set
    # attention for the reference forwards (their inputs are not vmapped, so SDPA works, with
    # fused causal kernels for right-padded rows); None: the eager attention the gradients use
    reference_attention: str | None = "sdpa"
    amp: str | None = None  # None: the model's dtype; "bf16": bf16 autocast (fp32 master params)
    # CUDA only (ignored elsewhere): torch.compile the reference forward and fuse the AdamW update
    # into one kernel per tensor. Same function; results differ from eager by rounding only.
    compile: bool = False

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # JSON gives lists
        if self.grad_mode not in ("vmap", "loop"):
            raise ValueError(f"grad_mode {self.grad_mode!r}: 'vmap' or 'loop'")
        if self.reference_mode not in ("vmap", "loop"):
            raise ValueError(f"reference_mode {self.reference_mode!r}: 'vmap' or 'loop'")
        if self.amp not in (None, "bf16"):
            raise ValueError(f"amp {self.amp!r}: None or 'bf16'")
        if self.candidates_per_batch < 1 or self.reference_batch_size < 1:
            raise ValueError("candidates_per_batch and reference_batch_size must be ≥ 1")

    @classmethod
    def from_trainer_state(cls, trainer_state: dict, **overrides) -> OracleConfig:
        """The step hyper-parameters a trainer checkpoint would use next.

        ``trainer_state`` is a checkpoint's ``trainer_state.json`` (``step`` = optimizer steps
        done = the 0-based index of the next step, ``config`` = the TrainConfig). The lr is
        ``lr_at(step, …)`` of that config's schedule. ``overrides`` replace any field.
        """
        tc = trainer_state.get("config")
        if tc is None:
            raise ValueError("trainer_state has no 'config' (not written by winnow.train.trainer)")
        step = int(trainer_state["step"])
        lr = lr_at(
            step,
            float(tc["lr"]),
            int(tc["steps"]),
            tc.get("schedule", "cosine"),
            int(tc.get("warmup_steps", 0)),
            float(tc.get("min_lr_ratio", 0.1)),
            float(tc.get("decay_frac", 0.2)),
            float(tc.get("half_life", 50.0)),
        )
        base = {
            "lr": lr,
            "betas": tuple(tc.get("betas", (0.9, 0.95))),
            "eps": float(tc.get("eps", 1e-8)),
            "weight_decay": float(tc.get("weight_decay", 0.1)),
            "grad_clip": float(tc.get("grad_clip", 1.0)),
        }
        names = {f.name for f in fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown OracleConfig fields {sorted(unknown)}")
        return cls(**{**base, **overrides})


@dataclass
class ProbeState:
    """θ and the AdamW state by parameter name (what one probe starts from).

    ``step`` is AdamW's per-parameter step count (bias correction); a parameter that never had
    optimizer state has zero moments and step 0 (torch would initialise it so).
    ``schedule_step`` is the trainer's step (lr schedule position; may differ from ``step``
    after a stage resumed the optimizer). ``config`` holds the step hyper-parameters.
    """

    params: Params
    exp_avg: Params
    exp_avg_sq: Params
    step: dict[str, float]
    config: OracleConfig = field(default_factory=OracleConfig)
    schedule_step: int | None = None

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ProbeState:
        """Tensors on ``device`` / in ``dtype`` (no copy where they already are)."""

        def mv(d: Params) -> Params:
            return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else None) for k, v in d.items()}

        return replace(self, params=mv(self.params), exp_avg=mv(self.exp_avg), exp_avg_sq=mv(self.exp_avg_sq))

    def clone(self) -> ProbeState:
        c = {k: v.clone() for k, v in self.params.items()}
        m = {k: v.clone() for k, v in self.exp_avg.items()}
        v2 = {k: v.clone() for k, v in self.exp_avg_sq.items()}
        return replace(self, params=c, exp_avg=m, exp_avg_sq=v2, step=dict(self.step))


def load_state(
    ckpt_dir: str | os.PathLike,
    model: torch.nn.Module | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **overrides,
) -> ProbeState:
    """Read a checkpoint folder written by :func:`winnow.models.checkpoint.save_checkpoint`.

    Parameters are the names of ``model.named_parameters()`` when ``model`` is given, else the
    tensors of model.safetensors that have moments in optimizer.safetensors. The config comes
    from trainer_state.json (:meth:`OracleConfig.from_trainer_state`; ``overrides`` replace
    fields). The model itself is not changed.
    """
    ckpt_dir = Path(ckpt_dir)
    weights = load_tensors(ckpt_dir / "model.safetensors")
    opt_path = ckpt_dir / "optimizer.safetensors"
    moments = load_tensors(opt_path) if opt_path.exists() else {}
    trainer_state = read_json(ckpt_dir / "trainer_state.json")
    if model is not None:
        names = [n for n, _ in model.named_parameters()]
        missing = [n for n in names if n not in weights]
        if missing:
            raise KeyError(f"{ckpt_dir}: model.safetensors lacks parameters {missing[:5]}")
    else:
        names = [n for n in weights if f"{n}.exp_avg" in moments]
        if not names:
            raise ValueError(f"{ckpt_dir}: no optimizer moments; pass the model to name its parameters")
    params, m, v, step = {}, {}, {}, {}
    for n in names:
        p = weights[n]
        params[n] = p
        if f"{n}.exp_avg" in moments:
            m[n], v[n] = moments[f"{n}.exp_avg"], moments[f"{n}.exp_avg_sq"]
            step[n] = float(moments[f"{n}.step"])
        else:
            m[n], v[n], step[n] = torch.zeros_like(p), torch.zeros_like(p), 0.0
    cfg = OracleConfig.from_trainer_state(trainer_state, **overrides)
    state = ProbeState(params, m, v, step, cfg, int(trainer_state["step"]))
    if model is not None:
        p0 = next(model.parameters())
        device = p0.device if device is None else device
        dtype = p0.dtype if dtype is None else dtype
    return state.to(device, dtype)


def state_from_optimizer(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: OracleConfig | None = None
) -> ProbeState:
    """A :class:`ProbeState` copied from a live model and AdamW (clones; nothing is shared).

    ``config`` defaults to the optimizer's first param group (lr, betas, eps, weight decay) with
    ``grad_clip`` 1.0.
    """
    if config is None:
        g = optimizer.param_groups[0]
        config = OracleConfig(
            lr=float(g["lr"]), betas=tuple(g["betas"]), eps=float(g["eps"]), weight_decay=float(g["weight_decay"])
        )
    params, m, v, step = {}, {}, {}, {}
    for n, p in model.named_parameters():
        params[n] = p.detach().clone()
        st = optimizer.state.get(p, {})
        if "exp_avg" in st:
            m[n], v[n] = st["exp_avg"].detach().clone(), st["exp_avg_sq"].detach().clone()
            s = st["step"]
            step[n] = float(s.item() if torch.is_tensor(s) else s)
        else:
            m[n], v[n], step[n] = torch.zeros_like(params[n]), torch.zeros_like(params[n]), 0.0
    return ProbeState(params, m, v, step, config)


def trainer_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The trainer's AdamW groups: weight decay on ≥ 2-D tensors, none on the others."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class OracleResult:
    """Reference losses before and after each candidate's step (float64, candidate order)."""

    ref_loss_before: float
    ref_loss_after: np.ndarray
    method: str  # "sequential" | "batched" | "first_order" (approximate)
    timings: dict = field(default_factory=dict)

    @property
    def delta(self) -> np.ndarray:
        return self.ref_loss_after - self.ref_loss_before

    @property
    def approximate(self) -> bool:
        return self.method == "first_order"

    def table(self, example_ids) -> pa.Table:
        """example_id, ref_loss_before, ref_loss_after, delta (schema :data:`ORACLE`)."""
        ids = np.asarray(example_ids, dtype=np.int64)
        if len(ids) != len(self.ref_loss_after):
            raise ValueError(f"{len(ids)} example ids for {len(self.ref_loss_after)} results")
        n = len(ids)
        return pa.table(
            {
                "example_id": ids,
                "ref_loss_before": np.full(n, self.ref_loss_before, dtype=np.float64),
                "ref_loss_after": self.ref_loss_after.astype(np.float64),
                "delta": self.delta.astype(np.float64),
            },
            schema=ORACLE,
        )


def first_order_agreement(exact: OracleResult, approx: OracleResult) -> dict:
    """Spearman / Pearson of the approximate deltas against the exact ones (and their scales)."""
    from winnow.stats import pearson, spearman

    a, b = exact.delta, approx.delta
    return {
        "n": int(len(a)),
        "spearman": spearman(a, b),
        "pearson": pearson(a, b),
        "exact_delta_std": float(np.std(a)),
        "approx_delta_std": float(np.std(b)),
        "max_abs_diff": float(np.max(np.abs(a - b))) if len(a) else float("nan"),
    }


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


def _reference_batches(reference: Batch | Sequence[Batch], size: int, device: torch.device) -> list[Batch]:
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


# ----------------------------------------------------------------------------------------------
# the plain sequential probe (reference implementation)


def _masked_ce_sum(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """The trainer's ``masked_ce_sum`` except that float64 logits stay float64 (the trainer
    casts to float32, which would cap the float64 exactness checks); identical for fp32/bf16."""
    pred = logits[:, :-1]
    pred = pred.float() if pred.dtype in (torch.float16, torch.bfloat16) else pred
    ce = F.cross_entropy(pred.reshape(-1, pred.size(-1)), input_ids[:, 1:].reshape(-1), reduction="none")
    return (ce * loss_mask[:, 1:].reshape(-1)).sum()


def sequential_oracle(
    model: torch.nn.Module,
    state: ProbeState,
    candidates: Batch,
    reference: Batch | Sequence[Batch],
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
    from winnow.models.checkpoint import load_checkpoint

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

    def restore() -> None:
        if reload_dir is not None:
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
                x = _slice(candidates, i, i + 1)
                opt.zero_grad(set_to_none=True)
                with _amp(cfg, device):
                    logits = model(input_ids=x["input_ids"], attention_mask=x["attention_mask"], use_cache=False).logits
                n_targets = int(x["loss_mask"][:, 1:].sum())
                (_masked_ce_sum(logits, x["input_ids"], x["loss_mask"]) / max(n_targets, 1)).backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
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
    causal kernels, does the same arithmetic several times faster. Same function (token-mean CE).
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


def _chunks(n: int, k: int) -> Iterator[tuple[int, int]]:
    for i in range(0, n, k):
        yield i, min(i + k, n)


# ----------------------------------------------------------------------------------------------
# the batched exact oracle and the first-order approximation


def batched_oracle(
    model: torch.nn.Module,
    state: ProbeState,
    candidates: Batch,
    reference: Batch | Sequence[Batch],
    cfg: OracleConfig | None = None,
) -> OracleResult:
    """The exact oracle for K = ``cfg.candidates_per_batch`` candidates at a time (see module doc).

    Equals :func:`sequential_oracle` up to floating-point rounding. ``state`` and the model are
    never written (the model's attention is switched to eager while it runs, then back).
    With ``cfg.first_order`` this returns :func:`first_order_oracle` (an approximation).
    """
    cfg = state.config if cfg is None else cfg
    if cfg.first_order:
        return first_order_oracle(model, state, candidates, reference, cfg)
    state = _state_on(state, model)
    device = next(model.parameters()).device
    timings = {"grads_s": 0.0, "update_s": 0.0, "reference_s": 0.0}
    with eval_mode(model, eager=True), torch.no_grad():
        ref = _Reference(model, _reference_batches(reference, cfg.reference_batch_size, device), cfg)
        ref.check_head_path(state.params)
        before = ref.total(state.params)
        candidates = _batch_to(candidates, device)
        after = np.zeros(_n(candidates), dtype=np.float64)
        for i, j in _chunks(_n(candidates), cfg.candidates_per_batch):
            t0 = time.perf_counter()
            grads = candidate_grads(model, state.params, _slice(candidates, i, j), cfg)
            _sync(device)
            t1 = time.perf_counter()
            stacked = adamw_update(state, grads, cfg)
            _sync(device)
            t2 = time.perf_counter()
            after[i:j] = ref.stacked(stacked)
            del stacked
            t3 = time.perf_counter()
            timings["grads_s"] += t1 - t0
            timings["update_s"] += t2 - t1
            timings["reference_s"] += t3 - t2
    timings["head_at_targets"] = ref.parts is not None
    return OracleResult(before, after, "batched", timings)


def first_order_oracle(
    model: torch.nn.Module,
    state: ProbeState,
    candidates: Batch,
    reference: Batch | Sequence[Batch],
    cfg: OracleConfig | None = None,
) -> OracleResult:
    """APPROXIMATION: delta(x) ≈ ⟨∇ℒ_ref(θ), θ'_x − θ⟩ with θ'_x the exact AdamW step.

    One reference gradient per call; per candidate one gradient and the update (no reference
    forward). ``ref_loss_after`` = before + the approximate delta; ``method`` = "first_order".
    The displacement θ'_x − θ = −ηλ_p θ − step_size · m'/denom is formed directly (not as a
    difference of two close parameter vectors).
    """
    cfg = state.config if cfg is None else cfg
    state = _state_on(state, model)
    device = next(model.parameters()).device
    timings = {"reference_grad_s": 0.0, "grads_s": 0.0, "update_s": 0.0}
    with eval_mode(model, eager=True), torch.no_grad():
        ref = _Reference(model, _reference_batches(reference, cfg.reference_batch_size, device), cfg)
        ref.check_head_path(state.params)
        t0 = time.perf_counter()
        before = ref.total(state.params)
        gref = ref.grad(state.params)
        _sync(device)
        timings["reference_grad_s"] = time.perf_counter() - t0
        candidates = _batch_to(candidates, device)
        delta = np.zeros(_n(candidates), dtype=np.float64)
        for i, j in _chunks(_n(candidates), cfg.candidates_per_batch):
            t0 = time.perf_counter()
            grads = candidate_grads(model, state.params, _slice(candidates, i, j), cfg)
            _sync(device)
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
            timings["grads_s"] += t1 - t0
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
