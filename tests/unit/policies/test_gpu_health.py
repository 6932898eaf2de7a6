from memwarden.config.schema import GpuConfig, HostConfig
from memwarden.policies.gpu_health import GpuPolicyState, evaluate
from memwarden.policies.levels import Level
from memwarden.snapshots import Gpu, GpuSnapshot
from support.clock import Clock

GiB = 1024**3
CFG = GpuConfig(vram_warn_percent=90, vram_crit_percent=98, temp_warn_c=85, temp_crit_c=95)
HOST = HostConfig(hysteresis_percent=5, hold=10.0)


def snap(*gpus: Gpu) -> GpuSnapshot:
    return GpuSnapshot("sim", gpus, 0.0)


def card(index: int = 0, used_percent: float = 10.0, temp: float | None = 40.0) -> Gpu:
    total = 100 * GiB
    return Gpu(index, f"Card {index}", total, int(total * used_percent / 100), temperature_c=temp)


class Driver:
    """Feeds snapshots through evaluate with a fake clock, carrying the state."""

    def __init__(self, cfg: GpuConfig = CFG, host: HostConfig = HOST):
        self.clock = Clock(1000.0)
        self.state = GpuPolicyState()
        self.cfg, self.host = cfg, host
        self.changes: list = []

    def feed(self, s: GpuSnapshot, after: float = 0.0):
        verdict = evaluate(s, self.state, self.cfg, self.host, self.clock.advance(after))
        self.state = verdict.state
        self.changes.extend(verdict.changes)
        return verdict

    def hold(self, s: GpuSnapshot, seconds: float, step: float = 1.0):
        verdict = self.feed(s)
        elapsed = 0.0
        while elapsed < seconds:
            elapsed += step
            verdict = self.feed(s, step)
        return verdict


def by_ident(verdict) -> dict[tuple[str, str], str]:
    return {c.ident: c.severity for c in verdict.conditions}


def test_normal_gpu_raises_nothing():
    verdict = Driver().feed(snap(card(0, 50, 60)))
    assert verdict.conditions == ()
    assert verdict.changes == ()


def test_vram_warning_needs_the_hold_time():
    d = Driver()
    assert d.hold(snap(card(0, 93)), 9.0).conditions == ()
    verdict = d.feed(snap(card(0, 93)), 1.0)
    assert by_ident(verdict) == {("gpu.vram", "gpu0"): "warning"}
    cond = verdict.conditions[0]
    assert "GPU 0 (Card 0) VRAM 93.0% used" in cond.message
    assert "7.0 GiB free" in cond.message
    assert (cond.fields["warn"], cond.fields["crit"], cond.fields["hold_s"]) == (90, 98, 10.0)
    assert [c[:3] for c in d.changes] == [("gpu0.vram", Level.OK, Level.WARNING)]


def test_one_spike_shorter_than_hold_raises_nothing():
    d = Driver()
    d.hold(snap(card(0, 99)), 5.0)
    verdict = d.hold(snap(card(0, 20)), 20.0)
    assert verdict.conditions == ()
    assert d.changes == []


def test_vram_critical_then_hysteresis_keeps_it_until_below_threshold_minus_hysteresis():
    d = Driver()
    assert by_ident(d.hold(snap(card(0, 99)), 10.0)) == {("gpu.vram", "gpu0"): "critical"}
    # 94% is below critical (98) but within its 5-point hysteresis: still critical, however long.
    assert by_ident(d.hold(snap(card(0, 94)), 30.0)) == {("gpu.vram", "gpu0"): "critical"}
    # 92%: below 98 − 5, above warn: falls to warning after the hold.
    d.feed(snap(card(0, 92)), 1.0)
    assert by_ident(d.feed(snap(card(0, 92)), 5.0)) == {("gpu.vram", "gpu0"): "critical"}
    assert by_ident(d.feed(snap(card(0, 92)), 5.0)) == {("gpu.vram", "gpu0"): "warning"}
    # 86%: within warn's hysteresis (90 − 5): stays warning.
    assert by_ident(d.hold(snap(card(0, 86)), 30.0)) == {("gpu.vram", "gpu0"): "warning"}
    # 84%: clears after the hold.
    assert d.hold(snap(card(0, 84)), 10.0).conditions == ()
    assert [c[2] for c in d.changes] == [Level.CRITICAL, Level.WARNING, Level.OK]


def test_temperature_levels_and_message():
    d = Driver()
    verdict = d.hold(snap(card(0, 10, 96.4)), 10.0)
    assert by_ident(verdict) == {("gpu.temperature", "gpu0"): "critical"}
    cond = verdict.conditions[0]
    assert "GPU 0 (Card 0) at 96 °C" in cond.message
    assert "warn 85 °C, critical 95 °C" in cond.message
    assert cond.fields["metric"] == "temperature"
    assert cond.fields["value"] == 96.4


def test_none_temperature_is_ignored():
    d = Driver()
    verdict = d.hold(snap(card(0, 95, None)), 10.0)
    assert by_ident(verdict) == {("gpu.vram", "gpu0"): "warning"}
    assert ("temperature", 0) not in verdict.state.tracks
    assert all(change[0] != "gpu0.temperature" for change in d.changes)


def test_each_gpu_is_tracked_under_its_own_key():
    d = Driver()
    verdict = d.hold(snap(card(0, 10, 40), card(1, 99, 90), card(2, 95, 99)), 10.0)
    assert by_ident(verdict) == {
        ("gpu.vram", "gpu1"): "critical",
        ("gpu.temperature", "gpu1"): "warning",
        ("gpu.vram", "gpu2"): "warning",
        ("gpu.temperature", "gpu2"): "critical",
    }


def test_host_config_supplies_hold_and_hysteresis():
    d = Driver(host=HostConfig(hysteresis_percent=0, hold=0.0))
    assert by_ident(d.feed(snap(card(0, 91)))) == {("gpu.vram", "gpu0"): "warning"}
    # No hysteresis: 89.9% clears at once.
    assert d.feed(snap(card(0, 89.9)), 1.0).conditions == ()


def test_no_gpus_no_conditions_and_empty_state():
    d = Driver()
    d.hold(snap(card(0, 99)), 10.0)
    verdict = d.feed(snap(), 1.0)
    assert verdict.conditions == ()
    assert dict(verdict.state.tracks) == {}
