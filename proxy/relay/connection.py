"""The client side of the HTTP/1.1 relay: one protocol object per client connection.

Requests are parsed with llhttp (httptools) and forwarded as their bytes arrive; the
response comes back through the UpstreamConnection that the request was sent on and is
written to the client as it arrives. One exchange runs at a time per client connection:
pipelined requests wait in order, with reading paused, until the one before is answered.

The connection keeps what lives as long as it does: the parser, the pipelining queue,
flow control, timeouts, writes and teardown. Each request's way to a backend and its
state are its ``Exchange`` (exchange.py); the backend's answer comes back through the
connection's ``ResponseRelay`` (upstream.py); every answer of the proxy's own is in
answers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, cast

import httptools

from mcplb.proxy.observability import access_log
from mcplb.proxy.relay import answers, framing, mcp_method, route
from mcplb.proxy.relay.answers import Answer
from mcplb.proxy.relay.exchange import Exchange
from mcplb.proxy.relay.framing import SESSION_HEADER
from mcplb.proxy.relay.http11 import LAST_CHUNK, chunk
from mcplb.proxy.relay.request import Request
from mcplb.proxy.relay.states import (
    BODY_BUFFER_LIMIT,
    CLOSED,
    HEAD,
    IDLE,
    PAUSE_BUFFER_FULL,
    PAUSE_PIPELINE,
    STREAMING,
    TUNNEL,
    UP_PAUSE_CLIENT_FULL,
    WAIT_RESPONSE,
)
from mcplb.proxy.relay.upstream import ResponseRelay

if TYPE_CHECKING:
    from mcplb.proxy.config.schema import Config
    from mcplb.proxy.server.runtime import Runtime

log = logging.getLogger("mcplb.relay")

# After an error answer, input is discarded this long before the socket closes.
LINGER_SECONDS = 2.0
# limits.min_body_rate is judged once a body has been arriving this long (seconds during
# which the proxy was not itself holding the client back).
BODY_RATE_GRACE = 5.0


class _RequestRejected(Exception):
    """Raised inside parser callbacks after an error answer was sent."""


class ClientConnection(asyncio.Protocol):
    """Relays requests from one client connection to the backends."""

    def __init__(self, runtime: Runtime, connections: set[ClientConnection]) -> None:
        self.runtime = runtime
        self.connections = connections
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
        self.relay = ResponseRelay(self)  # the upstream connections' sink, for every exchange
        self.ex = Exchange(self)  # the current request's state; a new one per request
        self.forwarded_proto = b"http"
        self.stats = runtime.stats
        self.access_log = access_log.for_config(runtime.config.log)
        self.feeding = False  # inside data_received: upstream writes wait for its end
        # timeout sweep marks
        self.active = False
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
                    self.pause_reading(PAUSE_BUFFER_FULL)  # until the switch is answered
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
            self.relay.reject(answers.INTERNAL_ERROR)
        except httptools.HttpParserError as exc:
            last = self.queue[-1] if self.queue else self.current
            if self.reading is None and last is not None and last.complete and not last.keep_alive:
                # Bytes after a request with Connection: close (llhttp refuses them): that
                # request is answered, then the connection closes; the rest is ignored.
                self.parser = None
                return
            self.relay.reject(answers.bad_request(f"malformed request: {exc}"))
        else:
            # A head still incomplete after this many bytes is too large, even if no
            # header in it has ended yet.
            if (
                self.current is None
                and self.head_bytes > self.runtime.config.limits.max_header_bytes
            ):
                self.relay.reject(answers.HEADERS_TOO_LARGE)
        finally:
            self.feeding = False
            if self.ex.up_out:
                self.ex.flush_up()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.access_log and self.state != CLOSED:
            # Not closed by us: the client left. Its requests are logged all the same.
            for request in (self.current, *self.queue):
                if request is not None and not request.logged:
                    self.relay.log_access(request, client_left=True)
        self.state = CLOSED
        self.parser = None
        self.connections.discard(self)
        self.ex.leave_queue()
        if self.ex.task is not None:
            self.ex.task.cancel()
            self.ex.task = None
        # The client left mid-exchange: the backend connection is in an unknown state.
        self.ex.abandon()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.pause_upstream(UP_PAUSE_CLIENT_FULL)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.resume_upstream(UP_PAUSE_CLIENT_FULL)

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
            self.pause_reading(PAUSE_PIPELINE)

    def on_url(self, url: bytes) -> None:
        assert self.reading is not None
        self.head_size += len(url)
        if self.head_size > self.runtime.config.limits.max_header_bytes:
            self.relay.reject(answers.HEADERS_TOO_LARGE)
            raise _RequestRejected
        self.reading.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.reading
        assert request is not None
        if request.method:
            return  # a trailer field of a chunked body: never a header of the request
        self.head_size += len(name) + len(value) + 4
        if self.head_size > self.runtime.config.limits.max_header_bytes:
            self.relay.reject(answers.HEADERS_TOO_LARGE)
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
            if self.runtime.affinity.session_header:
                request.session_id = value.decode("latin-1")
        elif name == b"content-length":
            request.content_length = int(value)
        elif name == b"transfer-encoding":
            request.chunked = value.lower().rstrip().endswith(b"chunked")
        elif name == b"accept":
            request.wants_stream = value.find(b"text/event-stream") >= 0  # see route.route

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
            route.start(self.ex, request)
        else:
            self.queue.append(request)
            self.pause_reading(PAUSE_PIPELINE)

    def on_body(self, data: bytes) -> None:
        request = self.reading
        assert request is not None
        request.body_size += len(data)
        max_body = self.runtime.config.limits.max_body_bytes
        if max_body and request.body_size > max_body:
            self.relay.reject(answers.BODY_TOO_LARGE)
            raise _RequestRejected
        if request.sniff is not None:
            mcp_method.keep_body(request, data)
            if request.sniff is None and request.mcp is not None:
                mcp_method.judge_unread(request)  # past the bound: routed without a check
                if request is self.current:
                    route.resume_after_body(self.ex, request)
        self.ex.forward_body(request, chunk(data) if request.chunked else data)

    def on_message_complete(self) -> None:
        request = self.reading
        assert request is not None
        request.complete = True
        self.reading = None
        if request.sniff is not None or request.mcp is not None:
            mcp_method.count_body(self.stats, request)
            if request.mcp is not None and request is self.current:
                route.resume_after_body(self.ex, request)
        if request.chunked:
            self.ex.forward_body(request, LAST_CHUNK)

    def _refuse_head(self, request: Request, reason: str) -> None:
        """400 and close for a head whose framing or routing fields the backend could read
        otherwise than the proxy. Nothing after it is parsed: the connection ends there."""
        if self.current is None:
            self.current = request
            self.relay.reject(answers.bad_request(reason))
            return
        # Pipelined behind an exchange in progress: answered in its turn, after that one.
        request.refusal = reason
        request.complete = True
        self.reading = None
        self.parser = None
        self.queue.append(request)
        self.pause_reading(PAUSE_PIPELINE)

    def spawn(self, job: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
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
            self.relay.answer(answers.INTERNAL_ERROR)

    def cut(self, reason: str) -> None:
        """End the current exchange now: 502 if nothing was answered yet, else close."""
        self.relay.answer(answers.bad_gateway(reason))

    # -- pipelining and teardown --------------------------------------------------------

    def next_request(self, finished: Request) -> None:
        """After an answer: close, start the next pipelined request, or wait for one."""
        if self.access_log and not finished.logged:
            self.relay.log_access(finished)
        self.ex.abandon()  # an error answer ended the exchange early
        keep = (
            self.ex.client_keep_alive
            and finished.keep_alive
            and finished.complete
            and not self.closing
            and self.more_may_follow()
        )
        self.current = None
        self.ex = Exchange(self)  # the next request starts from a clean state
        if not keep:
            self.close(linger=not finished.complete)  # see _write_answer
            return
        if self.queue:
            request = self.queue.popleft()
            if not self.queue:
                self.resume_reading(PAUSE_PIPELINE)
            self.current = request
            route.start(self.ex, request)
        else:
            self.resume_reading(PAUSE_PIPELINE)
            self.state = HEAD if self.reading is not None else IDLE
            self.mark = None

    def more_may_follow(self) -> bool:
        """Whether another request may come on this connection: the parser still reads,
        or requests already parsed wait their turn (a refused head stops the parser, but
        the requests pipelined before it are answered first)."""
        return self.parser is not None or bool(self.queue)

    def close(self, linger: bool = False) -> None:
        self.ex.holding = False
        self.relay.flush()
        request = self.current
        if self.access_log and request is not None and not request.logged and self.ex.status:
            self.relay.log_access(request)
        self.state = CLOSED
        self.parser = None
        self.ex.leave_queue()
        self.ex.abandon()
        if linger:
            self._linger_close()
        elif self.transport is not None:
            self.transport.close()

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
        self.resume_reading(self.read_pauses)
        self.loop.call_later(LINGER_SECONDS, transport.close)

    def shutdown(self, close_idle: bool = True) -> None:
        """Stop after the current exchange; close now if there is none (with
        ``close_idle``; else an idle connection gets one more answer, then closes)."""
        self.closing = True
        if close_idle and self.current is None and self.state in (IDLE, HEAD):
            self.close()

    # -- flow control -------------------------------------------------------------------

    def pause_reading(self, reason: int) -> None:
        transport = self.transport
        if not self.read_pauses:
            self.paused_at = self.loop.time()
            if transport is not None and not transport.is_closing():
                transport.pause_reading()
        self.read_pauses |= reason

    def resume_reading(self, reason: int) -> None:
        if not self.read_pauses & reason:
            return
        self.read_pauses &= ~reason
        if self.read_pauses:
            return
        self.ex.body_paused += self.loop.time() - self.paused_at
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def pause_upstream(self, reason: int) -> None:
        if not self.up_pauses and self.ex.upstream is not None:
            self.ex.upstream.pause_reading()
        self.up_pauses |= reason

    def resume_upstream(self, reason: int) -> None:
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
                request = self.current
                long_call = request is not None and request.mcp_call
                # An MCP call may send nothing until its result (a long tool call).
                if elapsed > (timeouts.mcp_call if long_call else timeouts.upstream_header):
                    self.ex.time_out()
            elif elapsed > timeouts.header:
                if state == HEAD:
                    self.relay.reject(answers.HEAD_TIMEOUT)
                else:
                    self.close()  # not a byte sent: nothing to answer
            return
        keepalive = timeouts.sse_keepalive
        if keepalive and self.ex.sse_at and now - self.ex.sse_at >= keepalive:
            self.relay.keep_alive(now)
        if self.active:
            self.active = False
            self.mark_time = now
            self.mark = None
        elif now - self.mark_time > timeouts.idle and state != CLOSED:
            unsent = self.transport is not None and self.transport.get_write_buffer_size() > 0
            self.close()
            if unsent and self.transport is not None:
                # A client that stopped reading would keep a graceful close (and the
                # kernel's buffers) waiting for a drain that never comes: reset instead.
                reset(self.transport)

    def _body_too_slow(self, now: float) -> bool:
        """Cut an upload past ``timeouts.body`` or below ``limits.min_body_rate`` (408);
        time during which the proxy held the client back does not count."""
        request = self.current
        assert request is not None
        held = self.ex.body_paused + (now - self.paused_at if self.read_pauses else 0.0)
        late = slow_upload(now - self.ex.started - held, request.body_size, self.runtime.config)
        if late is not None:
            self.relay.reject(late)
        return late is not None


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
    time, below ``limits.min_body_rate``."""
    if elapsed > config.timeouts.body:
        return answers.BODY_TIMEOUT
    if elapsed > BODY_RATE_GRACE and received < config.limits.min_body_rate * elapsed:
        return answers.BODY_TOO_SLOW
    return None
