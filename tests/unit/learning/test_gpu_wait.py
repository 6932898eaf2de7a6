"""The refused run's wait: wait, fall back to the CPU, held by the RAM reserve, or blocked — a pure policy."""

from __future__ import annotations

from memwarden.learning.gpu_wait import GpuWait, cpu_threads, decide
from memwarden.snapshots import HostSnapshot

GiB = 1024**3
PIN = "model big:7b 6.0 GiB, pinned"
WAIT = GpuWait("r1", "alice", since=100.0, reason="cannot lease 2.0 GiB on any GPU: ...", holders=(PIN,))


def host(used_gib: float, total_gib: float = 16) -> HostSnapshot:
    return HostSnapshot(0.0, int(total_gib * GiB), int((total_gib - used_gib) * GiB), 0, 0, None)


def test_within_the_wait_the_run_waits_naming_the_holders(make_config):
    d = decide(WAIT, 100.0 + 59, make_config({"gpu_wait": "1m", "cpu_fallback": True}), host(2), GiB)
    assert (d.action, d.waited_s, d.holders) == ("wait", 59, (PIN,))
    assert d.condition() is None


def test_past_the_wait_without_the_fallback_the_run_is_blocked_and_alerted(make_config):
    d = decide(WAIT, 100.0 + 60, make_config({"gpu_wait": "1m"}), host(2), GiB)
    assert d.action == "blocked" and d.reason == WAIT.reason
    c = d.condition()
    assert c is not None and (c.kind, c.key, c.severity) == ("training.blocked", "alice", "warning")
    assert PIN in c.message and "1m" in c.message and c.fields["holders"] == (PIN,)


def test_past_the_wait_with_the_fallback_the_run_goes_to_the_cpu(make_config):
    d = decide(WAIT, 100.0 + 61, make_config({"gpu_wait": "1m", "cpu_fallback": True}), host(2), 2 * GiB)
    assert d.action == "cpu" and d.cpu_ram_bytes == 2 * GiB and d.condition() is None


def test_a_cpu_run_that_would_cross_the_ram_warning_level_is_held_with_its_reason(make_config):
    config = make_config({"gpu_wait": "0s", "cpu_fallback": True, "micro_batch": 4})
    # 16 GiB host, 85 % warns: 12.6 GiB used + 1 GiB of weights + 1/4 GiB of activations at a micro-batch of 1
    # (a quarter of 4) = 86.6 %.
    d = decide(WAIT, 100.0, config, host(12.6), 2 * GiB)
    assert d.action == "held"
    assert "87%" in d.reason and "85% warning level" in d.reason
    c = d.condition()
    assert c is not None and "not started on the CPU" in c.message and PIN in c.message
    # 11 GiB + 2 GiB = 81 %: under the level, started.
    assert decide(WAIT, 100.0, config, host(11), 2 * GiB).action == "cpu"


def test_unread_host_ram_holds_a_cpu_run(make_config):
    d = decide(WAIT, 200.0, make_config({"gpu_wait": "0s", "cpu_fallback": True}), None, GiB)
    assert d.action == "held" and "not been read" in d.reason


def test_the_clock_going_back_never_makes_a_negative_wait(make_config):
    assert decide(WAIT, 50.0, make_config({"gpu_wait": "1m"}), None, GiB).waited_s == 0


def test_cpu_threads_leave_one_core():
    assert (cpu_threads(1), cpu_threads(2), cpu_threads(8)) == (1, 1, 7)


def test_a_cpu_run_halves_its_micro_batch_until_the_host_has_room_keeping_the_effective_batch(make_config):
    config = make_config({"gpu_wait": "0s", "cpu_fallback": True, "micro_batch": 8, "grad_accum": 2})
    # 16 GiB host, 85 % warns at 13.6 GiB; a run of 1 GiB of weights + 1 GiB of activations at micro-batch 8.
    full = decide(WAIT, 100.0, config, host(11), 2 * GiB)
    assert (full.action, full.micro_batch, full.grad_accum, full.cpu_ram_bytes) == ("cpu", 8, 2, 2 * GiB)
    # 12 GiB used: 14 GiB is past the level, 13.5 GiB (micro-batch 4) is under it.
    halved = decide(WAIT, 100.0, config, host(12), 2 * GiB)
    assert (halved.action, halved.micro_batch, halved.grad_accum) == ("cpu", 4, 4)
    assert halved.cpu_ram_bytes == int(1.5 * GiB)
    assert halved.log_fields()["micro_batch"] == 4


def test_a_cpu_run_is_held_only_when_a_micro_batch_of_one_does_not_fit(make_config):
    config = make_config({"gpu_wait": "0s", "cpu_fallback": True, "micro_batch": 8, "grad_accum": 2})
    # 12.5 GiB used + 1 GiB of weights + 1/8 GiB of activations = 13.6 GiB: at the level.
    d = decide(WAIT, 100.0, config, host(12.5), 2 * GiB)
    assert d.action == "held" and "even at a micro-batch of 1" in d.reason and d.micro_batch is None
    assert decide(WAIT, 100.0, config, host(12.45), 2 * GiB).micro_batch == 1
