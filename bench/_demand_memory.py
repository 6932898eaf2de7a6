"""demand with its memory chosen online, for bench/demand_ablation.py: is one half-life the compromise to beat?

A replay of memwarden.policies.cache's demand in plain lists (switches counted, the staleness bound, cost = load
seconds, plans that keep every victim whose room the others make, ties by last use then name): with one memory it
gives demand's figures to the request. Beside the long memory (demand's DEMAND_HALF_LIFE) each model has a count
with a short half-life, and a rule chooses, at every switch, which of the two ranks the residents:
  likelihood  the memory that predicted the switches that came better: a decayed sum of log(p_short / p_long)
              of each switch's model (add-½ estimates over the models seen), the short one while it exceeds
              `threshold` nats
  change      the same lead read as change detection: once it exceeds `threshold`, the law is taken to have
              changed and the long memory restarts from the short one (counts and mass), so it grows its window
              from the change on; the long memory always ranks
  shadow      set dueling: a shadow cache per memory, each run by its memory's ranking under the same budget;
              the one whose shadow stalled fewer decayed seconds ranks the real cache
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import scheduler_hitrate as sh

from memwarden.policies import cache

PRIOR = 0.5  # the add-½ (Krichevsky–Trofimov) estimate: a model never asked for is not impossible


@dataclass(frozen=True)
class MemoryRule:
    kind: str  # "one", "likelihood", "change" or "shadow"
    short: float = 50.0  # the short memory's half-life, switches
    lead_half_life: float = 50.0  # switches: how long the evidence for one memory over the other counts
    threshold: float = 5.0  # nats of evidence before the short memory ranks (likelihood) or the law is new (change)


class _Replay:
    def __init__(self, rule: MemoryRule, sizes: sh.Sizes, names: list[str], budget: int):
        self.rule, self.sizes, self.names, self.budget = rule, sizes, names, budget
        self.long = cache.DEMAND_HALF_LIFE
        n = len(sizes)
        self.counts = {self.long: [0.0] * n, rule.short: [0.0] * n}
        self.mass = {self.long: 0.0, rule.short: 0.0}  # decayed switches to any model
        self.counted_at, self.last_used, self.seen = [0] * n, [0.0] * n, [False] * n
        self.switches, self.last, self.lead, self.changed_at = 0, -1, 0.0, 0
        self.shadow_stall = {self.long: 0.0, rule.short: 0.0}

    def count(self, m: int, half_life: float) -> float:
        """Model m's count under one memory, decayed to now; the long one restarted from the short at a change."""
        if half_life == self.long and self.counted_at[m] < self.changed_at:
            short = self.rule.short
            at_change = self.counts[short][m] * 0.5 ** ((self.changed_at - self.counted_at[m]) / short)
            return at_change * 0.5 ** ((self.switches - self.changed_at) / half_life)
        return self.counts[half_life][m] * 0.5 ** ((self.switches - self.counted_at[m]) / half_life)

    def switch(self, m: int) -> None:
        short, long = self.rule.short, self.long
        if self.rule.kind in ("likelihood", "change"):
            known = sum(self.seen) + (not self.seen[m])
            p = {h: (self.count(m, h) + PRIOR) / (self.mass[h] + PRIOR * known) for h in (short, long)}
            self.lead = self.lead * 0.5 ** (1 / self.rule.lead_half_life) + math.log(p[short] / p[long])
        if self.rule.kind == "shadow":
            for h in (short, long):
                self.shadow_stall[h] *= 0.5 ** (1 / self.rule.lead_half_life)
        counted = {h: self.count(m, h) for h in (short, long)}
        self.switches += 1
        for h in (short, long):
            self.mass[h] = self.mass[h] * 0.5 ** (1 / h) + 1.0
            self.counts[h][m] = counted[h] * 0.5 ** (1 / h) + 1.0
        self.counted_at[m] = self.switches
        if self.rule.kind == "change" and self.lead > self.rule.threshold:
            self.changed_at, self.mass[long], self.lead = self.switches, self.mass[short], 0.0
            self.counts[long][m] = self.counts[short][m]

    def value(self, e: int, half_life: float) -> float:
        age = self.switches - self.counted_at[e]
        rate = self.count(e, half_life) / half_life
        if age > 0:
            rate = min(rate, cache.DEMAND_STALE / age)
        return rate * sh.load_seconds(self.sizes[e]) / self.sizes[e]

    def load(self, resident: set[int], m: int, half_life: float) -> None:
        """m made resident: victims in the memory's order, then every one whose room the others make kept."""
        others = sorted(resident, key=lambda e: self.names[e])
        free = self.budget - self.sizes[m] - sum(self.sizes[e] for e in others)
        victims = []
        for e in sorted(others, key=lambda e: (self.value(e, half_life), self.last_used[e], self.names[e])):
            if free >= 0:
                break
            victims.append(e)
            free += self.sizes[e]
        for e in reversed(victims):
            if free - self.sizes[e] >= 0:
                free -= self.sizes[e]
            else:
                resident.discard(e)
        resident.add(m)

    def ranking_memory(self) -> float:
        if self.rule.kind == "likelihood" and self.lead > self.rule.threshold:
            return self.rule.short
        if self.rule.kind == "shadow" and self.shadow_stall[self.rule.short] < self.shadow_stall[self.long]:
            return self.rule.short
        return self.long


def runner(rule: MemoryRule) -> sh.Runner:
    def run(trace: sh.Trace, sizes: sh.Sizes, names: list[str], budget: int, popularity: sh.Popularity
            ) -> sh.Result:
        replay, resident = _Replay(rule, sizes, names, budget), set()
        shadows: dict[float, set[int]] = {replay.long: set(), rule.short: set()}
        hits, stall = 0, 0.0
        for t, m in enumerate(trace):
            if m != replay.last or not replay.seen[m]:
                replay.switch(m)
            replay.seen[m], replay.last, replay.last_used[m] = True, m, float(t)
            if rule.kind == "shadow":
                for h, shadow in shadows.items():
                    if m not in shadow:
                        replay.shadow_stall[h] += sh.load_seconds(sizes[m])
                        replay.load(shadow, m, h)
            if m in resident:
                hits += 1
                continue
            replay.load(resident, m, replay.ranking_memory())
            stall += sh.load_seconds(sizes[m])
        return hits, stall
    return run
