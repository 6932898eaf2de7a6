import asyncio
from dataclasses import replace

from memwarden.config.schema import ProxyConfig
from memwarden.proxy import http, server
from memwarden.proxy.bodies import BUFFERED_BODIES
from memwarden.proxy.server import OllamaProxy

MiB = 1024 * 1024


def test_a_reload_applies_the_new_cap_and_budget_to_the_next_request():
    proxy = OllamaProxy(object(), ProxyConfig(), "http://127.0.0.1:9")  # type: ignore[arg-type]
    assert proxy.budget.limit == BUFFERED_BODIES * 32 * MiB
    proxy.cfg = replace(ProxyConfig(), max_request_body=MiB, hold_timeout=5.0)
    assert proxy.cfg.max_request_body == MiB
    assert proxy.budget.limit == BUFFERED_BODIES * MiB
    assert proxy.admitter.cfg.hold_timeout == 5.0


async def test_a_connection_waiting_for_a_head_past_the_idle_limit_is_closed_but_not_one_whose_answer_is_slow(
        monkeypatch):
    """The idle limit counts only the wait for a request's head: an answer slower than it still arrives, and
    the connection is closed once it has waited that long for the next head (a half-sent one included)."""
    monkeypatch.setattr(server, "IDLE_S", 0.3)
    answer_now = asyncio.Event()

    async def slow_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await http.read_head(reader)
        await answer_now.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    upstream = await asyncio.start_server(slow_upstream, "127.0.0.1", 0)
    upstream_port = upstream.sockets[0].getsockname()[1]
    proxy = OllamaProxy(object(), replace(ProxyConfig(), listen="127.0.0.1:0"),  # type: ignore[arg-type]
                        f"http://127.0.0.1:{upstream_port}")
    await proxy.start()
    try:
        assert proxy.server is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.sockets[0].getsockname()[1])
        writer.write(b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n")
        loop = asyncio.get_running_loop()
        await asyncio.sleep(3 * 0.3)  # the request is in the proxy's hands for three times the idle limit
        answer_now.set()
        assert (await asyncio.wait_for(reader.readuntil(b"ok"), 30)).endswith(b"\r\n\r\nok")
        writer.write(b"GET /api/version HTTP/1.1\r\nHo")  # a head begun, never finished
        began = loop.time()
        assert await asyncio.wait_for(reader.read(), 30) == b""  # closed, with nothing said
        assert loop.time() - began >= 0.3 * 0.9  # not before the limit (the loop's clock may round down)
        writer.close()
    finally:
        await proxy.close()
        upstream.close()
