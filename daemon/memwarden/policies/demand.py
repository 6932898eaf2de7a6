"""demand's memory of each model's switches: the count it ranks by, and when that count starts over.

One half-life is a compromise: a long one estimates a steady law well, a short one follows a reshuffle. So each
model has three counts of its switches: `visits` (half-life DEMAND_HALF_LIFE), `visits_short` (SHORT_HALF_LIFE)
and `visits_restarted`, the long count restarted at each detected change of law.
- Change detection: the evidence is a decayed sum, over switches to a model either memory has counted, of
  log(p_short / p_restarted) for that model (add-½ estimates over the models counted): how much better the short
  memory predicted the switches that came. Past CHANGE_NATS the law is taken to have changed: the restarted memory
  starts over from the short one (lazily: a model not switched to since takes its short count at the change) and
  widens its window from there, as an estimate of a law should after it changes.
- A duel decides whether the restarted memory or `visits` ranks: a sliding working set is a change of law at every
  slide, and there a count restarted that often ranks worse. At each miss where the two plans would evict
  differently, the first request for a model only one of them evicts blames that one its load seconds (decayed,
  half-life DUEL_HALF_LIFE switches); the less blamed ranks. Until a first change both memories hold the same
  counts and no dispute is weighed.
- Laws that come back: the switches between two changes are a law, and the last KEPT_LAWS of them are kept. A
  kept law whose evidence over the restarted memory passes LAW_BACK_NATS (a CUSUM: a decayed sum of log(p_law /
  p_restarted) over switches, never below 0) is taken to be back: the restarted memory starts over from it, worth
  LAW_BACK_MASS switches, instead of from the short memory. A law whose models fall silent (a tenant's burst ends)
  is slow to show in the short memory's evidence and quick in a kept law's. A law back for the second time or more
  ranks without the duel.
BENCHMARKS.md, section 5, "Issue 15: one half-life or two" and "laws that come back", measures each part.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pyrsistent import PMap, PVector, pmap, pvector

# A switch to a model counts half after this many switches (to any model): long, so that a steady law's rates are
# estimated from several hundred switches; a change of law is followed by the restarted count and the kept laws,
# not by this one. Longer still (500, 600) loses more on a sliding working set, where the duel leaves this count
# ranking, than it gains elsewhere (BENCHMARKS.md, section 5, "laws that come back").
DEMAND_HALF_LIFE = 400.0
# A model not asked for in `a` switches is taken to be asked for at most DEMAND_STALE / a times per switch. A model
# still in use at rate r goes a ≫ 1/r switches without a request rarely; one whose demand moved away does so at
# once, and this lets it go after a few switches instead of a few half-lives.
DEMAND_STALE = 2.0
# The short memory, and how long its evidence over the restarted one counts: tens of switches, so that a change is
# seen within tens of switches of it.
SHORT_HALF_LIFE = 50.0
EVIDENCE_HALF_LIFE = 50.0
# Evidence (nats) that the law changed: e^5 ≈ 150 to 1. A steady law over 20 models never reaches it on the bench;
# over thousands it can, and the duel keeps the plain count ranking then.
CHANGE_NATS = 5.0
# How long a duel's blame counts, switches: long, as its evidence on a sliding working set is thin and a duel decided
# on little hands that family the restarted memory (1,000 switches cost it 0.001–0.003 of Belady's stall, 3,000 at
# most 0.004 on one seed of six).
DUEL_HALF_LIFE = 3000.0
# The laws kept in case they come back; the switches a law is counted over (its last ones), and the most models it
# counts (those past it are its tail, left out): bounded whatever the table holds.
KEPT_LAWS = 4
LAW_SWITCHES = 1024
LAW_NAMES = 256
# Evidence (nats) that a kept law is back. Higher than CHANGE_NATS: the CUSUM restarts at 0 whenever the law falls
# behind, so on a mixture of two laws a run of switches the kept law favours would pass a low bound by chance.
LAW_BACK_NATS = 8.0
# A law that is back counts as this many switches, about half what a lasting law's count holds (DEMAND_HALF_LIFE /
# ln 2), so that the switches after it soon correct a law that came back changed (150 cost reshuffle its held-out
# goal, 500 cost tenants 0.002–0.003 of hit rate).
LAW_BACK_MASS = 300.0
PRIOR = 0.5  # the add-½ (Krichevsky–Trofimov) estimate: a model never asked for is not impossible
LONG, RESTARTED = "long", "restarted"
EMPTY_RING: PVector = pvector([""] * LAW_SWITCHES)


class Counted(Protocol):
    name: str
    size: int
    last_used: float
    visits: float
    visits_short: float
    visits_restarted: float
    visit_switch: int


@dataclass(frozen=True)
class Law:
    """A law kept in case it comes back: switches to each model between two changes, and its evidence of being back."""

    counts: PMap
    switches: float
    evidence: float = 0.0  # nats for this law over the restarted memory (a CUSUM)
    returns: int = 0  # times it came back before

    def p(self, name: str, counted: int) -> float:
        return (self.counts.get(name, 0.0) + PRIOR) / (self.switches + PRIOR * counted)

    def back_count(self, name: str) -> float:
        """`name`'s count in the restarted memory when it starts over from this law, worth LAW_BACK_MASS switches."""
        return self.counts.get(name, 0.0) * LAW_BACK_MASS / self.switches


