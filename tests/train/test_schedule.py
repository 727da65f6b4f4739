"""The learning-rate schedule: linear warmup to the peak, cosine decay to min_lr at the last step."""

import itertools
import math

import pytest

from attnlab.train.schedule import lr_at, lr_at_time

LR, MIN_LR = 1e-3, 1e-4


def schedule(step, warmup_steps=10, max_steps=110):
    return lr_at(step, lr=LR, min_lr=MIN_LR, warmup_steps=warmup_steps, max_steps=max_steps)


def test_warmup_rises_linearly_to_the_peak():
    assert schedule(0) == pytest.approx(LR / 10)
    assert schedule(4) == pytest.approx(LR * 5 / 10)
    assert schedule(9) == pytest.approx(LR)


def test_first_step_after_warmup_uses_the_peak():
    assert schedule(10) == pytest.approx(LR)


def test_cosine_midpoint_is_halfway_between_peak_and_floor():
    # decay runs from step 10 to step 109 (99 steps): its middle is step 10 + 49.5
    assert schedule(10 + 33) == pytest.approx(MIN_LR + (LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi / 3)))
    midpoint = (schedule(59) + schedule(60)) / 2
    assert midpoint == pytest.approx((LR + MIN_LR) / 2, rel=1e-3)


def test_last_step_reaches_min_lr_exactly_and_stays_there():
    assert schedule(109) == MIN_LR
    assert schedule(500) == MIN_LR


def test_decay_is_monotonic():
    values = [schedule(step) for step in range(10, 110)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_without_warmup_the_first_step_uses_the_peak():
    assert schedule(0, warmup_steps=0) == LR


def test_warmup_filling_the_run_holds_the_peak_after_it():
    assert schedule(9, warmup_steps=10, max_steps=10) == pytest.approx(LR)
    assert schedule(10, warmup_steps=10, max_steps=11) == LR


def timed(step, elapsed_s, warmup_steps=10, budget_s=100.0):
    return lr_at_time(step, elapsed_s, lr=LR, min_lr=MIN_LR, warmup_steps=warmup_steps, budget_s=budget_s)


def test_a_time_budget_warms_up_by_step_like_the_step_schedule():
    for step in range(10):
        assert timed(step, elapsed_s=50.0) == schedule(step)


def test_a_time_budget_decays_with_the_time_spent_not_the_step():
    assert timed(10, 0.0) == pytest.approx(LR)
    assert timed(500, 0.0) == pytest.approx(LR)  # many fast steps, no time spent: still the peak
    assert timed(11, 50.0) == pytest.approx((LR + MIN_LR) / 2)
    assert timed(11, 25.0) == pytest.approx(MIN_LR + (LR - MIN_LR) * (1 + math.cos(math.pi / 4)) / 2)
    assert timed(11, 100.0) == MIN_LR
    assert timed(11, 250.0) == MIN_LR  # a run past its budget stays at the floor
    rates = [timed(20, t) for t in range(0, 101, 5)]
    assert rates == sorted(rates, reverse=True)


def test_a_time_budget_must_be_positive():
    with pytest.raises(ValueError, match="budget_s must be > 0, got 0"):
        timed(20, 1.0, budget_s=0)


def test_a_time_budget_capped_by_max_steps_decays_by_whichever_ends_the_run_first():
    def capped(step, elapsed_s):
        return lr_at_time(step, elapsed_s, lr=LR, min_lr=MIN_LR, warmup_steps=10, budget_s=100.0,
                          max_steps=110)

    assert capped(60, 10.0) == pytest.approx(schedule(60))  # the steps are further along
    assert capped(20, 50.0) == pytest.approx(timed(20, 50.0))  # the time is further along
    assert capped(109, 1.0) == MIN_LR  # the last step the cap allows reaches the floor
    assert capped(500, 1.0) == MIN_LR
