"""One exchange: a request and its answer, the one owner of everything per request.

A fresh ``Exchange`` per request (as uvicorn's ``RequestResponseCycle``, and Envoy's
router with its upstream request) holds everything that lives from routing to the last
byte of the answer: where it went, the slot it holds, the backend connection, retries, and
(in its base classes) how the backend's answer is framed and what was sent (``Response``,
response.py), what the client was told and the proxy's own answers (``Reply``, reply.py).
Nothing of it is reset by hand: when the answer is done, the client connection starts a
new one.

Its methods take the request on once routed (route.py): ``dispatch`` takes a slot on the
backend or queues for one (the exchange is the admission queue's ``Waiter``), then a
pooled or new connection, on which ``_attach`` sends the request head and any body kept so
far; ``forward_body`` sends the rest as it arrives. The backend connection reports to the
exchange's ``Response`` (its ``ResponseSink``), which asks the exchange whether to retry
(``retry_after_reset``, ``retry_after_status``) and ends it (``end``). The exchange talks to
its client connection only through ``ClientSide`` (client_side.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from mcplb.proxy.cluster.backends import Backend
from mcplb.proxy.cluster.pool import UpstreamConnection, local_failure
from mcplb.proxy.relay import answers, framing
from mcplb.proxy.relay.client_side import ClientSide, Peer
from mcplb.proxy.relay.request import Request
from mcplb.proxy.relay.response import Response
from mcplb.proxy.relay.shared import Shared
from mcplb.proxy.relay.states import (
    BODY_BUFFER_LIMIT,
    MAX_READ,
    PAUSE_BUFFER_FULL,
    REPLAY_LIMIT,
    UP_PAUSE_CLIENT_FULL,
    WAIT_RESPONSE,
)
from mcplb.proxy.routing import steps as routing
from mcplb.proxy.routing.retries import may_retry

log = logging.getLogger("mcplb.relay")

# The backends an exchange tried, before any retry: one shared set, not one per request.
NONE_TRIED: Final[frozenset[str]] = frozenset()


class Exchange(Response):
    """The per-request state of a client connection, and the request's way to a backend
    (the answer's half is ``Response``, and its base ``Reply``)."""

    __slots__ = (
        "body_paused",
        "bound_backend",
        "client_slot",
        "finished",
        "peer",
        "retry",
        "task",
        "up_out",
        "wait",
    )

    def __init__(
        self, client: ClientSide, runtime: Shared, peer: Peer, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(client, runtime, loop)
        self.peer = peer
        # routing and admission
        self.finished = 0.0  # when the backend's answer ended (loop time; 0: not yet)
        self.bound_backend: str | None = None  # backend a strict affinity key routed to
        self.client_slot = False  # counted in frontend.client_slots (give_client_slot)
        self.retry: Retries | None = None  # what failed, and the retries spent
        self.wait: SlotWait | None = None  # while queued for a slot
        self.task: asyncio.Task[None] | None = None  # a routing step or connect under way
        # upstream
        self.up_out: list[bytes] = []  # request bytes not yet written (see send_up)
        self.body_paused = 0.0  # seconds the body was held back by the proxy itself

    def live(self, request: Request) -> bool:
        """Whether ``request`` is still this exchange's, and the exchange still the one
        its connection is answering (checked after every await)."""
        return request is self.request and not self.done

    def pick(self, request: Request) -> Backend | None:
        """The strategy's pick among the backends this exchange did not try yet."""
        runtime = self.runtime
        return routing.pick(
            runtime.cluster,
            runtime.affinity.header_hash,
            request,
            self.peer.ip,
            NONE_TRIED if self.retry is None else self.retry.attempted,
        )

    # -- admission: request slots and the queue -----------------------------------------

    def dispatch(self, request: Request, backend: Backend, fresh: bool = False) -> None:
        """Take a slot on ``backend`` (or queue for one), then a connection to it (a new
        one if ``fresh``)."""
        admission = self.runtime.cluster.admission
        if request.wants_stream and admission.streams_full(backend):
            self.too_many_streams()  # it asks for a stream: no use sending it
            return
        if not self.client_slot:
            # limits.max_in_flight_per_client: one address cannot hold or queue for every
            # slot; else 429 (given back by ``give_client_slot``, or at the end).
            if not self.runtime.frontend.client_slots.take(self.peer.ip):
                self.runtime.stats.rejected["client_busy"] += 1
                self.answer(answers.CLIENT_BUSY)
                return
            self.client_slot = True
        # Every request takes a request slot, whatever its Accept header says: only the
        # backend's answer makes it a stream (Response.upstream_head).
        if admission.limited and not admission.can_hold(backend):
            self.wait_for_slot(backend if self.bound_backend is not None else None)
            return
        admission.hold(backend, False)
        self.backend = backend
        self.slot_stream = False
        self._send_to(request, backend, fresh)

    def give_client_slot(self) -> None:
        """The request no longer holds or waits for a request slot (ended, or a stream)."""
        if self.client_slot:
            self.client_slot = False
            self.runtime.frontend.client_slots.give(self.peer.ip)

    def too_many_streams(self) -> None:
        self.runtime.stats.rejected["max_streams"] += 1
        self.answer(answers.TOO_MANY_STREAMS)

    def wait_for_slot(self, target: Backend | None) -> None:
        """Queue until a slot frees up (on ``target``, or anywhere): ``SlotWait``."""
        self.wait = SlotWait.enqueue(self, target)

    def leave_queue(self) -> None:
        if self.wait is not None:
            self.wait.leave()

    def send_admitted(self, request: Request, backend: Backend) -> None:
        """The slot a queued request waited for, taken on its behalf (``SlotWait``)."""
        self.wait = None
        if not self.live(request) or self.backend is not backend:
            return  # the client left meanwhile, and its teardown gave the slot back
        self._send_to(request, backend)

    # -- to the backend -----------------------------------------------------------------

    def _send_to(self, request: Request, backend: Backend, fresh: bool = False) -> None:
        """With a slot held on ``backend``: a pooled connection (unless ``fresh``), else
        a new one."""
        conn = None if fresh else self.runtime.cluster.pool(backend).take()
        if conn is not None:
            self._attach(request, backend, conn)
        else:
            self.task = self.spawn(self._connect(request, backend))

    async def _connect(self, request: Request, backend: Backend) -> None:
        """Open a connection; while nothing was sent, failures may move to another backend."""
        try:
            conn = await self.runtime.cluster.pool(backend).connect()
        except (OSError, TimeoutError) as exc:
            self.task = None
            await connect_failed(self, request, backend, exc)
            return
        self.task = None
        if not self.live(request):
            conn.pool.release(conn, self.loop.time())
            return
        self._attach(request, backend, conn)

    def _attach(self, request: Request, backend: Backend, upstream: UpstreamConnection) -> None:
        """Send the request head (and any buffered body) on ``upstream``."""
        client = self.client
        runtime = self.runtime
        self.backend = backend
        self.served_by = backend.name
        self.upstream = upstream
        upstream.sink = self
        upstream.requests += 1
        upstream.expect_no_body = request.method == b"HEAD"
        client.set_state(WAIT_RESPONSE)
        request_id = None
        if request.request_id is None:
            request.request_id = request_id = runtime.next_request_id()
        peer = self.peer
        trusted = runtime.frontend.rate_limit_client
        head = framing.request_head(
            request,
            path_prefix=backend.path_prefix,
            host_header=backend.host_header,
            preserve_host=runtime.frontend.preserve_host,
            client_ip=peer.ip_bytes,
            proto=peer.proto,
            request_id=request_id,
            via=runtime.frontend.via,
            trusted_peer=trusted is not None and trusted.trusts(peer.ip),
        )
        body = b""
        if request.body:
            body = b"".join(request.body)
            request.body.clear()
            request.buffered = 0
            client.resume_reading(PAUSE_BUFFER_FULL)
        replay = request.replay
        if replay is not None:
            replay.clear()
            if body:
                replay.append(body)
            if len(body) > REPLAY_LIMIT:
                request.replay = None
        data = head + body if body else head
        if client.feeding:  # send_up, inline (every request)
            self.up_out.append(data)
        else:
            upstream.send(data)
        if client.flow.write_paused:
            self.pause_upstream(UP_PAUSE_CLIENT_FULL)

    def forward_body(self, request: Request, data: bytes) -> None:
        """Send a piece of the body on, or keep it until a connection takes the request."""
        upstream = self.upstream
        if request is self.request and upstream is not None:
            self.send_up(data)
            replay = request.replay
            if replay is not None and not upstream.received:
                replay.append(data)
                if sum(map(len, replay)) > REPLAY_LIMIT:
                    request.replay = None
            return
        request.body.append(data)
        request.buffered += len(data)
        if request.buffered + MAX_READ > BODY_BUFFER_LIMIT and not request.buffering:
            # Paused before a next read could take the buffer past the limit: the read
            # under way comes whole (checked after it, a 256 KiB buffer held 500 KiB).
            # (While buffered before routing, request_buffer.py bounds it.)
            self.client.pause_reading(PAUSE_BUFFER_FULL)

    def send_up(self, data: bytes) -> None:
        """Write towards the backend; what one client read produces (a request head and
        the body that came with it) goes out in one write (``flush_up``)."""
        if self.client.feeding:
            self.up_out.append(data)
        elif self.upstream is not None:
            self.upstream.send(data)

    def flush_up(self) -> None:
        out = self.up_out  # one list for the exchange's life: emptied, not replaced
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self.upstream is not None:
            self.upstream.send(data)

    # -- retries (decided by ``Retries``, made at the first failure) --------------------

    def retrying(self) -> Retries:
        if self.retry is None:
            self.retry = Retries()
        return self.retry

    def retry_after_reset(self, request: Request, upstream: UpstreamConnection) -> bool:
        return self.retrying().after_reset(self, request, upstream)

    def retry_after_status(self, request: Request, status: int) -> bool:
        return self.retrying().after_status(self, request, status)

    def resend(self, request: Request, backend: Backend, fresh: bool = False) -> None:
        """Send ``request`` again from its replay buffer (``fresh``: on a new connection)."""
        assert request.replay is not None
        request.body = request.replay + request.body
        request.buffered = sum(map(len, request.body))
        self.dispatch(request, backend, fresh)

    # -- the end ------------------------------------------------------------------------

    def time_out(self) -> None:
        """No answer within timeouts.upstream_header (an MCP call's: mcp_call): 504."""
        if self.backend is not None:
            self.runtime.cluster.health.timed_out(self.backend)
            self.runtime.stats.backends[self.backend.name].timeouts += 1
        self.abandon()
        self.answer(answers.GATEWAY_TIMEOUT)

    def release_slot(self) -> None:
        """Give back the slot of an exchange that never reached its backend."""
        backend = self.backend
        if backend is not None:
            self.backend = None
            self.runtime.cluster.admission.release(backend, self.slot_stream)
            self.slot_stream = False

    def detach_upstream(self, upstream: UpstreamConnection) -> None:
        self.upstream = None
        self.up_out.clear()
        upstream.sink = None
        if self.up_pauses:
            self.up_pauses = 0
            upstream.resume_reading()

    def end(self, now: float = 0.0) -> None:
        """Detach from the upstream connection and free the slots held on the backend and
        for the client (``now``: the loop time, if the caller has it)."""
        upstream = self.upstream
        backend = self.backend
        self.upstream = None
        self.backend = None
        if self.client_slot:  # give_client_slot, inline: every request ends here
            self.client_slot = False
            self.runtime.frontend.client_slots.give(self.peer.ip)
        if backend is not None:
            self.runtime.cluster.admission.release(backend, self.slot_stream)
            backend_stats = self.runtime.stats.backends[backend.name]
            self.finished = now = now or self.loop.time()
            backend_stats.duration.observe(now - self.started)
            backend_stats.bytes_out += self.response_bytes
            if self.request is not None:
                backend_stats.bytes_in += self.request.body_size
        self.slot_stream = False
        self.up_out.clear()  # bytes for a connection that is being let go
        if self.sticky is not None and self.sticky.learner is not None:
            # What the end changes (the legacy transport's session lives as long as its
            # GET stream).
            job = self.sticky.on_end()
            if job is not None:
                self.spawn(job)
        if upstream is not None:
            self.detach_upstream(upstream)

    def abandon(self) -> None:
        """End an exchange cut short: free its slot, and drop its backend connection,
        whose state is unknown."""
        if self.client_slot:
            self.give_client_slot()
        upstream = self.upstream
        if upstream is not None or self.backend is not None:
            self.end()
            if upstream is not None:
                upstream.abort()

    def drop(self) -> None:
        """The connection goes on without this exchange (it closed, or the client left):
        out of the admission queue, its task cancelled, its backend connection dropped."""
        self.done = True
        self.leave_queue()
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self.abandon()

    def log_access(self, request: Request, client_left: bool = False) -> None:
        """The access-log line of ``request`` (this exchange's, or one pipelined behind it
        that never started); ``client_left``: the client closed before the answer ended;
        before it began, the status is 499 (as nginx logs it)."""
        if request is self.request:
            status = self.status if self.response_started or not client_left else 499
            duration = (self.finished or self.loop.time()) - self.started
            self.peer.log(
                request, status, duration, self.served_by, self.response_bytes, client_left
            )
        else:  # pipelined behind the current one: never started
            self.peer.log(request, 499, 0.0, "", 0, client_left)


async def connect_failed(ex: Exchange, request: Request, backend: Backend, exc: Exception) -> None:
    """A connect to ``backend`` failed: 503 for the proxy's own exhaustion (no health
    penalty, no binding forgotten); else the backend's failure: health told, a strict
    key's binding lost (404), or a retry elsewhere, or 502."""
    runtime = ex.runtime
    reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
    if local_failure(exc):
        # The proxy's own exhaustion (EMFILE...): no health penalty, no binding forgotten.
        log.warning("connect to backend %s failed here: %s", backend.name, reason)
        runtime.stats.rejected["local_resources"] += 1
        ex.release_slot()
        if ex.live(request):
            ex.answer(answers.LOCAL_RESOURCES)
        return
    log.warning("connect to backend %s failed: %s", backend.name, reason)
    runtime.cluster.health.connect_failed(backend, reason)
    runtime.stats.backends[backend.name].connect_failures += 1
    ex.release_slot()
    if not ex.live(request):
        return  # the client is gone
    sticky = ex.sticky
    if ex.bound_backend is not None and sticky is not None and sticky.found is not None:
        # Its keys died with it; the client must start over elsewhere.
        job = sticky.backend_lost(request)
        if job is not None:
            await job
        ex.answer_key_not_found(sticky.found)
        return
    retries = ex.retrying()
    retries.attempted |= {backend.name}
    retry = retries.target(ex, request, "connect_failure", sent=False)
    if retry is None:
        ex.answer(answers.UNREACHABLE)
    else:
        ex.dispatch(request, retry)


class SlotWait:
    """An exchange queued for a slot (the admission queue's ``Waiter``): which backend it
    must go to, since when, and the timer of its 503. Exists only while queued."""

    __slots__ = ("ex", "queued_at", "timer", "waiting_for")

    def __init__(self, ex: Exchange, target: Backend | None) -> None:
        self.ex = ex
        self.waiting_for = target  # a bound request's backend (None: any)
        self.queued_at = ex.loop.time()
        self.timer: asyncio.TimerHandle | None = None

    @staticmethod
    def enqueue(ex: Exchange, target: Backend | None) -> SlotWait | None:
        """``ex`` queued for a slot (on ``target``, or anywhere), with its 503 after the
        queue timeout; None if the queue is full (answered 503 at once)."""
        wait = SlotWait(ex, target)
        admission = ex.runtime.cluster.admission
        stats = ex.runtime.stats
        if not admission.enqueue(wait):
            stats.rejected["queue_full"] += 1
            ex.answer(answers.QUEUE_FULL)
            return None
        stats.queued += 1
        wait.timer = ex.loop.call_later(admission.queue_timeout, wait._timed_out)
        return wait

    def leave(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self._left()

    def _left(self) -> None:
        ex = self.ex
        self.timer = None
        ex.wait = None
        ex.runtime.cluster.admission.leave(self)
        ex.runtime.stats.queue_wait.observe(ex.loop.time() - self.queued_at)

    def _timed_out(self) -> None:
        self._left()
        self.ex.runtime.stats.rejected["queue_timeout"] += 1
        self.ex.answer(answers.QUEUE_TIMEOUT)

    def retry_admission(self) -> bool:
        """Called by Admission when a slot frees up while queued."""
        ex = self.ex
        request = ex.request
        admission = ex.runtime.cluster.admission
        if request is None or ex.done:
            self.leave()
            return False
        target = admission.admissible(self.waiting_for, lambda: ex.pick(request))
        if target is None:
            return False
        self.leave()
        # The slot is taken now, so the waker counts it; the request is sent on the next
        # loop turn, not inside the teardown of the connection whose release woke it.
        admission.hold(target, False)
        ex.backend = target
        ex.slot_stream = False
        ex.loop.call_soon(ex.send_admitted, request, target)
        return True


class Retries:
    """What one exchange tried and may still try (Envoy's retry state): the backends that
    failed it and the retries spent; made at its first failure."""

    __slots__ = ("attempted", "count")

    def __init__(self) -> None:
        self.attempted = NONE_TRIED  # backends tried (retries go elsewhere)
        self.count = 0

    def target(
        self,
        ex: Exchange,
        request: Request,
        condition: str,
        sent: bool,
        same: Backend | None = None,
    ) -> Backend | None:
        """Another backend (or ``same``) to send a failed request to, if the retry policy
        and the budget allow it (``sent``: the request may have reached the backend)."""
        runtime = ex.runtime
        config = runtime.config.retries
        if self.count >= config.attempts or not may_retry(config, condition, request.method, sent):
            return None
        backend = same or ex.pick(request)
        if backend is None:
            return None
        if not runtime.cluster.retry_budget.try_retry(ex.loop.time()):
            runtime.stats.retry_budget_exhausted += 1
            log.warning("retry budget exhausted: not retrying %s", request.method.decode())
            return None
        self.count += 1
        runtime.stats.backends[backend.name].retries += 1
        return backend

    def after_reset(self, ex: Exchange, request: Request, upstream: UpstreamConnection) -> bool:
        """The connection died before any response byte: resend the request if it can be
        replayed and the policy allows; True if so."""
        backend = ex.backend
        ex.end()
        if upstream.received or request.replay is None or backend is None:
            return False
        if upstream.requests > 1:
            # Most likely the backend closed the idle pooled connection as we wrote: a
            # fresh connection to the same backend (not another pooled one: it may be as
            # stale).
            log.debug("pooled connection to %s was closed; retrying", backend.name)
            retry = self.target(ex, request, "reset", sent=True, same=backend)
        elif ex.bound_backend is not None:
            return False
        else:
            self.attempted |= {backend.name}
            retry = self.target(ex, request, "reset", sent=True)
        if retry is None:
            return False
        ex.resend(request, retry, fresh=retry is backend)
        return True

    def after_status(self, ex: Exchange, request: Request, status: int) -> bool:
        """Resend a request the backend answered 502/503/504, if configured; True if so."""
        runtime = ex.runtime
        backend = ex.backend
        upstream = ex.upstream
        if (
            backend is None
            or upstream is None
            or ex.bound_backend is not None
            or not request.complete
            or request.replay is None
            or str(status) not in runtime.config.retries.on
        ):
            return False
        self.attempted |= {backend.name}
        retry = self.target(ex, request, str(status), sent=True)
        if retry is None:
            return False
        runtime.cluster.health.responded(backend, status)
        runtime.stats.backends[backend.name].requests[(request.method, status // 100)] += 1
        ex.detach_upstream(upstream)
        upstream.abort()  # its body is not wanted: not worth reading to reuse the connection
        ex.end()
        ex.resend(request, retry)
        return True
