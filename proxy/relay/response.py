"""The answer's half of an exchange: what the backend connection reports to (the response
head, body, end, loss, tunnelled bytes: ``pool.ResponseSink``) and the proxy's own answers,
written to the client through ``ClientSide``.

``Response`` holds the state of the answer under way (how it is framed toward the client,
what was sent, whether it is held for a store update); ``Exchange`` (exchange.py) is the
class of the one object per request, with the request's way to the backend. The decisions
the answer needs from that half (retry after a reset or a 502-504, the end of the
exchange) are declared here and made there. How a response is framed and which of its
headers go on is decided by ``framing.response_head``; what its session ids and cookie
become, by the request's affinity object (``affinity.Stickiness``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

import httptools

from mcplb.proxy.cluster.backends import Backend
from mcplb.proxy.cluster.pool import UpstreamConnection
from mcplb.proxy.relay import answers, framing, http11
from mcplb.proxy.relay.affinity import Job, KeyFound, Stickiness
from mcplb.proxy.relay.answers import Answer
from mcplb.proxy.relay.client_side import ClientSide
from mcplb.proxy.relay.http11 import LAST_CHUNK, Headers, chunk
from mcplb.proxy.relay.keepalive import SseKeepAlive
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


class Response:
    """The answer to one request, as the client gets it."""

    __slots__ = (
        "backend",
        "body_framing",
        "client",
        "client_keep_alive",
        "complete_pending",
        "done",
        "holding",
        "keepalive",
        "loop",
        "out",
        "read_time",
        "request",
        "response_bytes",
        "response_started",
        "runtime",
        "served_by",
        "slot_stream",
        "started",
        "status",
        "sticky",
        "tunnelling",
        "upstream",
        "upstream_keep_alive",
        "upstream_until_close",
    )

    def __init__(
        self, client: ClientSide, runtime: Shared, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.client = client
        self.runtime = runtime
        self.loop = loop
        self.request: Request | None = None  # set when the request starts (route.start)
        self.done = False  # the connection went on without it (answered, closed, left)
        self.started = 0.0  # when routing began (loop time)
        self.backend: Backend | None = None  # holds a slot here while set
        self.slot_stream = False  # the slot held on backend is a stream's
        self.upstream: UpstreamConnection | None = None
        # The request's affinity: the key it was routed by, what its answer teaches.
        self.sticky: Stickiness | None = None
        self.out: list[bytes] = []  # response bytes not yet written (see flush)
        # When the upstream read being handled brought a response head (0: none did). A
        # small response ends in the same read: its end takes this time, not a clock read.
        self.read_time = 0.0
        self.response_started = False
        self.status = 0  # for metrics and the access log
        self.response_bytes = 0
        self.served_by = ""  # backend name of the answer
        self.body_framing = framing.NO_BODY  # how the body is framed toward the client
        self.upstream_keep_alive = False
        self.upstream_until_close = False  # the body ends when the backend closes
        self.client_keep_alive = True
        self.holding = False  # a session store update must land before the answer goes out
        self.complete_pending = False  # the backend finished while holding
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

    def abandon(self) -> None:
        raise NotImplementedError

    def detach_upstream(self, upstream: UpstreamConnection) -> None:
        raise NotImplementedError

    def pause_upstream(self, reason: int) -> None:
        raise NotImplementedError

    def resume_upstream(self, reason: int) -> None:
        raise NotImplementedError

    def spawn(self, job: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        raise NotImplementedError

    def give_client_slot(self) -> None:
        raise NotImplementedError

    def too_many_streams(self) -> None:
        raise NotImplementedError

    # -- writing ------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what the last upstream read produced in one call (one syscall, not one
        per piece of the response)."""
        self.read_time = 0.0  # the read is handled
        out = self.out
        if not out or self.holding:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()  # the same list for the exchange's life
        self.client.write(data)

    # -- the backend's response (ResponseSink) ------------------------------------------

    def upstream_head(self, status: int, reason: bytes, headers: Headers, keep_alive: bool) -> None:
        request = self.request
        client = self.client
        assert request is not None
        client.touch()
        if status < 200 and status != 101:
            if request.version != "1.0":
                hop = http11.connection_tokens(headers)
                client.write(
                    http11.status_line(status, reason)
                    + http11.serialize_headers(http11.end_to_end(headers, hop))
                    + b"\r\n"
                )
            return
        if 502 <= status <= 504 and self.retry_after_status(request, status):
            return
        if not self.slot_stream and _over_stream_cap(self, headers):
            return
        client.set_state(STREAMING)
        self.response_started = True
        self.upstream_keep_alive = keep_alive
        self.status = status
        backend = self.backend
        runtime = self.runtime
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
        self.body_framing = head.framing
        self.client_keep_alive = head.keep_alive
        self.upstream_until_close = head.until_close
        rewritten = None
        if backend is not None:
            if head.content_type.startswith(b"text/event-stream"):
                if not self.slot_stream:
                    self.slot_stream = True
                    runtime.cluster.admission.became_stream(backend)
                    self.give_client_slot()  # a stream holds no request slot
                if status == 200 and head.framing in (framing.CHUNKED, framing.UNTIL_CLOSE):
                    self.keepalive = SseKeepAlive(now, head.framing == framing.CHUNKED)
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

    def upstream_body(self, data: bytes) -> None:
        self.client.touch()
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
        if self.holding:
            self.complete_pending = True
            return
        chunked = self.body_framing == framing.CHUNKED
        sticky = self.sticky
        if sticky is not None and sticky.learner is not None:
            rest, job = sticky.on_complete()
            if rest:
                self.out.append(chunk(rest) if chunked else rest)
            if job is not None:
                self._hold_for(job)
                self.complete_pending = True
                return
        if chunked:
            self.out.append(LAST_CHUNK)
        now = self.read_time or self.loop.time()
        self.flush()
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
            if self.body_framing != framing.TUNNEL or upstream is None:
                client.close()
                return
            client.set_state(TUNNELLING)
            self.tunnelling = True
            leftover = client.take_upgrade_leftover()
            if leftover:
                upstream.send(leftover)
            client.resume_reading(PAUSE_BUFFER_FULL)
        client.touch()
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

    # -- holding the answer for a session store update ----------------------------------

    def _hold_for(self, job: Job) -> None:
        """Hold the response while ``job`` (a store update) runs, then release it."""
        self.holding = True
        self.pause_upstream(UP_PAUSE_HOLD)
        self.spawn(self._release_after(job))

    async def _release_after(self, job: Job) -> None:
        try:
            await job
        except Exception:
            log.exception("session store update failed")
        self.holding = False
        self.flush()
        self.resume_upstream(UP_PAUSE_HOLD)
        if self.complete_pending:
            self.complete_pending = False
            self.upstream_complete()

    # -- the proxy's own answers --------------------------------------------------------

    def answer(self, answer: Answer, headers: Headers | None = None) -> None:
        """Answer the request with an error (only if no response byte was sent)."""
        if self.done:
            return  # the connection went on: not this exchange's to answer
        request = self.request
        if self.response_started or request is None:
            self.client.close()
            return
        keep = request.complete and request.keep_alive and self.client.may_keep_alive()
        status = answer.status
        self.status = status
        self.runtime.stats.proxy_errors[str(status)] += 1
        if status >= 500:
            method = request.method.decode()
            log.warning("%d %s: %s %s", status, answer.code, method, answer.message)
        if request.verdict is None:
            data = answers.render(answer, close=not keep, headers=headers)
        else:  # 2026-07-28: a JSON-RPC error with the request's id (2025: unchanged)
            data = answers.render_jsonrpc(answer, request.rpc_id, close=not keep, headers=headers)
        self._write_answer(data, keep)

    def answer_json(
        self, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        """Answer with a JSON body of the proxy's own, before any response byte: a refused
        MCP request's JSON-RPC error, or a document (Protected Resource Metadata)."""
        request = self.request
        if self.done or request is None or self.response_started:
            return
        keep = request.complete and request.keep_alive and self.client.may_keep_alive()
        self.status = status
        if status >= 400:
            self.runtime.stats.proxy_errors[str(status)] += 1
        response = http11.json_response(status, body, close=not keep, extra_headers=headers)
        self._write_answer(response, keep)

    def reject(self, answer: Answer) -> None:
        """Answer a request that could not be parsed or accepted, then close."""
        if self.done:
            return
        self.abandon()
        lingering = False
        if not self.response_started:
            self.client.write(answers.render(answer, close=True))
            self.status = answer.status
            self.runtime.stats.proxy_errors[str(answer.status)] += 1
            lingering = True
        self.client.close(linger=lingering)

    def answer_key_not_found(self, found: KeyFound) -> None:
        """The answer of a key's kind for a key whose backend is unknown or cannot serve it
        (404 for a session id; a task's not-found error with edge auth on)."""
        request = self.request
        if request is None:
            return
        keep = request.complete and request.keep_alive
        self.status, data = found.kind.not_found(request, close=not keep)
        if self.status == 404:
            self.runtime.stats.session_not_found += 1
        self._write_answer(data, keep)

    def _write_answer(self, data: bytes, keep_alive: bool) -> None:
        request = self.request
        if request is None or self.done:
            return
        self.response_started = True
        self.client.write(data)
        if keep_alive:
            self.client.finish(request, True)
        else:
            # Input may still be arriving (an upload answered early): close lingering, or
            # the unread bytes would reset the connection and lose the answer.
            self.client.close(linger=not request.complete)


def _over_stream_cap(res: Response, headers: Headers) -> bool:
    """A response that is an event stream while its backend (or the worker) has as many as
    ``max_streams`` allows: refused with 503 and its backend connection dropped, whatever
    the request asked for (issue 29, N7). True if so."""
    backend = res.backend
    upstream = res.upstream
    if backend is None or upstream is None:
        return False
    if not res.runtime.cluster.admission.streams_full(backend):
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
