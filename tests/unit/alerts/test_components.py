"""ComponentHealth: a component's unexpected exception → one log line with its traceback, a critical
component.failed condition naming it and the error, resolved when the component runs to its end again."""

from structlog.testing import capture_logs

from memwarden.alerts.components import KIND, MAX_ERROR, ComponentHealth
from memwarden.config.redact import remember


def boom(message: str) -> Exception:
    try:
        raise AttributeError(message)
    except AttributeError as exc:
        return exc


def test_a_failure_is_a_condition_until_the_component_runs_again():
    health = ComponentHealth()
    with capture_logs() as logs:
        health.failed("containers", boom("'list' object has no attribute 'get'"), 100.0)
        health.failed("containers", boom("'list' object has no attribute 'get'"), 102.0)
    (cond,) = health.conditions()
    assert (cond.kind, cond.key, cond.severity) == (KIND, "containers", "critical")
    assert cond.fields["error"] == "AttributeError: 'list' object has no attribute 'get'"
    assert cond.fields["since"] == 100.0 and cond.fields["failed_passes"] == 2
    assert "containers failed" in cond.message and "AttributeError" in cond.message
    assert [e["event"] for e in logs] == ["component failed; skipped this pass"]  # once per distinct error
    assert logs[0]["exc_info"][1].args == ("'list' object has no attribute 'get'",)

    with capture_logs() as logs:
        health.failed("containers", boom("another"), 104.0)  # a new error is logged again
        health.ok("containers")
        health.ok("host")  # never failed: nothing to say
    assert [e["event"] for e in logs] == ["component failed; skipped this pass", "component recovered"]
    assert health.conditions() == [] and dict(health.failures) == {}


def test_the_error_is_bounded_and_carries_no_secret():
    remember(["https://hooks.example.com/services/T0K3NPATH"])
    try:
        health = ComponentHealth()
        with capture_logs():
            health.failed("alerts", boom("POST https://u:pw@hooks.example.com/services/T0K3NPATH " + "x" * 5000), 1.0)
    finally:
        remember([])
    error = health.failures["alerts"].error
    assert len(error) <= MAX_ERROR + 1 and "T0K3NPATH" not in error and "pw@" not in error
