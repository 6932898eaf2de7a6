"""health.assess on a bounded step history: loss, gradient norm and throughput against the run's baseline."""

from __future__ import annotations

import math

from memwarden.learning.health import BASELINE_STEPS, assess
from memwarden.learning.progress import CurrentRun, StepHistory


def steps(*rates, loss=1.0, grad_norm=1.0, recent=256) -> StepHistory:
    history = StepHistory(recent=recent)
    for i, rate in enumerate(rates, 1):
        history.append({"event": "step", "step": i, "loss": loss, "grad_norm": grad_norm, "tokens_per_s": rate})
    return history


def kinds(history: StepHistory) -> list[str]:
    return [c.kind for c in assess("alice", history)]


def test_no_steps_no_conditions():
    assert assess("alice", StepHistory()) == []


def test_a_healthy_run_raises_nothing():
    assert kinds(steps(*[100.0] * 20)) == []


def test_a_nan_or_missing_loss_is_critical():
    for loss in (None, math.nan):
        [c] = assess("alice", steps(100.0, loss=loss))
        assert (c.kind, c.severity, c.key) == ("training.loss", "critical", "alice")
        assert c.fields["step"] == 1


def test_gradient_norms_out_of_range_warn():
    [high] = assess("alice", steps(100.0, grad_norm=50.0))
    assert high.kind == "training.grad_norm" and "exploding" in high.message
    [low] = assess("alice", steps(100.0, grad_norm=0.001))
    assert "vanishing" in low.message
    assert kinds(steps(100.0, grad_norm=math.inf)) == []


def test_throughput_below_the_baseline_warns_once_enough_steps_ran():
    # The first step carries the warm-up and is no part of the baseline.
    slow = [5.0, *[100.0] * BASELINE_STEPS, 70.0, 70.0, 70.0]
    [c] = assess("alice", steps(*slow))
    assert c.kind == "training.throughput" and c.fields["baseline"] == 100.0 and "30%" in c.message
    assert kinds(steps(*[5.0, *[100.0] * BASELINE_STEPS, 85.0, 85.0, 85.0])) == []  # within 20 %
    assert kinds(steps(5.0, *[100.0] * (BASELINE_STEPS - 1), 10.0)) == []  # too few steps for a baseline


def test_the_baseline_outlives_the_bounded_window():
    history = steps(5.0, *[100.0] * BASELINE_STEPS, *[100.0] * 50, 60.0, 60.0, 60.0, recent=8)
    assert len(history.recent) == 8 and history.seen == 59 and len(history.first) == BASELINE_STEPS + 1
    assert kinds(history) == ["training.throughput"]


def test_the_current_run_keeps_a_bounded_window_and_resets_per_phase():
    cur = CurrentRun("r1", "alice")
    cur.record({"event": "start", "steps": 4000, "dry_run": True})
    for i in range(1, 2001):
        cur.record({"event": "step", "step": i, "loss": 1.0})
    assert cur.steps.seen == 2000 and len(cur.steps.recent) < 2000 and cur.steps.last["step"] == 2000
    assert cur.dry_run and cur.last["step"] == 2000 and cur.trainer_pid is None
    cur.record({"event": "checkpoint", "step": 2000})
    assert cur.last["event"] == "checkpoint" and cur.steps.last["step"] == 2000
    cur.new_phase()
    assert cur.start is None and not cur.steps and cur.steps.last is None and not cur.dry_run


def test_the_dpo_stage_extends_the_phase_and_is_its_own_throughput_baseline():
    cur = CurrentRun("r1", "alice")
    cur.record({"event": "start", "steps": 40, "dry_run": False})
    for i in range(1, 21):
        cur.record({"event": "step", "step": i, "loss": 1.0, "tokens_per_s": 1000.0})
    cur.record({"event": "stage", "stage": "dpo", "step": 20, "steps": 30})
    assert cur.progress()["steps"] == 50 and not cur.steps
    for i in range(21, 31):
        cur.record({"event": "step", "stage": "dpo", "step": i, "loss": 0.6, "tokens_per_s": 500.0})
    assert cur.progress()["step"] == 30 and kinds(cur.steps) == []  # half the supervised rate: not a drop
