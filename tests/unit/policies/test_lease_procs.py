"""Which processes belong to a lease, and where a process's VRAM counts: synthetic process tables."""

from __future__ import annotations

from memwarden.policies.lease_procs import LeaseProcs, Proc, attribute, is_holder, track


def table(*procs: tuple[int, int, int] | tuple[int, int, int, int]) -> dict[int, Proc]:
    """(pid, ppid, pgid[, start]) rows; start defaults to the pid * 10."""
    out = {}
    for row in procs:
        pid, ppid, pgid = row[:3]
        start = row[3] if len(row) > 3 else pid * 10
        out[pid] = Proc(pid, ppid, pgid, start)
    return out


# A shell (100, its own group) runs memwardenctl (200, the job's group), whose command (300) leads a group of
# its own; the command's worker (301) stays in that group.
WORLD = table((1, 0, 1), (100, 1, 100), (200, 100, 200), (300, 200, 300), (301, 300, 300))


def test_a_live_holder_owns_its_descendants_and_the_groups_they_lead():
    procs = track(LeaseProcs(200, 2000), WORLD)
    assert procs.holder_alive
    assert procs.members == {(300, 3000), (301, 3010)}
    assert procs.groups == {300}
    assert procs.remaining


def test_the_holders_own_group_is_not_the_leases():
    # A pipeline's other end (`memwardenctl lease … | tee log`) shares the holder's job group.
    world = {**WORLD, **table((250, 100, 200))}
    procs = track(LeaseProcs(200, 2000), world)
    assert (250, 2500) not in procs.members


def test_after_the_holder_dies_its_orphans_keep_the_lease():
    seen = track(LeaseProcs(200, 2000), WORLD)
    # memwardenctl killed -9: the command died of PDEATHSIG, its worker was reparented to init.
    after = table((1, 0, 1), (100, 1, 100), (301, 1, 300))
    procs = track(seen, after)
    assert not procs.holder_alive
    assert procs.members == {(301, 3010)}
    assert procs.remaining


def test_a_group_member_never_seen_before_still_counts():
    seen = track(LeaseProcs(200, 2000), WORLD)
    # 302 was started by 301 after the last look and both were reparented before this one.
    after = table((1, 0, 1), (302, 1, 300))
    assert track(seen, after).members == {(302, 3020)}


def test_children_of_orphans_are_followed():
    seen = track(LeaseProcs(200, 2000), WORLD)
    after = table((1, 0, 1), (301, 1, 300), (400, 301, 400))  # the orphan started a new group leader
    procs = track(seen, after)
    assert procs.members == {(301, 3010), (400, 4000)}
    assert procs.groups == {300, 400}  # 300 outlives its leader while 301 is in it


def test_the_lease_is_over_when_none_of_its_processes_is_left():
    seen = track(LeaseProcs(200, 2000), WORLD)
    procs = track(seen, table((1, 0, 1), (100, 1, 100)))
    assert not procs.holder_alive and procs.members == frozenset()
    assert not procs.remaining


def test_a_reused_pid_is_not_the_holder_nor_a_member():
    seen = track(LeaseProcs(200, 2000), WORLD)
    # Every process of the lease exited; the kernel handed out 200 and 301 again to unrelated processes.
    reused = table((1, 0, 1), (200, 1, 200, 99999), (301, 1, 301, 88888))
    procs = track(seen, reused)
    assert not is_holder(seen, reused)
    assert not procs.remaining


def test_an_unknown_holder_start_matches_the_pid_alone():
    assert is_holder(LeaseProcs(200), WORLD)
    assert track(LeaseProcs(200), WORLD).holder_alive


def test_unrelated_processes_are_never_members():
    world = {**WORLD, **table((500, 1, 500), (501, 500, 500))}
    procs = track(LeaseProcs(200, 2000), world)
    assert {pid for pid, _ in procs.members} == {300, 301}


# ---- attribution ------------------------------------------------------------------------------------

# The outer memwardenctl (200) leases; its command is an inner memwardenctl (300) that leases again for its
# command (400, which uses the GPU). A third holder (600) is unrelated.
NESTED = table((1, 0, 1), (100, 1, 100), (200, 100, 200), (300, 200, 300), (400, 300, 400), (600, 1, 600),
               (601, 600, 601))


def leases_of(world, *specs):
    return [(lease_id, track(LeaseProcs(holder, world[holder].start), world)) for lease_id, holder in specs]


def test_a_process_counts_in_its_innermost_lease_only():
    leases = leases_of(NESTED, ("outer", 200), ("inner", 300), ("other", 600))
    assert attribute([400, 601], NESTED, leases) == {400: "inner", 601: "other"}


def test_the_holder_itself_counts_in_its_own_lease():
    leases = leases_of(NESTED, ("outer", 200), ("inner", 300))
    assert attribute([300, 200], NESTED, leases) == {300: "inner", 200: "outer"}


def test_processes_of_no_lease_are_left_out():
    leases = leases_of(NESTED, ("inner", 300))
    assert attribute([601, 100, 999], NESTED, leases) == {}


def test_several_leases_of_one_holder_give_the_process_to_the_newest():
    leases = leases_of(NESTED, ("first", 300), ("second", 300))
    assert attribute([400], NESTED, leases) == {400: "second"}


def test_an_orphan_counts_in_the_smallest_lease_that_tracked_it():
    leases = leases_of(NESTED, ("outer", 200), ("inner", 300))
    # Both memwardenctl processes were killed; 400 was reparented to init.
    after = table((1, 0, 1), (400, 1, 400))
    still = [(lease_id, track(procs, after)) for lease_id, procs in leases]
    assert attribute([400], after, still) == {400: "inner"}


def test_a_holder_whose_pid_was_reused_claims_nothing():
    leases = [("old", LeaseProcs(300, 1))]  # 300 now runs with another start time: not the holder
    assert attribute([400], NESTED, leases) == {}


def test_a_parent_loop_does_not_hang():
    loop = table((10, 11, 10), (11, 10, 10))
    assert attribute([10], loop, [("x", LeaseProcs(999))]) == {}
