"""Learning-rate schedules as pure functions of the optimizer step (so resuming is exact).

All schedules warm up linearly over ``warmup`` steps from lr/warmup to lr, then:

* ``constant``: stay at lr;
* ``cosine``: cosine from lr to ``min_ratio``·lr at ``total`` steps;
* ``wsd`` (warmup-stable-decay): constant until the last ``decay_frac``·total steps, then linear
  down to ``min_ratio``·lr;
* ``exp``: after warm-up, lr·0.5^((step − warmup)/half_life) (MATES's decay runs);
* ``linear``: linear from lr after warm-up to ``min_ratio``·lr at ``total`` steps (HF's linear
  schedule with min_ratio 0: LESS's LoRA recipe).
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "wsd", "exp", "linear")


def lr_at(
    step: int,
    lr: float,
    total: int,
    schedule: str = "cosine",
    warmup: int = 0,
    min_ratio: float = 0.1,
    decay_frac: float = 0.2,
    half_life: float = 50.0,
) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; one of {SCHEDULES}")
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    if schedule == "exp":
        return lr * 0.5 ** ((step - warmup) / half_life)
    if schedule == "linear":
        span = max(total - warmup, 1)
        progress = min((step - warmup) / span, 1.0)
        return lr * (1 - (1 - min_ratio) * progress)
    if schedule == "cosine":
        span = max(total - warmup, 1)
        progress = min((step - warmup) / span, 1.0)
        return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    decay_steps = max(int(round(decay_frac * total)), 1)
    decay_start = total - decay_steps
    if step < decay_start:
        return lr
    progress = min((step - decay_start) / decay_steps, 1.0)
    return lr * (1 - (1 - min_ratio) * progress)
