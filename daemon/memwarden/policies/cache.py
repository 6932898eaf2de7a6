"""Which resident model to evict: `demand` (the default), plain LRU, GreedyDual-Size-Frequency (Cherkasova 1998),
or GDSF with decayed frequencies and the load time as cost.

demand keeps in VRAM what users would otherwise wait longest for, per byte: each model's value is the rate at
which it is asked for now × the seconds a load of it takes ÷ its size, and the lowest value goes first.
- Only a switch counts: a request for a model other than the one requested just before. A run of requests for
  one model can cost at most one load, so it counts once; the decay's clock (`switches`) counts switches too,
  so a long session does not age every other model.
- The rate is the decayed count of a model's switches, never taken above DEMAND_STALE / (switches since its last
  use), and restarted when the law of the requests changes if that ranks better (policies/demand.py).
- The cost is `load_time`: Ollama's load time as measured, the size-based estimate until then.
No inflation value (GDSF's L): the staleness bound ages a model out, and L would let a newcomer's one use outrank
a steady favourite's many (BENCHMARKS.md, section 5, compares them).

GDSF gives each model a priority H = L + frequency × cost / size and evicts the lowest H; L rises to the H of
each victim, so models not used for a while age out. With cost = 1 it maximises the hit rate per byte of VRAM:
a small specialist used often outranks a large model used as often.

gdsf-decay keeps GDSF's L but counts uses with a half-life of HALF_LIFE_REQUESTS requests (to all models), so a
model that was popular once loses its lead once demand moves; and its cost is the seconds a load of the model
takes (measured by the arbiter, `note_load_time`; 1 s + size / 2 GB/s until then), so it keeps in VRAM what
users would wait longest to load again, per byte. Pure functions over a frozen state.

The state's table is a persistent map (pyrsistent): a request changes one entry and shares the rest with the
state before it, so a decision costs the same with 10 models or 10,000, and every earlier state stays valid for
a plan made from it. The resident models are indexed beside it: a plan looks at those alone.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace

from pyrsistent import PMap, pmap

from memwarden.policies import demand
from memwarden.policies.demand import Memory

POLICIES = ("demand", "lru", "gdsf", "gdsf-decay")
DEFAULT_POLICY = "demand"
# gdsf-decay: a use counts half after this many requests (to any model), a quarter after twice as many. Chosen
# on bench/scheduler_hitrate.py's trace families (BENCHMARKS.md): long enough that a Zipf favourite keeps its
# lead, short enough that a reshuffle of popularity is followed within a few hundred requests.
HALF_LIFE_REQUESTS = 200.0
# The load time of a model not yet measured: Ollama's fixed start-up plus reading the weights at 2 GB/s.
LOAD_FIXED_SECONDS = 1.0
LOAD_BYTES_PER_SECOND = 2e9
# A new measurement of a load time weighs this much against what was known (loads vary with the page cache).
LOAD_TIME_WEIGHT = 0.5
# The most models the scheduler keeps a record of. Only installed models are tracked, so this is a backstop
# (the learning loop creates one Ollama model per adapter version); it keeps the table, its SQLite rows and the
# `models` reply bounded whatever Ollama lists, and is well above the 10,000 the benchmarks plan for.
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Entry:
    name: str
    size: int  # VRAM bytes: size_vram from /api/ps once seen, the /api/tags file size until then
    size_measured: bool = False
    resident: bool = False
    pinned: bool = False
    last_used: float = 0.0
    hits: int = 0
    priority: float = 0.0  # GDSF's H
    gpu: int | None = None  # where it is resident, when known
    freq: float = 0.0  # gdsf-decay: uses, decayed to request number `tick`
    tick: int = 0  # the state's request count at the last use
    inflation_at_use: float = 0.0  # GDSF's L at the last use
    load_seconds: float = 0.0  # measured load time (seconds); 0 until one is measured
    visits: float = 0.0  # demand: switches to this model, decayed to switch number `visit_switch`
    visit_switch: int = 0  # demand: the state's switch count at the model's last switch (its last use)
    visits_short: float = 0.0  # demand: switches, decayed as `visits` with demand.SHORT_HALF_LIFE
    visits_restarted: float = 0.0  # demand: `visits`, restarted at each change of law (demand.py)


@dataclass(frozen=True)
class CacheState:
    entries: Mapping[str, Entry] = field(default_factory=pmap)  # any mapping given is made a persistent one
    inflation: float = 0.0  # GDSF's L
    ticks: int = 0  # requests seen (touch), the clock gdsf-decay's half-life counts in
    # The names of the resident entries, kept with the table (computed from it when not given).
    residents: PMap = field(default=None, compare=False, repr=False)  # type: ignore[assignment]
    switches: int = 0  # requests for another model than the one before: demand's clock
    last_name: str = ""  # the model of the last request
    memory: Memory = field(default_factory=Memory)  # demand's, beside the entries' counts

    def __post_init__(self) -> None:
        if not isinstance(self.entries, PMap):
            object.__setattr__(self, "entries", pmap(self.entries))
        if self.residents is None:
            object.__setattr__(self, "residents", pmap({n: True for n, e in self.entries.items() if e.resident}))

    def with_entry(self, entry: Entry) -> CacheState:
        entries: PMap = self.entries  # type: ignore[assignment]
        residents = self.residents
        if entry.resident:
            residents = residents.set(entry.name, True) if entry.name not in residents else residents
        elif entry.name in residents:
            residents = residents.remove(entry.name)
        return CacheState(entries.set(entry.name, entry), self.inflation, self.ticks, residents, self.switches,
                          self.last_name, self.memory)

    def remembering(self, memory: Memory) -> CacheState:
        return CacheState(self.entries, self.inflation, self.ticks, self.residents, self.switches, self.last_name,
                          memory)

    def without(self, names: Collection[str]) -> CacheState:
        entries, residents = self.entries.evolver(), self.residents.evolver()  # type: ignore[attr-defined]
        for name in names:
            entries.remove(name)
            if name in residents:
                residents.remove(name)
        return CacheState(entries.persistent(), self.inflation, self.ticks, residents.persistent(), self.switches,
                          self.last_name, self.memory.forgetting(names))

    @staticmethod
    def of(entries: Iterable[Entry], inflation: float = 0.0, ticks: int = 0, switches: int = 0,
           last_name: str = "", memory: Memory | None = None) -> CacheState:
        """A state of `entries`; without `memory`, demand's is taken from their counts (as after a restart)."""
        table = pmap({e.name: e for e in entries})
        memory = memory or demand.recalled(table.values(), switches)
        return CacheState(table, inflation, ticks, None, switches, last_name, memory)  # type: ignore[arg-type]

    def resident(self) -> list[Entry]:
        return [self.entries[n] for n in sorted(self.residents)]


