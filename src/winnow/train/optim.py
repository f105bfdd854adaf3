"""The trainer's AdamW parameter groups, shared by everything that steps like the trainer."""

from __future__ import annotations

import torch


def trainer_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The trainer's AdamW groups: weight decay on ≥ 2-D tensors (matrices), none on the others
    (biases, norms)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
