"""The client side of the HTTP/1.1 relay: one protocol object per client connection.

Requests are parsed with llhttp (httptools) and forwarded as their bytes arrive; the
response comes back through the UpstreamConnection that the request was sent on and is
written to the client as it arrives. One exchange runs at a time per client connection:
pipelined requests wait in order, with reading paused, until the one before is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
import struct
from collections import deque
from collections.abc import Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import httptools

from mcplb.proxy.cluster.pool import UpstreamConnection
from mcplb.proxy.observability import access_log
from mcplb.proxy.relay import framing, http11
from mcplb.proxy.relay.exchange import Exchange
from mcplb.proxy.relay.framing import SESSION_HEADER
from mcplb.proxy.relay.http11 import LAST_CHUNK, Headers, chunk
from mcplb.proxy.relay.request import Request
from mcplb.proxy.routing import steps as routing
from mcplb.proxy.routing.rate_limit import (
    MemoryRateLimiter,
    RateDecision,
    RedisRateLimiter,
    rate_limit_headers,
)
from mcplb.proxy.routing.retries import may_retry
from mcplb.proxy.sessions import affinity
from mcplb.proxy.sessions.tokens import TokenCodec

if TYPE_CHECKING:
    from mcplb.proxy.cluster.backends import Backend
    from mcplb.proxy.server.runtime import Runtime

log = logging.getLogger("mcplb.relay")


# Request body bytes kept per request while no connection is ready (or while queued
# behind a pipelined request); past this, reading from the client pauses.
BODY_BUFFER_LIMIT = 256 * 1024
# JSON-RPC bodies up to this size are read for their method (metrics by MCP method).
SNIFF_LIMIT = 16 * 1024
# After an error answer, input is discarded this long before the socket closes.
LINGER_SECONDS = 2.0
# Request body bytes kept for a replay when a reused connection turns out closed.
REPLAY_LIMIT = 64 * 1024
# limits.min_body_rate is judged once a body has been arriving this long (seconds during
# which the proxy was not itself holding the client back).
BODY_RATE_GRACE = 5.0

# Reasons to stop reading from the client; reading resumes when none is left.
_PAUSE_PIPELINE = 1
_PAUSE_UPSTREAM_FULL = 2
_PAUSE_BUFFER_FULL = 4

# Reasons to stop reading from the backend.
_UP_PAUSE_CLIENT_FULL = 1
_UP_PAUSE_HOLD = 2

# What the connection is waiting for; the timeout sweep reads it.
IDLE, HEAD, ROUTING, WAIT_RESPONSE, STREAMING, TUNNEL, CLOSED = range(7)


class _RequestRejected(Exception):
    """Raised inside parser callbacks after an error answer was sent."""


class ClientConnection(asyncio.Protocol):
    """Relays requests from one client connection to the backends."""

    def __init__(self, runtime: Runtime, connections: set[ClientConnection]) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self.connections = connections
        self.sticky = runtime.config.sticky.mcp_sessions
        self.max_header_bytes = runtime.config.limits.max_header_bytes
        self.max_body_bytes = runtime.config.limits.max_body_bytes
        self.loop = asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.client_ip = ""
        self.client_ip_bytes = b""
        self.state = IDLE
        self.requests_seen = 0
        # Answer the current request, then close (shutdown; from the start during its delay).
        self.closing = runtime.stopping
        self.reading: Request | None = None  # the request the parser is filling
        self.current: Request | None = None  # the request being answered
        self.queue: deque[Request] = deque()
        self.head_size = 0  # bytes of the request line and headers parsed so far
        self.head_bytes = 0  # bytes received since the last request head completed
        self.read_pauses = 0
        self.paused_at = 0.0  # when reading from the client last paused
        self.up_pauses = 0
        self.write_paused = False
        self.upgrade_leftover = b""
        self.ex = Exchange()  # the current request's state; a new one per request
        self.forwarded_proto = b"http"
        cookie = runtime.config.sticky.cookie
        self.cookie_name = b"" if cookie is None else cookie.name.encode("latin-1")
        self.stats = runtime.stats
        self.access_log = access_log.for_config(runtime.config.log)
        self.out: list[bytes] = []  # response bytes not yet written (see flush)
        self.feeding = False  # inside data_received: upstream writes wait for its end
        # timeout sweep marks
        self.active = False
        self.mark_state = IDLE
        self.mark: tuple[int, int] | None = None
        self.mark_time = 0.0

    # -- asyncio callbacks: client side ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else "unix"
        self.client_ip_bytes = self.client_ip.encode()
        if transport.get_extra_info("ssl_object") is not None:
            self.forwarded_proto = b"https"
        self.mark_time = self.loop.time()
        self.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.active = True
        if self.state == TUNNEL:
            if self.ex.upstream is not None:
                self.ex.upstream.send(data)
            return
        parser = self.parser
        if self.current is None:
            self.head_bytes += len(data)
        if parser is None:
            if self.current is not None and self.current.upgrade:
                self.upgrade_leftover += data  # early bytes of a protocol being switched to
                if len(self.upgrade_leftover) > BODY_BUFFER_LIMIT:
                    self._pause_reading(_PAUSE_BUFFER_FULL)  # until the switch is answered
            return
        self.feeding = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.parser = None
            self.upgrade_leftover = data[exc.args[0] :]
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _RequestRejected):
                return  # already answered
            log.exception("relay error")
            self.reject(500, "internal_error", "internal proxy error")
        except httptools.HttpParserError as exc:
            last = self.queue[-1] if self.queue else self.current
            if self.reading is None and last is not None and last.complete and not last.keep_alive:
                # Bytes after a request with Connection: close (llhttp refuses them): that
                # request is answered, then the connection closes; the rest is ignored.
                self.parser = None
                return
            self.reject(400, "bad_request", f"malformed request: {exc}")
        else:
            # A head still incomplete after this many bytes is too large, even if no
            # header in it has ended yet.
            if self.current is None and self.head_bytes > self.max_header_bytes:
                self.reject(431, "headers_too_large", "request head exceeds max_header_bytes")
        finally:
            self.feeding = False
            if self.ex.up_out:
                self._flush_up()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.access_log and self.state != CLOSED:
            # Not closed by us: the client left. Its requests are logged all the same.
            for request in (self.current, *self.queue):
                if request is not None and not request.logged:
                    self._log_access(request, client_left=True)
        self.state = CLOSED
        self.parser = None
        self.connections.discard(self)
        self._leave_queue()
        if self.ex.task is not None:
            self.ex.task.cancel()
            self.ex.task = None
        upstream = self.ex.upstream
        if upstream is not None or self.ex.backend is not None:
            # The client left mid-exchange: the connection is in an unknown state.
            self._end_exchange()
            if upstream is not None:
                upstream.abort()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._pause_upstream(_UP_PAUSE_CLIENT_FULL)

    def resume_writing(self) -> None:
        self.write_paused = False
        self._resume_upstream(_UP_PAUSE_CLIENT_FULL)

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.reading = Request()
        self.head_size = 0
        self.requests_seen += 1
        if self.current is None:
            self.state = HEAD
        else:
            # A pipelined request: read no further until the one before is answered, so
            # its head cannot grow unchecked (at most one read's worth is parsed now).
            self._pause_reading(_PAUSE_PIPELINE)

    def on_url(self, url: bytes) -> None:
        assert self.reading is not None
        self.head_size += len(url)
        if self.head_size > self.max_header_bytes:
            self.reject(431, "headers_too_large", "request head exceeds max_header_bytes")
            raise _RequestRejected
        self.reading.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.reading
        assert request is not None
        if request.method:
            return  # a trailer field of a chunked body: never a header of the request
        self.head_size += len(name) + len(value) + 4
        if self.head_size > self.max_header_bytes:
            self.reject(431, "headers_too_large", "request head exceeds max_header_bytes")
            raise _RequestRejected
        name = name.lower()
        request.headers.append((name, value))
        if name == b"host":
            if request.host is not None:
                request.duplicate = name
            request.host = value
        elif name == b"connection":
            request.connection = True
        elif name == b"x-request-id":
            request.request_id = value
        elif name == SESSION_HEADER:
            # The backend would read the first of two, a router the last: one per request.
            if request.session_id is not None:
                request.duplicate = name
            if self.sticky:
                request.session_id = value.decode("latin-1")
        elif name == b"content-length":
            request.content_length = int(value)
        elif name == b"transfer-encoding":
            request.chunked = value.lower().rstrip().endswith(b"chunked")
        elif name == b"accept":
            request.wants_stream = b"text/event-stream" in value

    def on_headers_complete(self) -> None:
        request = self.reading
        parser = self.parser
        assert request is not None and parser is not None
        request.method = parser.get_method()
        request.version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        request.upgrade = parser.should_upgrade()
        if request.wants_stream and request.method != b"GET":
            request.wants_stream = False  # a POST may answer with a stream; it starts as a request
        self.head_bytes = 0
        refusal = http11.head_refusal(request.version, request.host, request.duplicate)
        if refusal is None and request.connection:
            refusal = http11.connection_refusal(request.headers)
        if refusal is None and request.upgrade and (request.chunked or request.content_length):
            # Its body would be taken for the first bytes of the new protocol, or (refused
            # switch) for the next request on the backend connection.
            refusal = "an Upgrade request must not have a body"
        if refusal is not None:
            self._refuse_head(request, refusal)
            raise _RequestRejected
        if request.method == b"POST" and (request.content_length or 0) <= SNIFF_LIMIT:
            self._count_mcp(request)
        if self.current is None:
            self.current = request
            self._start(request)
        else:
            self.queue.append(request)
            self._pause_reading(_PAUSE_PIPELINE)

    def on_body(self, data: bytes) -> None:
        request = self.reading
        assert request is not None
        request.body_size += len(data)
        if self.max_body_bytes and request.body_size > self.max_body_bytes:
            self.reject(413, "body_too_large", "request body exceeds max_body_bytes")
            raise _RequestRejected
        if request.sniff is not None:
            if request.body_size > SNIFF_LIMIT:
                request.sniff = None  # too large to be a JSON-RPC message worth reading
            else:
                request.sniff.append(data)
        self._forward_body(request, chunk(data) if request.chunked else data)

    def on_message_complete(self) -> None:
        request = self.reading
        assert request is not None
        request.complete = True
        self.reading = None
        if request.sniff is not None:
            method, tool = _jsonrpc_method(b"".join(request.sniff))
            request.sniff = None
            if method:
                self.stats.count_mcp(method, tool)
        if request.chunked:
            self._forward_body(request, LAST_CHUNK)

    def _refuse_head(self, request: Request, reason: str) -> None:
        """400 and close for a head whose framing or routing fields the backend could read
        otherwise than the proxy. Nothing after it is parsed: the connection ends there."""
        if self.current is None:
            self.current = request
            self.reject(400, "bad_request", reason)
            return
        # Pipelined behind an exchange in progress: answered in its turn, after that one.
        request.refusal = reason
        request.complete = True
        self.reading = None
        self.parser = None
        self.queue.append(request)
        self._pause_reading(_PAUSE_PIPELINE)

    # -- observing ----------------------------------------------------------------------

    def _count_mcp(self, request: Request) -> None:
        """Count an MCP POST by method and tool: from the 2026-07-28 routing headers when
        present, else from its (small) JSON-RPC body once it is complete."""
        method = tool = None
        json_body = False
        for name, value in request.headers:
            if name == b"mcp-method":
                method = value
            elif name == b"mcp-name":
                tool = value
            elif name == b"content-type":
                json_body = value.startswith(b"application/json")
        if method is not None:
            self.stats.count_mcp(method.decode("latin-1"), (tool or b"").decode("latin-1"))
        elif json_body:
            request.sniff = []

    def _log_access(self, request: Request, client_left: bool = False) -> None:
        """``client_left``: the client closed before the answer ended; before it began,
        the status is 499 (as nginx logs it)."""
        assert self.access_log is not None
        request.logged = True
        session = request.session_id
        # Never the raw id: it is a bearer credential for the session.
        hashed = hashlib.sha256(session.encode()).hexdigest()[:12] if session else "-"
        if request is self.current:
            status = self.ex.status if self.ex.response_started or not client_left else 499
            duration = round(self.loop.time() - self.ex.started, 6)
            backend, bytes_out = self.ex.served_by or "-", self.ex.response_bytes
        else:  # pipelined behind the current one: never started
            status, duration, backend, bytes_out = 499, 0.0, "-", 0
        self.access_log.request(
            self.client_ip,
            request.method.decode("latin-1"),
            request.target.decode("latin-1"),
            request.version,
            status,
            backend,
            duration,
            request.body_size,
            bytes_out,
            hashed,
            (request.request_id or b"-").decode("latin-1"),
            client_left,
        )

    # -- routing ------------------------------------------------------------------------

    def _start(self, request: Request) -> None:
        """Route the current request: session binding first, then the strategy."""
        self.state = ROUTING
        # self.ex is fresh: made when the connection opened or the previous answer ended.
        self.ex.started = self.loop.time()
        self.runtime.retry_budget.record_request(self.ex.started)
        if request.refusal is not None:
            self.reject(400, "bad_request", request.refusal)
            return
        if not self.runtime.host_policy.allows(request.host):
            # DNS-rebinding protection: a name this listener does not serve never reaches a
            # backend (which, sent its own host:port, could not tell).
            self._answer_error(421, "misdirected_request", "this host name is not served here")
            return
        if (
            self.max_body_bytes
            and request.content_length is not None
            and request.content_length > self.max_body_bytes
        ):
            self.reject(413, "body_too_large", "request body exceeds max_body_bytes")
            return
        if request.method == b"CONNECT":
            # A reverse proxy tunnels nowhere: only configured backends are ever reached.
            self._answer_error(405, "method_not_allowed", "CONNECT is not supported")
            return
        limiter = self.runtime.rate_limiter
        if limiter is not None:
            key = self._rate_key(request)
            if isinstance(limiter, MemoryRateLimiter):
                decision = limiter.take(key, self.ex.started)
                if not decision.allowed:
                    self._answer_rate_limited(decision)
                    return
            else:
                self.ex.task = self._spawn(self._route_after_rate_limit(request, limiter, key))
                return
        self._route(request)

    def _route(self, request: Request) -> None:
        if affinity.repeated_session_parameter(request.target):
            # A router reading the first and a backend reading the last would disagree.
            self._answer_error(400, "bad_request", "more than one session id in the query")
            return
        guessed = False
        if self.sticky and request.session_id is None and b"?" in request.target:
            # Legacy SSE: the session is in the query, under whatever key the server chose.
            found = affinity.query_session(request.target)
            if found is not None:
                request.session_id, named = found
                request.session_in_query = True
                guessed = not named
        if request.session_id is not None:
            codec = self.runtime.session_codec
            if codec is None:
                self.ex.task = self._spawn(self._route_session(request, guessed))
                return
            opened = codec.open(request.session_id)
            if opened is not None or not guessed:
                self._route_signed_session(request, opened)
                return
            self._not_a_session(request)
        self._route_new(request)

    def _not_a_session(self, request: Request) -> None:
        """A guessed query session id that is none: route the request as any other."""
        request.session_id = None
        request.session_in_query = False

    def _route_new(self, request: Request) -> None:
        """A request that names no session: cookie pin or strategy."""
        backend = routing.pinned(self.runtime, request, self.cookie_name) or self._pick(request)
        if backend is None:
            backends = self.runtime.backends.backends
            if request.wants_stream and any(b.available for b in backends):
                self._answer_too_many_streams()  # the backends that are up are at their cap
            elif not request.wants_stream and self.runtime.admission.any_full(backends):
                self._wait_for_slot(request, None)
            else:
                self._answer_error(503, "no_backend", "no backend available", retry_after=True)
            return
        self._dispatch(request, backend)

    # -- rate limiting ------------------------------------------------------------------

    def _rate_key(self, request: Request) -> str:
        """The client's bucket: the configured header's value, else its address."""
        rate_limit = self.runtime.config.rate_limit
        header = None if rate_limit is None else rate_limit.header
        if header is not None:
            wanted = header.encode("latin-1")
            for name, value in request.headers:
                if name == wanted:
                    return "h:" + value.decode("latin-1")
        forwarded = self.runtime.rate_limit_client
        if forwarded is not None:
            return "a:" + forwarded.client(self.client_ip, request.headers)
        return "a:" + self.client_ip

    async def _route_after_rate_limit(
        self, request: Request, limiter: RedisRateLimiter, key: str
    ) -> None:
        decision = await limiter.take(key)
        self.ex.task = None
        if request is not self.current or self.state == CLOSED:
            return
        if decision.allowed:
            self._route(request)
        else:
            self._answer_rate_limited(decision)

    def _answer_rate_limited(self, decision: RateDecision) -> None:
        rate_limit = self.runtime.config.rate_limit
        assert rate_limit is not None
        self.stats.rejected["rate_limited"] += 1
        self._answer_error(
            429,
            "rate_limited",
            "too many requests from this client; retry later",
            headers=rate_limit_headers(rate_limit, decision),
        )

    # -- admission: request slots and the queue ----------------------------------------

    def _wait_for_slot(self, request: Request, target: Backend | None) -> None:
        """Queue until a slot frees up (on ``target``, or anywhere), or 503 after the
        queue timeout; 503 at once when the queue is full."""
        admission = self.runtime.admission
        if not admission.enqueue(self):
            self.stats.rejected["queue_full"] += 1
            self._answer_error(503, "overloaded", "too many requests queued", retry_after=True)
            return
        self.stats.queued += 1
        self.ex.waiting_for = target
        self.ex.queued_at = self.loop.time()
        self.ex.queue_timer = self.loop.call_later(admission.queue_timeout, self._queue_timed_out)

    def _answer_too_many_streams(self) -> None:
        self.stats.rejected["max_streams"] += 1
        self._answer_error(503, "too_many_streams", "event stream limit reached", retry_after=True)

    def _leave_queue(self) -> None:
        if self.ex.queue_timer is not None:
            self.ex.queue_timer.cancel()
            self.ex.queue_timer = None
            self.runtime.admission.leave(self)
            self.stats.queue_wait.observe(self.loop.time() - self.ex.queued_at)

    def _queue_timed_out(self) -> None:
        self.ex.queue_timer = None
        self.runtime.admission.leave(self)
        self.stats.queue_wait.observe(self.loop.time() - self.ex.queued_at)
        self.stats.rejected["queue_timeout"] += 1
        self._answer_error(
            503, "overloaded", "no backend slot freed up within queue_timeout", retry_after=True
        )

    @property
    def waiting_for(self) -> Backend | None:
        """For Admission (a Waiter): the backend this queued request must go to."""
        return self.ex.waiting_for

    def retry_admission(self) -> bool:
        """Called by Admission when a slot frees up while this connection waits."""
        request = self.current
        admission = self.runtime.admission
        if request is None or self.state == CLOSED:
            self._leave_queue()
            return False
        target = self.ex.waiting_for
        if target is not None:
            if not admission.can_hold(target):
                return False
        elif admission.worker_full():
            return False
        else:
            target = self._pick(request)
            if target is None:
                return False
        self._leave_queue()
        # The slot is taken now, so the waker counts it; the request is sent on the next
        # loop turn, not inside the teardown of the connection whose release woke it.
        self.runtime.admission.hold(target, False)
        self.ex.backend = target
        self.ex.slot_stream = False
        self.loop.call_soon(self._send_admitted, request, target)
        return True

    def _send_admitted(self, request: Request, backend: Backend) -> None:
        if request is not self.current or self.state == CLOSED or self.ex.backend is not backend:
            return  # the client left meanwhile, and its teardown gave the slot back
        self._send_to(request, backend)

    # -- retries ------------------------------------------------------------------------

    def _retry_target(
        self, request: Request, condition: str, sent: bool, same: Backend | None = None
    ) -> Backend | None:
        """Another backend (or ``same``) to send a failed request to, if the retry policy
        and the budget allow it (``sent``: the request may have reached the backend)."""
        config = self.runtime.config.retries
        if self.ex.retries >= config.attempts or not may_retry(
            config, condition, request.method, sent
        ):
            return None
        backend = same or self._pick(request)
        if backend is None:
            return None
        if not self.runtime.retry_budget.try_retry(self.loop.time()):
            self.stats.retry_budget_exhausted += 1
            log.warning("retry budget exhausted: not retrying %s", request.method.decode())
            return None
        self.ex.retries += 1
        self.stats.backends[backend.name].retries += 1
        return backend

    def _resend(self, request: Request, backend: Backend, fresh: bool = False) -> None:
        """Send ``request`` again from its replay buffer (``fresh``: on a new connection)."""
        assert request.replay is not None
        request.body = request.replay + request.body
        request.buffered = sum(map(len, request.body))
        self._dispatch(request, backend, fresh)

    def _pick(self, request: Request) -> Backend | None:
        return routing.pick(self.runtime, request, self.client_ip, self.ex.attempted)

    def _route_signed_session(self, request: Request, opened: tuple[str, str] | None) -> None:
        """A signed id names its backend: no lookup. Tampered or foreign ids open to None."""
        backend = routing.session_backend(self.runtime, opened[0] if opened else None)
        if opened is None or backend is None:
            self._answer_session_not_found()
            return
        request.upstream_session_id = opened[1]
        self.ex.bound_backend = backend.name
        self._dispatch(request, backend)

    async def _route_session(self, request: Request, guessed: bool = False) -> None:
        session_id = request.session_id
        assert session_id is not None
        name = await self.runtime.sessions.get(session_id)
        self.ex.task = None
        if request is not self.current or self.state == CLOSED:
            return
        if name is None and guessed:
            self._not_a_session(request)
            self._route_new(request)
            return
        backend = routing.session_backend(self.runtime, name)
        if backend is None:
            # Keep the binding: when the backend comes back, its live sessions route again.
            self._answer_session_not_found()
            return
        self.ex.bound_backend = backend.name
        self._dispatch(request, backend)

    def _dispatch(self, request: Request, backend: Backend, fresh: bool = False) -> None:
        """Take a slot on ``backend`` (or queue for one), then a connection to it (a new
        one if ``fresh``)."""
        admission = self.runtime.admission
        stream = request.wants_stream
        if stream:
            if admission.streams_full(backend):
                self._answer_too_many_streams()
                return
        elif admission.limited and not admission.can_hold(backend):
            self._wait_for_slot(request, backend if self.ex.bound_backend is not None else None)
            return
        admission.hold(backend, stream)
        self.ex.backend = backend
        self.ex.slot_stream = stream
        self._send_to(request, backend, fresh)

    def _send_to(self, request: Request, backend: Backend, fresh: bool = False) -> None:
        """With a slot held on ``backend``: a pooled connection (unless ``fresh``), else
        a new one."""
        conn = None if fresh else self.runtime.pool(backend).take()
        if conn is not None:
            self._attach(request, backend, conn)
        else:
            self.ex.task = self._spawn(self._connect(request, backend))

    async def _connect(self, request: Request, backend: Backend) -> None:
        """Open a connection; while nothing was sent, failures may move to another backend."""
        try:
            conn = await self.runtime.pool(backend).connect()
        except (OSError, TimeoutError) as exc:
            self.ex.task = None
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            log.warning("connect to backend %s failed: %s", backend.name, reason)
            self.runtime.health.connect_failed(backend, reason)
            self.stats.backends[backend.name].connect_failures += 1
            self._release_slot()
            if request is not self.current or self.state == CLOSED:
                return  # the client is gone
            if self.ex.bound_backend is not None:
                # Its sessions died with it; the client must initialize elsewhere.
                if request.session_id is not None and self.runtime.session_codec is None:
                    await self._forget(request.session_id)
                self._answer_session_not_found()
                return
            self.ex.attempted.add(backend.name)
            retry = self._retry_target(request, "connect_failure", sent=False)
            if retry is None:
                self._answer_error(502, "bad_gateway", "no backend could be reached")
            else:
                self._dispatch(request, retry)
            return
        self.ex.task = None
        if request is not self.current or self.state == CLOSED:
            conn.pool.release(conn, self.loop.time())
            return
        self._attach(request, backend, conn)

    def _attach(self, request: Request, backend: Backend, conn: UpstreamConnection) -> None:
        """Send the request head (and any buffered body) on ``conn``."""
        self.ex.backend = backend
        self.ex.served_by = backend.name
        self.ex.upstream = conn
        conn.sink = self
        conn.requests += 1
        conn.expect_no_body = request.method == b"HEAD"
        self.state = WAIT_RESPONSE
        self.mark = None
        head = self._request_head(request, backend)
        body = b""
        if request.body:
            body = b"".join(request.body)
            request.body.clear()
            request.buffered = 0
            self._resume_reading(_PAUSE_BUFFER_FULL)
        replay = request.replay
        if replay is not None:
            replay.clear()
            if body:
                replay.append(body)
            if len(body) > REPLAY_LIMIT:
                request.replay = None
        self._send_up(head + body if body else head)
        if self.write_paused:
            self._pause_upstream(_UP_PAUSE_CLIENT_FULL)

    def _request_head(self, request: Request, backend: Backend) -> bytes:
        request_id = None
        if request.request_id is None:
            request.request_id = request_id = self.runtime.next_request_id()
        return framing.request_head(
            request,
            path_prefix=backend.path_prefix,
            host_header=backend.host_header,
            preserve_host=self.config.preserve_host,
            client_ip=self.client_ip_bytes,
            proto=self.forwarded_proto,
            request_id=request_id,
        )

    def _forward_body(self, request: Request, data: bytes) -> None:
        upstream = self.ex.upstream
        if request is self.current and upstream is not None:
            self._send_up(data)
            replay = request.replay
            if replay is not None and not upstream.received:
                replay.append(data)
                if sum(map(len, replay)) > REPLAY_LIMIT:
                    request.replay = None
            return
        request.body.append(data)
        request.buffered += len(data)
        if request.buffered > BODY_BUFFER_LIMIT:
            self._pause_reading(_PAUSE_BUFFER_FULL)

    # -- upstream callbacks (ResponseSink) ----------------------------------------------

    def upstream_head(self, status: int, reason: bytes, headers: Headers, keep_alive: bool) -> None:
        request = self.current
        assert request is not None and self.transport is not None
        self.active = True
        if status < 200 and status != 101:
            if request.version != "1.0":
                hop = http11.connection_tokens(headers)
                self.transport.write(
                    http11.status_line(status, reason)
                    + http11.serialize_headers(http11.end_to_end(headers, hop))
                    + b"\r\n"
                )
            return
        if 502 <= status <= 504 and self._retry_after_status(request, status):
            return
        self.state = STREAMING
        self.ex.response_started = True
        self.ex.upstream_keep_alive = keep_alive
        self.ex.status = status
        if self.ex.backend is not None:
            self.runtime.health.responded(self.ex.backend, status)
            backend_stats = self.stats.backends[self.ex.backend.name]
            backend_stats.requests[(request.method, status // 100)] += 1
            backend_stats.first_byte.observe(self.loop.time() - self.ex.started)
        head = framing.response_head(
            status,
            headers,
            method=request.method,
            version=request.version,
            upgrade=request.upgrade,
            keep_alive=request.keep_alive and not self.closing and self.parser is not None,
        )
        self.ex.framing = head.framing
        self.ex.client_keep_alive = head.keep_alive
        self.ex.upstream_until_close = head.until_close
        out = head.headers
        session_id = head.session_id
        content_type = head.content_type
        backend = self.ex.backend
        if (
            content_type.startswith(b"text/event-stream")
            and backend is not None
            and not self.ex.slot_stream
        ):
            self.ex.slot_stream = True
            self.runtime.admission.became_stream(backend)
        if self.sticky and backend is not None:
            if session_id is not None:
                out = self._session_out(out, request, session_id.decode("latin-1"), status, backend)
            if request.session_id is None:
                if (
                    session_id is None
                    and request.method == b"GET"
                    and content_type.startswith(b"text/event-stream")
                ):
                    codec = self.runtime.session_codec
                    self.ex.scanner = affinity.EndpointScanner(
                        None if codec is None else partial(_seal_or_keep, codec, backend.name)
                    )
            elif status == 404 or (request.method == b"DELETE" and 200 <= status < 300):
                self._end_session(request.session_id)
        if self.runtime.cookie_codec is not None and backend is not None:
            set_cookie = self._cookie_for(request, backend)
            if set_cookie is not None:
                out.append((b"set-cookie", set_cookie))
        self._send(http11.status_line(status, reason) + http11.serialize_headers(out) + b"\r\n")

    def upstream_body(self, data: bytes) -> None:
        self.active = True
        self.ex.response_bytes += len(data)
        scanner = self.ex.scanner
        if scanner is not None:
            data = scanner.feed(data)
            if scanner.done:
                self.ex.scanner = None
                if scanner.session_id is not None and self.ex.backend is not None:
                    self._learn_legacy_session(scanner.session_id, self.ex.backend)
            if not data:
                return
        if self.ex.framing == framing.CHUNKED:
            self._send(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self._send(data)

    def upstream_complete(self) -> None:
        if self.ex.framing == framing.TUNNEL:
            return
        if self.ex.holding:
            self.ex.complete_pending = True
            return
        if self.ex.scanner is not None:
            rest, self.ex.scanner = self.ex.scanner.flush(), None
            if rest:
                self._send(chunk(rest) if self.ex.framing == framing.CHUNKED else rest)
        if self.ex.framing == framing.CHUNKED:
            self._send(LAST_CHUNK)
        self.flush()
        request = self.current
        assert request is not None
        upstream = self.ex.upstream
        reusable = self.ex.upstream_keep_alive and http11.fully_sent(
            request.complete, request.upgrade, request.content_length, request.body_size
        )
        if upstream is not None:
            # Pooled first: a request woken by the slot this frees can take the connection.
            self._detach_upstream(upstream)
            if reusable:
                upstream.pool.release(upstream, self.loop.time())
            else:
                upstream.close()
        self._end_exchange()
        self._next_request(request)

    def upstream_tunnel(self, data: bytes) -> None:
        if self.state != TUNNEL:
            upstream = self.ex.upstream
            if self.ex.framing != framing.TUNNEL or upstream is None:
                self._close()
                return
            self.state = TUNNEL
            if self.upgrade_leftover:
                upstream.send(self.upgrade_leftover)
                self.upgrade_leftover = b""
            self._resume_reading(_PAUSE_BUFFER_FULL)
        self.active = True
        if data and self.transport is not None:
            self.transport.write(data)

    def upstream_lost(self, error: BaseException | None) -> None:
        upstream = self.ex.upstream
        request = self.current
        if upstream is None or request is None:
            return
        if self.state == TUNNEL:
            self._end_exchange()
            self._close()
            return
        if not self.ex.response_started:
            backend = self.ex.backend
            self._end_exchange()
            retry = None
            if (
                not upstream.received
                and request.replay is not None
                and backend is not None
                and self.state != CLOSED
            ):
                retry = self._retry_after_reset(request, backend, reused=upstream.requests > 1)
            if retry is not None:
                # Not another pooled connection to the same backend: it may be as stale.
                self._resend(request, retry, fresh=retry is backend)
                return
            if isinstance(error, httptools.HttpParserError):
                self._answer_error(502, "bad_gateway", "backend sent an invalid response")
            else:
                self._answer_error(502, "bad_gateway", "backend closed the connection")
            return
        if self.ex.upstream_until_close:
            self.ex.upstream_keep_alive = False
            self.upstream_complete()
            return
        # Mid-body: the client must see the response as truncated.
        self._end_exchange()
        self._close()

    def _retry_after_reset(
        self, request: Request, backend: Backend, reused: bool
    ) -> Backend | None:
        """Where to resend a request whose connection died before any response byte."""
        if reused:
            # Most likely the backend closed the idle pooled connection as we wrote:
            # a fresh connection to the same backend.
            log.debug("pooled connection to %s was closed; retrying", backend.name)
            return self._retry_target(request, "reset", sent=True, same=backend)
        if self.ex.bound_backend is not None:
            return None
        self.ex.attempted.add(backend.name)
        return self._retry_target(request, "reset", sent=True)

    def _retry_after_status(self, request: Request, status: int) -> bool:
        """Resend a request the backend answered 502/503/504, if configured; True if so."""
        backend = self.ex.backend
        upstream = self.ex.upstream
        if (
            backend is None
            or upstream is None
            or self.ex.bound_backend is not None
            or not request.complete
            or request.replay is None
            or str(status) not in self.runtime.config.retries.on
        ):
            return False
        self.ex.attempted.add(backend.name)
        retry = self._retry_target(request, str(status), sent=True)
        if retry is None:
            return False
        self.runtime.health.responded(backend, status)
        self.stats.backends[backend.name].requests[(request.method, status // 100)] += 1
        self._detach_upstream(upstream)
        upstream.abort()  # its body is not wanted: not worth reading to reuse the connection
        self._end_exchange()
        self._resend(request, retry)
        return True

    def upstream_write_paused(self, paused: bool) -> None:
        if paused:
            self._pause_reading(_PAUSE_UPSTREAM_FULL)
        else:
            self._resume_reading(_PAUSE_UPSTREAM_FULL)

    # -- sessions -----------------------------------------------------------------------

    def _hold_for(self, job: Coroutine[Any, Any, None]) -> None:
        """Hold the response while ``job`` (a store update) runs, then release it."""
        self.ex.holding = True
        self._pause_upstream(_UP_PAUSE_HOLD)
        self._spawn(self._release_after(job))

    async def _release_after(self, job: Coroutine[Any, Any, None]) -> None:
        try:
            await job
        except Exception:
            log.exception("session store update failed")
        self.ex.holding = False
        self.flush()
        self._resume_upstream(_UP_PAUSE_HOLD)
        if self.ex.complete_pending:
            self.ex.complete_pending = False
            self.upstream_complete()

    def _learn_session(self, out: Headers, session_id: str, backend: Backend) -> Headers:
        """A backend minted a session: sign it into the id the client sees, or store it."""
        codec = self.runtime.session_codec
        if codec is None:
            self._hold_for(self._bind_session(session_id, backend))
            return out
        try:
            token = codec.seal(backend.name, session_id).encode("latin-1")
        except ValueError:  # not visible ASCII, or too long to carry: the client gets 404s
            log.warning("backend %s minted a session id that cannot be signed", backend.name)
            return out
        self.runtime.session_bound(backend.name)
        return [(n, token if n == SESSION_HEADER else v) for n, v in out]

    def _session_out(
        self, out: Headers, request: Request, session_id: str, status: int, backend: Backend
    ) -> Headers:
        """The response's Mcp-Session-Id as the client must see it, on every response: with
        signed ids, never the backend's raw id (TypeScript clients adopt the id of every
        response, and TypeScript servers repeat it on every response)."""
        codec = self.runtime.session_codec
        ok = 200 <= status < 300
        if request.session_id is None:
            if ok:
                return self._learn_session(out, session_id, backend)
            if codec is None:
                return out
            # The SDK's quirk: a fresh, unused id on a 400. Sealed all the same.
            token = _seal_or_keep(codec, backend.name, session_id)
        elif codec is None:
            if ok and session_id != request.session_id and request.method != b"DELETE":
                # The backend replaced the session with a new one: bind that one too.
                self._hold_for(self._bind_session(session_id, backend))
            return out
        elif session_id == request.upstream_session_id:
            token = request.session_id  # the same session: the client's own token, no HMAC
        else:
            token = _seal_or_keep(codec, backend.name, session_id)  # minted anew: seal it
            if ok:
                self.runtime.session_bound(backend.name)
        value = token.encode("latin-1")
        return [(n, value if n == SESSION_HEADER else v) for n, v in out]

    def _learn_legacy_session(self, session_id: str, backend: Backend) -> None:
        if self.runtime.session_codec is None:
            self._hold_for(self._bind_session(session_id, backend))
            self.ex.legacy_session = session_id
        else:
            self.runtime.session_bound(backend.name)

    def _end_session(self, session_id: str) -> None:
        """The backend ended (DELETE) or does not know (404) a session."""
        if self.runtime.session_codec is None:
            self._hold_for(self._forget(session_id))
        elif self.ex.bound_backend is not None:
            self.runtime.session_ended(self.ex.bound_backend)

    def _cookie_for(self, request: Request, backend: Backend) -> bytes | None:
        """A Set-Cookie pinning the client to ``backend``, unless its cookie already does."""
        codec = self.runtime.cookie_codec
        cookie = self.config.sticky.cookie
        assert codec is not None and cookie is not None
        value = affinity.cookie_value(request.headers, self.cookie_name)
        opened = codec.open(value) if value else None
        if opened is not None and opened[0] == backend.name:
            return None
        return affinity.set_cookie(cookie, codec.seal(backend.name, ""))

    async def _bind_session(self, session_id: str, backend: Backend) -> None:
        previous = await self.runtime.sessions.bind(session_id, backend.name)
        if previous is not None:
            self.runtime.session_ended(previous)
        self.runtime.session_bound(backend.name)

    async def _forget(self, session_id: str) -> None:
        name = await self.runtime.sessions.forget(session_id)
        if name is not None:
            self.runtime.session_ended(name)

    # -- answers and teardown -----------------------------------------------------------

    def _spawn(self, job: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``job`` as a task whose unexpected failure ends this connection, loudly."""
        task = self.loop.create_task(job)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("relay task failed", exc_info=error)
            self._answer_error(500, "internal_error", "internal proxy error")

    def _send(self, data: bytes) -> None:
        self.out.append(data)

    def _send_up(self, data: bytes) -> None:
        """Write towards the backend; what one client read produces (a request head and
        the body that came with it) goes out in one write."""
        if self.feeding:
            self.ex.up_out.append(data)
        elif self.ex.upstream is not None:
            self.ex.upstream.send(data)

    def _flush_up(self) -> None:
        out, self.ex.up_out = self.ex.up_out, []
        if self.ex.upstream is not None:
            self.ex.upstream.send(out[0] if len(out) == 1 else b"".join(out))

    def flush(self) -> None:
        """Write what the last upstream read produced in one call (one syscall, not one
        per piece of the response)."""
        out = self.out
        if not out or self.ex.holding:
            return
        self.out = []
        if self.transport is not None and self.state != CLOSED:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _answer_session_not_found(self) -> None:
        self.stats.session_not_found += 1
        self.ex.status = 404
        request = self.current
        keep = request is not None and request.complete and request.keep_alive
        self._write_answer(
            http11.json_response(404, http11.SESSION_NOT_FOUND, close=not keep), keep
        )

    def _answer_error(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: bool = False,
        headers: Headers | None = None,
    ) -> None:
        """Answer the current request with an error (only if no response byte was sent)."""
        request = self.current
        if self.ex.response_started or request is None:
            self._close()
            return
        keep = request.complete and request.keep_alive and not self.closing
        extra = [(b"retry-after", b"1")] if retry_after else []
        if headers:
            extra += headers
        self.ex.status = status
        self.stats.proxy_errors[str(status)] += 1
        if status >= 500:
            log.warning("%d %s: %s %s", status, code, request.method.decode(), message)
        self._write_answer(
            http11.error_response(status, code, message, close=not keep, extra_headers=extra),
            keep,
        )

    def _write_answer(self, data: bytes, keep_alive: bool) -> None:
        request = self.current
        if self.transport is None or request is None or self.state == CLOSED:
            return
        self.ex.response_started = True
        self.transport.write(data)
        if keep_alive:
            self._next_request(request)
        else:
            # Input may still be arriving (an upload answered early): close lingering, or
            # the unread bytes would reset the connection and lose the answer.
            self._close(linger=not request.complete)

    def reject(self, status: int, code: str, message: str) -> None:
        """Answer a request that could not be parsed or accepted, then close."""
        if self.state == CLOSED:
            return
        upstream = self.ex.upstream
        if upstream is not None:
            self._end_exchange()
            upstream.abort()
        lingering = False
        if not self.ex.response_started and self.transport is not None:
            self.transport.write(http11.error_response(status, code, message, close=True))
            self.ex.status = status
            self.stats.proxy_errors[str(status)] += 1
            lingering = True
        self._close(linger=lingering)

    def _next_request(self, finished: Request) -> None:
        """After an answer: close, start the next pipelined request, or wait for one."""
        if self.access_log and not finished.logged:
            self._log_access(finished)
        if self.ex.upstream is not None or self.ex.backend is not None:
            upstream = self.ex.upstream  # an error answer ended the exchange early
            self._end_exchange()
            if upstream is not None:
                upstream.abort()
        keep = (
            self.ex.client_keep_alive
            and finished.keep_alive
            and finished.complete
            and not self.closing
            and self.parser is not None
        )
        self.current = None
        self.ex = Exchange()  # the next request starts from a clean state
        if not keep:
            self._close(linger=not finished.complete)  # see _write_answer
            return
        if self.queue:
            request = self.queue.popleft()
            if not self.queue:
                self._resume_reading(_PAUSE_PIPELINE)
            self.current = request
            self._start(request)
        else:
            self._resume_reading(_PAUSE_PIPELINE)
            self.state = HEAD if self.reading is not None else IDLE
            self.mark = None

    def _release_slot(self) -> None:
        """Give back the slot of an exchange that never reached its backend."""
        backend = self.ex.backend
        if backend is not None:
            self.ex.backend = None
            self.runtime.admission.release(backend, self.ex.slot_stream)
            self.ex.slot_stream = False

    def _detach_upstream(self, upstream: UpstreamConnection) -> None:
        self.ex.upstream = None
        self.ex.up_out = []
        upstream.sink = None
        if self.up_pauses:
            self.up_pauses = 0
            upstream.resume_reading()

    def _end_exchange(self) -> None:
        """Detach from the upstream connection and free the slot held on the backend."""
        upstream = self.ex.upstream
        backend = self.ex.backend
        self.ex.upstream = None
        self.ex.backend = None
        if backend is not None:
            self.runtime.admission.release(backend, self.ex.slot_stream)
            backend_stats = self.stats.backends[backend.name]
            backend_stats.duration.observe(self.loop.time() - self.ex.started)
            backend_stats.bytes_out += self.ex.response_bytes
            if self.current is not None:
                backend_stats.bytes_in += self.current.body_size
        self.ex.slot_stream = False
        self.ex.scanner = None
        self.ex.up_out = []  # bytes for a connection that is being let go
        if self.ex.legacy_session is not None:
            # The legacy transport's session lives as long as its GET stream.
            self._spawn(self._forget(self.ex.legacy_session))
            self.ex.legacy_session = None
        if upstream is not None:
            self._detach_upstream(upstream)

    def _close(self, linger: bool = False) -> None:
        self.ex.holding = False
        self.flush()
        request = self.current
        if self.access_log and request is not None and not request.logged and self.ex.status:
            self._log_access(request)
        self.state = CLOSED
        self.parser = None
        self._leave_queue()
        upstream = self.ex.upstream
        if upstream is not None or self.ex.backend is not None:
            self._end_exchange()
            if upstream is not None:
                upstream.abort()
        if linger:
            self._linger_close()
        elif self.transport is not None:
            self.transport.close()

    def _reset(self) -> None:
        """Drop the connection at once: RST, nothing more sent, nothing kept in the kernel."""
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def _linger_close(self) -> None:
        """Close after an error answer without losing it: stop sending, discard what the
        client still sends for a moment (closing with unread input would reset the
        connection, and the client could lose the answer), then close (nginx's lingering
        close)."""
        transport = self.transport
        if transport is None:
            return
        with contextlib.suppress(RuntimeError, OSError):
            transport.write_eof()
        self._resume_reading(self.read_pauses)
        self.loop.call_later(LINGER_SECONDS, transport.close)

    def cut(self, reason: str) -> None:
        """End the current exchange now: 502 if nothing was answered yet, else close."""
        self._answer_error(502, "bad_gateway", reason)

    def shutdown(self, close_idle: bool = True) -> None:
        """Stop after the current exchange; close now if there is none (with
        ``close_idle``; else an idle connection gets one more answer, then closes)."""
        self.closing = True
        if close_idle and self.current is None and self.state in (IDLE, HEAD):
            self._close()

    # -- flow control -------------------------------------------------------------------

    def _pause_reading(self, reason: int) -> None:
        transport = self.transport
        if not self.read_pauses:
            self.paused_at = self.loop.time()
            if transport is not None and not transport.is_closing():
                transport.pause_reading()
        self.read_pauses |= reason

    def _resume_reading(self, reason: int) -> None:
        if not self.read_pauses & reason:
            return
        self.read_pauses &= ~reason
        if self.read_pauses:
            return
        self.ex.body_paused += self.loop.time() - self.paused_at
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _pause_upstream(self, reason: int) -> None:
        if not self.up_pauses and self.ex.upstream is not None:
            self.ex.upstream.pause_reading()
        self.up_pauses |= reason

    def _resume_upstream(self, reason: int) -> None:
        if not self.up_pauses & reason:
            return
        self.up_pauses &= ~reason
        if not self.up_pauses and self.ex.upstream is not None:
            self.ex.upstream.resume_reading()

    # -- timeouts -----------------------------------------------------------------------

    def check_timeouts(self, now: float) -> None:
        """Called by the server's sweep about twice a second."""
        state = self.state
        timeouts = self.runtime.config.timeouts
        uploading = (
            state == WAIT_RESPONSE and self.current is not None and not self.current.complete
        )
        if uploading:
            # Still receiving the request body: the client's pace, judged by the body
            # deadline, the minimum rate and the idle timeout below; the backend's
            # upstream_header clock starts once it has it all.
            if self._body_too_slow(now):
                return
            state = STREAMING
        if state in (HEAD, WAIT_RESPONSE) or (state == IDLE and self.requests_seen == 0):
            key = (state, self.requests_seen)
            if self.mark != key:
                self.mark = key
                self.mark_time = now
                return
            elapsed = now - self.mark_time
            if state == WAIT_RESPONSE:
                if elapsed > timeouts.upstream_header:
                    self._answer_timeout()
            elif elapsed > timeouts.header:
                if state == HEAD:
                    self.reject(408, "request_timeout", "request head not received in time")
                else:
                    self._close()  # not a byte sent: nothing to answer
            return
        if self.active:
            self.active = False
            self.mark_time = now
            self.mark = None
        elif now - self.mark_time > timeouts.idle and state != CLOSED:
            unsent = self.transport is not None and self.transport.get_write_buffer_size() > 0
            self._close()
            if unsent:
                # A client that stopped reading would keep a graceful close (and the
                # kernel's buffers) waiting for a drain that never comes: reset instead.
                self._reset()

    def _body_too_slow(self, now: float) -> bool:
        """Cut an upload past ``timeouts.body`` or below ``limits.min_body_rate`` (408);
        time during which the proxy held the client back does not count."""
        request = self.current
        assert request is not None
        held = self.ex.body_paused + (now - self.paused_at if self.read_pauses else 0.0)
        elapsed = now - self.ex.started - held
        if elapsed > self.config.timeouts.body:
            message = "request body not received within timeouts.body"
        elif (
            elapsed > BODY_RATE_GRACE
            and request.body_size < self.config.limits.min_body_rate * elapsed
        ):
            message = "request body arrives slower than limits.min_body_rate"
        else:
            return False
        self.reject(408, "request_timeout", message)
        return True

    def _answer_timeout(self) -> None:
        upstream = self.ex.upstream
        if self.ex.backend is not None:
            self.runtime.health.timed_out(self.ex.backend)
            self.stats.backends[self.ex.backend.name].timeouts += 1
        if upstream is not None:
            self._end_exchange()
            upstream.abort()
        self._answer_error(504, "gateway_timeout", "backend did not answer in time")