def _gdsf_priority(state: CacheState, hits: int, size: int) -> float:
    return state.inflation + hits / max(size, 1)


def load_time(entry: Entry) -> float:
    """Seconds a load of `entry` takes: as measured, else estimated from its size."""
    if entry.load_seconds > 0:
        return entry.load_seconds
    return LOAD_FIXED_SECONDS + entry.size / LOAD_BYTES_PER_SECOND


def decayed_uses(entry: Entry, ticks: int) -> float:
    """The entry's uses as counted at request number `ticks`: each halves every HALF_LIFE_REQUESTS requests."""
    return entry.freq * 0.5 ** ((ticks - entry.tick) / HALF_LIFE_REQUESTS)


def decay_priority(state: CacheState, entry: Entry) -> float:
    """gdsf-decay's H now: L at the last use + decayed uses × load seconds / size."""
    return entry.inflation_at_use + decayed_uses(entry, state.ticks) * load_time(entry) / max(entry.size, 1)


def demand_rate(entry: Entry, switches: int, memory: Memory | None = None) -> float:
    """demand's estimate of how often `entry` is switched to, per switch, at switch number `switches`: its
    decayed switches ÷ the half-life, bounded by DEMAND_STALE / the switches since its last use."""
    return demand.rate(entry, switches, memory or Memory())


def demand_value(state: CacheState, entry: Entry, which: str | None = None) -> float:
    """demand's value of keeping `entry` resident: load seconds a switch to it would cost, per switch, per byte
    (by the memory that ranks, or `which`)."""
    return demand.rate(entry, state.switches, state.memory, which) * load_time(entry) / max(entry.size, 1)


