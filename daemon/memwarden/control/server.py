"""The control socket server: many concurrent clients, each a sequence of request lines."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

from memwarden.control.listen import SocketInUse, bind_unix  # noqa: F401 (the daemon binds through here)
from memwarden.control.peer import Peer, may_change_state, peer_of
from memwarden.control.protocol import (
    BUSY,
    INTERNAL_ERROR,
    LINE_TOO_LONG,
    MAX_LINE,
    ApplicationError,
    RpcError,
    error_line,
    parse_request,
    result_line,
)
from memwarden.control.registry import Registry
from memwarden.logs import get_logger

log = get_logger()

WRITE_TIMEOUT = 10.0


class ControlServer:
    def __init__(self, registry: Registry, admin_group: str = "", max_clients: int = 512,
                 on_state_error: Callable[[sqlite3.Error, str], str] | None = None):
        self.registry = registry
        self.admin_group = admin_group
        self.max_clients = max_clients
        self.on_state_error = on_state_error  # StateHealth.failed: records it, returns the message in words
        self.clients = 0
        self.served = 0
        self._server: asyncio.AbstractServer | None = None
        self._owned_path: Path | None = None

    async def start(self, sock: socket.socket, owned_path: Path | None) -> None:
        sock.setblocking(False)
        self._owned_path = owned_path
        self._server = await asyncio.start_unix_server(self._handle, sock=sock, limit=MAX_LINE)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        if self._owned_path is not None:
            self._owned_path.unlink(missing_ok=True)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients += 1
        try:
            if self.clients > self.max_clients:
                await self._send(writer, error_line(None, RpcError(BUSY, "too many clients; try again")))
                return
            peer = peer_of(writer.get_extra_info("socket"))
            await self._serve(reader, writer, peer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or stopped reading; nothing to answer
        finally:
            self.clients -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer) -> None:
        while True:
            try:
                line = await reader.readline()
            except ValueError:
                await self._send(writer, error_line(None, RpcError(
                    LINE_TOO_LONG, f"request line exceeds {MAX_LINE} bytes; connection closed")))
                return
            if not line:
                return
            if not line.endswith(b"\n"):
                return  # half a line and then a hang-up: there is nobody to answer
            if not line.strip():
                continue
            reply = await self._dispatch(line, peer)
            if reply is not None:
                await self._send(writer, reply)

    async def _dispatch(self, line: bytes, peer: Peer) -> bytes | None:
        try:
            request = parse_request(line)
        except RpcError as err:
            req_id = err.data.get("id") if isinstance(err.data, dict) else None
            err.data = None
            return error_line(req_id, err)
        try:
            # Checked per request: a reload may change the admin group while a client stays connected.
            admin = may_change_state(peer, self.admin_group)
            result = await self.registry.call(request.method, request.params, admin, peer)
        except RpcError as err:
            reply = error_line(None if request.is_notification else request.id, err)
        except sqlite3.Error as exc:
            # Disk full, locked or corrupt is not an internal error: the caller learns the file and what to do,
            # and the sample pass raises the state.database alert. SQLite rolled the write back; nothing is lost.
            what = self.on_state_error(exc, request.method) if self.on_state_error else f"state database: {exc}"
            log.error("control method failed on the state database", method=request.method, error=what)
            reply = error_line(request.id, ApplicationError(f"{request.method} failed: {what}"))
        except Exception as exc:
            log.exception("control method failed", method=request.method)
            reply = error_line(request.id, RpcError(INTERNAL_ERROR, f"internal error in {request.method}: {exc!r}"))
        else:
            self.served += 1
            reply = result_line(request.id, result)
        return None if request.is_notification else reply
