"""MATES oracle influence: one AdamW step on one candidate, then the reference loss.

For each candidate x: delta(x) = ℒ_ref(θ'_x) − ℒ_ref(θ), with θ'_x one step of the trainer's AdamW
(its parameter groups, moments, step count, clipping and next learning rate) on x alone; lower =
the step helps the reference task. Losses are token-mean next-token CE in nats. Three ways, in
:mod:`.oracle`: :func:`sequential_oracle` (a real ``torch.optim.AdamW``, the reference),
:func:`batched_oracle` (the same numbers for K candidates at a time, functional) and
:func:`first_order_oracle` (an approximation, flagged in the result). :func:`load_state` reads a
checkpoint once; nothing touches the disk inside the probe loops.

See docs/methods/mates.md for the equations, the differences from MATES's released code and the
checks.
"""

from winnow.methods.mates.config import (
    BATCH_KEYS,
    CLIP_EPS,
    ORACLE,
    OracleConfig,
    OracleResult,
    ProbeState,
    first_order_agreement,
    load_state,
    state_from_optimizer,
)
from winnow.methods.mates.oracle import batched_oracle, first_order_oracle, probe, sequential_oracle
from winnow.methods.mates.update import (
    adamw_displacement_parts,
    adamw_update,
    candidate_grads,
    clip_coefficients,
    clip_gradients_,
)
from winnow.train.optim import trainer_param_groups

__all__ = [
    "BATCH_KEYS",
    "CLIP_EPS",
    "ORACLE",
    "OracleConfig",
    "OracleResult",
    "ProbeState",
    "adamw_displacement_parts",
    "adamw_update",
    "batched_oracle",
    "candidate_grads",
    "clip_coefficients",
    "clip_gradients_",
    "first_order_agreement",
    "first_order_oracle",
    "load_state",
    "probe",
    "sequential_oracle",
    "state_from_optimizer",
    "trainer_param_groups",
]
