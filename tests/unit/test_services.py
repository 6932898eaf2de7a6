"""The composition root's shutdown: what the parts save at close() is there for the next daemon."""

from support.house import MiB, World, container, house

CONTAINERS = {"enabled": True, "leak_window": "20s", "leak_min_rate": "100KiB/s", "action": "alert"}


def leak_at(i: int) -> int:
    return 100 * MiB + MiB * min(i, 25) + (i * 7919 % 13) * 4096  # leaks 1 MiB/s, then stops


async def test_a_daemon_restart_mid_leak_resumes_every_leak_history_and_its_verdicts(tmp_path):
    async def run(index: int, restart_at: int | None) -> list:
        world = World()
        h = await house(tmp_path, world, index, containers=CONTAINERS)
        seen = []
        for i in range(60):
            if i == restart_at:  # services closed (the watch saves, then the database closes), built again
                now = h.clock.now
                await h.services.close()
                h = await house(tmp_path, world, index, containers=CONTAINERS)
                h.clock.now = now
            world.containers = [container("web", leak_at(i))]
            await h.sample()
            s = h.services.containers.series["web"]
            seen.append((s.verdict, s.history.state()))
        await h.services.close()
        return seen

    straight = await run(0, None)
    first_leak = [v.verdict for v, _ in straight].index("leak")
    assert await run(1, first_leak + 5) == straight  # passes after the last save: only close() saved them
