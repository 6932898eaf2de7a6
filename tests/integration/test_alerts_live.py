"""A real host-memory alert from raise to resolve: exec hook, webhook, journal line, SQLite history."""

from __future__ import annotations

import json
import socket
import sys

import pytest
from aiohttp import web


class HookInbox:
    """Receives what the exec hook forwards: one datagram per alert event."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(20)

    def next(self) -> dict:
        return json.loads(self.sock.recv(65536))


def write_hook(workdir, inbox_path):
    hook = workdir / "hook.py"
    hook.write_text(
        f"#!{sys.executable}\n"
        "import json, os, socket, sys\n"
        "env = {k: v for k, v in os.environ.items() if k.startswith('MEMWARDEN_ALERT_')}\n"
        "env['stdin'] = json.load(sys.stdin)\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        f"s.sendto(json.dumps(env).encode(), {str(inbox_path)!r})\n")
    hook.chmod(0o755)
    return hook


@pytest.fixture
async def webhook_server():
    received: list[dict] = []
    arrived = __import__("asyncio").Event()

    async def handle(request):
        received.append(await request.json())
        arrived.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/hook", received, arrived
    await runner.cleanup()


async def test_ram_alert_lifecycle(make_daemon, webhook_server):
    import asyncio

    url, received, arrived = webhook_server
    d = make_daemon()
    inbox = HookInbox(d.workdir / "inbox.sock")
    hook = write_hook(d.workdir, d.workdir / "inbox.sock")
    # Any machine running this test uses more than 1 % of its RAM: the warning is certain.
    alerting = {**d.sections, "host": {"ram_warn_percent": 1, "ram_crit_percent": 100, "hold": "0s"},
                "alerts": {"exec": str(hook), "webhook": url}}
    d.write_config(alerting)
    d.start()
    loop = asyncio.get_running_loop()

    raised = await loop.run_in_executor(None, inbox.next)
    assert raised["MEMWARDEN_ALERT_EVENT"] == "raised"
    assert raised["MEMWARDEN_ALERT_KIND"] == "host.ram"
    assert raised["MEMWARDEN_ALERT_SEVERITY"] == "warning"
    assert raised["stdin"]["fields"]["warn"] == 1.0
    await asyncio.wait_for(arrived.wait(), 20)
    assert received[0]["event"] == "raised" and received[0]["kind"] == "host.ram"

    status = d.call("status")
    assert [a["kind"] for a in status["active_alerts"]] == ["host.ram"]
    assert "1 alert" in status["summary"]

    arrived.clear()
    d.write_config({**alerting, "host": {"ram_warn_percent": 99, "ram_crit_percent": 100, "hold": "0s"}})
    assert d.call("config.reload")["reloaded"] is True
    resolved = await loop.run_in_executor(None, inbox.next)
    assert resolved["MEMWARDEN_ALERT_EVENT"] == "resolved"
    await asyncio.wait_for(arrived.wait(), 20)
    assert received[-1]["event"] == "resolved"

    alerts = d.call("alerts")
    assert alerts["active"] == []
    assert alerts["recent"][0]["kind"] == "host.ram" and alerts["recent"][0]["resolved_at"] is not None
    logged = [e for e in d.log_events() if e.get("alert_kind") == "host.ram"]
    assert [e["alert_event"] for e in logged] == ["raised", "resolved"]
    assert logged[0]["level"] == "warning" and len(logged[0]["message_id"]) == 32


async def test_an_alert_open_at_restart_is_not_raised_twice(make_daemon):
    import asyncio

    d = make_daemon()
    inbox = HookInbox(d.workdir / "inbox.sock")
    hook = write_hook(d.workdir, d.workdir / "inbox.sock")
    d.write_config({**d.sections, "host": {"ram_warn_percent": 1, "ram_crit_percent": 100, "hold": "0s"},
                    "alerts": {"exec": str(hook)}})
    d.start()
    loop = asyncio.get_running_loop()
    assert (await loop.run_in_executor(None, inbox.next))["MEMWARDEN_ALERT_EVENT"] == "raised"
    assert d.stop() == 0

    d.start()
    for _ in range(3):  # three full passes after the restart
        d.notify.wait_for(lambda m: "STATUS" in m and "READY" not in m)
    inbox.sock.settimeout(0.0)
    with pytest.raises(BlockingIOError):
        inbox.sock.recv(65536)
    alerts = d.call("alerts")
    assert len(alerts["active"]) == 1
    assert len(alerts["recent"]) == 1, "the restarted daemon continued the open alert, not a new one"
