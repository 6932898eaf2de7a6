"""The programs bench/proxy_latency.py measures memwarden's proxy against, each run as `python -c SOURCE PORT
UPSTREAM` in a process of its own: a bare aiohttp forwarder, bare asyncio-streams and asyncio-Protocol relays (the
floors of the two designs the proxy has had) and memwarden's proxy code alone, without the daemon around it.
"""

FORWARDER = r"""
import asyncio, sys
import aiohttp
from aiohttp import web

HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
       "transfer-encoding", "upgrade", "host", "content-length"}

async def main(port, upstream):
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                                    auto_decompress=False)

    async def handle(request):
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with session.request(request.method, upstream + request.rel_url.raw_path_qs, data=body or None,
                                   headers=headers) as up:
            resp = web.StreamResponse(status=up.status, reason=up.reason,
                                      headers={k: v for k, v in up.headers.items() if k.lower() not in HOP})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
"""

# The least an asyncio-streams hop can do: the head read to its end, the body by Content-Length, both passed on
# unchanged over one pooled connection; a chunked answer relayed chunk by chunk. No checks, no filtering: the
# floor of the design memwarden's proxy is built on, in the same interpreter.
STREAMS_RELAY = r"""
import asyncio, sys

def length(head):
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            return int(line[15:])
    return None

async def main(port, up_port):
    pool = []

    async def serve(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = length(head)
                body = await reader.readexactly(n) if n else b""
                up_r, up_w = pool.pop() if pool else await asyncio.open_connection("127.0.0.1", up_port)
                up_w.write(head + body)
                answer = await up_r.readuntil(b"\r\n\r\n")
                n = length(answer)
                if n is not None:
                    writer.write(answer + await up_r.readexactly(n))
                else:
                    writer.write(answer)
                    while True:
                        size = await up_r.readuntil(b"\r\n")
                        data = await up_r.readexactly(int(size, 16) + 2)
                        writer.write(size + data)
                        if size == b"0\r\n":
                            break
                pool.append((up_r, up_w))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    await asyncio.start_server(serve, "127.0.0.1", port)
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""

# The least a Protocol-based hop can do, memwarden's proxy's design: the head found in the bytes received, the
# body by Content-Length, both written in one write to a pooled upstream connection whose protocol writes the
# answer's bytes straight to the client's transport as they arrive; the answer's end found by its
# Content-Length, or a chunked one's by its last bytes. No checks, no flow control: the floor of that design.
PROTOCOL_RELAY = r"""
import asyncio, sys

def length(head):
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            return int(line[15:])
    return None

class Up(asyncio.Protocol):
    def __init__(self, pool):
        self.pool, self.client, self.left, self.head = pool, None, None, b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        client = self.client
        if self.left is None and self.head is not None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            n = length(self.head[:end])
            data, self.head = self.head, None
            self.left = None if n is None else n + end + 4
        if self.left is not None:
            self.left -= len(data)
            done = self.left <= 0
        else:
            done = data.endswith(b"0\r\n\r\n")
        client.transport.write(data)
        if done:
            self.client, self.left, self.head = None, None, b""
            self.pool.append(self)
            client.answered()

class Client(asyncio.Protocol):
    def __init__(self, pool, up_port):
        self.pool, self.up_port, self.buf, self.busy = pool, up_port, b"", False

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        if not self.busy:
            self.next()

    def next(self):
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        n = length(self.buf[:end]) or 0
        if len(self.buf) < end + 4 + n:
            return
        request, self.buf = self.buf[:end + 4 + n], self.buf[end + 4 + n:]
        self.busy = True
        if self.pool:
            self.send(self.pool.pop(), request)
        else:
            asyncio.get_running_loop().create_task(self.connect(request))

    async def connect(self, request):
        _, up = await asyncio.get_running_loop().create_connection(lambda: Up(self.pool), "127.0.0.1", self.up_port)
        self.send(up, request)

    def send(self, up, request):
        up.client = self
        up.transport.write(request)

    def answered(self):
        self.busy = False
        self.next()

async def main(port, up_port):
    pool = []
    await asyncio.get_running_loop().create_server(lambda: Client(pool, up_port), "127.0.0.1", port)
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""

# memwarden's proxy code alone, in a process of its own, over an arbiter that holds every model resident: the
# same hop, queue and admission as memwardend's, without the daemon around them (its scheduler, its sample
# passes, its other connections), so that the two can be told apart.
PROXY_ALONE = r"""
import asyncio, dataclasses, sys, types
from memwarden.config.schema import ProxyConfig
from memwarden.proxy.server import OllamaProxy

class Resident:
    serving_busy_until = 0.0
    config = types.SimpleNamespace(ollama=types.SimpleNamespace(num_parallel=8, max_queue=512))
    def resident(self, model): return True
    def loads_freely(self, model): return False
    def note_use(self, model, keep_alive): pass
    def mark_resident(self, model): pass

async def main(port, upstream):
    cfg = dataclasses.replace(ProxyConfig(), enabled=True, listen=f"127.0.0.1:{port}")
    await OllamaProxy(Resident(), cfg, upstream).start()
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
"""