def _seal_or_keep(codec: TokenCodec, backend: str, session_id: str) -> str:
    """The signed id, or the backend's own when it cannot be signed (the client will get
    404 for it and start over)."""
    try:
        return codec.seal(backend, session_id)
    except ValueError:
        log.warning("backend %s minted a session id that cannot be signed", backend)
        return session_id


# A body with more openers than this is not parsed for its method: the JSON parser recurses
# once per level, and a body of nothing but brackets would exhaust the stack.
SNIFF_MAX_NESTING = 64


def _jsonrpc_method(body: bytes) -> tuple[str, str]:
    """The method of a JSON-RPC request (and the tool of a tools/call), or ("", "")."""
    if body.count(b"[") + body.count(b"{") > SNIFF_MAX_NESTING:
        return "", ""  # nesting is at most the number of openers: bounded, no recursion
    try:
        message = json.loads(body)
    except ValueError:
        return "", ""
    if isinstance(message, list):  # a batch: count its first request
        message = message[0] if message else None
    if not isinstance(message, dict) or not isinstance(message.get("method"), str):
        return "", ""
    method: str = message["method"][:64]
    params = message.get("params")
    tool = ""
    if method == "tools/call" and isinstance(params, dict) and isinstance(params.get("name"), str):
        tool = params["name"][:64]
    return method, tool