@dataclass(frozen=True)
class Memory:
    """What demand learned beside each model's counts, at the state's switch count."""

    evidence: float = 0.0  # nats for the short memory over the restarted one
    changed_at: int = 0  # the switch of the last change detected; 0: none yet
    short_switches: float = 0.0  # switches to any model, decayed as visits_short
    restarted_switches: float = 0.0  # the same, as visits_restarted
    counted: int = 0  # models switched to at least once
    blame_long: float = 0.0  # load seconds the duel blames on `visits`' ranking, decayed
    blame_restarted: float = 0.0  # … on the restarted memory's
    disputed: PMap = field(default_factory=pmap)  # name → (the memory it blames, the names of its dispute)
    evicting: tuple[str, ...] = ()  # the victims of the load under way, in order
    # The models of the last LAW_SWITCHES switches, switch number n at n % LAW_SWITCHES: a ring, as a count per model
    # updated at every switch (a map's set) would add a third to a request's state work.
    recent: PVector = field(default_factory=lambda: EMPTY_RING, compare=False, repr=False)
    regime_switches: int = 0  # switches since the last change
    laws: tuple[Law, ...] = ()  # the kept laws, the last to end first
    restarted_from: Law | None = None  # the kept law the restarted memory started over from at the last change, if one

    @property
    def ranking(self) -> str:
        # A law back for the second time or more is a pattern, and ranks while it holds: the duel's blame, weighed
        # over thousands of switches, mixes the laws it has seen. A law back for the first time may be a new one
        # that resembles it (a reshuffle), and waits for the duel.
        if self.restarted_from is not None and self.restarted_from.returns:
            return RESTARTED
        return RESTARTED if self.blame_restarted < self.blame_long else LONG

    def evicted(self, names: tuple[str, ...], disputed: PMap | None = None) -> Memory:
        """The same, with the victims of the load under way (and the disputes) given."""
        return Memory(self.evidence, self.changed_at, self.short_switches, self.restarted_switches, self.counted,
                      self.blame_long, self.blame_restarted, self.disputed if disputed is None else disputed, names,
                      self.recent, self.regime_switches, self.laws, self.restarted_from)

    def forgetting(self, names: Collection[str]) -> Memory:
        """The same without the disputes of models the table forgets."""
        if not any(n in self.disputed for n in names):
            return self
        disputed = self.disputed.evolver()
        for name in names:
            if name in disputed:
                del disputed[name]
        return self.evicted(self.evicting, disputed.persistent())


def recalled(entries: Iterable[Counted], switches: int) -> Memory:
    """The memory of a table of stored counts (as after a restart): no change seen, the short memory empty."""
    counted = [e for e in entries if e.visit_switch > 0]
    return Memory(counted=len(counted), restarted_switches=sum(
        decayed(e.visits, switches - e.visit_switch, DEMAND_HALF_LIFE) for e in counted))


