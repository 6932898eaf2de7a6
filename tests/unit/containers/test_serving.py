"""Serving containers: which URL a container is read at (only URLs the config lists), and a bounded, checked
read of its /api/ps against real servers on 127.0.0.1."""

import asyncio
import json

import pytest

from memwarden.containers.serving import (
    MAX_ANSWER,
    ServingCounter,
    ServingError,
    ServingUrls,
    models_loaded,
    parse_ps,
)
from memwarden.snapshots import ContainerMemory


def box(image="app:1", labels=()) -> ContainerMemory:
    return ContainerMemory(id="c" * 64, name="web", image=image, working_set=1, usage=1, limit=0, rss=1,
                           restart_count=0, compose_service=None, labels=tuple(labels), started_at="",
                           source="cgroup")


def label(url: str):
    return [("memwarden.ollama_url", url)]


URLS = ServingUrls("http://127.0.0.1:11434", ["http://10.0.0.5:11434/", "https://ollama.lan"])


@pytest.mark.parametrize(("c", "url"), [
    (box(image="ollama/ollama:0.5"), "http://127.0.0.1:11434"),
    (box(), None),
    (box(labels=label("http://10.0.0.5:11434")), "http://10.0.0.5:11434/"),  # as configured, not as labelled
    (box(labels=label("HTTP://10.0.0.5:11434/")), "http://10.0.0.5:11434/"),
    (box(labels=label("https://OLLAMA.lan:443")), "https://ollama.lan"),
    (box(labels=label("http://127.0.0.1:11434/")), "http://127.0.0.1:11434"),
])
def test_a_container_is_read_only_at_a_configured_url(c, url):
    assert URLS.of(c) == (url, None)


@pytest.mark.parametrize("target", [
    "http://169.254.169.254/latest/meta-data", "http://10.0.0.5:11435", "https://10.0.0.5:11434",
    "http://10.0.0.5:11434/other", "file:///etc/passwd", "http://[::1", "not a url"])
def test_a_label_naming_any_other_url_is_ignored_and_said_why(target):
    url, complaint = URLS.of(box(labels=label(target)))
    assert url is None
    assert "is not one of the configured Ollama URLs" in complaint and "ignored" in complaint
    url, _ = URLS.of(box(image="ollama/ollama", labels=label(target)))
    assert url == "http://127.0.0.1:11434"  # an Ollama image falls back to ollama.url


def answer(body: bytes, status: str = "200 OK", headers: str = "Content-Type: application/json\r\n") -> bytes:
    return f"HTTP/1.1 {status}\r\n{headers}Content-Length: {len(body)}\r\n\r\n".encode() + body


@pytest.mark.parametrize("raw", [
    answer(b'{"models": [{"name": "a:latest"}, {"model": "b:7b"}]}'),
    answer(b'{"models": [{"name": "a"}, {"name": "b"}]}', headers=""),
    b'HTTP/1.0 200 OK\r\n\r\n{"models": [{"name": "a"}, {"name": "b"}]}',  # no length: until the end
])
def test_parse_ps_counts_the_models(raw):
    assert parse_ps(raw) == 2


@pytest.mark.parametrize(("raw", "why"), [
    (answer(b'["not", "an", "object"]'), "not Ollama's /api/ps"),
    (answer(b'{"models": "none"}'), "not Ollama's /api/ps"),
    (answer(b'{"models": [1, 2]}'), "not Ollama's /api/ps"),
    (answer(b'{"models": [{"name": 7}]}'), "not Ollama's /api/ps"),
    (answer(b'{"other": []}'), "not Ollama's /api/ps"),
    (answer(b"<html>hello</html>"), "not JSON"),
    (answer(b"[" * 100_000 + b"]" * 100_000), "not JSON"),
    (answer(b"{}", status="500 Internal Server Error"), "HTTP 500"),
    (b"SSH-2.0-OpenSSH_9.2\r\n", "not an HTTP answer"),
    (b"", "not an HTTP answer"),
])
def test_parse_ps_refuses_junk_with_a_reason(raw, why):
    with pytest.raises(ServingError, match=why):
        parse_ps(raw)


class Server:
    """A TCP server on 127.0.0.1 whose handler is a coroutine (reader, writer)."""

    def __init__(self, handler):
        self.handler = handler
        self.connections = 0

    async def _serve(self, reader, writer):
        self.connections += 1
        try:
            await self.handler(reader, writer)
        finally:
            writer.close()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()


async def reply_with(data: bytes):
    async def handler(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(data)
        await writer.drain()
    return handler


async def test_a_good_answer_is_counted():
    async with Server(await reply_with(answer(json.dumps({"models": [{"name": "x"}]}).encode()))) as s:
        assert await models_loaded(s.url, 10) == 1


async def test_an_answer_larger_than_the_bound_is_refused():
    async def endless(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\n\r\n")
        chunk = b" " * 65536
        for _ in range(MAX_ANSWER // len(chunk) + 4):
            writer.write(chunk)
            await writer.drain()

    async with Server(endless) as s:
        with pytest.raises(ServingError, match="larger than"):
            await models_loaded(s.url, 30)


async def test_a_server_that_drips_is_cut_at_the_deadline():
    stop = asyncio.Event()

    async def drip(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\n")
        while not stop.is_set():  # a byte at a time, never the end: each read alone would never time out
            writer.write(b"X")
            await writer.drain()
            await asyncio.sleep(0.05)

    async with Server(drip) as s:
        with pytest.raises(ServingError, match=r"no complete answer within 0\.5s"):
            await models_loaded(s.url, 0.5)
        stop.set()


async def test_an_unreachable_url_is_an_error_not_an_exception_of_another_kind():
    async with Server(await reply_with(b"")) as s:
        url = s.url
    with pytest.raises(ServingError, match="unreachable"):
        await models_loaded(url, 5)


def named(name: str, image: str = "ollama/ollama") -> ContainerMemory:
    return ContainerMemory(id=name * 8, name=name, image=image, working_set=1, usage=1, limit=0, rss=1,
                           restart_count=0, compose_service=None, labels=(), started_at="", source="cgroup")


async def test_the_counter_reads_each_url_once_per_pass_and_says_an_unreadable_one_once():
    from structlog.testing import capture_logs

    reads: list[str] = []
    answers: dict[str, int | Exception] = {"http://127.0.0.1:11434": 2}

    async def read(url: str, timeout: float) -> int:
        reads.append(url)
        answer = answers[url]
        if isinstance(answer, Exception):
            raise answer
        return answer

    counter = ServingCounter(read)
    urls = ServingUrls("http://127.0.0.1:11434")
    boxes = [named("a"), named("b"), named("web", image="app:1")]
    assert await counter.count(boxes, urls, 1.0) == [2, 2, None]
    assert reads == ["http://127.0.0.1:11434"], "two containers at one URL: one read; a non-serving one: none"

    answers["http://127.0.0.1:11434"] = ServingError("HTTP 500")
    with capture_logs() as logs:
        for _ in range(3):
            assert await counter.count(boxes, urls, 1.0) == [None, None, None]
    assert [e["event"] for e in logs] == ["serving container: cannot count the models at http://127.0.0.1:11434: "
                                          "HTTP 500"]
