"""Who may hold one more control connection: per-uid quotas and the operators' reserve, decided from counts."""

from __future__ import annotations

import pytest

from memwarden.control.admission import (
    ADMITTED,
    FULL,
    RESERVED,
    USER_QUOTA,
    Caller,
    ClientLimits,
    Open,
    admit,
)

LIMITS = ClientLimits(max_clients=10, per_user=4, reserved=3)
NOBODY = Caller(65534, operator=False, exempt=False)
ROOT = Caller(0, operator=True, exempt=True)
ADMIN = Caller(1000, operator=True, exempt=False)  # a member of daemon.admin_group


def test_a_user_under_every_limit_is_admitted():
    assert admit(NOBODY, Open(0, {}, 0), LIMITS).reason == ADMITTED


def test_a_user_at_its_quota_is_refused_and_told_which_key():
    verdict = admit(NOBODY, Open(4, {65534: 4}, 4), LIMITS)
    assert not verdict.admitted and verdict.reason == USER_QUOTA
    assert "daemon.max_clients_per_user" in verdict.message and "65534" in verdict.message


def test_another_users_connections_do_not_count_against_mine():
    assert admit(NOBODY, Open(4, {1001: 4}, 4), LIMITS).admitted


def test_other_users_together_never_take_the_reserved_slots():
    # 7 = max_clients − reserved: three users at 2, 2 and 3 connections have taken every shared slot.
    now_open = Open(7, {1001: 2, 1002: 2, 65534: 3}, 7)
    verdict = admit(NOBODY, now_open, LIMITS)
    assert verdict.reason == RESERVED and "daemon.reserved_clients" in verdict.message
    assert admit(ROOT, now_open, LIMITS).admitted
    assert admit(ADMIN, now_open, LIMITS).admitted


def test_root_is_not_bound_by_the_per_user_quota_but_an_admin_is():
    assert admit(ROOT, Open(6, {0: 6}, 0), LIMITS).admitted
    assert admit(ADMIN, Open(4, {1000: 4}, 0), LIMITS).reason == USER_QUOTA


@pytest.mark.parametrize("caller", [ROOT, ADMIN, NOBODY])
def test_nobody_gets_past_max_clients(caller):
    verdict = admit(caller, Open(10, {0: 10}, 0), LIMITS)
    assert verdict.reason == FULL and "daemon.max_clients" in verdict.message


def test_the_decision_logs_its_inputs():
    now_open = Open(7, {65534: 3}, 7)
    fields = admit(NOBODY, now_open, LIMITS).log_fields(NOBODY, now_open, LIMITS)
    assert fields == {"reason": RESERVED, "uid": 65534, "operator": False, "open": 7, "open_by_uid": 3,
                      "open_others": 7, "max_clients": 10, "max_clients_per_user": 4, "reserved_clients": 3}
