"""A private network namespace with loopback only, for servers that bind every interface (Ray's gRPC servers
do, whatever --node-ip-address says): inside it every interface is loopback, so nothing they open is reachable
from beyond this machine. `prefix` runs a command inside; `forward` makes one of its loopback ports reachable on
the host's loopback (a forwarder that listens here and connects in there: a socket keeps the namespace it was
made in).

    python -m support.netns HOLDER_PID LISTEN_PORT TARGET_PORT   the forwarder itself
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import subprocess
import sys
from pathlib import Path

CLONE_NEWNET = 0x40000000
TESTS = Path(__file__).resolve().parents[1]


class NetNamespace:
    def __init__(self) -> None:
        self.holder = subprocess.Popen(
            ["unshare", "--net", "sh", "-c", "ip link set lo up && echo up && exec sleep infinity"],
            stdout=subprocess.PIPE, text=True)
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != "up":
            raise RuntimeError("could not bring up loopback in a new network namespace")
        self.forwarders: list[subprocess.Popen] = []

    @property
    def path(self) -> str:
        return f"/proc/{self.holder.pid}/ns/net"

    def prefix(self) -> list[str]:
        return ["nsenter", f"--net={self.path}"]

    def run(self, *cmd: str) -> str:
        return subprocess.run([*self.prefix(), *cmd], capture_output=True, text=True, timeout=60, check=True).stdout

    def forward(self, target_port: int) -> int:
        """A host loopback port that reaches 127.0.0.1:target_port inside."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "support.netns", str(self.holder.pid), str(port),
                                 str(target_port)], cwd=TESTS, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "listening":
            raise RuntimeError("the forwarder did not start")
        self.forwarders.append(proc)
        return port

    def close(self) -> None:
        for proc in [*self.forwarders, self.holder]:
            proc.kill()
            proc.wait(timeout=30)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


async def _serve(listener: socket.socket, target_port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, sock=listener)
    print("listening", flush=True)
    await server.serve_forever()


def main(holder_pid: str, listen_port: str, target_port: str) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(listen_port)))  # made here: it stays in the host's namespace
    listener.listen(64)
    fd = os.open(f"/proc/{holder_pid}/ns/net", os.O_RDONLY)
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    asyncio.run(_serve(listener, int(target_port)))


if __name__ == "__main__":
    main(*sys.argv[1:4])
