"""One exchange: a request and its answer, as the client connection relays it.

A fresh ``Exchange`` per request (as uvicorn's ``RequestResponseCycle``) holds everything
that lives from routing to the last byte of the answer: where it went, the slot it holds,
how the answer is framed, what was sent. Nothing of it is reset by hand: when the answer is
done, the connection starts from a new one.

Its methods take the request on once routed (route.py): ``dispatch`` takes a slot on the
backend or queues for one (the exchange is the admission queue's ``Waiter``), then a pooled
or new connection, on which ``_attach`` sends the request head and any body kept so far;
``forward_body`` sends the rest as it arrives. Retries come back through ``resend``; ``end``
frees the slot and lets the backend connection go. The answer comes back through the
connection's ``ResponseRelay`` (upstream.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from mcplb.proxy.relay import answers, framing
from mcplb.proxy.relay.affinity import Stickiness
from mcplb.proxy.relay.request import Request
from mcplb.proxy.relay.states import (
    BODY_BUFFER_LIMIT,
    CLOSED,
    PAUSE_BUFFER_FULL,
    REPLAY_LIMIT,
    UP_PAUSE_CLIENT_FULL,
    WAIT_RESPONSE,
)
from mcplb.proxy.routing import steps as routing
from mcplb.proxy.routing.retries import may_retry

if TYPE_CHECKING:
    from mcplb.proxy.cluster.backends import Backend
    from mcplb.proxy.cluster.pool import UpstreamConnection
    from mcplb.proxy.relay.connection import ClientConnection

log = logging.getLogger("mcplb.relay")

# The backends an exchange tried, before any retry: one shared set, not one per request.
NONE_TRIED: Final[frozenset[str]] = frozenset()


class Exchange:
    """The per-request state of a client connection, and the request's way to a backend."""

    __slots__ = (
        "attempted",
        "awaiting_body",
        "backend",
        "body_paused",
        "bound_backend",
        "client_keep_alive",
        "complete_pending",
        "conn",
        "finished",
        "framing",
        "holding",
        "queue_timer",
        "queued_at",
        "response_bytes",
        "response_started",
        "retries",
        "served_by",
        "slot_stream",
        "sse_at",
        "sse_tail",
        "started",
        "status",
        "sticky",
        "task",
        "up_out",
        "upstream",
        "upstream_keep_alive",
        "upstream_until_close",
        "waiting_for",
    )

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        # routing and admission
        self.started = 0.0  # when routing began (loop time)
        # A 2026-07-28 request waits for its body (up to mcp_era.MAX_CHECKED) to be checked
        # against its routing headers before it is routed (route.resume_after_body).
        self.awaiting_body = False
        self.finished = 0.0  # when the backend's answer ended (loop time; 0: not yet)
        self.backend: Backend | None = None  # holds a slot here while set
        self.slot_stream = False  # the slot held on backend is a stream's
        self.bound_backend: str | None = None  # backend a session id routed to
        self.attempted = NONE_TRIED  # backends tried (retries go elsewhere)
        self.retries = 0
        self.waiting_for: Backend | None = None  # queued for a slot on this (None: any)
        self.queue_timer: asyncio.TimerHandle | None = None
        self.queued_at = 0.0
        self.task: asyncio.Task[None] | None = None  # a routing step or connect under way
        # upstream
        self.upstream: UpstreamConnection | None = None
        self.up_out: list[bytes] = []  # request bytes not yet written (see send_up)
        self.body_paused = 0.0  # seconds the body was held back by the proxy itself
        # the answer
        self.response_started = False
        self.status = 0  # for metrics and the access log
        self.response_bytes = 0
        self.served_by = ""  # backend name of the answer
        self.framing = framing.NO_BODY  # how the body is framed toward the client
        self.upstream_keep_alive = False
        self.upstream_until_close = False  # the body ends when the backend closes
        self.client_keep_alive = True
        self.holding = False  # a session store update must land before the answer goes out
        # An event stream answer the proxy may add keep-alive comments to (sse_keepalive):
        # when it last wrote to it (0: not such a stream) and the last bytes it relayed
        # (a keep-alive goes only where an event has ended).
        self.sse_at = 0.0
        self.sse_tail = b""
        self.complete_pending = False  # the backend finished while holding
        # The request's affinity: the key it was routed by, what its answer teaches.
        self.sticky: Stickiness | None = None

    def pick(self, request: Request) -> Backend | None:
        """The strategy's pick among the backends this exchange did not try yet."""
        conn = self.conn
        return routing.pick(conn.runtime, request, conn.client_ip, self.attempted)

    # -- admission: request slots and the queue -----------------------------------------

    def dispatch(self, request: Request, backend: Backend, fresh: bool = False) -> None:
        """Take a slot on ``backend`` (or queue for one), then a connection to it (a new
        one if ``fresh``)."""
        admission = self.conn.runtime.cluster.admission
        stream = request.wants_stream
        if stream:
            if admission.streams_full(backend):
                self.too_many_streams()
                return
        elif admission.limited and not admission.can_hold(backend):
            self.wait_for_slot(backend if self.bound_backend is not None else None)
            return
        admission.hold(backend, stream)
        self.backend = backend
        self.slot_stream = stream
        self._send_to(request, backend, fresh)

    def too_many_streams(self) -> None:
        self.conn.stats.rejected["max_streams"] += 1
        self.conn.relay.answer(answers.TOO_MANY_STREAMS)

    def wait_for_slot(self, target: Backend | None) -> None:
        """Queue until a slot frees up (on ``target``, or anywhere), or 503 after the
        queue timeout; 503 at once when the queue is full."""
        conn = self.conn
        admission = conn.runtime.cluster.admission
        if not admission.enqueue(self):
            conn.stats.rejected["queue_full"] += 1
            conn.relay.answer(answers.QUEUE_FULL)
            return
        conn.stats.queued += 1
        self.waiting_for = target
        self.queued_at = conn.loop.time()
        self.queue_timer = conn.loop.call_later(admission.queue_timeout, self._queue_timed_out)

    def leave_queue(self) -> None:
        if self.queue_timer is not None:
            self.queue_timer.cancel()
            self._left_queue()

    def _left_queue(self) -> None:
        self.queue_timer = None
        self.conn.runtime.cluster.admission.leave(self)
        self.conn.stats.queue_wait.observe(self.conn.loop.time() - self.queued_at)

    def _queue_timed_out(self) -> None:
        self._left_queue()
        self.conn.stats.rejected["queue_timeout"] += 1
        self.conn.relay.answer(answers.QUEUE_TIMEOUT)

    def retry_admission(self) -> bool:
        """Called by Admission (this is its Waiter) when a slot frees up while queued."""
        conn = self.conn
        request = conn.current
        admission = conn.runtime.cluster.admission
        if request is None or conn.state == CLOSED or conn.ex is not self:
            self.leave_queue()
            return False
        target = admission.admissible(self.waiting_for, lambda: self.pick(request))
        if target is None:
            return False
        self.leave_queue()
        # The slot is taken now, so the waker counts it; the request is sent on the next
        # loop turn, not inside the teardown of the connection whose release woke it.
        admission.hold(target, False)
        self.backend = target
        self.slot_stream = False
        conn.loop.call_soon(self._send_admitted, request, target)
        return True

    def _send_admitted(self, request: Request, backend: Backend) -> None:
        conn = self.conn
        if request is not conn.current or conn.state == CLOSED or self.backend is not backend:
            return  # the client left meanwhile, and its teardown gave the slot back
        self._send_to(request, backend)

    # -- to the backend -----------------------------------------------------------------

    def _send_to(self, request: Request, backend: Backend, fresh: bool = False) -> None:
        """With a slot held on ``backend``: a pooled connection (unless ``fresh``), else
        a new one."""
        conn = None if fresh else self.conn.runtime.cluster.pool(backend).take()
        if conn is not None:
            self._attach(request, backend, conn)
        else:
            self.task = self.conn.spawn(self._connect(request, backend))

    async def _connect(self, request: Request, backend: Backend) -> None:
        """Open a connection; while nothing was sent, failures may move to another backend."""
        client = self.conn
        try:
            conn = await client.runtime.cluster.pool(backend).connect()
        except (OSError, TimeoutError) as exc:
            self.task = None
            await self._connect_failed(request, backend, exc)
            return
        self.task = None
        if request is not client.current or client.state == CLOSED:
            conn.pool.release(conn, client.loop.time())
            return
        self._attach(request, backend, conn)

    async def _connect_failed(self, request: Request, backend: Backend, exc: Exception) -> None:
        client = self.conn
        runtime = client.runtime
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
        log.warning("connect to backend %s failed: %s", backend.name, reason)
        runtime.cluster.health.connect_failed(backend, reason)
        client.stats.backends[backend.name].connect_failures += 1
        self.release_slot()
        if request is not client.current or client.state == CLOSED:
            return  # the client is gone
        sticky = self.sticky
        if self.bound_backend is not None and sticky is not None and sticky.found is not None:
            # Its keys died with it; the client must start over elsewhere.
            job = sticky.backend_lost(request)
            if job is not None:
                await job
            client.relay.answer_key_not_found(sticky.found)
            return
        self.attempted |= {backend.name}
        retry = self.retry_target(request, "connect_failure", sent=False)
        if retry is None:
            client.relay.answer(answers.UNREACHABLE)
        else:
            self.dispatch(request, retry)

    def _attach(self, request: Request, backend: Backend, upstream: UpstreamConnection) -> None:
        """Send the request head (and any buffered body) on ``upstream``."""
        conn = self.conn
        self.backend = backend
        self.served_by = backend.name
        self.upstream = upstream
        upstream.sink = conn.relay
        upstream.requests += 1
        upstream.expect_no_body = request.method == b"HEAD"
        conn.state = WAIT_RESPONSE
        conn.mark = None
        request_id = None
        if request.request_id is None:
            request.request_id = request_id = conn.runtime.next_request_id()
        head = framing.request_head(
            request,
            path_prefix=backend.path_prefix,
            host_header=backend.host_header,
            preserve_host=conn.runtime.config.preserve_host,
            client_ip=conn.client_ip_bytes,
            proto=conn.forwarded_proto,
            request_id=request_id,
        )
        body = b""
        if request.body:
            body = b"".join(request.body)
            request.body.clear()
            request.buffered = 0
            conn.resume_reading(PAUSE_BUFFER_FULL)
        replay = request.replay
        if replay is not None:
            replay.clear()
            if body:
                replay.append(body)
            if len(body) > REPLAY_LIMIT:
                request.replay = None
        self.send_up(head + body if body else head)
        if conn.write_paused:
            conn.pause_upstream(UP_PAUSE_CLIENT_FULL)

    def forward_body(self, request: Request, data: bytes) -> None:
        """Send a piece of the body on, or keep it until a connection takes the request."""
        upstream = self.upstream
        if request is self.conn.current and upstream is not None:
            self.send_up(data)
            replay = request.replay
            if replay is not None and not upstream.received:
                replay.append(data)
                if sum(map(len, replay)) > REPLAY_LIMIT:
                    request.replay = None
            return
        request.body.append(data)
        request.buffered += len(data)
        if request.buffered > BODY_BUFFER_LIMIT:
            self.conn.pause_reading(PAUSE_BUFFER_FULL)

    def send_up(self, data: bytes) -> None:
        """Write towards the backend; what one client read produces (a request head and
        the body that came with it) goes out in one write (``flush_up``)."""
        if self.conn.feeding:
            self.up_out.append(data)
        elif self.upstream is not None:
            self.upstream.send(data)

    def flush_up(self) -> None:
        out = self.up_out  # one list for the exchange's life: emptied, not replaced
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self.upstream is not None:
            self.upstream.send(data)

    # -- retries ------------------------------------------------------------------------

    def retry_target(
        self, request: Request, condition: str, sent: bool, same: Backend | None = None
    ) -> Backend | None:
        """Another backend (or ``same``) to send a failed request to, if the retry policy
        and the budget allow it (``sent``: the request may have reached the backend)."""
        conn = self.conn
        config = conn.runtime.config.retries
        if self.retries >= config.attempts or not may_retry(
            config, condition, request.method, sent
        ):
            return None
        backend = same or self.pick(request)
        if backend is None:
            return None
        if not conn.runtime.retry_budget.try_retry(conn.loop.time()):
            conn.stats.retry_budget_exhausted += 1
            log.warning("retry budget exhausted: not retrying %s", request.method.decode())
            return None
        self.retries += 1
        conn.stats.backends[backend.name].retries += 1
        return backend

    def resend(self, request: Request, backend: Backend, fresh: bool = False) -> None:
        """Send ``request`` again from its replay buffer (``fresh``: on a new connection)."""
        assert request.replay is not None
        request.body = request.replay + request.body
        request.buffered = sum(map(len, request.body))
        self.dispatch(request, backend, fresh)

    # -- the end ------------------------------------------------------------------------

    def time_out(self) -> None:
        """The backend did not answer within timeouts.upstream_header: 504."""
        conn = self.conn
        if self.backend is not None:
            conn.runtime.cluster.health.timed_out(self.backend)
            conn.stats.backends[self.backend.name].timeouts += 1
        self.abandon()
        conn.relay.answer(answers.GATEWAY_TIMEOUT)

    def release_slot(self) -> None:
        """Give back the slot of an exchange that never reached its backend."""
        backend = self.backend
        if backend is not None:
            self.backend = None
            self.conn.runtime.cluster.admission.release(backend, self.slot_stream)
            self.slot_stream = False

    def detach_upstream(self, upstream: UpstreamConnection) -> None:
        self.upstream = None
        self.up_out.clear()
        upstream.sink = None
        conn = self.conn
        if conn.up_pauses:
            conn.up_pauses = 0
            upstream.resume_reading()

    def end(self, now: float = 0.0) -> None:
        """Detach from the upstream connection and free the slot held on the backend
        (``now``: the loop time, if the caller has it)."""
        conn = self.conn
        upstream = self.upstream
        backend = self.backend
        self.upstream = None
        self.backend = None
        if backend is not None:
            conn.runtime.cluster.admission.release(backend, self.slot_stream)
            backend_stats = conn.stats.backends[backend.name]
            self.finished = now = now or conn.loop.time()
            backend_stats.duration.observe(now - self.started)
            backend_stats.bytes_out += self.response_bytes
            if conn.current is not None:
                backend_stats.bytes_in += conn.current.body_size
        self.slot_stream = False
        self.up_out.clear()  # bytes for a connection that is being let go
        if self.sticky is not None:
            # What the end changes (the legacy transport's session lives as long as its
            # GET stream).
            job = self.sticky.on_end()
            if job is not None:
                conn.spawn(job)
        if upstream is not None:
            self.detach_upstream(upstream)

    def abandon(self) -> None:
        """End an exchange cut short: free its slot, and drop its backend connection,
        whose state is unknown."""
        upstream = self.upstream
        if upstream is not None or self.backend is not None:
            self.end()
            if upstream is not None:
                upstream.abort()