def touch(state: CacheState, name: str, now: float, size: int | None = None) -> CacheState:
    """A request for `name`: one more use, now (and one more switch when the last request was for another)."""
    prior = state.entries.get(name) or Entry(name, size or 0)
    hits = prior.hits + 1
    new_size = prior.size if size is None else size
    ticks, switches = state.ticks + 1, state.switches
    memory = state.memory.evicted(()) if state.memory.evicting else state.memory
    visits, visits_short, visits_restarted, visit_switch = (prior.visits, prior.visits_short, prior.visits_restarted,
                                                            prior.visit_switch)
    if name != state.last_name or name not in state.entries:
        switches += 1
        # Load seconds only blame a memory when the model is disputed: the size-based estimate needs the new size.
        seconds = load_time(replace(prior, size=new_size)) if name in memory.disputed else 0.0
        visits, visits_short, visits_restarted, memory = demand.switched(prior, switches, memory,
                                                                         prior.visit_switch > 0, seconds)
        visit_switch = switches
    # Built field by field, not by `replace`, which costs a third of a request's state work at 17 fields.
    entry = Entry(name, new_size, prior.size_measured, prior.resident, prior.pinned, now, hits,
                  _gdsf_priority(state, hits, new_size), prior.gpu, decayed_uses(prior, ticks) + 1.0, ticks,
                  state.inflation, prior.load_seconds, visits, visit_switch, visits_short, visits_restarted)
    # A use leaves residency as it was: the resident index stays.
    return CacheState(state.entries.set(name, entry), state.inflation, ticks,  # type: ignore[attr-defined]
                      state.residents, switches, name, memory)


def note_load_time(state: CacheState, name: str, seconds: float) -> CacheState:
    """A load of `name` took `seconds`: the first measurement replaces the estimate, later ones are averaged."""
    prior = state.entries.get(name)
    if prior is None or not seconds > 0:
        return state
    known = prior.load_seconds
    learned = seconds if known <= 0 else known + LOAD_TIME_WEIGHT * (seconds - known)
    return state.with_entry(replace(prior, load_seconds=learned))


def set_resident(state: CacheState, name: str, resident: bool, size: int | None = None,
                 measured: bool = False, gpu: int | None = None) -> CacheState:
    prior = state.entries.get(name) or Entry(name, size or 0)
    entry = replace(prior, resident=resident, gpu=gpu if resident else None)
    if size is not None and (measured or not prior.size_measured):
        # GDSF's H = L + hits/size was computed with the old size; re-base it on the one learned now.
        priority = prior.priority - prior.hits / max(prior.size, 1) + prior.hits / max(size, 1)
        entry = replace(entry, size=size, size_measured=measured or prior.size_measured,
                        priority=priority if prior.hits else prior.priority)
    if resident and state.memory.evicting and name == state.last_name:  # the model asked for last, loaded
        candidates = [state.entries[n] for n in (*state.memory.evicting, *state.residents) if n in state.entries]
        candidates = [e for e in candidates if not e.pinned and e.name != name]
        state = state.remembering(demand.settled(state.memory, candidates,
                                                 lambda e, which: demand_value(state, e, which)))
    return state.with_entry(entry)


def set_pinned(state: CacheState, name: str, pinned: bool) -> CacheState:
    prior = state.entries.get(name) or Entry(name, 0)
    return state.with_entry(replace(prior, pinned=pinned))


def eviction_order(state: CacheState, policy: str, exclude: Iterable[str] = ()) -> list[Entry]:
    """Resident, unpinned models, first victim first."""
    skip = set(exclude)
    candidates = [e for e in state.resident() if not e.pinned and e.name not in skip]
    if policy == "gdsf":
        return sorted(candidates, key=lambda e: (e.priority, e.last_used, e.name))
    if policy == "lru":
        return sorted(candidates, key=lambda e: (e.last_used, e.name))
    if policy == "gdsf-decay":
        return sorted(candidates, key=lambda e: (decay_priority(state, e), e.last_used, e.name))
    if policy == "demand":
        ranking = state.memory.ranking
        return sorted(candidates, key=lambda e: (demand_value(state, e, ranking), e.last_used, e.name))
    raise ValueError(f"unknown scheduler policy {policy!r}; expected one of {POLICIES}")


