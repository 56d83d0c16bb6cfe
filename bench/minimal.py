"""Minimal HTTP/1.1 servers on uvloop + httptools, the yardsticks of the benchmarks.

    .venv/bin/python bench/minimal.py backend PORT
    .venv/bin/python bench/minimal.py relay PORT BACKEND_PORT[,BACKEND_PORT...]
    .venv/bin/python bench/minimal.py sse PORT [INTERVAL]

- ``backend``: answers every request with ``200`` and a 2-byte body, keep-alive; an MCP
  ``initialize`` (a body naming that method) also gets an ``Mcp-Session-Id``, so that MCP
  requests can be measured with a session (``bench/cpu_budget.py``).
- ``relay``: the reference relay. It forwards each request's bytes unchanged to a backend
  (round robin), over a keep-alive pool of upstream connections, and relays the response
  bytes back; llhttp finds where each message ends. It does what a proxy cannot skip
  and nothing else (no header rewriting, no routing, no accounting), so mcplb's CPU time
  per request divided by this one's says how much mcplb adds, on any machine and load
  (``bench/cpu_gate.py``).

- ``sse``: answers every request with an open event stream (``text/event-stream``,
  chunked); every INTERVAL seconds (default 1) it sends each open stream one event, spread
  over the interval, whose data is the ``time.monotonic()`` of the moment it is sent, so
  that a client on the same host can tell how long the event took to reach it
  (``bench/scale_bench.py streams``).

The backend and relay serve one request at a time per connection (no pipelining), as the
load generators send them.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys
import time
from collections.abc import Callable

import httptools
import uvloop

HOST = "127.0.0.1"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
SESSION_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: %s\r\n"
    b"Content-Length: %d\r\n\r\n%s"
)
INITIALIZE = b'"method":"initialize"'
sessions = itertools.count(1)


class Backend(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.initialize = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        self.initialize = self.initialize or INITIALIZE in body

    def answer(self) -> bytes:
        if not self.initialize:
            return ANSWER
        self.initialize = False
        body = b'{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25"}}'
        return SESSION_ANSWER % (b"bench-session-%d" % next(sessions), len(body), body)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        if self.transport is not None:
            self.transport.write(self.answer())
            if not self.parser.should_keep_alive():
                self.transport.close()


class Upstream(asyncio.Protocol):
    """One pooled connection to a backend; relays one response at a time to ``client``."""

    def __init__(self, pool: list[Upstream]) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is not None and client.transport is not None:
            client.transport.write(data)
        self.parser.feed_data(data)

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        if self.keep_alive and client is not None and client.keep_alive:
            self.pool.append(self)
        elif self.transport is not None:
            self.transport.close()
        if client is not None:
            client.answered()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)
        if self.client is not None and self.client.transport is not None:
            self.client.transport.close()


class Client(asyncio.Protocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.keep_alive = True
        self.upstream: Upstream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.write(data)  # more of a body already on its way
        else:
            self.pending.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_headers_complete(self) -> None:
        # A request with "Connection: close" ends its upstream connection too.
        self.keep_alive = self.parser.should_keep_alive()
        self.relay.send(self)

    def answered(self) -> None:
        self.upstream = None

    def connection_lost(self, exc: Exception | None) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.client = None
            upstream.transport.close()


class Relay:
    def __init__(self, backends: list[int]) -> None:
        self.pools: list[list[Upstream]] = [[] for _ in backends]
        self.ports = backends
        self.turn = itertools.cycle(range(len(backends)))
        self.connecting: set[asyncio.Future[None]] = set()

    def send(self, client: Client) -> None:
        index = next(self.turn)
        pool = self.pools[index]
        if pool:
            self._attach(client, pool.pop())
        else:
            task = asyncio.ensure_future(self._connect(client, index))
            self.connecting.add(task)  # kept until done: the loop holds tasks weakly
            task.add_done_callback(self.connecting.discard)

    async def _connect(self, client: Client, index: int) -> None:
        loop = asyncio.get_running_loop()
        pool = self.pools[index]
        # (uvloop sets TCP_NODELAY on every TCP connection.)
        _, upstream = await loop.create_connection(lambda: Upstream(pool), HOST, self.ports[index])
        self._attach(client, upstream)

    @staticmethod
    def _attach(client: Client, upstream: Upstream) -> None:
        client.upstream = upstream
        upstream.client = client
        data, client.pending = b"".join(client.pending), []
        assert upstream.transport is not None
        upstream.transport.write(data)


async def serve(port: int, factory: Callable[[], asyncio.Protocol]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(factory, HOST, port, backlog=4096, reuse_address=True)
    await stop.wait()
    server.close()


class EventStream(Backend):
    """Answers each request with an event stream that stays open (events: send_events)."""

    HEAD = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    def __init__(self, streams: set[EventStream]) -> None:
        super().__init__()
        self.streams = streams

    def on_message_complete(self) -> None:
        if self.transport is not None:
            self.transport.write(self.HEAD)
            self.streams.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.streams.discard(self)
        self.transport = None  # a write to a closed transport would end the sender


async def send_events(streams: set[EventStream], interval: float) -> None:
    """Each stream one event per ``interval``, spread over it in 100 slices (streams are
    independent: their events do not all fall in the same instant)."""
    slices = 100
    while True:
        ordered = list(streams)
        for n in range(slices):
            await asyncio.sleep(interval / slices)
            event = f"data: {time.monotonic():.6f}\n\n".encode()
            data = b"%x\r\n%s\r\n" % (len(event), event)
            for stream in ordered[n::slices]:
                if stream.transport is not None:
                    stream.transport.write(data)


async def serve_events(port: int, interval: float) -> None:
    streams: set[EventStream] = set()
    sender = asyncio.ensure_future(send_events(streams, interval))
    try:
        await serve(port, lambda: EventStream(streams))
    finally:
        sender.cancel()


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("backend", "relay", "sse"):
        print(__doc__, file=sys.stderr)
        return 2
    port = int(argv[1])
    if argv[0] == "backend":
        uvloop.run(serve(port, Backend))
    elif argv[0] == "sse":
        uvloop.run(serve_events(port, float(argv[2]) if len(argv) > 2 else 1.0))
    else:
        relay = Relay([int(p) for p in argv[2].split(",")])
        uvloop.run(serve(port, lambda: Client(relay)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
