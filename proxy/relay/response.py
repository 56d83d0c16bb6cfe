"""The backend's answer in an exchange: what the backend connection reports to (the
response head, body, end, loss, tunnelled bytes: ``pool.ResponseSink``), relayed to the
client through ``ClientSide``.

``Response`` holds the state of the answer under way (how it is framed toward the client,
what was sent, whether reading from the backend is paused, whether the answer is held for
a store update: ``StoreHold``); its base ``Reply`` (reply.py) what the client was told and
the proxy's own answers; ``Exchange`` (exchange.py) is the class of the one object per
request, with the request's way to the backend. The decisions the answer needs from that
half (retry after a reset or a 502-504, the end of the exchange) are declared here and
made there. How a response is framed and which of its headers go on is decided by
``framing.response_head``; what its session ids and cookie become, by the request's
affinity object (``affinity.Stickiness``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import httptools

from mcplb.proxy.cluster.backends import Backend
from mcplb.proxy.cluster.pool import UpstreamConnection
from mcplb.proxy.relay import answers, framing, http11
from mcplb.proxy.relay.affinity import Job, Stickiness
from mcplb.proxy.relay.client_side import ClientSide
from mcplb.proxy.relay.http11 import LAST_CHUNK, Headers, chunk
from mcplb.proxy.relay.keepalive import SseKeepAlive
from mcplb.proxy.relay.reply import Reply
from mcplb.proxy.relay.request import Request
from mcplb.proxy.relay.shared import Shared
from mcplb.proxy.relay.states import (
    PAUSE_BUFFER_FULL,
    PAUSE_UPSTREAM_FULL,
    STREAMING,
    TUNNELLING,
    UP_PAUSE_HOLD,
)

log = logging.getLogger("mcplb.relay")


class Response(Reply):
    """The backend's answer to one request, as the client gets it."""

    __slots__ = (
        "backend",
        "body_framing",
        "client_keep_alive",
        "hold",
        "keepalive",
        "loop",
        "out",
        "read_time",
        "response_bytes",
        "served_by",
        "slot_stream",
        "started",
        "sticky",
        "tunnelling",
        "up_pauses",
        "upstream",
        "upstream_keep_alive",
        "upstream_until_close",
    )

    def __init__(
        self, client: ClientSide, runtime: Shared, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(client, runtime)
        self.loop = loop
        self.started = 0.0  # when routing began (loop time)
        self.backend: Backend | None = None  # holds a slot here while set
        self.slot_stream = False  # the slot held on backend is a stream's
        self.upstream: UpstreamConnection | None = None
        self.up_pauses = 0  # why reading from the backend is paused (UP_PAUSE_* bits)
        # The request's affinity: the key it was routed by, what its answer teaches.
        self.sticky: Stickiness | None = None
        self.out: list[bytes] = []  # response bytes not yet written (see flush)
        # When the upstream read being handled brought a response head (0: none did). A
        # small response ends in the same read: its end takes this time, not a clock read.
        self.read_time = 0.0
        self.response_bytes = 0
        self.served_by = ""  # backend name of the answer
        self.body_framing = framing.NO_BODY  # how the body is framed toward the client
        self.upstream_keep_alive = False
        self.upstream_until_close = False  # the body ends when the backend closes
        self.client_keep_alive = True
        # While a session store update must land before the answer goes out (StoreHold).
        self.hold: StoreHold | None = None
        self.tunnelling = False
        # An event stream the proxy may add keep-alive comments to (sse_keepalive).
        self.keepalive: SseKeepAlive | None = None

    # -- what the other half decides (Exchange) -----------------------------------------

    def retry_after_status(self, request: Request, status: int) -> bool:
        raise NotImplementedError

    def retry_after_reset(self, request: Request, upstream: UpstreamConnection) -> bool:
        raise NotImplementedError

    def end(self, now: float = 0.0) -> None:
        raise NotImplementedError

    def detach_upstream(self, upstream: UpstreamConnection) -> None:
        raise NotImplementedError

    def give_client_slot(self) -> None:
        raise NotImplementedError

    def too_many_streams(self) -> None:
        raise NotImplementedError

    # -- tasks, reading from the backend, writing to the client --------------------------

    def spawn(self, job: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``job`` as a task whose unexpected failure ends the exchange, loudly."""
        task = self.loop.create_task(job)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("relay task failed", exc_info=error)
            self.answer(answers.INTERNAL_ERROR)

    def pause_upstream(self, reason: int) -> None:
        """Stop reading from the backend (the client is full, or the answer is held)."""
        if not self.up_pauses and self.upstream is not None:
            self.upstream.pause_reading()
        self.up_pauses |= reason

    def resume_upstream(self, reason: int) -> None:
        if not self.up_pauses & reason:
            return
        self.up_pauses &= ~reason
        if not self.up_pauses and self.upstream is not None:
            self.upstream.resume_reading()

    def flush(self) -> None:
        """Write what the last upstream read produced in one call (one syscall, not one
        per piece of the response)."""
        self.read_time = 0.0  # the read is handled
        out = self.out
        if not out or self.hold is not None:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()  # the same list for the exchange's life
        self.client.write(data)

    # -- the backend's response (ResponseSink) ------------------------------------------

    def upstream_head(self, status: int, reason: bytes, headers: Headers, keep_alive: bool) -> None:
        request = self.request
        client = self.client
        assert request is not None
        client.active = True
        if status < 200 and status != 101:
            self._interim(request, status, reason, headers)
            return
        if 502 <= status <= 504 and self.retry_after_status(request, status):
            return
        backend = self.backend
        runtime = self.runtime
        if (
            not self.slot_stream
            and backend is not None
            and runtime.cluster.admission.streams_full(backend)
            and _refuse_stream(self, headers)
        ):
            return
        client.set_state(STREAMING)
        self.response_started = True
        self.upstream_keep_alive = keep_alive
        self.status = status
        now = 0.0
        if backend is not None:
            runtime.cluster.health.responded(backend, status)
            backend_stats = runtime.stats.backends[backend.name]
            backend_stats.requests[(request.method, status // 100)] += 1
            self.read_time = now = self.loop.time()
            backend_stats.first_byte.observe(now - self.started)
        head = framing.response_head(
            status,
            headers,
            method=request.method,
            version=request.version,
            upgrade=request.upgrade,
            keep_alive=request.keep_alive and client.may_keep_alive(),
        )
        self.body_framing = head.body_framing
        self.client_keep_alive = head.keep_alive
        self.upstream_until_close = head.until_close
        rewritten = None
        if backend is not None:
            if head.content_type.startswith(b"text/event-stream"):
                self._event_stream(backend, status, head.body_framing, now)
            sticky = self.sticky
            if sticky is not None:
                rewritten, job = sticky.on_head(status, head, backend.name)
                if job is not None:
                    self._hold_for(job)
        # The head's pieces go into the output as they are: the write joins them once,
        # with the body that came in the same read.
        out = self.out
        out.append(http11.status_line(status, reason))
        out += head.wire if rewritten is None else rewritten
        out.append(b"\r\n")

    def _interim(self, request: Request, status: int, reason: bytes, headers: Headers) -> None:
        """A 1xx before the answer (101 aside): passed on to an HTTP/1.1 client, without
        the fields its Connection names."""
        if request.version != "1.0":
            hop = http11.connection_tokens(headers)
            self.client.write(
                http11.status_line(status, reason)
                + http11.serialize_headers(http11.end_to_end(headers, hop))
                + b"\r\n"
            )

    def _event_stream(self, backend: Backend, status: int, body_framing: int, now: float) -> None:
        """The answer is an event stream: its slot becomes a stream's (a stream holds no
        request slot), and one the client reads chunked or until the close may get
        keep-alive comments (``SseKeepAlive``)."""
        if not self.slot_stream:
            self.slot_stream = True
            self.runtime.cluster.admission.became_stream(backend)
            self.give_client_slot()
        if status == 200 and body_framing in (framing.CHUNKED, framing.UNTIL_CLOSE):
            self.keepalive = SseKeepAlive(now, body_framing == framing.CHUNKED)

    def upstream_body(self, data: bytes) -> None:
        self.client.active = True
        self.response_bytes += len(data)
        if self.keepalive is not None:
            self.keepalive.relayed(data, self.read_time or self.loop.time())
        sticky = self.sticky
        if sticky is not None and sticky.learner is not None:
            data, job = sticky.on_body(data)
            if job is not None:
                self._hold_for(job)
            if not data:
                return
        if self.body_framing == framing.CHUNKED:
            self.out.append(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.out.append(data)

    def upstream_complete(self) -> None:
        if self.body_framing == framing.TUNNEL:
            return
        hold = self.hold
        if hold is not None:
            hold.complete_pending = True
            return
        chunked = self.body_framing == framing.CHUNKED
        sticky = self.sticky
        if sticky is not None and sticky.learner is not None:
            rest, job = sticky.on_complete()
            if rest:
                self.out.append(chunk(rest) if chunked else rest)
            if job is not None:
                self._hold_for(job).complete_pending = True
                return
        out = self.out
        if chunked:
            out.append(LAST_CHUNK)
        now = self.read_time or self.loop.time()
        if out:  # flush, inline (every answer ends here; nothing holds it now)
            self.client.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        self.read_time = 0.0
        request = self.request
        assert request is not None
        upstream = self.upstream
        reusable = self.upstream_keep_alive and http11.fully_sent(
            request.complete, request.upgrade, request.content_length, request.body_size
        )
        if upstream is not None:
            # Pooled first: a request woken by the slot this frees can take the connection.
            self.detach_upstream(upstream)
            if reusable:
                upstream.pool.release(upstream, now)
            else:
                upstream.close()
        self.end(now)
        self.client.finish(request, self.client_keep_alive)

    def upstream_tunnel(self, data: bytes) -> None:
        client = self.client
        if not self.tunnelling:
            upstream = self.upstream
            request = self.request
            if self.body_framing != framing.TUNNEL or upstream is None or request is None:
                client.close()
                return
            client.set_state(TUNNELLING)
            self.tunnelling = True
            leftover, request.early_tunnel = request.early_tunnel, b""
            if leftover:
                upstream.send(leftover)
            client.resume_reading(PAUSE_BUFFER_FULL)
        client.active = True
        if data:
            # Behind the 101 head, which waits in ``out`` when the same read brought both.
            self.out.append(data)
        self.flush()

    def upstream_lost(self, error: BaseException | None) -> None:
        upstream = self.upstream
        request = self.request
        if upstream is None or request is None:
            return
        if self.tunnelling:
            self.end()
            self.client.close()
        elif not self.response_started:
            if self.retry_after_reset(request, upstream):
                return
            if isinstance(error, httptools.HttpParserError):
                self.answer(answers.INVALID_RESPONSE)
            else:
                self.answer(answers.BACKEND_CLOSED)
        elif self.upstream_until_close:
            self.upstream_keep_alive = False
            self.upstream_complete()
        else:
            # Mid-body: the client must see the response as truncated.
            self.end()
            self.client.close()

    def upstream_write_paused(self, paused: bool) -> None:
        if paused:
            self.client.pause_reading(PAUSE_UPSTREAM_FULL)
        else:
            self.client.resume_reading(PAUSE_UPSTREAM_FULL)

    def _hold_for(self, job: Job) -> StoreHold:
        """Hold the answer while ``job`` (a store update) runs, then release it."""
        hold = self.hold
        if hold is None:
            hold = self.hold = StoreHold(self)
            self.pause_upstream(UP_PAUSE_HOLD)
        self.spawn(hold.release_after(job))
        return hold


class StoreHold:
    """An answer held back while a session store update lands, so that the client never
    holds a key the store does not know yet: nothing is written to the client meanwhile,
    and reading from the backend waits. Exists only while holding; the first update to
    land releases the answer (updates of one answer run side by side)."""

    __slots__ = ("complete_pending", "response")

    def __init__(self, response: Response) -> None:
        self.response = response
        self.complete_pending = False  # the backend's answer ended while holding

    async def release_after(self, job: Job) -> None:
        try:
            await job
        except Exception:
            log.exception("session store update failed")
        response = self.response
        if response.hold is not self:
            return  # released already (another update, or the connection closed)
        response.hold = None
        response.flush()
        response.resume_upstream(UP_PAUSE_HOLD)
        if self.complete_pending:
            self.complete_pending = False
            response.upstream_complete()


def _refuse_stream(res: Response, headers: Headers) -> bool:
    """A response that is an event stream while its backend (or the worker) has as many as
    ``max_streams`` allows (``upstream_head`` asked ``streams_full``): refused with 503 and
    its backend connection dropped, whatever the request asked for (issue 29, N7). True if
    so."""
    upstream = res.upstream
    if upstream is None:
        return False
    if not any(
        name == b"content-type" and value.lower().startswith(b"text/event-stream")
        for name, value in headers
    ):
        return False
    res.detach_upstream(upstream)
    upstream.abort()  # the stream it opened is not taken
    res.end()
    res.too_many_streams()
    return True
