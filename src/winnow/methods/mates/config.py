"""The probe's hyper-parameters, the optimizer state it starts from and its results."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from winnow.grads import Params
from winnow.io.artifacts import load_tensors
from winnow.io.atomic import read_json
from winnow.train.schedules import lr_at

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
    # micro-batch (fused bias matmuls), "vmap" = one call over stacked params
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
