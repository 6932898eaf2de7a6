import dataclasses

import pytest

from memwarden.config.schema import HostConfig
from memwarden.policies.host_memory import (
    HostPolicyState,
    LevelChange,
    admits,
    admittable_bytes,
    evaluate,
    metric_values,
    thresholds,
)
from memwarden.policies.levels import Level, Thresholds
from memwarden.snapshots import HostSnapshot, Pressure
from support.clock import Clock

GiB = 1024**3
CFG = HostConfig(hold=10.0)


def pressure(some_avg10: float = 0.0) -> Pressure:
    return Pressure(some_avg10, 0.0, 0, 0.0, 0.0, 0)


def snap(ram_used_pct: float = 10.0, swap_used_pct: float | None = 0.0, psi: float | None = 0.0,
         total: int = 100 * GiB) -> HostSnapshot:
    swap_total = 0 if swap_used_pct is None else 10 * GiB
    return HostSnapshot(
        taken_at=0.0,
        mem_total=total,
        mem_available=int(total * (100 - ram_used_pct) / 100),
        swap_total=swap_total,
        swap_used=int(swap_total * (swap_used_pct or 0) / 100),
        pressure=None if psi is None else pressure(psi),
    )


def drive(snapshot, seconds, clock, state=None, cfg=CFG, step=1.0):
    """Evaluate the same snapshot every `step` seconds for `seconds`; return (last verdict, all changes)."""
    state = state or HostPolicyState()
    changes = []
    verdict = evaluate(snapshot, state, cfg, clock())
    changes.extend(verdict.changes)
    elapsed = 0.0
    while elapsed < seconds:
        elapsed += step
        verdict = evaluate(snapshot, verdict.state, cfg, clock.advance(step))
        changes.extend(verdict.changes)
    return verdict, changes


def test_thresholds_from_config():
    cfg = HostConfig(ram_warn_percent=70, ram_crit_percent=80, swap_warn_percent=30, swap_crit_percent=60,
                     psi_warn_avg10=5, psi_crit_avg10=25, hysteresis_percent=2, hold=3)
    assert thresholds(cfg) == {
        "ram": Thresholds(70, 80, 2, 3),
        "swap": Thresholds(30, 60, 2, 3),
        "psi": Thresholds(5, 25, 2, 3),
    }


def test_metric_values():
    values = metric_values(snap(ram_used_pct=40, swap_used_pct=25, psi=3.5))
    assert values["ram"] == pytest.approx(40.0)
    assert values["swap"] == pytest.approx(25.0)
    assert values["psi"] == 3.5


def test_metric_values_without_swap_or_psi():
    assert metric_values(snap(swap_used_pct=None, psi=None)) == {"ram": pytest.approx(10.0), "swap": None,
                                                                 "psi": None}


def test_healthy_host_has_no_conditions_or_changes():
    verdict = evaluate(snap(), HostPolicyState(), CFG, 0.0)
    assert verdict.conditions == ()
    assert verdict.changes == ()
    assert {m: t.level for m, t in verdict.state.tracks.items()} == {
        "ram": Level.OK, "swap": Level.OK, "psi": Level.OK}


def test_ram_warning_only_after_hold():
    clock = Clock(1000.0)
    hot = snap(ram_used_pct=90)
    verdict = evaluate(hot, HostPolicyState(), CFG, clock())
    assert verdict.conditions == ()
    verdict, changes = drive(hot, 9, clock, verdict.state)
    assert verdict.conditions == ()
    assert changes == []
    verdict = evaluate(hot, verdict.state, CFG, clock.advance(1))
    (cond,) = verdict.conditions
    assert cond.kind == "host.ram"
    assert cond.key == "host"
    assert cond.severity == "warning"
    assert "RAM 90.0% used" in cond.message
    assert "10.0 GiB available" in cond.message
    assert "warn 85%, critical 95%" in cond.message
    assert cond.fields["metric"] == "ram"
    assert cond.fields["value"] == 90.0
    assert cond.fields["warn"] == 85.0
    assert cond.fields["crit"] == 95.0
    assert cond.fields["hold_s"] == 10.0
    assert cond.fields["mem_available"] == hot.mem_available
    assert cond.fields["mem_total"] == hot.mem_total
    (change,) = verdict.changes
    assert change == LevelChange("ram", Level.OK, Level.WARNING, change.inputs)
    assert change.inputs["value"] == 90.0
    assert change.inputs["hysteresis"] == 5.0


def test_condition_persists_while_level_held_without_new_change():
    clock = Clock(1000.0)
    verdict, _ = drive(snap(ram_used_pct=97), 10, clock)
    assert [c.severity for c in verdict.conditions] == ["critical"]
    verdict2 = evaluate(snap(ram_used_pct=96), verdict.state, CFG, clock.advance(1))
    assert verdict2.changes == ()
    assert [c.severity for c in verdict2.conditions] == ["critical"]
    assert verdict2.conditions[0].fields["value"] == 96.0


