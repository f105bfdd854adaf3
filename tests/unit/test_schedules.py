"""winnow.train.schedules.lr_at: warm-up and each schedule's shape at known points."""

from __future__ import annotations

import itertools
import math

import pytest

from winnow.train.schedules import SCHEDULES, lr_at

LR = 0.01


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_linear_warmup(schedule):
    ws = [lr_at(s, LR, total=100, schedule=schedule, warmup=10) for s in range(10)]
    assert ws == pytest.approx([LR * (s + 1) / 10 for s in range(10)])
    assert ws[0] == pytest.approx(LR / 10)  # never 0: step 0 still learns
    assert lr_at(10, LR, total=100, schedule=schedule, warmup=10) == pytest.approx(LR)  # peak after warm-up


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_no_warmup_starts_at_peak(schedule):
    assert lr_at(0, LR, total=100, schedule=schedule, warmup=0) == pytest.approx(LR)


def test_constant():
    assert {lr_at(s, LR, total=50, schedule="constant", warmup=5) for s in range(5, 200)} == {LR}


def test_cosine_endpoints_and_midpoint():
    kw = dict(lr=LR, total=110, schedule="cosine", warmup=10, min_ratio=0.1)
    assert lr_at(10, **kw) == pytest.approx(LR)
    assert lr_at(60, **kw) == pytest.approx(LR * (0.1 + 0.9 * 0.5))  # halfway: mean of max and min
    assert lr_at(110, **kw) == pytest.approx(0.1 * LR)
    assert lr_at(500, **kw) == pytest.approx(0.1 * LR)  # clamps after total
    p = 0.3
    assert lr_at(10 + 30, **kw) == pytest.approx(LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))))
    values = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))  # monotone decay
    assert lr_at(200, LR, total=100, schedule="cosine", min_ratio=0.0) == pytest.approx(0.0)


def test_wsd_plateau_and_linear_decay():
    kw = dict(lr=LR, total=100, schedule="wsd", warmup=10, min_ratio=0.1, decay_frac=0.2)
    # stable from the end of warm-up until the last 20 steps
    assert [lr_at(s, **kw) for s in range(10, 80)] == [LR] * 70
    assert lr_at(80, **kw) == pytest.approx(LR)  # decay starts at step 80 (progress 0)
    assert lr_at(85, **kw) == pytest.approx(LR * (1 - 0.9 * 0.25))
    assert lr_at(90, **kw) == pytest.approx(LR * 0.55)
    assert lr_at(100, **kw) == pytest.approx(0.1 * LR)
    assert lr_at(150, **kw) == pytest.approx(0.1 * LR)
    decay = [lr_at(s, **kw) for s in range(80, 101)]
    diffs = [a - b for a, b in itertools.pairwise(decay)]
    assert diffs == pytest.approx([diffs[0]] * 20)  # linear
    # decay_frac is a fraction of *total* steps
    assert lr_at(49, LR, total=100, schedule="wsd", decay_frac=0.5) == LR
    assert lr_at(51, LR, total=100, schedule="wsd", decay_frac=0.5) < LR


def test_exp_half_life():
    kw = dict(lr=LR, total=1000, schedule="exp", warmup=10, half_life=25)
    assert lr_at(10, **kw) == pytest.approx(LR)
    assert lr_at(35, **kw) == pytest.approx(LR / 2)
    assert lr_at(60, **kw) == pytest.approx(LR / 4)
    assert lr_at(10 + 250, **kw) == pytest.approx(LR / 2**10)
    assert lr_at(5000, **kw) > 0


@pytest.mark.parametrize("name", ["Cosine", "lin", "", "wsd "])
def test_invalid_schedule(name):
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(0, LR, total=10, schedule=name)


def test_pure_function_of_step():
    kw = dict(lr=LR, total=100, schedule="cosine", warmup=7)
    forward = [lr_at(s, **kw) for s in range(100)]
    backward = [lr_at(s, **kw) for s in reversed(range(100))][::-1]
    assert forward == backward


def test_linear_decays_to_floor_after_warmup():
    # HF's linear schedule (LESS's recipe): warm-up, then a straight line to min_ratio·lr at total.
    lrs = [lr_at(s, 1.0, 10, "linear", warmup=2, min_ratio=0.0) for s in range(11)]
    assert lrs[:2] == [0.5, 1.0]
    assert lrs[2] == 1.0
    assert all(a > b for a, b in zip(lrs[2:10], lrs[3:10]))
    assert abs(lrs[6] - 0.5) < 1e-12  # halfway between step 2 and step 10
    assert lrs[10] == 0.0
    assert lr_at(10, 1.0, 10, "linear", min_ratio=0.2) == pytest.approx(0.2)
