"""Keep-alive connections to one backend, and the protocol that reads their responses."""

from __future__ import annotations

import asyncio
import contextlib
import errno
from typing import TYPE_CHECKING, Final, cast

import httptools

# Errors of this process or host, not of the backend: out of descriptors (EMFILE,
# ENFILE), of memory or buffers, of local ports (EADDRNOTAVAIL, EADDRINUSE). Counting them
# against the backend would eject healthy backends and forget their sessions whenever the
# proxy itself is exhausted, which a client can make happen.
LOCAL_ERRNOS: Final = frozenset(
    (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.EADDRNOTAVAIL, errno.EADDRINUSE)
)


def local_failure(exc: BaseException) -> bool:
    """Whether a failed connect was this process's fault (see ``LOCAL_ERRNOS``)."""
    return isinstance(exc, OSError) and exc.errno in LOCAL_ERRNOS


if TYPE_CHECKING:
    from mcplb.proxy.cluster.backends import Backend

# A response's header fields as parsed: (name, value), in order (``relay.http11.Headers``).
Headers = list[tuple[bytes, bytes]]

# Idle connections kept per backend; past this, released connections are closed.
MAX_IDLE_PER_BACKEND: Final = 512


class ResponseSink:
    """Receives what an upstream connection reads (the client side of a relay:
    ``relay.reply.Reply`` subclasses it, ``relay.response.Response`` implements it).

    A base class and not a ``Protocol``: compiled (setup.py), each call on the sink is a
    native call, where through a protocol it was a method lookup by name (issue 27)."""

    __slots__ = ()

    def upstream_head(self, status: int, reason: bytes, headers: Headers, keep_alive: bool) -> None:
        """A response head arrived (also 1xx interim ones)."""
        raise NotImplementedError

    def upstream_body(self, data: bytes) -> None:
        raise NotImplementedError

    def upstream_complete(self) -> None:
        raise NotImplementedError

    def upstream_tunnel(self, data: bytes) -> None:
        """The backend switched protocols; ``data`` are the first tunnelled bytes."""
        raise NotImplementedError

    def upstream_lost(self, error: BaseException | None) -> None:
        """The connection closed or sent garbage before the response completed."""
        raise NotImplementedError

    def upstream_write_paused(self, paused: bool) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Write out what the last read produced."""
        raise NotImplementedError


class UpstreamConnection:
    """One HTTP/1.1 connection to a backend; parses responses and hands them to its sink.

    An asyncio protocol by its methods (asyncio and uvloop ask no base class), not a
    subclass of ``asyncio.Protocol``: a class with a Python base is not a native class
    once compiled, and every attribute read on it was a dictionary lookup (issue 27)."""

    __slots__ = (
        "_headers",
        "_reason",
        "_stale_parser",
        "_status",
        "backend",
        "expect_no_body",
        "idle_since",
        "parser",
        "pool",
        "read_paused",
        "received",
        "requests",
        "sink",
        "transport",
        "tunnel",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.backend = pool.backend
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sink: ResponseSink | None = None
        self.requests = 0  # requests sent on this connection, the current one included
        self.received = False  # any response byte for the current request
        self.expect_no_body = False  # the current request is HEAD
        self.tunnel = False
        self.read_paused = False  # by pause_reading (so resuming one that reads is free)
        self.idle_since = 0.0
        self._stale_parser = False
        self._headers: Headers = []
        self._reason = b""
        self._status = 0  # of the response being read

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if self.tunnel:
            if sink is not None:
                sink.upstream_tunnel(data)
            return
        if sink is None:
            # Bytes nobody asked for on an idle connection: it can no longer be trusted.
            self.close()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.tunnel = True
            if self.sink is not None:
                self.sink.upstream_tunnel(data[exc.args[0] :])
        except httptools.HttpParserError as exc:
            self.sink = None
            self.close()
            sink.upstream_lost(exc)
        sink.flush()
        if self._stale_parser:
            self._stale_parser = False
            self.parser = httptools.HttpResponseParser(self)

    def eof_received(self) -> bool | None:
        return None  # as asyncio.Protocol's: the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        sink = self.sink
        if sink is not None:
            self.sink = None
            sink.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_write_paused(True)

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_write_paused(False)

    # httptools callbacks

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        # The head's fields are handed on and the next head starts afresh (here, not in
        # an on_message_begin: one callback less per response).
        headers, reason = self._headers, self._reason
        self._headers = []
        self._reason = b""
        self._status = status = self.parser.get_status_code()
        sink = self.sink
        if sink is None:
            return
        sink.upstream_head(status, reason, headers, self.parser.should_keep_alive())
        if self.expect_no_body and status >= 200 and self.sink is sink:
            # llhttp cannot be told a response answers HEAD: end the message here and
            # parse the next response on this connection with a fresh parser.
            self._stale_parser = True
            sink.upstream_complete()

    def on_body(self, data: bytes) -> None:
        if self.sink is not None and not self._stale_parser:
            self.sink.upstream_body(data)

    def on_message_complete(self) -> None:
        if self.sink is None or self._stale_parser:
            return
        status = self._status
        if status >= 200 or status == 101:
            self.sink.upstream_complete()

    # used by the relay

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        """Close without returning to the pool (buffered request bytes are still sent)."""
        self.sink = None
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.sink = None
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
            self.read_paused = True

    def resume_reading(self) -> None:
        if not self.read_paused:
            return  # most connections never pause: no transport call for each release
        self.read_paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


class UpstreamPool:
    """Idle keep-alive connections to one backend, most recently used first."""

    def __init__(
        self,
        backend: Backend,
        connect_timeout: float,
        keepalive_timeout: float,
    ) -> None:
        self.backend = backend
        self.connect_timeout = connect_timeout
        self.keepalive_timeout = keepalive_timeout
        self.idle: list[UpstreamConnection] = []
        self.closed = False  # its backend was removed: connections are not kept

    def take(self) -> UpstreamConnection | None:
        """An idle connection that still looks open, or None."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if transport is not None and not transport.is_closing():
                return conn
        return None

    async def connect(self) -> UpstreamConnection:
        """A new connection; raises OSError or TimeoutError."""
        loop = asyncio.get_running_loop()
        backend = self.backend
        # The backend's one context, which its health probes use too (and a reload renews).
        context = backend.tls_context()
        # (An asyncio protocol by its methods, not by its base class: see UpstreamConnection.)
        _, protocol = await asyncio.wait_for(
            loop.create_connection(
                lambda: cast(asyncio.Protocol, UpstreamConnection(self)),
                backend.host,
                backend.port,
                ssl=context,
                server_hostname=backend.host if context is not None else None,
            ),
            self.connect_timeout,
        )
        conn = cast(UpstreamConnection, protocol)
        if conn.transport is None or conn.transport.is_closing():
            # Accepted, then closed before we could write (the backend is going away).
            raise ConnectionResetError("connection closed by the backend right after connect")
        return conn

    def release(self, conn: UpstreamConnection, now: float) -> None:
        """Return a connection whose exchange completed cleanly."""
        conn.sink = None
        conn.received = False
        conn.expect_no_body = False
        if self.closed or len(self.idle) >= MAX_IDLE_PER_BACKEND:
            conn.close()
            return
        conn.idle_since = now
        conn.resume_reading()  # so a close by the backend is noticed while idle
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        """Drop a connection that closed (no-op if it was not idle)."""
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def expire(self, now: float) -> None:
        """Close idle connections older than the keep-alive timeout."""
        limit = now - self.keepalive_timeout
        stale = [c for c in self.idle if c.idle_since <= limit]
        for conn in stale:
            self.idle.remove(conn)
            conn.close()

    def close_all(self) -> None:
        self.closed = True
        for conn in self.idle:
            conn.close()
        self.idle.clear()