def test_all_three_kinds_raise_independently():
    clock = Clock(1000.0)
    verdict, changes = drive(snap(ram_used_pct=96, swap_used_pct=60, psi=15.0), 10, clock)
    by_kind = {c.kind: c for c in verdict.conditions}
    assert set(by_kind) == {"host.ram", "host.swap", "host.psi"}
    assert by_kind["host.ram"].severity == "critical"
    assert by_kind["host.swap"].severity == "warning"
    assert by_kind["host.psi"].severity == "warning"
    assert "swap 60.0% used (6.0 GiB of 10.0 GiB" in by_kind["host.swap"].message
    assert "stalled 15.0%" in by_kind["host.psi"].message
    assert sorted((c.metric, c.previous, c.level) for c in changes) == [
        ("psi", Level.OK, Level.WARNING), ("ram", Level.OK, Level.CRITICAL), ("swap", Level.OK, Level.WARNING)]


def test_no_swap_and_no_psi_produce_no_conditions():
    clock = Clock(1000.0)
    verdict, changes = drive(snap(ram_used_pct=96, swap_used_pct=None, psi=None), 20, clock)
    assert [c.kind for c in verdict.conditions] == ["host.ram"]
    assert {c.metric for c in changes} == {"ram"}
    assert verdict.state.tracks["swap"].level is Level.OK
    assert verdict.state.tracks["psi"].level is Level.OK


def test_metric_disappearing_resets_its_level_and_records_change():
    clock = Clock(1000.0)
    verdict, _ = drive(snap(psi=50.0), 10, clock)
    assert [c.kind for c in verdict.conditions] == ["host.psi"]
    gone = evaluate(snap(psi=None), verdict.state, CFG, clock.advance(1))
    assert gone.conditions == ()
    (change,) = gone.changes
    assert (change.metric, change.previous, change.level) == ("psi", Level.CRITICAL, Level.OK)
    assert change.inputs["value"] is None


def test_clearing_needs_hysteresis_and_hold():
    clock = Clock(1000.0)
    verdict, _ = drive(snap(ram_used_pct=90), 10, clock)
    assert verdict.state.tracks["ram"].level is Level.WARNING
    # 82% is below warn but within the 5-point hysteresis: still warning, indefinitely.
    verdict, changes = drive(snap(ram_used_pct=82), 30, clock, verdict.state)
    assert changes == []
    assert [c.severity for c in verdict.conditions] == ["warning"]
    # Well below: clears only after the hold.
    verdict, changes = drive(snap(ram_used_pct=50), 9, clock, verdict.state)
    assert changes == []
    assert verdict.conditions[0].severity == "warning"
    verdict = evaluate(snap(ram_used_pct=50), verdict.state, CFG, clock.advance(1))
    assert verdict.conditions == ()
    assert [(c.previous, c.level) for c in verdict.changes] == [(Level.WARNING, Level.OK)]


def test_input_state_is_not_mutated():
    state = HostPolicyState()
    before = dict(state.tracks)
    evaluate(snap(ram_used_pct=99), state, dataclasses.replace(CFG, hold=0.0), 0.0)
    assert dict(state.tracks) == before
    with pytest.raises(TypeError):
        state.tracks["ram"] = None  # type: ignore[index]


def test_hold_zero_raises_on_first_sample():
    verdict = evaluate(snap(ram_used_pct=99), HostPolicyState(), dataclasses.replace(CFG, hold=0.0), 0.0)
    assert [(c.kind, c.severity) for c in verdict.conditions] == [("host.ram", "critical")]


# ---- admission -------------------------------------------------------------------------------------------


def test_admittable_bytes_subtracts_reserve():
    s = snap(ram_used_pct=90)  # 10 GiB available
    assert admittable_bytes(s, HostConfig(reserve=2 * GiB)) == 8 * GiB


def test_admittable_bytes_never_negative():
    s = snap(ram_used_pct=99.5)  # 0.5 GiB available
    assert admittable_bytes(s, HostConfig(reserve=GiB)) == 0


def test_admits_within_room():
    ok, why = admits(snap(ram_used_pct=90), HostConfig(reserve=2 * GiB), 8 * GiB)
    assert ok is True
    assert why == "8.0 GiB fits in 8.0 GiB admittable"


def test_refuses_what_would_eat_the_reserve():
    ok, why = admits(snap(ram_used_pct=90), HostConfig(reserve=2 * GiB), 8 * GiB + 1)
    assert ok is False
    assert why == "8.0 GiB requested but only 8.0 GiB admittable (10.0 GiB available − 2.0 GiB reserve)"


def test_zero_reserve_admits_everything_available():
    s = snap(ram_used_pct=90)
    assert admits(s, HostConfig(reserve=0), s.mem_available)[0] is True
    assert admits(s, HostConfig(reserve=0), s.mem_available + 1)[0] is False
