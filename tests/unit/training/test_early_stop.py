"""recall.EarlyStop: when a run checks its recall, what it decodes, and when it stops (a fake meter: no model)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from memwarden.learning.eval_report import Recall
from memwarden.training.recall import DECODE_MARGIN, HELDOUT, EarlyStop, Item


class Meter:
    """Recalls the items in `known` with token accuracy `accuracy`; remembers which sets it was asked to decode
    (and from which accuracy), and decodes nothing under that floor, as recall.RecallMeter does."""

    def __init__(self, known: set[str], accuracy: float = 1.0):
        self.known, self.accuracy = known, accuracy
        self.calls: list[list[str]] = []
        self.floors: list[float | None] = []

    def measure(self, items: list[str], decode_from: float | None = None) -> Recall:
        self.floors.append(decode_from)
        if decode_from is not None and self.accuracy < decode_from:
            return Recall(0, 0, self.accuracy)
        self.calls.append(list(items))
        return Recall(len(items), sum(i in self.known for i in items), self.accuracy)


def items(prefix: str, n: int, wording: str = "trained") -> list[Item]:
    return [Item((i,), f"{prefix}{i}", None, wording) for i in range(n)]


ITEMS = items("m", 10)


def stop(meter: Meter, target: float = 0.9, every: int = 5, check: int = 4) -> EarlyStop:
    return EarlyStop(meter, ITEMS, target, every, check, seed=42)  # type: ignore[arg-type]


@pytest.mark.parametrize("target, every, items, due", [(0.9, 5, ITEMS, [5, 10]), (0.0, 5, ITEMS, []),
                                                       (0.9, 0, ITEMS, []), (0.9, 5, [], [])])
def test_a_check_is_due_every_n_steps_only_with_a_target_and_memories(target, every, items, due):
    early = EarlyStop(Meter(set()), items, target, every, 4, seed=42)  # type: ignore[arg-type]
    assert [s for s in range(1, 12) if early.due(s)] == due


def test_a_sample_short_of_the_target_decodes_the_sample_alone():
    meter = Meter(set())
    early = stop(meter)
    assert len(early.sample) == 4 and set(early.sample) <= set(ITEMS)
    reached, measured = early.reached(5)
    assert not reached and measured == Recall(4, 0, 1.0) and meter.calls == [early.sample]


def test_a_sample_is_decoded_only_once_its_token_accuracy_is_within_the_margin_of_the_target():
    sample = stop(Meter(set())).sample
    low = Meter(set(ITEMS), accuracy=0.9 - DECODE_MARGIN - 0.01)
    reached, measured = stop(low).reached(5)
    assert not reached and measured == Recall(0, 0, low.accuracy) and low.calls == []
    assert low.floors == [pytest.approx(0.9 - DECODE_MARGIN)]
    near = Meter(set(ITEMS), accuracy=0.9 - DECODE_MARGIN)
    reached, _ = stop(near).reached(5)
    # the whole set, once the sample passed, is decoded whatever its accuracy: its measure is the run's recall
    assert reached and near.calls == [sample, ITEMS] and near.floors[1] is None


def test_a_sample_at_the_target_then_needs_every_memory():
    sample = stop(Meter(set())).sample  # the seeded choice is the same for the same seed
    meter = Meter(set(sample))
    early = stop(meter)
    reached, measured = early.reached(5)
    assert not reached and measured == Recall(10, 4, 1.0) and meter.calls == [sample, ITEMS]
    assert early.final_recall(6) == Recall(10, 4, 1.0) and len(meter.calls) == 3  # a later step: measured again


def test_every_memory_at_the_target_stops_and_is_the_final_recall():
    meter = Meter(set(ITEMS[:9]) | set(stop(Meter(set())).sample))
    early = stop(meter)
    reached, measured = early.reached(10)
    assert reached and measured.recalled >= 9 and measured.memories == 10
    assert early.final_recall(10) is measured and len(meter.calls) == 2  # no second decoding of the same step


def test_a_sample_as_large_as_the_set_is_decoded_once():
    meter = Meter(set(ITEMS))
    early = stop(meter, check=50)
    assert early.reached(5) == (True, Recall(10, 10, 1.0)) and meter.calls == [ITEMS]


def test_the_sample_is_of_memories_in_a_trained_wording_not_of_the_recall_files_lines():
    # The recall file holds each memory in a trained wording and in its held-out one; only the trained wording
    # counts toward the target, so a sample of lines would rest the check on half as many memories.
    heldout = items("h", 10, HELDOUT)
    lines = [line for pair in zip(ITEMS, heldout, strict=True) for line in pair]
    early = EarlyStop(Meter(set()), lines, 0.9, 5, 4, seed=42)  # type: ignore[arg-type]
    assert len(early.sample) == 4 and set(early.sample) <= set(ITEMS)


# ---- waiting for the earlier rounds' probe -----------------------------------------------------------------

PROBE = items("p", 10)


def watching(meter: Meter, before: Recall | None, epsilon: float = 0.1) -> EarlyStop:
    early = stop(meter)
    early.watch_probe(PROBE, before, epsilon)  # type: ignore[arg-type]
    return early


def test_recall_at_the_target_does_not_stop_while_the_probe_is_below_its_floor():
    meter = Meter(set(ITEMS) | set(PROBE[:7]))
    early = watching(meter, before=Recall(10, 9, 1.0))  # floor: 0.9 − 0.1 = 0.8
    reached, measured = early.reached(20)
    assert not reached and measured == Recall(10, 10, 1.0)  # the run's own memories are reported still
    assert meter.calls[-1] in (PROBE, early.probe_sample)


def test_a_probe_back_within_epsilon_stops_and_is_the_probe_recall_after():
    meter = Meter(set(ITEMS) | set(PROBE[:8]) | set(stop(Meter(set())).sample))
    early = watching(meter, before=Recall(10, 9, 1.0))
    early.probe_sample = PROBE  # type: ignore[assignment] - the whole probe as its sample: decoded once
    reached, _ = early.reached(20)
    assert reached and meter.calls[-1] == PROBE
    calls = len(meter.calls)
    assert early.final_probe_recall(20, PROBE) == Recall(10, 8, 1.0) and len(meter.calls) == calls
    assert early.final_probe_recall(21, PROBE) == Recall(10, 8, 1.0) and len(meter.calls) == calls + 1


def test_a_probe_sample_below_the_floor_spares_decoding_the_whole_probe():
    meter = Meter(set(ITEMS))
    early = watching(meter, before=Recall(10, 10, 1.0))
    assert not early.reached(20)[0]
    assert meter.calls[-1] == early.probe_sample and PROBE not in meter.calls


@pytest.mark.parametrize("before, epsilon", [(None, 0.1), (Recall(), 0.1), (Recall(10, 10, 1.0), 1.0)])
def test_an_unmeasured_probe_or_an_epsilon_of_one_is_not_waited_for(before, epsilon):
    meter = Meter(set(ITEMS))
    early = watching(meter, before, epsilon)
    assert early.reached(20)[0] and all(not set(c) & set(PROBE) for c in meter.calls)
