"""HTTP/1.1 framing: heads, lengths, chunked bodies decoded and passed through, hop-by-hop headers dropped."""

from __future__ import annotations

import asyncio

import pytest

from memwarden.proxy import http


def reader_of(data: bytes, limit: int = http.MAX_HEAD) -> asyncio.StreamReader:
    r = asyncio.StreamReader(limit=limit)
    r.feed_data(data)
    r.feed_eof()
    return r


async def collect(chunks) -> list[bytes]:
    return [c async for c in chunks]


async def test_a_request_head_is_read_with_its_headers_and_the_body_left_unread():
    r = reader_of(b"POST /api/generate?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
                  b"connection: keep-alive, X-Private\r\nX-Private: 1\r\nX-Keep: 2\r\n\r\n{}")
    head = await http.read_head(r)
    assert head is not None and head.start == ("POST", "/api/generate?x=1", "HTTP/1.1")
    assert head.get("content-length") == "2" and head.length == 2 and not head.chunked
    assert head.forwarded() == [("X-Keep", "2")], "hop-by-hop and Connection-named headers stay on this hop"
    assert await r.read() == b"{}"


async def test_a_closed_connection_before_a_head_is_no_request():
    assert await http.read_head(reader_of(b"")) is None
    with pytest.raises(http.BadMessage):
        await http.read_head(reader_of(b"GET / HTTP/1.1\r\nHost"))


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
])
async def test_a_malformed_head_is_refused(raw, status):
    with pytest.raises(http.BadMessage) as bad:
        await http.read_head(reader_of(raw))
    assert bad.value.status == status


async def test_a_head_over_the_limit_is_431():
    with pytest.raises(http.BadMessage) as bad:
        await http.read_head(reader_of(b"GET / HTTP/1.1\r\nX: " + b"a" * 2048 + b"\r\n\r\n", limit=1024))
    assert bad.value.status == 431


@pytest.mark.parametrize(("headers", "status"), [
    ((("Content-Length", "5"), ("Transfer-Encoding", "chunked")), 400),
    ((("Content-Length", "5"), ("Content-Length", "6")), 400),
    ((("Content-Length", "-1"),), 400),
    ((("Content-Length", "0x10"),), 400),
    ((("Transfer-Encoding", "gzip, chunked"),), 501),
])
def test_framing_that_could_be_read_two_ways_is_refused(headers, status):
    head = http.Head(("POST", "/", "HTTP/1.1"), headers)
    with pytest.raises(http.BadMessage) as bad:
        _ = head.length, head.chunked
    assert bad.value.status == status


async def test_a_chunked_body_is_decoded_with_extensions_and_trailers_dropped():
    r = reader_of(b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT")
    assert b"".join(await collect(http.body(r, None, True))) == b"hello world"
    assert await r.read() == b"NEXT", "the body ends where its framing says, not at the connection's end"


async def test_a_chunked_answer_passes_through_in_its_own_bytes_as_they_arrive():
    raw = b'e\r\n{"response":1}\r\n0\r\n\r\n'
    r = asyncio.StreamReader()
    relay = http.ChunkedRelay(r)
    pieces = aiter(relay)
    r.feed_data(raw[:9])  # a read ends inside the chunk's data: what came is passed on at once
    assert await anext(pieces) == raw[:9]
    r.feed_data(raw[9:])
    r.feed_data(b"NEXT")
    assert await anext(pieces) == raw[9:]
    with pytest.raises(StopAsyncIteration):
        await anext(pieces)
    assert relay.extra, "bytes after the body: the connection is not reused"


async def test_many_chunks_in_one_read_leave_in_one_piece_and_a_split_size_line_is_joined():
    body = b"".join(b"%x\r\n%s\r\n" % (len(w), w) for w in (b"a" * 20, b"bb", b"c" * 300)) + b"0\r\nX-T: 1\r\n\r\n"
    r = reader_of(body)
    assert await collect(aiter(http.ChunkedRelay(r))) == [body]
    r = asyncio.StreamReader()
    relay = http.ChunkedRelay(r)
    pieces = aiter(relay)
    r.feed_data(b"1")
    assert await anext(pieces) == b"1"
    r.feed_data(b"4\r\n" + b"x" * 20 + b"\r\n0\r\n\r\n")
    r.feed_eof()
    assert await anext(pieces) == b"4\r\n" + b"x" * 20 + b"\r\n0\r\n\r\n" and not relay.extra


async def test_a_chunked_body_ends_in_the_same_place_however_its_reads_fall():
    """Plain size lines (Ollama's) and every other valid form (an extension, upper case, leading zeros, a bare
    LF, trailers): split in two reads at every byte, the relay passes the body whole and stops at its end."""
    chunks = [b"a" * 20, b"b" * 0x1F, b"{}\n", b"c" * 300]
    body = (b"%x\r\n%s\r\n" % (len(chunks[0]), chunks[0]) + b"1F\r\n" + chunks[1] + b"\r\n"
            + b"3;x=y\r\n" + chunks[2] + b"\r\n" + b"0000000000000000012c\n" + chunks[3] + b"\r\n"
            + b"0\r\nX-T: 1\r\n\r\n")
    for cut in range(1, len(body)):
        r = asyncio.StreamReader()
        relay = http.ChunkedRelay(r)
        pieces = aiter(relay)
        r.feed_data(body[:cut])
        got = [await anext(pieces)]
        r.feed_data(body[cut:] + b"NEXT")
        got += [piece async for piece in pieces]
        assert b"".join(got) == body and relay.extra, cut


async def test_an_answer_cut_short_is_an_error_not_an_end():
    with pytest.raises(asyncio.IncompleteReadError):
        await collect(aiter(http.ChunkedRelay(reader_of(b"5\r\nhel"))))
    with pytest.raises(http.BadMessage):
        await collect(aiter(http.ChunkedRelay(reader_of(b"zz\r\nhello\r\n"))))


@pytest.mark.parametrize("raw", [b"zz\r\nhello\r\n", b"5\r\nhelloXX0\r\n\r\n", b"-5\r\nhello\r\n"])
async def test_a_broken_chunk_is_refused(raw):
    with pytest.raises(http.BadMessage):
        await collect(http.body(reader_of(raw), None, True))


async def test_a_length_body_that_ends_early_is_an_error():
    with pytest.raises(asyncio.IncompleteReadError):
        await collect(http.body(reader_of(b"abc"), 10, False))


def test_a_chunk_is_framed():
    assert http.chunk(b"hello") == b"5\r\nhello\r\n"
