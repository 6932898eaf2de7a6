"""Which adapter a memory feeds: `learning.routes`, with profile isolation (pure).

`learning.routes` is a tuple of (adapter, profiles, kinds); an empty tuple matches any; the first
route that matches a memory's (profile, kind) names its adapter; a memory no route matches feeds the adapter
named after its profile. The adapter is decided once, at insert: changing the routes later moves nothing.

Profile isolation: every adapter's memories come from ONE profile, whatever the routes say. A route cannot
mix profiles into one adapter because the adapter name is qualified by profile whenever it could:

- a route's adapter name N is used as is only when N is *owned* by one profile P — every route naming N
  lists exactly `profiles = [P]`; otherwise (a route with `profiles = []`, several profiles, or another route
  naming N for another profile) a memory of profile Q routed there feeds `N@Q`;
- an unrouted memory of profile P feeds `P`, unless some route's adapter name is `P` and that name is not
  owned by P itself; then it feeds `P@P`.

Profile names and route adapter names may not contain `@` (config.schema.NAME_RE: the schema checks routes when the
config is read, so the store takes them as they come), so a qualified name `N@Q` can only hold profile Q's
memories and an unqualified name only its owner's: no two profiles ever share an adapter.
Names are qualified here, at routing time, rather than by refusing such routes when the config is read, so that a
route like `{adapter = "dreams", kinds = ["dream"]}` simply gives every profile its own dreams adapter.
"""

from __future__ import annotations

from collections.abc import Sequence

from memwarden.config.routes import Route

QUALIFIER = "@"


def _owners(routes: Sequence[Route]) -> dict[str, str | None]:
    """adapter name → the one profile owning it, or None when routes share it between profiles (or any)."""
    owners: dict[str, str | None] = {}
    for adapter, profiles, _ in routes:
        owner = profiles[0] if len(profiles) == 1 else None
        owners[adapter] = owner if owners.get(adapter, owner) == owner else None
    return owners


def adapter_for(profile: str, kind: str, routes: Sequence[Route]) -> str:
    """The adapter a memory of (profile, kind) feeds under `routes` (see the module doc): first match wins,
    unrouted memories feed the profile's own adapter, and a name shared between profiles is qualified."""
    owners = _owners(routes)
    for adapter, profiles, kinds in routes:
        if (not profiles or profile in profiles) and (not kinds or kind in kinds):
            return adapter if owners[adapter] == profile else f"{adapter}{QUALIFIER}{profile}"
    if profile in owners and owners[profile] != profile:
        return f"{profile}{QUALIFIER}{profile}"
    return profile
