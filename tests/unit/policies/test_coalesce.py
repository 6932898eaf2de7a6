"""The coalescing policy driven step by step: a queue, a fake clock, and Ollama's loads played by hand."""

from __future__ import annotations

from memwarden.policies.coalesce import (
    BUSY,
    FULL,
    JOIN,
    LOADING,
    OVERDUE,
    RESIDENT,
    RESIDENT_WORK,
    SWAP,
    Limits,
    Queued,
    goes_alone,
    plan,
)

LIMITS = Limits(max_wait=10.0, per_model=1, total=512)


def queue(*models: str, since: float = 0.0) -> list[Queued]:
    return [Queued(i, m, since + i * 0.01) for i, m in enumerate(models)]


def sent(p) -> list[tuple[int, str, str]]:
    return [(s.key, s.model, s.reason) for s in p.send]


class Replay:
    """Ollama with room for one model and num_parallel 1, played through the policy: which loads happen."""

    def __init__(self, requests: list[Queued], limits: Limits = LIMITS):
        self.waiting = list(requests)
        self.limits = limits
        self.resident: set[str] = set()
        self.loading: set[str] = set()
        self.flying: dict[int, str] = {}
        self.loads: list[str] = []
        self.order: list[int] = []

    def step(self, now: float):
        in_flight: dict[str, int] = {}
        for m in self.flying.values():
            in_flight[m] = in_flight.get(m, 0) + 1
        p = plan(self.waiting, in_flight, self.resident, self.loading, now, self.limits)
        for s in p.send:
            self.waiting = [q for q in self.waiting if q.key != s.key]
            self.flying[s.key] = s.model
            if s.model not in self.resident and s.model not in self.loading:
                self.loading.add(s.model)
        return p

    def finish_all(self) -> None:
        """Ollama serves what is in flight in the order it was sent: each model not resident is loaded,
        evicting the other (a load waits for the requests of the model it evicts)."""
        for key, model in self.flying.items():
            if model not in self.resident:
                self.loads.append(model)
                self.resident = {model}
            self.order.append(key)
        self.flying.clear()
        self.loading.clear()

    def run(self, now: float = 1.0) -> None:
        for _ in range(100):
            if not self.waiting:
                break
            self.step(now)
            self.finish_all()
        self.finish_all()


def test_a_burst_a_b_a_a_c_is_one_load_per_model():
    replay = Replay(queue("a", "b", "a", "a", "c"))
    replay.run()
    assert replay.loads == ["a", "b", "c"]
    assert replay.order == [0, 2, 3, 1, 4], "a's group first, then b, then c, each in arrival order"


def test_fifo_for_the_same_burst_costs_a_load_per_change_of_model():
    # The yardstick: Ollama's own order (everything sent at once, served first come first served).
    loads, resident = [], None
    for q in queue("a", "b", "a", "a", "c"):
        if q.model != resident:
            loads.append(q.model)
            resident = q.model
    assert loads == ["a", "b", "a", "c"]


def test_requests_for_resident_models_go_first_up_to_num_parallel_each():
    q = queue("cold", "hot", "hot", "warm")
    p = plan(q, {}, {"hot", "warm"}, set(), 1.0, LIMITS)
    assert sent(p) == [(1, "hot", RESIDENT), (3, "warm", RESIDENT)]
    assert p.swap is None and p.held == 2 and p.held_by == RESIDENT_WORK, "cold waits for hot's queue"
    assert p.next_check == q[0].since + LIMITS.max_wait


def test_no_swap_while_a_resident_model_still_has_requests_queued_or_in_flight():
    q = queue("cold", "hot")
    p = plan(q, {"hot": 1}, {"hot"}, set(), 1.0, LIMITS)
    assert p.send == () and p.held_by == RESIDENT_WORK

    p = plan(q[:1], {"hot": 1}, {"hot"}, set(), 1.0, LIMITS)  # hot's queue drained, its last one in flight
    assert p.send == () and p.held_by == RESIDENT_WORK

    p = plan(q[:1], {}, {"hot"}, set(), 1.0, LIMITS)  # hot is idle: cold's swap may start
    assert sent(p) == [(0, "cold", SWAP)] and p.swap == "cold"


def test_one_load_at_a_time_and_requests_for_it_join_it():
    q = queue("b", "c", "b")
    p = plan(q, {"b": 1}, set(), {"b"}, 1.0, Limits(10.0, per_model=4, total=512))
    assert sent(p) == [(0, "b", JOIN), (2, "b", JOIN)]
    assert p.held == 1 and p.held_by == LOADING and p.swap is None


def test_a_swap_takes_its_whole_group_up_to_num_parallel():
    q = queue("b", "c", "b", "b")
    p = plan(q, {}, set(), set(), 1.0, Limits(10.0, per_model=2, total=512))
    assert sent(p) == [(0, "b", SWAP), (2, "b", JOIN)]
    assert p.swap == "b" and p.held == 2


def test_max_wait_sends_a_starving_request_ahead_of_resident_work():
    q = [Queued(0, "hot", 0.0), Queued(1, "cold", 1.0), Queued(2, "hot", 2.0)]
    limits = Limits(max_wait=5.0, per_model=1, total=512)
    clock = 5.9  # cold has waited 4.9 s: it still waits behind hot's queue
    p = plan(q[1:], {"hot": 1}, {"hot"}, set(), clock, limits)
    assert p.send == () and p.held_by == RESIDENT_WORK and p.next_check == 6.0

    clock = p.next_check  # the dispatcher looks again when it said
    p = plan(q[1:], {"hot": 1}, {"hot"}, set(), clock, limits)
    assert sent(p) == [(1, "cold", OVERDUE)] and p.swap == "cold"
    assert p.send[0].waited == 5.0