def decayed(count: float, switches: int, half_life: float) -> float:
    return count * 0.5 ** (switches / half_life) if count else 0.0


def restarted_count(entry: Counted, switches: int, memory: Memory) -> float:
    """The restarted memory's count of `entry` at switch number `switches`."""
    if entry.visit_switch < memory.changed_at and memory.restarted_from is not None:
        return decayed(memory.restarted_from.back_count(entry.name), switches - memory.changed_at, DEMAND_HALF_LIFE)
    if entry.visit_switch < memory.changed_at:
        at_change = decayed(entry.visits_short, memory.changed_at - entry.visit_switch, SHORT_HALF_LIFE)
        return decayed(at_change, switches - memory.changed_at, DEMAND_HALF_LIFE)
    return decayed(entry.visits_restarted, switches - entry.visit_switch, DEMAND_HALF_LIFE)


def rate(entry: Counted, switches: int, memory: Memory, which: str | None = None) -> float:
    """How often `entry` is switched to, per switch (up to a factor the same for all), by the memory that ranks (or
    `which`): its count ÷ the half-life, bounded by DEMAND_STALE / the switches since its last use."""
    age = switches - entry.visit_switch
    if (which or memory.ranking) == RESTARTED:
        count = restarted_count(entry, switches, memory)
    else:
        count = entry.visits * 0.5 ** (age / DEMAND_HALF_LIFE) if entry.visits else 0.0
    value = count / DEMAND_HALF_LIFE
    return min(value, DEMAND_STALE / age) if age > 0 else value


def switched(entry: Counted, switches: int, memory: Memory, known: bool, load_seconds: float
             ) -> tuple[float, float, float, Memory]:
    """A switch to `entry`, number `switches`: the evidence and the duel's blame weighed, then its counts (visits,
    visits_short, visits_restarted) and the memory after."""
    age = switches - entry.visit_switch
    short_fade, long_fade = 0.5 ** (1 / SHORT_HALF_LIFE), 0.5 ** (1 / DEMAND_HALF_LIFE)
    evidence_fade = 0.5 ** (1 / EVIDENCE_HALF_LIFE)
    short_before = entry.visits_short * 0.5 ** ((age - 1) / SHORT_HALF_LIFE) if entry.visits_short else 0.0
    restarted_before = restarted_count(entry, switches - 1, memory)
    counted = max(memory.counted + (not known), 1)  # a state built from counted entries may not know of them
    p_restarted = (restarted_before + PRIOR) / (memory.restarted_switches + PRIOR * counted)
    evidence = memory.evidence * evidence_fade
    if short_before >= 1.0 or restarted_before >= 1.0:
        # Only a model one memory knows bears on which predicts better: over thousands of models the short one, with
        # less of its mass on the models it has seen, predicts every model seen by neither a little better.
        evidence += math.log((short_before + PRIOR) / (memory.short_switches + PRIOR * counted) / p_restarted)
    laws, back = memory.laws, None
    if laws:
        laws = tuple(Law(law.counts, law.switches,
                         max(0.0, law.evidence * evidence_fade + math.log(law.p(entry.name, counted) / p_restarted)),
                         law.returns)
                     for law in laws)
        back = max(laws, key=lambda law: law.evidence)
    duel_fade = 0.5 ** (1 / DUEL_HALF_LIFE)
    blame_long, blame_restarted = memory.blame_long * duel_fade, memory.blame_restarted * duel_fade
    disputed = memory.disputed
    if entry.name in disputed:
        blamed, names = disputed[entry.name]
        if blamed == LONG:
            blame_long += load_seconds
        else:
            blame_restarted += load_seconds
        disputed = disputed.discard(entry.name)
        for other in names:
            disputed = disputed.discard(other)
    visits_short = short_before * short_fade + 1.0
    visits_restarted = restarted_before * long_fade + 1.0
    short_switches = memory.short_switches * short_fade + 1.0
    restarted_switches = memory.restarted_switches * long_fade + 1.0
    changed_at, restarted_from, regime_switches = memory.changed_at, memory.restarted_from, memory.regime_switches
    if back is not None and back.evidence > LAW_BACK_NATS:
        # The restarted memory starts over from the law that is back.
        laws = _kept(_ended(memory, switches), [law for law in laws if law is not back])
        changed_at, evidence, restarted_from, regime_switches = switches, 0.0, back, 0
        restarted_switches = LAW_BACK_MASS + 1.0
        visits_restarted = back.back_count(entry.name) + 1.0
    elif evidence > CHANGE_NATS:
        laws = _kept(_ended(memory, switches), laws)
        changed_at, restarted_switches, evidence, visits_restarted = switches, short_switches, 0.0, visits_short
        restarted_from, regime_switches = None, 0
    visits = (entry.visits * 0.5 ** (age / DEMAND_HALF_LIFE) if entry.visits else 0.0) + 1.0
    return visits, visits_short, visits_restarted, Memory(
        evidence, changed_at, short_switches, restarted_switches, counted, blame_long, blame_restarted, disputed, (),
        memory.recent.set(switches % LAW_SWITCHES, entry.name), regime_switches + 1, laws, restarted_from)


