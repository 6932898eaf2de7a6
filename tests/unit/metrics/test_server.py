import asyncio
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from memwarden.loopback import is_loopback
from memwarden.metrics import server as server_module
from memwarden.metrics.server import MetricsServer


async def http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await reader.read()  # the server closes after one response
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def get(path: str = "/metrics", method: str = "GET", **headers: str) -> bytes:
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode()


@pytest.fixture
async def served(make):
    h = await make()
    await h.sample()
    s = MetricsServer(h.services, "127.0.0.1:0")
    assert await s.start()
    yield h, s
    await s.close()


async def test_get_metrics_in_the_prometheus_text_format(served):
    _, s = served
    status, headers, body = await http(s.port, get())
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert int(headers["content-length"]) == len(body)
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"memwarden_build_info", "memwarden_host_memory_total_bytes", "memwarden_samples"} <= names


async def test_openmetrics_when_the_scraper_asks_for_it(served):
    _, s = served
    status, headers, body = await http(s.port, get(accept="application/openmetrics-text; version=1.0.0"))
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


async def test_head_index_and_errors(served):
    _, s = served
    status, headers, body = await http(s.port, get(method="HEAD"))
    assert (status, body) == (200, b"") and int(headers["content-length"]) > 0
    status, _, body = await http(s.port, get("/"))
    assert status == 200 and b'href="/metrics"' in body
    assert (await http(s.port, get("/nope")))[0] == 404
    status, headers, _ = await http(s.port, get(method="POST"))
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert (await http(s.port, b"hello\r\n\r\n"))[0] == 400


async def test_a_client_that_never_finishes_its_request_is_dropped(served, monkeypatch):
    _, s = served
    monkeypatch.setattr(server_module, "HEAD_TIMEOUT", 0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    writer.write(b"GET /metrics HTTP/1.1\r\n")  # no blank line: the head never ends
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server, with no answer
    writer.close()


async def test_an_oversized_request_head_is_dropped(served):
    _, s = served
    huge = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * (server_module.MAX_HEAD * 2) + b"\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    writer.write(huge)
    try:
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    except ConnectionError:  # a reset: the server closed with our bytes unread
        answer = b""
    writer.close()
    assert answer == b""
    assert (await http(s.port, get()))[0] == 200  # and it serves the next scraper as before


async def test_a_port_in_use_alerts_retries_and_recovers(make, monkeypatch):
    h = await make()
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    listen = f"127.0.0.1:{port}"
    errors = []
    monkeypatch.setattr(server_module.log, "error", lambda msg, **kw: errors.append((msg, kw)))
    d = h.services
    metrics = MetricsServer(d, listen)
    h.passes.metrics_check = metrics.check
    try:
        assert not await metrics.start()
        await h.sample(passes=2)  # the pass retries, and alerts while the address cannot be had
        alert = d.dispatcher.active[("metrics.unavailable", listen)]
        assert alert.condition.severity == "warning"
        assert f"metrics.listen {listen}" in alert.condition.message
        assert "in use" in alert.condition.fields["error"]
        assert len(errors) == 1 and "metrics.listen" in errors[0][0] and errors[0][1]["listen"] == listen
        holder.close()
        await h.sample()
        assert ("metrics.unavailable", listen) not in d.dispatcher.active
        assert metrics.port == port
        assert (await http(port, get()))[0] == 200
    finally:
        holder.close()
        await metrics.close()


async def test_metrics_off_resolves_an_alert_left_by_an_earlier_run(make):
    h = await make()
    from memwarden.alerts.model import Condition

    h.services.dispatcher.update("metrics", [Condition("metrics.unavailable", "127.0.0.1:9847", "warning", "x")], 0)
    await h.sample()
    assert not [a for a in h.services.dispatcher.active if a[0] == "metrics.unavailable"]


async def test_a_non_loopback_address_is_served_with_a_warning(make, monkeypatch):
    h = await make()
    warned = []
    monkeypatch.setattr(server_module.log, "warning", lambda msg, **kw: warned.append(kw.get("listen")))
    s = MetricsServer(h.services, "0.0.0.0:0")
    try:
        assert await s.start()
        assert warned == ["0.0.0.0:0"]
    finally:
        await s.close()
    s = MetricsServer(h.services, "127.0.0.1:0")
    try:
        assert await s.start()
        assert warned == ["0.0.0.0:0"]
    finally:
        await s.close()


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.3.0.1", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("metrics.example.org", False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback
