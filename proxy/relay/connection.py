"""The client side of the HTTP/1.1 relay: one protocol object per client connection.

Requests are parsed with llhttp (httptools) and forwarded as their bytes arrive; the
response comes back through the UpstreamConnection that the request was sent on and is
written to the client as it arrives. One exchange runs at a time per client connection:
pipelined requests wait in order, with reading paused, until the one before is answered.

The connection keeps what lives as long as it does: the parser, the pipelining queue,
flow control (``FlowControl``), its state (moved only by ``set_state``, through the table
of legal moves in states.py: its own moves inline, the exchange's through ``set_state``),
timeouts, writes and teardown. Everything per request is its
``Exchange`` (exchange.py, with its answer's half in response.py): the backend connection
reports to the exchange, and the exchange talks back through ``ClientSide``, the small
interface this class implements (client_side.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from typing import cast

import httptools

from mcplb.proxy.config.schema import Config, TimeoutsConfig
from mcplb.proxy.observability import access_log
from mcplb.proxy.relay import answers, framing, mcp_method, route
from mcplb.proxy.relay.answers import Answer
from mcplb.proxy.relay.client_side import Peer
from mcplb.proxy.relay.exchange import Exchange
from mcplb.proxy.relay.flow import FlowControl
from mcplb.proxy.relay.framing import SESSION_HEADER
from mcplb.proxy.relay.http11 import LAST_CHUNK, chunk
from mcplb.proxy.relay.keepalive import SseKeepAlive
from mcplb.proxy.relay.request import Request
from mcplb.proxy.relay.shared import Shared
from mcplb.proxy.relay.states import (
    BODY_BUFFER_LIMIT,
    BUFFERING,
    CLOSED,
    HEAD,
    IDLE,
    LEGAL,
    PAUSE_BUFFER_FULL,
    PAUSE_PIPELINE,
    STREAMING,
    TUNNELLING,
    UP_PAUSE_CLIENT_FULL,
    WAIT_RESPONSE,
    transition,
)
from mcplb.proxy.routing.body_pace import BodyPace

log = logging.getLogger("mcplb.relay")

# After an error answer, input is discarded this long before the socket closes.
LINGER_SECONDS = 2.0
# limits.min_body_rate is judged once a body has been arriving this long (seconds during
# which the proxy was not itself holding the client back).
BODY_RATE_GRACE = 5.0
BODY_RATE_WINDOW = 5.0  # seconds over which limits.min_body_rate is judged (BodyPace)


class _RequestRejected(Exception):
    """Raised inside parser callbacks after an error answer was sent."""


class ClientConnection(asyncio.Protocol):
    """Relays requests from one client connection to the backends."""

    def __init__(self, runtime: Shared, connections: set[ClientConnection]) -> None:
        self.runtime = runtime
        self.connections = connections
        self.loop = asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.peer = Peer("", b"http", access_log.for_config(runtime.config.log))
        self.state = IDLE  # moved by set_state only
        self.requests_seen = 0
        # Answer the current request, then close (shutdown; from the start during its delay).
        self.closing = runtime.stopping
        self.reading: Request | None = None  # the request the parser is filling
        self.current: Request | None = None  # the request being answered
        self.queue: deque[Request] = deque()
        # Bytes the request line and headers may still take (limits.max_header_bytes, read
        # once a request: each header's check is then one subtraction, no config lookup).
        self.head_room = 0
        self.head_bytes = 0  # bytes received since the last request head completed
        self.flow = FlowControl(self.loop)
        self.ex = Exchange(self, runtime, self.peer, self.loop)  # a new one per request
        self.stats = runtime.stats
        self.feeding = False  # inside data_received: upstream writes wait for its end
        self.active = False  # bytes moved since the sweep's last pass (ClientSide.active)
        self.sweep = Sweep(0.0)

    # -- asyncio callbacks: client side ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.flow.transport = cast(asyncio.Transport, transport)  # uvloop's
        self.ex.peer = self.peer = Peer.of(transport, self.peer.access_log)
        self.sweep.mark_time = self.loop.time()
        if not self.runtime.frontend.connection_caps.admit(self.peer.ip):
            self.set_state(CLOSED)  # limits.max_client_connections or ..._per_client
            refuse(self.transport, answers.TOO_MANY_CONNECTIONS)
            return
        self.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.active = True
        if self.state == TUNNELLING:
            if self.ex.upstream is not None:
                self.ex.upstream.send(data)
            return
        parser = self.parser
        if self.current is None:
            self.head_bytes += len(data)
        if parser is None:
            current = self.current
            if current is not None and current.upgrade:
                current.early_tunnel += data  # early bytes of a protocol being switched to
                if len(current.early_tunnel) > BODY_BUFFER_LIMIT:
                    self.pause_reading(PAUSE_BUFFER_FULL)  # until the switch is answered
            return
        self.feeding = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.parser = None
            upgrade = self.queue[-1] if self.queue else self.current  # the last head read
            if upgrade is not None:
                upgrade.early_tunnel = data[exc.args[0] :]
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _RequestRejected):
                return  # already answered
            log.exception("relay error")
            self.ex.reject(answers.INTERNAL_ERROR)
        except httptools.HttpParserError as exc:
            last = self.queue[-1] if self.queue else self.current
            if self.reading is None and last is not None and last.complete and not last.keep_alive:
                # Bytes after a request with Connection: close (llhttp refuses them): that
                # request is answered, then the connection closes; the rest is ignored.
                self.parser = None
                return
            self.ex.reject(answers.bad_request(f"malformed request: {exc}"))
        else:
            # A head still incomplete after this many bytes is too large, even if no
            # header in it has ended yet.
            if (
                self.current is None
                and self.head_bytes > self.runtime.frontend.limits.max_header_bytes
            ):
                self.ex.reject(answers.HEADERS_TOO_LARGE)
        finally:
            self.feeding = False
            if self.ex.up_out:
                self.ex.flush_up()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer.access_log and self.state != CLOSED:
            # Not closed by us: the client left. Its requests are logged all the same.
            for request in (self.current, *self.queue):
                if request is not None and not request.logged:
                    self.ex.log_access(request, client_left=True)
        if self in self.connections:  # counted by connection_caps.admit
            self.connections.discard(self)
            self.runtime.frontend.connection_caps.release(self.peer.ip)
        self.set_state(CLOSED)
        self.parser = None
        # The client left mid-exchange: the backend connection is in an unknown state.
        self.ex.drop()

    def pause_writing(self) -> None:
        self.flow.write_paused = True
        self.ex.pause_upstream(UP_PAUSE_CLIENT_FULL)

    def resume_writing(self) -> None:
        self.flow.write_paused = False
        self.ex.resume_upstream(UP_PAUSE_CLIENT_FULL)

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.state == CLOSED:  # answered at once (421, 429...) and closed in this read
            raise _RequestRejected  # nothing after it is read
        self.reading = Request()
        self.head_room = self.runtime.frontend.limits.max_header_bytes
        self.requests_seen += 1
        if self.current is None:
            if HEAD not in LEGAL[self.state]:  # set_state, inline (every request)
                transition(self.state, HEAD)  # raises IllegalTransition
            self.state = HEAD
            self.sweep.mark = None
        else:
            # A pipelined request: read no further until the one before is answered, so
            # its head cannot grow unchecked (at most one read's worth is parsed now).
            self.pause_reading(PAUSE_PIPELINE)

    def on_url(self, url: bytes) -> None:
        # (Attributes read once, into locals: on this class each read is a dictionary
        # lookup, compiled or not.)
        request = self.reading
        assert request is not None
        self.head_room = room = self.head_room - len(url)
        if room < 0:
            self.ex.reject(answers.HEADERS_TOO_LARGE)
            raise _RequestRejected
        request.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.reading
        assert request is not None
        if request.method:
            return  # a trailer field of a chunked body: never a header of the request
        self.head_room = room = self.head_room - (len(name) + len(value) + 4)
        if room < 0:
            self.ex.reject(answers.HEADERS_TOO_LARGE)
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
            # Logged and forwarded: a short id of safe bytes, else the proxy's own replaces it.
            request.request_id = value if framing.usable_request_id(value) else None
        elif name == SESSION_HEADER:
            # The backend would read the first of two, a router the last: one per request.
            if request.session_id is not None:
                request.duplicate = name
            if self.runtime.affinity.session_header:
                request.session_id = value.decode("latin-1")
        elif name == b"content-length":
            request.content_length = int(value)
        elif name == b"transfer-encoding":
            request.chunked = value.lower().rstrip().endswith(b"chunked")
        elif name == b"accept":  # a GET for a stream takes a stream slot (Exchange.dispatch)
            request.wants_stream = value.find(b"text/event-stream") >= 0

    def on_headers_complete(self) -> None:
        request = self.reading
        parser = self.parser
        assert request is not None and parser is not None
        request.method = parser.get_method()
        request.version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        # llhttp upgrades only on CONNECT or a Connection header naming upgrade: without
        # either, one call less per request.
        request.upgrade = (
            request.connection or request.method == b"CONNECT"
        ) and parser.should_upgrade()
        if request.wants_stream and request.method != b"GET":
            request.wants_stream = False  # a POST may answer with a stream; it starts as a request
        self.head_bytes = 0
        refusal = framing.head_refusal(request)
        if refusal is not None:
            self._refuse_head(request, refusal)
            raise _RequestRejected
        if request.method == b"POST":
            mcp_method.count_head(self.stats, request)
            if request.mcp is not None and request.sniff is None:
                mcp_method.judge_unread(request)  # too large to hold back: nothing taken
        if self.current is None:
            self.current = request
            if request.content_length or request.chunked:  # a body, which Sweep may time
                request.head_at = self.loop.time()
            route.start(self.ex, request)
        else:
            self.queue.append(request)
            self.pause_reading(PAUSE_PIPELINE)

    def on_body(self, data: bytes) -> None:
        if self.state == CLOSED:  # refused at its head and closing: keep none of the body
            raise _RequestRejected
        request = self.reading
        assert request is not None
        request.body_size += len(data)
        max_body = self.runtime.frontend.limits.max_body_bytes
        if max_body and request.body_size > max_body:
            self.ex.reject(answers.BODY_TOO_LARGE)
            raise _RequestRejected
        # Past the bound, keep_body says so: reading request.sniff again after the call
        # would be wrong under mypyc, which keeps the attribute narrowed to a list.
        if (
            request.sniff is not None
            and not mcp_method.keep_body(request, data)
            and request.mcp is not None
        ):
            mcp_method.judge_unread(request)  # past the bound: nothing taken
        self.ex.forward_body(request, chunk(data) if request.chunked else data)
        if request.buffering:
            route.body_read(self.ex, request)

    def on_message_complete(self) -> None:
        request = self.reading
        assert request is not None
        request.complete = True
        self.reading = None
        if request.sniff is not None or request.mcp is not None:
            mcp_method.count_body(self.stats, request)
        if request.chunked:
            self.ex.forward_body(request, LAST_CHUNK)
        if request.buffering:
            route.body_read(self.ex, request)

    def _refuse_head(self, request: Request, reason: str) -> None:
        """400 and close for a head whose framing or routing fields the backend could read
        otherwise than the proxy. Nothing after it is parsed: the connection ends there."""
        if self.current is None:
            self.current = request
            self.ex.reject(answers.bad_request(reason))
            return
        # Pipelined behind an exchange in progress: answered in its turn, after that one.
        request.refusal = reason
        request.complete = True
        self.reading = None
        self.parser = None
        self.queue.append(request)
        self.pause_reading(PAUSE_PIPELINE)

    def cut(self, reason: str) -> None:
        """End the current exchange now: 502 if nothing was answered yet, else close."""
        self.ex.answer(answers.bad_gateway(reason))

    # -- pipelining and teardown --------------------------------------------------------

    # -- ClientSide: what the exchange under way sees of the connection -----------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and self.state != CLOSED:
            self.transport.write(data)

    def pause_reading(self, reason: int) -> None:
        self.flow.pause_reading(reason)

    def resume_reading(self, reason: int) -> None:
        paused = self.flow.resume_reading(reason)
        if paused:
            self.ex.body_paused += paused

    def set_state(self, state: int) -> None:
        if state not in LEGAL[self.state]:  # states.transition, inline: on every request
            transition(self.state, state)  # raises IllegalTransition
        self.state = state
        self.sweep.mark = None  # the sweep's clock for the new state starts at its next pass

    def may_keep_alive(self) -> bool:
        # Not shutting down, and another request may come: the parser still reads, or
        # requests already parsed wait their turn (a refused head stops the parser, but
        # the requests pipelined before it are answered first). (``finish`` inlines it.)
        return not self.closing and (self.parser is not None or bool(self.queue))

    def finish(self, request: Request, keep_alive: bool) -> None:
        """After an answer: close, start the next pipelined request, or wait for one."""
        ex = self.ex
        if self.peer.access_log and not request.logged:
            ex.log_access(request)
        ex.abandon()  # an error answer ended the exchange early
        ex.done = True
        queue = self.queue
        keep = (
            keep_alive
            and request.keep_alive
            and request.complete
            and not self.closing
            and (self.parser is not None or bool(queue))  # may_keep_alive, inline
        )
        self.current = None
        self.ex = Exchange(self, self.runtime, self.peer, self.loop)  # a clean state
        if not keep:
            self.close(linger=not request.complete)  # see Response._write_answer
            return
        if queue:
            request = queue.popleft()
            if not queue and self.flow.reasons:
                self.resume_reading(PAUSE_PIPELINE)
            self.current = request
            route.start(self.ex, request)
            return
        if self.flow.reasons:
            self.resume_reading(PAUSE_PIPELINE)
        state = HEAD if self.reading is not None else IDLE
        if state not in LEGAL[self.state]:  # set_state, inline (every answer)
            transition(self.state, state)
        self.state = state
        self.sweep.mark = None

    def close(self, linger: bool = False) -> None:
        ex = self.ex
        ex.hold = None  # the answer goes out as it is
        ex.flush()
        request = self.current
        if self.peer.access_log and request is not None and not request.logged and ex.status:
            ex.log_access(request)
        self.set_state(CLOSED)
        self.parser = None
        ex.drop()
        if self.transport is None:
            return
        if linger:
            linger_close(self.transport, self.flow, self.loop)
        else:
            self.transport.close()

    def shutdown(self, close_idle: bool = True) -> None:
        """Stop after the current exchange; close now if there is none (with
        ``close_idle``; else an idle connection gets one more answer, then closes)."""
        self.closing = True
        if close_idle and self.current is None and self.state in (IDLE, HEAD):
            self.close()

    # -- timeouts -----------------------------------------------------------------------

    def check_timeouts(self, now: float) -> None:
        """Called by the server's sweep about twice a second."""
        self.sweep.check(self, now)


class Sweep:
    """The timeout sweep's view of one client connection: where it last saw it (state and
    request count) and since when (whether bytes moved since its last pass is the
    connection's ``active``)."""

    __slots__ = ("mark", "mark_time")

    def __init__(self, now: float) -> None:
        self.mark: tuple[int, int] | None = None
        self.mark_time = now

    def check(self, conn: ClientConnection, now: float) -> None:
        state = conn.state
        timeouts = conn.runtime.frontend.timeouts
        current = conn.current
        if state in (WAIT_RESPONSE, BUFFERING) and current is not None and not current.complete:
            # Still receiving the request body (sent on, buffered, or read before routing):
            # the client's pace, judged by the body deadline, the minimum rate and the idle
            # timeout below; the backend's upstream_header clock starts once it has it all.
            if self._body_too_slow(conn, current, now):
                return
            state = STREAMING
        if state in (HEAD, WAIT_RESPONSE) or (state == IDLE and conn.requests_seen == 0):
            key = (state, conn.requests_seen)
            if self.mark != key:
                self.mark = key
                self.mark_time = now
                return
            elapsed = now - self.mark_time
            if state == WAIT_RESPONSE:
                # An MCP call may send nothing until its result (a long tool call).
                limit = (
                    timeouts.mcp_call if current and current.mcp_call else timeouts.upstream_header
                )
                if elapsed > limit:
                    conn.ex.time_out()
            elif elapsed > timeouts.header:
                if state == HEAD:
                    conn.ex.reject(answers.HEAD_TIMEOUT)
                else:
                    conn.close()  # not a byte sent: nothing to answer
            return
        keepalive = conn.ex.keepalive
        if keepalive is not None and timeouts.sse_keepalive:
            self._keep_alive(conn, keepalive, now, timeouts.sse_keepalive)
        if conn.active:
            conn.active = False
            self.mark_time = now
            self.mark = None
        elif now - self.mark_time > self._idle_limit(state, timeouts) and state != CLOSED:
            transport = conn.transport
            unsent = transport is not None and transport.get_write_buffer_size() > 0
            conn.close()
            if unsent and transport is not None:
                # A client that stopped reading would keep a graceful close (and the
                # kernel's buffers) waiting for a drain that never comes: reset instead.
                reset(transport)

    @staticmethod
    def _idle_limit(state: int, timeouts: TimeoutsConfig) -> float:
        """Between requests, the shorter of ``keepalive`` and ``idle`` (a config that
        lowered idle keeps closing idle connections that soon); else ``idle``."""
        return min(timeouts.keepalive, timeouts.idle) if state == IDLE else timeouts.idle

    @staticmethod
    def _keep_alive(
        conn: ClientConnection, keepalive: SseKeepAlive, now: float, every: float
    ) -> None:
        """An SSE comment on an event stream quiet for ``every`` seconds, once the client
        has read what it was sent: it keeps intermediaries in front from cutting the
        stream (clients ignore comments). Not backend activity: ``active`` is untouched,
        so timeouts.idle still ends a stream the backend abandoned."""
        transport = conn.transport
        if transport is None or transport.get_write_buffer_size() > 0:
            return
        comment = keepalive.due(now, every)
        if comment is not None:
            conn.write(comment)

    @staticmethod
    def _body_too_slow(conn: ClientConnection, request: Request, now: float) -> bool:
        """Cut an upload past ``timeouts.body`` or below ``limits.min_body_rate`` (408), on
        average or over the last ``BODY_RATE_WINDOW`` (``BodyPace``); time during which the
        proxy held the client back does not count."""
        ex = conn.ex
        held = ex.body_paused + conn.flow.paused_for(now)
        elapsed = now - (request.head_at or ex.started) - held
        config = conn.runtime.config
        late = slow_upload(elapsed, request.body_size, config)
        rate = config.limits.min_body_rate
        if late is None and rate:
            if request.pace is None:
                request.pace = BodyPace(BODY_RATE_WINDOW)
            if request.pace.too_slow(elapsed, request.body_size, rate):
                late = answers.BODY_TOO_SLOW
        if late is not None:
            ex.reject(late)
        return late is not None


def linger_close(
    transport: asyncio.Transport, flow: FlowControl, loop: asyncio.AbstractEventLoop
) -> None:
    """Close after an error answer without losing it: stop sending, discard what the
    client still sends for a moment (closing with unread input would reset the
    connection, and the client could lose the answer), then close (nginx's lingering
    close)."""
    with contextlib.suppress(RuntimeError, OSError):
        transport.write_eof()
    flow.resume_reading(flow.reasons)
    loop.call_later(LINGER_SECONDS, transport.close)


def refuse(transport: asyncio.Transport, answer: Answer) -> None:
    """Answer a connection that is not taken on (past a connection cap), and close it."""
    transport.write(answers.render(answer, close=True))
    transport.close()


def reset(transport: asyncio.Transport) -> None:
    """Drop a connection at once: RST, nothing more sent, nothing kept in the kernel."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def slow_upload(elapsed: float, received: int, config: Config) -> Answer | None:
    """408 for an upload going on for ``elapsed`` seconds (not counting the proxy's own
    pauses) with ``received`` bytes so far, if past ``timeouts.body`` or, after a grace
    time, below ``limits.min_body_rate`` on average (``BodyPace`` judges the recent pace)."""
    if elapsed > config.timeouts.body:
        return answers.BODY_TIMEOUT
    if elapsed > BODY_RATE_GRACE and received < config.limits.min_body_rate * elapsed:
        return answers.BODY_TOO_SLOW
    return None