def _ended(memory: Memory, switches: int) -> Law:
    """The law of the switches since the last change, up to switch number `switches` (not counted): over its last
    LAW_SWITCHES switches, its LAW_NAMES most switched-to models. A law that came back goes on counting its own, and
    has come back once more."""
    start = memory.restarted_from
    counts: dict[str, float] = dict(start.counts) if start else {}
    counted = min(memory.regime_switches, LAW_SWITCHES)
    for back in range(1, counted + 1):
        name = memory.recent[(switches - back) % LAW_SWITCHES]
        counts[name] = counts.get(name, 0.0) + 1.0
    if len(counts) > LAW_NAMES:
        counts = dict(sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:LAW_NAMES])
    return Law(pmap(counts), (start.switches if start else 0.0) + counted, 0.0, start.returns + 1 if start else 0)


def _kept(ended: Law, laws: list[Law] | tuple[Law, ...]) -> tuple[Law, ...]:
    """The laws kept once `ended` has ended: it first, the oldest dropped past KEPT_LAWS; each one's evidence starts
    over, as the restarted memory it is weighed against has. A law of fewer than SHORT_HALF_LIFE switches is not
    kept: the short memory knew it as well."""
    kept = [ended, *laws] if ended.switches >= SHORT_HALF_LIFE else list(laws)
    return tuple(Law(law.counts, law.switches, 0.0, law.returns) for law in kept[:KEPT_LAWS])


def settled(memory: Memory, candidates: Sequence[Counted], value: Callable[[Counted, str], float]) -> Memory:
    """The load under way evicted memory.evicting, chosen by the memory that ranks: the other memory's choice among
    the same `candidates` (the victims and the unpinned models that stay), to free as many bytes, and the models only
    one of the two evicts, each blaming its memory if it is the first of them asked for again. Before a first change
    of law both memories choose alike: nothing to weigh."""
    if not memory.changed_at:
        return memory.evicted(())
    chosen = memory.ranking
    other = LONG if chosen == RESTARTED else RESTARTED
    victims = set(memory.evicting)
    short_by = sum(e.size for e in candidates if e.name in victims)
    theirs: list[Counted] = []
    for entry in sorted(candidates, key=lambda e: (value(e, other), e.last_used, e.name)):
        if short_by <= 0:
            break
        theirs.append(entry)
        short_by -= entry.size
    kept = set()  # as a plan does, each whose room the others already make, the most valuable tried first
    for entry in reversed(theirs):
        if short_by + entry.size <= 0:
            short_by += entry.size
            kept.add(entry.name)
    dispute = tuple(sorted(victims ^ ({e.name for e in theirs} - kept)))
    disputed = memory.disputed.update({n: (chosen if n in victims else other, dispute) for n in dispute})
    return memory.evicted((), disputed)
