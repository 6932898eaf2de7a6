import pytest

from memwarden.policies.remediation import (
    ACTION_IS_ALERT,
    ACTIONS,
    BUDGET_SPENT,
    COOLING_DOWN,
    IGNORED,
    NOTHING_WRONG,
    RESTART,
    Decision,
    Restart,
    backoff,
    container_action,
    decide,
    effective,
    spends_budget,
)
from memwarden.units import HOUR

NOW = 100_000.0
COOLDOWN = 600.0
GiB = 1 << 30


def restart(ago: float, effective_: bool | None = None, dry_run: bool = False) -> Restart:
    return Restart(at=NOW - ago, working_set_before=4 * GiB, working_set_after=None if effective_ is None else GiB,
                   effective=effective_, dry_run=dry_run)


# ---- container_action --------------------------------------------------------------------------------------

def test_no_label_uses_the_default():
    assert container_action(None, "alert") == ("alert", None)
    assert container_action(None, "restart") == ("restart", None)


@pytest.mark.parametrize("label", ACTIONS)
def test_a_valid_label_overrides_the_default(label):
    assert container_action(label, "alert" if label != "alert" else "restart") == (label, None)


@pytest.mark.parametrize("label", ["reboot", "", "Restart", " ignore"])
def test_a_bad_label_falls_back_to_the_default_with_a_complaint(label):
    action, complaint = container_action(label, "alert")
    assert action == "alert"
    assert complaint is not None
    assert repr(label) in complaint
    assert all(a in complaint for a in ACTIONS)
    assert "'alert'" in complaint


# ---- decide ------------------------------------------------------------------------------------------------

def test_no_problem_is_no_action():
    d = decide(None, "restart", [], NOW, 3, COOLDOWN)
    assert d == Decision("none", NOTHING_WRONG)
    assert d.text() == "nothing wrong" and not d.withheld


def test_ignore_is_no_action_even_with_a_problem():
    d = decide("leak", "ignore", [], NOW, 3, COOLDOWN)
    assert (d.action, d.why, d.problem) == ("none", IGNORED, "leak")
    assert d.text() == "memwarden.action=ignore"


def test_alert_action_alerts_and_withholds_nothing():
    d = decide("leak", "alert", [restart(10)] * 5, NOW, 3, COOLDOWN)
    assert (d.action, d.why, d.problem) == ("alert", ACTION_IS_ALERT, "leak")
    assert not d.withheld and d.withheld_text() == ""
    assert d.text() == "leak; action is alert"


def test_restart_allowed_with_no_history():
    d = decide("idle leak", "restart", [], NOW, 3, COOLDOWN)
    assert d == Decision("restart", RESTART, "idle leak", restarts_last_hour=0, max_per_hour=3)
    assert d.text() == "idle leak", "the words recorded as the restart's reason"


def test_restart_allowed_after_the_cooldown():
    assert decide("leak", "restart", [restart(COOLDOWN + 1, True)], NOW, 3, COOLDOWN).action == "restart"


def test_budget_spent_alerts_mentioning_the_budget():
    history = [restart(3000, True), restart(2000, True)]
    d = decide("leak", "restart", history, NOW, 2, 0.0)
    assert (d.action, d.why, d.restarts_last_hour, d.max_per_hour) == ("alert", BUDGET_SPENT, 2, 2)
    assert d.withheld
    assert d.withheld_text() == "restart budget spent (2 of 2 in the last hour)"
    assert d.text() == "leak; restart budget spent (2 of 2 in the last hour)"


def test_budget_counts_only_the_last_hour():
    history = [restart(HOUR + 10, True), restart(HOUR, True), restart(1000, True)]
    assert decide("leak", "restart", history, NOW, 2, 0.0).action == "restart"
    assert decide("leak", "restart", history, NOW, 1, 0.0).action == "alert"


def test_zero_budget_never_restarts():
    d = decide("leak", "restart", [], NOW, 0, 0.0)
    assert (d.action, d.why, d.restarts_last_hour, d.max_per_hour) == ("alert", BUDGET_SPENT, 0, 0)


def test_cooldown_after_a_restart():
    d = decide("leak", "restart", [restart(100, True)], NOW, 3, COOLDOWN)
    assert (d.action, d.why, d.since_s, d.wait_s) == ("alert", COOLING_DOWN, 100, COOLDOWN)
    assert d.withheld and d.restarts_last_hour == 1
    assert d.text() == "leak; cooling down after the last restart (100s of 600s)"


def test_cooldown_applies_to_an_unverified_restart():
    assert decide("leak", "restart", [restart(100)], NOW, 3, COOLDOWN).action == "alert"
    assert decide("leak", "restart", [restart(COOLDOWN)], NOW, 3, COOLDOWN).action == "restart"