def test_an_overdue_request_does_not_start_a_second_load_of_a_loading_model():
    q = [Queued(0, "b", 0.0), Queued(1, "b", 0.5)]
    p = plan(q, {"b": 1}, set(), {"b"}, 20.0, LIMITS)
    assert [s.reason for s in p.send] == [OVERDUE, OVERDUE] and p.swap is None


def test_never_more_in_flight_than_ollamas_queue_holds():
    q = queue("a", "a", "a", "b")
    limits = Limits(max_wait=1.0, per_model=8, total=3)
    p = plan(q, {"z": 1}, {"a", "z"}, set(), 100.0, limits)  # all overdue, still bounded
    assert len(p.send) == 2 and p.in_flight == 3 and p.held == 2

    p = plan(q, {"z": 3}, {"a", "z"}, set(), 0.5, limits)
    assert p.send == () and p.held_by == FULL


def test_an_empty_queue_plans_nothing():
    p = plan([], {"a": 1}, {"a"}, set(), 0.0, LIMITS)
    assert p.send == () and p.held == 0 and p.next_check is None and p.in_flight == 1


def test_the_plan_logs_its_inputs_as_fields():
    p = plan(queue("a"), {}, set(), set(), 1.0, LIMITS)
    fields = p.log_fields()
    assert fields["decision"] == "proxy.coalesce" and fields["swap"] == "a"
    assert fields["sent"] == [("a", SWAP, 1.0)]


def test_a_resident_models_requests_beyond_num_parallel_wait_in_the_proxy_while_another_model_waits():
    p = plan(queue("hot", "hot", "cold"), {"hot": 1}, {"hot"}, set(), 1.0, Limits(10.0, per_model=1, total=512))
    assert p.send == () and p.held == 3 and p.held_by == RESIDENT_WORK

    p = plan(queue("hot", "hot"), {"hot": 1}, {"hot"}, {"cold"}, 1.0, Limits(10.0, per_model=1, total=512))
    assert p.send == () and p.held_by == BUSY, "nor while a load is under way"


def test_with_no_other_model_waiting_num_parallel_holds_nothing_back():
    p = plan(queue("hot", "hot", "warm"), {"hot": 1}, {"hot", "warm"}, set(), 1.0, Limits(10.0, 1, total=4))
    assert [s.reason for s in p.send] == [RESIDENT] * 3 and p.in_flight == 4, "only Ollama's queue bounds them"


def test_a_resident_request_sent_by_the_plan_holds_the_swap_behind_it():
    p = plan(queue("hot", "cold"), {}, {"hot"}, set(), 1.0, LIMITS)
    assert sent(p) == [(0, "hot", RESIDENT)] and p.held_by == RESIDENT_WORK and p.swap is None


def test_an_overdue_request_takes_its_models_queue_with_it_onto_one_load():
    q = [Queued(0, "b", 0.0), Queued(1, "c", 0.5), Queued(2, "b", 3.0), Queued(3, "b", 4.0)]
    p = plan(q, {"hot": 1}, {"hot"}, set(), 10.0, Limits(max_wait=7.0, per_model=1, total=512))
    assert sent(p) == [(0, "b", OVERDUE), (2, "b", OVERDUE), (3, "b", JOIN), (1, "c", OVERDUE)]
    assert p.swap == "b", "one load of b serves all three; c's load follows in Ollama's queue"


def test_a_model_that_loads_into_room_to_spare_need_not_wait_for_resident_work():
    q = queue("hot", "cold", "other", "cold")
    p = plan(q, {"hot": 2}, {"hot"}, set(), 1.0, Limits(10.0, per_model=2, total=512), free={"cold"})
    assert sent(p) == [(1, "cold", SWAP), (3, "cold", JOIN)] and p.swap == "cold", "nothing it evicts"
    assert p.held == 2 and p.held_by == RESIDENT_WORK  # other's load may evict: it waits for hot's work

    p = plan(q[2:3], {"hot": 1, "cold": 2}, {"hot"}, {"cold"}, 1.0, LIMITS, free={"other"})
    assert p.send == () and p.held_by == LOADING, "still one load at a time"

    p = plan(q[2:3], {"hot": 1}, {"hot"}, set(), 1.0, LIMITS)  # a load that may evict waits as before
    assert p.send == () and p.held_by == RESIDENT_WORK


def test_goes_alone_says_what_the_plan_says_of_a_lone_request():
    """The queue's shortcut for a request that finds it empty: sent at once exactly when a plan over that one
    request would send it as resident, in every state the plan reads."""
    model = "a:1b"
    checked = sent_alone = 0
    for limits in (LIMITS, Limits(10.0, 2, 3), Limits(0.0, 1, 512), Limits(10.0, 0, 512)):
        for mine in range(4):
            for others in (0, 2):
                in_flight = {k: n for k, n in ((model, mine), ("b:1b", others)) if n}
                for resident in (True, False):
                    for loading in (set(), {"b:1b"}, {model}):
                        for making_room in (False, True):
                            p = plan([Queued(0, model, 50.0)], in_flight, {model, "b:1b"} if resident else {"b:1b"},
                                     loading, 50.0, limits, making_room)
                            expected = sent(p) == [(0, model, RESIDENT)]
                            got = goes_alone(model, in_flight, sum(in_flight.values()), resident, loading, limits,
                                             making_room)
                            assert got == expected, (limits, in_flight, resident, loading, making_room)
                            checked += 1
                            sent_alone += got
    assert checked == 384 and 0 < sent_alone < checked
