"""The webhook follows a redirect only to its own origin (scheme, host, port) and only with the POST kept
(307, 308); two real servers on 127.0.0.1, on different ports, are two origins."""

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from memwarden.alerts.sinks.webhook import MAX_REDIRECTS, WebhookSink

EVENT = {"event": "raised", "kind": "host.ram", "key": "host", "severity": "warning", "message": "RAM 90% used",
         "fields": {}, "raised_at": 1.0, "at": 1.0, "notify_count": 1}


class Server:
    """Records every request; `answers` maps a path to (status, Location) or, by default, 204."""

    def __init__(self):
        self.answers: dict[str, tuple[int, str]] = {}
        self.received: list[tuple[str, str, bytes]] = []
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((request.method, request.path, await request.read()))
        status, location = self.answers.get(request.path, (204, ""))
        return web.Response(status=status, headers={"Location": location} if location else None)

    async def __aenter__(self):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc):
        await self.server.close()

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


async def deliver(url: str) -> tuple[bool, list[dict]]:
    sink = WebhookSink(url, timeout=10, retries=2, backoff=0.01)
    try:
        with capture_logs() as logs:
            ok = await sink.deliver(EVENT)
    finally:
        await sink.close()
    return ok, logs


@pytest.mark.parametrize("status", [307, 308])
async def test_a_redirect_to_another_port_is_refused_and_the_other_server_never_posted_to(status):
    async with Server() as first, Server() as second:
        first.answers["/hook"] = (status, second.url("/stolen"))
        port = second.server.port
        ok, logs = await deliver(first.url("/hook"))
    assert ok is False
    assert second.received == []
    assert len(first.received) == 1  # refused once: resending would meet the same redirect
    (failed,) = [e for e in logs if e["event"] == "webhook delivery failed"]
    assert failed["error"] == f"HTTP {status} redirect to another origin (http://127.0.0.1:{port}/***) refused"


async def test_a_relative_redirect_on_the_same_origin_keeps_the_post():
    async with Server() as server:
        server.answers["/hook"] = (307, "/hook/v2")
        ok, _ = await deliver(server.url("/hook"))
    assert ok is True
    assert [(m, p) for m, p, _ in server.received] == [("POST", "/hook"), ("POST", "/hook/v2")]
    assert server.received[0][2] == server.received[1][2]  # the same body


@pytest.mark.parametrize("status", [301, 302, 303])
async def test_a_redirect_that_would_turn_the_post_into_a_get_is_not_followed(status):
    async with Server() as server:
        server.answers["/hook"] = (status, server.url("/elsewhere"))
        ok, logs = await deliver(server.url("/hook"))
    assert ok is False
    assert [p for _, p, _ in server.received] == ["/hook"]
    (failed,) = [e for e in logs if e["event"] == "webhook delivery failed"]
    assert "only 307/308 keep the POST" in failed["error"]


async def test_redirects_on_the_same_origin_end_after_a_few():
    async with Server() as server:
        server.answers["/loop"] = (307, "/loop")
        ok, logs = await deliver(server.url("/loop"))
    assert ok is False
    assert len(server.received) == MAX_REDIRECTS + 1
    assert any(e.get("error") == f"more than {MAX_REDIRECTS} redirects" for e in logs)


async def test_failed_delivery_logs_carry_no_credential():
    async with Server() as server:
        server.answers["/services/T0K3NINPATH"] = (500, "")
        url = server.url("/services/T0K3NINPATH").replace("http://", "http://hookuser:hunter2pass@")
        port = server.server.port
        ok, logs = await deliver(url + "?token=querysecret")
    assert ok is False
    text = repr(logs)
    assert not any(s in text for s in ("hookuser", "hunter2pass", "T0K3NINPATH", "querysecret")), text
    (failed,) = [e for e in logs if e["event"] == "webhook delivery failed"]
    assert failed["url"] == f"http://***@127.0.0.1:{port}/***"
