"""demand with its memory chosen online, for bench/demand_ablation.py: is one half-life the compromise to beat?

A replay of memwarden.policies.cache's demand in plain lists (switches counted, the staleness bound, cost = load
seconds, plans that keep every victim whose room the others make, ties by last use then name): with one memory it
gives the figures of demand with one half-life ("no change detection") to the request, and "change by disputes, room
as made" with a duel half-life of 3,000 switches those of demand without kept laws ("no kept laws") within 0.002.
Beside the count of one half-life (DEMAND_HALF_LIFE, the "long" memory) each model has a count with a short
half-life, and a rule chooses, at every switch, which memory ranks the residents. The evidence is a decayed sum,
over switches, of log(p_short / p_long) of the model switched to (add-½ estimates over the models seen, each
memory's counts over its decayed number of switches): how much better the short memory predicted the switches that
came.
  likelihood         the short memory ranks while the evidence exceeds `threshold` nats
  change             the evidence read as change detection: once it exceeds `threshold`, the law is taken to have
                     changed and the long memory restarts from the short one (counts and switches), then grows its
                     window from the change on; the long memory, so restarted, always ranks
  shadow             set dueling: a shadow cache per memory (long, short), each run by its memory's ranking
                     under the same budget; the one whose shadow stalled fewer seconds (decayed, half-life
                     `duel_half_life` switches) ranks the real cache
  change by shadows  the same duel between demand's long memory as it is and the one change detection restarts
  change by disputes the same two, dueled on the real cache alone: at each miss where their plans differ, the first
                     request for a model only one of them evicts blames that one its load seconds (decayed); the
                     less blamed ranks
  … room as made     the same, with the other plan made without the budget, as a state that never sees the budget
                     could: it must free as many bytes as the victims chosen freed
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import scheduler_hitrate as sh

from memwarden.policies import demand as policy

PRIOR = 0.5  # the add-½ (Krichevsky–Trofimov) estimate: a model never asked for is not impossible
LONG, SHORT, RESTARTED = "long", "short", "restarted"  # RESTARTED: the long memory, restarted at each change


@dataclass(frozen=True)
class MemoryRule:
    kind: str  # "one", "likelihood", "change", "shadow", "change by shadows", "change by disputes" (… room as made)
    short: float = 50.0  # the short memory's half-life, switches
    evidence_half_life: float = 50.0  # switches: how long the evidence for one memory over the other counts
    threshold: float = 5.0  # nats of evidence before the short memory ranks (likelihood) or the law is new (change)
    duel_half_life: float = 1000.0  # switches: how long a duel's stall or blame counts

    @property
    def dueled(self) -> tuple[str, str]:
        """The two memories a duel chooses between (the first wins ties)."""
        return (LONG, SHORT) if self.kind == "shadow" else (LONG, RESTARTED)


class _Replay:
    def __init__(self, rule: MemoryRule, sizes: sh.Sizes, names: list[str], budget: int):
        self.rule, self.sizes, self.names, self.budget = rule, sizes, names, budget
        self.half_life = {LONG: policy.DEMAND_HALF_LIFE, SHORT: rule.short, RESTARTED: policy.DEMAND_HALF_LIFE}
        n = len(sizes)
        self.counts = {memory: [0.0] * n for memory in self.half_life}
        self.mass = dict.fromkeys(self.half_life, 0.0)  # decayed switches to any model
        self.counted_at, self.last_used, self.seen = [0] * n, [0.0] * n, [False] * n
        self.switches, self.last, self.evidence, self.changed_at = 0, -1, 0.0, 0
        self.stall = dict.fromkeys(rule.dueled, 0.0)  # a duel's decayed seconds: shadows' stall, or blame
        self.disputed: dict[int, tuple[str, set[int]]] = {}  # model → the memory that evicted it, its dispute

    def count(self, m: int, memory: str) -> float:
        """Model m's count under `memory`, decayed to now (the restarted one taken from the short at a change)."""
        if memory == RESTARTED and self.counted_at[m] < self.changed_at:
            short = self.rule.short
            at_change = self.counts[SHORT][m] * 0.5 ** ((self.changed_at - self.counted_at[m]) / short)
            return at_change * 0.5 ** ((self.switches - self.changed_at) / policy.DEMAND_HALF_LIFE)
        return self.counts[memory][m] * 0.5 ** ((self.switches - self.counted_at[m]) / self.half_life[memory])

    def switch(self, m: int) -> None:
        known = sum(self.seen) + (not self.seen[m])
        p = {mem: (self.count(m, mem) + PRIOR) / (self.mass[mem] + PRIOR * known) for mem in (SHORT, RESTARTED)}
        self.evidence = self.evidence * 0.5 ** (1 / self.rule.evidence_half_life) + math.log(p[SHORT] / p[RESTARTED])
        for memory in self.stall:
            self.stall[memory] *= 0.5 ** (1 / self.rule.duel_half_life)
        counted = {memory: self.count(m, memory) for memory in self.half_life}
        self.switches += 1
        for memory, half_life in self.half_life.items():
            self.mass[memory] = self.mass[memory] * 0.5 ** (1 / half_life) + 1.0
            self.counts[memory][m] = counted[memory] * 0.5 ** (1 / half_life) + 1.0
        self.counted_at[m] = self.switches
        if self.rule.kind.startswith("change") and self.evidence > self.rule.threshold:
            self.changed_at, self.mass[RESTARTED], self.evidence = self.switches, self.mass[SHORT], 0.0
            self.counts[RESTARTED][m] = self.counts[SHORT][m]

    def value(self, e: int, memory: str) -> float:
        age = self.switches - self.counted_at[e]
        rate = self.count(e, memory) / self.half_life[memory]
        if age > 0:
            rate = min(rate, policy.DEMAND_STALE / age)
        return rate * sh.load_seconds(self.sizes[e]) / self.sizes[e]

    def victims(self, resident: set[int], m: int, memory: str, budget: int | None = None) -> set[int]:
        """What loading m evicts: victims in the memory's order, then every one whose room the others make kept."""
        others = sorted(resident, key=lambda e: self.names[e])
        free = (self.budget if budget is None else budget) - self.sizes[m] - sum(self.sizes[e] for e in others)
        taken = []
        for e in sorted(others, key=lambda e: (self.value(e, memory), self.last_used[e], self.names[e])):
            if free >= 0:
                break
            taken.append(e)
            free += self.sizes[e]
        out = set()
        for e in reversed(taken):
            if free - self.sizes[e] >= 0:
                free -= self.sizes[e]
            else:
                out.add(e)
        return out

    def ranking_memory(self) -> str:
        kind = self.rule.kind
        if kind == "likelihood":
            return SHORT if self.evidence > self.rule.threshold else LONG
        if kind == "change":
            return RESTARTED
        if kind == "shadow" or kind.startswith(("change by shadows", "change by disputes")):
            first, second = self.rule.dueled
            return second if self.stall[second] < self.stall[first] else first
        return LONG

    def request(self, m: int, now: float, resident: set[int], shadows: dict[str, set[int]]) -> bool:
        """One request: the counts, the duel's evidence, then a hit, or the load with its victims. True: a hit."""
        if m != self.last or not self.seen[m]:
            self.switch(m)
        self.seen[m], self.last, self.last_used[m] = True, m, now
        for memory, shadow in shadows.items():
            if m not in shadow:
                self.stall[memory] += sh.load_seconds(self.sizes[m])
                shadow -= self.victims(shadow, m, memory)
                shadow.add(m)
        if m in self.disputed:
            memory, dispute = self.disputed[m]
            self.stall[memory] += sh.load_seconds(self.sizes[m])
            for e in dispute:
                self.disputed.pop(e, None)
        if m in resident:
            return True
        chosen = self.ranking_memory()
        victims = self.victims(resident, m, chosen)
        if self.rule.kind.startswith("change by disputes"):
            other = next(memory for memory in self.rule.dueled if memory != chosen)
            budget = None  # the budget plans are made with, or the room the chosen victims make
            if self.rule.kind.endswith("room as made"):
                budget = sum(self.sizes[e] for e in resident - victims) + self.sizes[m]
            theirs = self.victims(resident, m, other, budget)
            dispute = victims ^ theirs
            self.disputed |= {e: (chosen if e in victims else other, dispute) for e in dispute}
        resident -= victims
        resident.add(m)
        return False


def runner(rule: MemoryRule) -> sh.Runner:
    def run(trace: sh.Trace, sizes: sh.Sizes, names: list[str], budget: int, popularity: sh.Popularity
            ) -> sh.Result:
        replay, resident = _Replay(rule, sizes, names, budget), set()
        shadows: dict[str, set[int]] = {m: set() for m in rule.dueled} if "shadow" in rule.kind else {}
        hits, stall = 0, 0.0
        for t, m in enumerate(trace):
            if replay.request(m, float(t), resident, shadows):
                hits += 1
            else:
                stall += sh.load_seconds(sizes[m])
        return hits, stall
    return run
