"""glibc's malloc tuned through mallopt(3) and malloc_trim(3): the calls, a C library without them, and what one
arena does to a process whose threads allocate."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from memwarden.malloc import M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, give_back, mallopt


class Libc:
    def __init__(self, answer: int = 1):
        self.calls: list[tuple[str, tuple[int, ...]]] = []
        self.answer = answer

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", (param, value)))
        return self.answer

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", (pad,)))
        return self.answer


def test_each_parameter_is_set_in_order_and_a_refusal_is_reported():
    libc = Libc()
    assert mallopt({M_MMAP_THRESHOLD: 1 << 20, M_TRIM_THRESHOLD: 2 << 20}, libc)
    assert libc.calls == [("mallopt", (M_MMAP_THRESHOLD, 1 << 20)), ("mallopt", (M_TRIM_THRESHOLD, 2 << 20))]
    refusing = Libc(answer=0)
    assert not mallopt({M_ARENA_MAX: 1, M_TRIM_THRESHOLD: 1}, refusing)
    assert len(refusing.calls) == 2  # a refused parameter does not keep the others from being set


def test_a_c_library_without_mallopt_or_malloc_trim_is_left_alone():
    assert not mallopt({M_ARENA_MAX: 1}, object())
    assert not give_back(object())


def test_give_back_trims_the_whole_heap():
    libc = Libc()
    assert give_back(libc)
    assert libc.calls == [("malloc_trim", (0,))]


ARENAS = """
import ctypes, sys, threading
from memwarden.malloc import M_ARENA_MAX, mallopt
if sys.argv[1] == "one":
    assert mallopt({M_ARENA_MAX: 1})
start = threading.Barrier(4)
def allocate():
    start.wait()  # all four at once, so each would take an arena of its own
    kept = [bytearray(4096) for _ in range(2000)]
threads = [threading.Thread(target=allocate) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="arenas and malloc_stats are glibc's")
def test_one_arena_serves_every_thread():
    def arenas(mode: str) -> int:
        proc = subprocess.run([sys.executable, "-c", ARENAS, mode], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return sum(line.startswith("Arena ") for line in proc.stderr.splitlines())

    assert arenas("default") > 1
    assert arenas("one") == 1