def evicted(state: CacheState, name: str, policy: str) -> CacheState:
    """Mark `name` gone; under GDSF the inflation value rises to its priority."""
    entry = state.entries[name]
    new = set_resident(state, name, False)
    if policy == "demand" and state.memory.changed_at:  # until a first change both memories evict alike
        new = new.remembering(new.memory.evicted((*new.memory.evicting, name)))
    elif policy == "gdsf":
        new = replace(new, inflation=max(state.inflation, entry.priority))
    elif policy == "gdsf-decay":
        new = replace(new, inflation=max(state.inflation, decay_priority(state, entry)))
    return new


@dataclass(frozen=True)
class RoomPlan:
    victims: tuple[str, ...]
    fits: bool
    used_after: int
    budget: int


def plan_room(state: CacheState, name: str, need: int, budget: int, policy: str,
              max_resident: int = 0) -> RoomPlan:
    """Victims to evict so `need` more bytes fit under `budget` next to what stays resident — and, with
    max_resident (Ollama's OLLAMA_MAX_LOADED_MODELS), so the count stays under the cap, or Ollama would pick a
    victim itself, by its own order. Taken in the policy's order, and none whose room the others already make."""
    others = [e for e in state.resident() if e.name != name]
    used, count = sum(e.size for e in others), len(others)

    def fits() -> bool:
        return used + need <= budget and (max_resident <= 0 or count + 1 <= max_resident)

    victims: list[Entry] = []
    for entry in eviction_order(state, policy, exclude=[name]):
        if fits():
            break
        victims.append(entry)
        used -= entry.size
        count -= 1
    if not fits():
        return RoomPlan(tuple(e.name for e in victims), False, used, budget)
    # A victim taken early may be one whose room the later, larger ones already make: it stays (the most valuable
    # tried first), as an eviction that no room needs loses that model's next hit for nothing.
    needed: list[str] = []
    for entry in reversed(victims):
        used, count = used + entry.size, count + 1
        if not fits():
            used, count = used - entry.size, count - 1
            needed.append(entry.name)
    return RoomPlan(tuple(reversed(needed)), True, used, budget)


def estimate_size(entry: Entry | None, installed_size: int | None) -> int:
    """VRAM a model will take: its measured size once seen resident, else the size Ollama lists for it."""
    if entry is not None and entry.size_measured:
        return entry.size
    return installed_size or (entry.size if entry else 0)


def plan_room_on(state: CacheState, name: str, need: int, budgets: Mapping[int, int], policy: str,
                 max_resident: int = 0) -> RoomPlan:
    """Room on the GPU that needs the fewest victims; with models of unknown placement, or one GPU, all GPUs
    form one pool (`budgets`: GPU index → model budget). No GPU: Ollama runs on the CPU, nothing to plan."""
    if not budgets:
        return RoomPlan((), True, 0, 0)
    if len(budgets) == 1 or any(e.gpu is None for e in state.resident()):
        return plan_room(state, name, need, sum(budgets.values()), policy, max_resident)
    # Only the resident entries bear on a plan: each GPU's are taken from the index, not the whole table.
    plans = [plan_room(CacheState.of((e for e in state.resident() if e.gpu == index), state.inflation,
                                     state.ticks, state.switches, state.last_name, state.memory),
                       name, need, budget, policy, max_resident)
             for index, budget in budgets.items()]
    return min(plans, key=lambda p: (not p.fits, len(p.victims)))


@dataclass(frozen=True)
class EnsurePlan:
    """All that making one model resident will do, decided once, before any of it is done."""

    name: str
    hit: bool  # Ollama lists it already: nothing to evict or load
    need: int  # VRAM bytes it is expected to take
    victims: tuple[str, ...]  # to unload first, first victim first
    fits: bool  # False: even evicting every candidate leaves no room (pinned models and leases hold the rest)
    load: bool  # the plan loads it (False for a hit, a refusal, or when the caller's own request loads it)
    gpu: int  # where the freed VRAM is confirmed: the GPU with the largest model budget
    budget: int
    used_after: int
    forgotten: tuple[str, ...]  # entries the table drops to stay within max_entries
    noted: CacheState  # the request recorded (one more use, the size estimate), before any effect
    state_after: CacheState  # once the victims are unloaded and the model loaded

    @property
    def shortfall(self) -> int:
        """Bytes of the budget that stay out of reach after every possible eviction."""
        return self.budget - self.used_after


def plan_ensure(state: CacheState, name: str, now: float, *, listed: bool, installed_size: int | None,
                budgets: Mapping[int, int], policy: str, max_resident: int = 0, load: bool = True,
                max_entries: int = MAX_ENTRIES) -> EnsurePlan:
    """The whole plan for a request to make `name` resident: the use recorded, the table kept within
    max_entries, then (unless Ollama already lists it) the victims by `policy` and the state once it is done."""
    touched = touch(state, name, now)
    forgotten: tuple[str, ...] = ()
    if len(touched.entries) > max_entries:
        pruned = prune(touched, None, max_entries)
        touched, forgotten = pruned.state, pruned.forgotten
    target = max(budgets, key=lambda i: budgets[i]) if budgets else 0
    if listed:
        return EnsurePlan(name, True, touched.entries[name].size, (), True, False, target, 0, 0, forgotten,
                          touched, touched)
    need = estimate_size(touched.entries.get(name), installed_size)
    noted = set_resident(touched, name, False, need)
    room = plan_room_on(noted, name, need, budgets, policy, max_resident)
    after = noted
    if room.fits:
        for victim in room.victims:
            after = evicted(after, victim, policy)
        if load:
            after = set_resident(after, name, True)
    return EnsurePlan(name, False, need, room.victims, room.fits, load and room.fits, target, room.budget,
                      room.used_after, forgotten, noted, after)


def commit(current: CacheState, base: CacheState, planned: CacheState) -> CacheState:
    """Bring a plan computed from `base` into `current`, the state as it is now: requests served while the plan
    was carried out may have touched other models. Entries the plan changed or forgot are taken from it, each
    keeping its pin as it is now (a pin is the operator's, never a plan's); all others stay as they are now."""
    if current is base:
        return planned
    entries = current.entries.evolver()  # type: ignore[attr-defined]
    for name, entry in planned.entries.items():
        if base.entries.get(name) is not entry:  # with_entry replaces only the entries it changes
            now = current.entries.get(name)
            entries[name] = entry if now is None or now.pinned == entry.pinned else replace(entry, pinned=now.pinned)
    for name in base.entries.keys() - planned.entries.keys():
        if name in entries:
            entries.remove(name)
    latest = planned if planned.switches > current.switches else current
    return CacheState(entries.persistent(), max(current.inflation, planned.inflation),
                      max(current.ticks, planned.ticks), None, latest.switches,  # type: ignore[arg-type]
                      latest.last_name, latest.memory)


@dataclass(frozen=True)
class Pruned:
    state: CacheState
    forgotten: tuple[str, ...]  # uninstalled first, then least recently used first
    uninstalled: int  # how many of them Ollama no longer lists


def prune(state: CacheState, installed: Collection[str] | None, max_entries: int = MAX_ENTRIES) -> Pruned:
    """Forget entries the scheduler no longer needs: those Ollama no longer lists (when `installed` is known),
    then the least recently used beyond `max_entries`. Resident and pinned entries are never forgotten: a
    resident model is in VRAM whatever any list says, and a pin is an operator's word."""
    keep = [e for e in state.entries.values() if e.resident or e.pinned]
    candidates = [e for e in state.entries.values() if not (e.resident or e.pinned)]
    gone = [e for e in candidates if installed is not None and e.name not in installed]
    rest = sorted((e for e in candidates if installed is None or e.name in installed),
                  key=lambda e: (e.last_used, e.name))
    over = max(0, len(keep) + len(rest) - max_entries)
    forgotten = [e.name for e in sorted(gone, key=lambda e: (e.last_used, e.name))] + [e.name for e in rest[:over]]
    if not forgotten:
        return Pruned(state, (), 0)
    return Pruned(state.without(forgotten), tuple(forgotten), len(gone))
