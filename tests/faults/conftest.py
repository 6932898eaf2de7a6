"""Fixtures of the fault suite: real daemons in throw-away dirs, and the fuzzers' counts.

A fuzz test records how many inputs it tried (and how many broke something: the test fails on the first, so a
recorded figure always says 0). With MEMWARDEN_FUZZ_REPORT=FILE the counts are merged into that JSON file
(bench/fuzz_counts.py reads it); MEMWARDEN_FUZZ_SCALE=N multiplies every fuzzer's example count.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class FuzzCount:
    name: str
    inputs: int = 0  # examples the fuzzer generated and ran
    requests: dict[str, int] = field(default_factory=dict)  # what they amounted to (lines, files, …) by kind

    def add(self, kind: str, n: int = 1) -> None:
        self.requests[kind] = self.requests.get(kind, 0) + n


@pytest.fixture
def fuzz_count(request) -> Iterator[FuzzCount]:
    count = FuzzCount(request.node.name)
    yield count
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    report = os.environ.get("MEMWARDEN_FUZZ_REPORT")
    if report:
        path = Path(report)
        data = json.loads(path.read_text()) if path.exists() else {}
        data[count.name] = {"inputs": count.inputs, "crashes": 1 if failed else 0, **count.requests}
        path.write_text(json.dumps(data, indent=1, sort_keys=True))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep
