"""What the container commands print, from fixed inputs."""

from __future__ import annotations

from memwarden.cli import render_containers


def test_containers_restarts_come_from_the_history():
    row = {"name": "web", "working_set": 1, "limit": 0, "slope_bps": None, "verdict": "steady", "action": "restart",
           "restart_count": 0, "restarts": 3, "restarts_24h": 1}
    assert "3 (1 in 24h)" in render_containers.containers({"error": None, "containers": [row]})
    same = render_containers.containers({"error": None, "containers": [{**row, "restarts_24h": 3}]})
    assert same.splitlines()[1].endswith("3")


def test_leaks_name_the_scale_that_saw_each():
    row = {"name": "web", "verdict": "leak", "working_set": 1 << 30, "limit": 0, "slope_bps": 1000.0,
           "scale_s": 3600.0, "exhaustion_in_s": None, "exhaustion_of": None}
    header, line = render_containers.leaks([row]).splitlines()[:2]
    assert "SCALE" in header.split() and "1h" in line.split()
    assert "-" in render_containers.leaks([{**row, "scale_s": None}]).splitlines()[1].split()

