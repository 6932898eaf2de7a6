"""Reference policies for bench/scheduler_hitrate.py that memwarden does not ship: what a policy could do if it
knew each model's popularity, and W-TinyLFU, an admission scheme, as it would run in front of a VRAM budget.

Both are driven like the bench's other runners: (requests, sizes, names, budget) → (hits, load-stall seconds),
a request for a model not resident loads it (Ollama serves no request from outside VRAM) after evictions.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

Popularity = Callable[[int, int], float]  # (request number, model) → the probability the request is for it


def run_known_popularity(requests: Sequence[int], popularity: Popularity, sizes: Sequence[int],
                         load_seconds: Callable[[int], float], budget: int,
                         on_miss: Callable[[int], None] | None = None) -> tuple[int, float]:
    """Evict the resident model of least popularity now × load seconds ÷ size, the popularity being the one the
    trace was drawn from (the future is not known, only the law of the next request). For requests drawn
    independently this is A0 (Aho, Denning, Ullman 1971), the best an online policy can do up to sizes: the
    mark a policy that learns the popularity from the requests alone can approach, not pass, in expectation.
    `on_miss` is told the position of each request that loads its model."""
    resident: set[int] = set()
    used, hits, stall = 0, 0, 0.0
    for t, m in enumerate(requests):
        if m in resident:
            hits += 1
            continue
        while used + sizes[m] > budget:
            victim = min(resident, key=lambda r: (popularity(t, r) * load_seconds(sizes[r]) / sizes[r], r))
            used -= sizes[victim]
            resident.discard(victim)
        resident.add(m)
        used += sizes[m]
        stall += load_seconds(sizes[m])
        if on_miss is not None:
            on_miss(t)
    return hits, stall


def run_wtinylfu(requests: Sequence[int], sizes: Sequence[int], load_seconds: Callable[[int], float],
                 budget: int, n_models: int, window: float = 0.01, protected: float = 0.8,
                 sample: int = 10) -> tuple[int, float]:
    """W-TinyLFU (Einziger, Friedman, Manes 2017; Caffeine's defaults) by bytes: a newcomer enters a window LRU of
    `window` × the budget; a model pushed out of the window enters the main SLRU (probation, then `protected`
    of it once hit again) only by beating main's next victim on frequency, else it is the one evicted. The
    frequency sketch is exact here (a count per model), halved every `sample` × `n_models` requests."""
    freq: dict[int, float] = {}
    seen = 0
    win: OrderedDict[int, None] = OrderedDict()
    probation: OrderedDict[int, None] = OrderedDict()
    protect: OrderedDict[int, None] = OrderedDict()
    win_cap, protect_cap = window * budget, protected * (1 - window) * budget
    weight = {"win": 0, "probation": 0, "protect": 0}
    parts = {"win": win, "probation": probation, "protect": protect}
    hits, stall = 0, 0.0

    def move(m: int, src: str, dst: str | None) -> None:
        del parts[src][m]
        weight[src] -= sizes[m]
        if dst is not None:
            parts[dst][m] = None
            weight[dst] += sizes[m]

    def total() -> int:
        return weight["win"] + weight["probation"] + weight["protect"]

    for m in requests:
        freq[m] = freq.get(m, 0.0) + 1
        seen += 1
        if seen >= sample * n_models:
            seen, freq = 0, {k: v / 2 for k, v in freq.items()}
        if m in win or m in protect:
            (win if m in win else protect).move_to_end(m)
            hits += 1
            continue
        if m in probation:
            hits += 1
            move(m, "probation", "protect")
            while weight["protect"] > protect_cap and len(protect) > 1:
                move(next(iter(protect)), "protect", "probation")
            continue
        stall += load_seconds(sizes[m])
        win[m] = None
        weight["win"] += sizes[m]
        while weight["win"] > win_cap and len(win) > 1:
            candidate = next(iter(win))
            move(candidate, "win", None)
            while total() + sizes[candidate] > budget:
                main = "probation" if probation else "protect"
                if not parts[main] or freq.get(candidate, 0) <= freq.get(next(iter(parts[main])), 0):
                    break
                move(next(iter(parts[main])), main, None)
            if total() + sizes[candidate] <= budget:
                probation[candidate] = None
                weight["probation"] += sizes[candidate]
        while total() > budget:
            part = "probation" if probation else "protect" if protect else "win"
            move(next(iter(parts[part])), part, None)
    return hits, stall