@pytest.mark.parametrize(("ineffective_in_a_row", "wait"), [(0, 600), (1, 1200), (2, 2400), (3, 4800)])
def test_backoff_doubles_per_ineffective_restart_in_a_row(ineffective_in_a_row, wait):
    history = [restart(5000, True)] + [restart(3000 - i, False) for i in range(ineffective_in_a_row)]
    assert backoff(history, COOLDOWN) == wait


def test_backoff_is_reset_by_an_effective_restart():
    history = [restart(3000, False), restart(2500, False), restart(2000, True)]
    assert backoff(history, COOLDOWN) == COOLDOWN
    # and an unverified restart also ends the streak
    assert backoff([restart(3000, False), restart(2000)], COOLDOWN) == COOLDOWN


def test_backoff_is_capped():
    history = [restart(3000 - i, False) for i in range(30)]
    assert backoff(history, 1.0) == 2 ** 10


def test_decide_waits_the_doubled_cooldown_after_ineffective_restarts():
    # two ineffective in a row: wait 4 × cooldown after the last one
    history = [restart(3 * COOLDOWN + 200, False), restart(3 * COOLDOWN, False)]
    d = decide("leak", "restart", history, NOW, 10, COOLDOWN)
    assert (d.action, d.why, d.wait_s) == ("alert", COOLING_DOWN, 4 * COOLDOWN)
    later = [restart(4 * COOLDOWN + 200, False), restart(4 * COOLDOWN, False)]
    assert decide("leak", "restart", later, NOW, 10, COOLDOWN).action == "restart"


def test_decide_backoff_reset_by_an_effective_restart():
    history = [restart(3 * COOLDOWN + 200, False), restart(3 * COOLDOWN + 100, False), restart(COOLDOWN, True)]
    assert decide("leak", "restart", history, NOW, 10, COOLDOWN).action == "restart"


def test_dry_run_restarts_do_not_count_against_the_budget():
    history = [restart(30 * i + 1, dry_run=True) for i in range(5)]
    assert decide("leak", "restart", history, NOW, 2, 0.0).action == "restart"


def test_dry_run_restarts_do_not_start_a_cooldown():
    history = [restart(COOLDOWN + 10, True), restart(5, dry_run=True)]
    assert decide("leak", "restart", history, NOW, 3, COOLDOWN).action == "restart"


def test_dry_run_ineffective_restarts_do_not_extend_the_backoff():
    history = [restart(COOLDOWN + 10, True), restart(5, False, dry_run=True)]
    assert decide("leak", "restart", history, NOW, 3, COOLDOWN).action == "restart"


def test_in_a_dry_run_the_logged_restarts_spend_the_budget():
    history = [restart(30 * i + 1, dry_run=True) for i in range(2)]
    d = decide("leak", "restart", history, NOW, 2, 0.0, dry_run=True)
    assert (d.why, d.restarts_last_hour) == (BUDGET_SPENT, 2)


def test_in_a_dry_run_a_logged_restart_starts_the_cooldown():
    d = decide("leak", "restart", [restart(5, dry_run=True)], NOW, 3, COOLDOWN, dry_run=True)
    assert (d.why, d.since_s) == (COOLING_DOWN, 5)


@pytest.mark.parametrize(("logged_only", "dry_run", "counts"),
                         [(False, False, True), (True, False, False), (False, True, True), (True, True, True)])
def test_which_restarts_spend_the_budget(logged_only, dry_run, counts):
    assert spends_budget(restart(5, dry_run=logged_only), dry_run) is counts


def test_log_fields_carry_the_numbers_and_the_words():
    d = decide("leak", "restart", [restart(100, True)], NOW, 3, COOLDOWN)
    fields = d.log_fields()
    assert fields["why"] == COOLING_DOWN and fields["since_s"] == 100 and fields["wait_s"] == COOLDOWN
    assert fields["restarts_last_hour"] == 1 and fields["max_per_hour"] == 3 and fields["problem"] == "leak"
    assert fields["reason"] == d.text()


# ---- effective ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("before", "after", "expected"), [
    (4 * GiB, 1 * GiB, True),
    (4 * GiB, 2 * GiB, True),  # exactly half
    (4 * GiB, 2 * GiB + 1, False),
    (4 * GiB, 4 * GiB, False),
    (4 * GiB, 5 * GiB, False),
])
def test_effective_default_half(before, after, expected):
    assert effective(before, after) is expected


def test_effective_custom_fraction():
    assert effective(1000, 800, drop_fraction=0.2)
    assert not effective(1000, 801, drop_fraction=0.2)
