"""The control server's malloc settings (release_large_buffers): the event loop's read buffer stays on the heap, so
a read costs no mapping and no page fault, while a block larger than it is still given back when freed."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from memwarden.control.server import MMAP_THRESHOLD

READS = """
import asyncio, resource, socket
from memwarden.control.server import release_large_buffers
from memwarden.malloc import give_back
release_large_buffers()

class Reader(asyncio.Protocol):
    def __init__(self, got):
        self.got = got
    def data_received(self, data):
        self.got.put_nowait(data)

async def main():
    a, b = socket.socketpair()
    got = asyncio.Queue()
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(lambda: Reader(got), b)
    give_back()  # as the daemon does once ready: the heap's top holds no room to spare
    for _ in range(50):
        a.send(b"x" * 300)
        await got.get()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2000):  # one small message per wake-up, as a proxied request or a socket call is
        a.send(b"x" * 300)
        await got.get()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    transport.close()
    a.close()

asyncio.run(main())
"""

LARGE = """
from memwarden.control.server import MMAP_THRESHOLD, release_large_buffers
release_large_buffers()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
before = rss()
blocks = [bytearray(2 * MMAP_THRESHOLD) for _ in range(64)]  # touched: zero-filled
grown = rss() - before
del blocks
print(grown, rss() - before)
"""


def run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's parameters are glibc's")
def test_a_small_read_on_the_loop_faults_in_no_fresh_memory():
    faults = int(run(READS))
    assert faults < 200  # 2,000 reads: a fresh mapping at each would fault at least one page each


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's parameters are glibc's")
def test_blocks_larger_than_the_read_buffer_are_still_given_back_when_freed():
    grown, kept = map(int, run(LARGE).split())
    assert grown > 0.9 * 64 * 2 * MMAP_THRESHOLD  # all resident once
    assert kept < grown / 8
