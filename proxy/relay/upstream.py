"""What the client gets back: the backend's response relayed as it arrives, or the
proxy's own answer, and the access-log line once it is done.

One ``ResponseRelay`` per client connection is the sink of every upstream connection the
connection's exchanges use (``pool.ResponseSink``); the state of the answer under way is
the current exchange's (``conn.ex``). How a response is framed and which of its headers go
on is decided by ``framing.response_head``; what its session ids and cookie become by
the request's affinity object (``affinity.Stickiness``).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

import httptools

from mcplb.proxy.relay import answers, framing, http11
from mcplb.proxy.relay.affinity import Job, KeyFound
from mcplb.proxy.relay.answers import Answer
from mcplb.proxy.relay.http11 import LAST_CHUNK, Headers, chunk
from mcplb.proxy.relay.request import Request
from mcplb.proxy.relay.states import (
    CLOSED,
    PAUSE_BUFFER_FULL,
    PAUSE_UPSTREAM_FULL,
    STREAMING,
    TUNNEL,
    UP_PAUSE_HOLD,
)

if TYPE_CHECKING:
    from mcplb.proxy.cluster.backends import Backend
    from mcplb.proxy.relay.connection import ClientConnection

KEEP_ALIVE = b": keep-alive\n\n"  # an SSE comment line, then a blank line (no event)

log = logging.getLogger("mcplb.relay")


class ResponseRelay:
    """Writes toward the client of one connection: backend responses and own answers."""

    __slots__ = ("conn", "out", "read_time")

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.out: list[bytes] = []  # response bytes not yet written (see flush)
        # When the upstream read being handled brought a response head (0: none did). A
        # small response ends in the same read: its end takes this time, not a clock read.
        self.read_time = 0.0

    # -- writing ------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what the last upstream read produced in one call (one syscall, not one
        per piece of the response)."""
        self.read_time = 0.0  # the read is handled
        out = self.out
        conn = self.conn
        if not out or conn.ex.holding:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()  # the same list for the connection's life
        if conn.transport is not None and conn.state != CLOSED:
            conn.transport.write(data)

    # -- the backend's response (ResponseSink) ------------------------------------------

    def upstream_head(self, status: int, reason: bytes, headers: Headers, keep_alive: bool) -> None:
        conn = self.conn
        request = conn.current
        assert request is not None and conn.transport is not None
        conn.active = True
        if status < 200 and status != 101:
            if request.version != "1.0":
                hop = http11.connection_tokens(headers)
                conn.transport.write(
                    http11.status_line(status, reason)
                    + http11.serialize_headers(http11.end_to_end(headers, hop))
                    + b"\r\n"
                )
            return
        if 502 <= status <= 504 and self._retry_after_status(request, status):
            return
        ex = conn.ex
        conn.state = STREAMING
        ex.response_started = True
        ex.upstream_keep_alive = keep_alive
        ex.status = status
        backend = ex.backend
        if backend is not None:
            conn.runtime.cluster.health.responded(backend, status)
            backend_stats = conn.stats.backends[backend.name]
            backend_stats.requests[(request.method, status // 100)] += 1
            self.read_time = now = conn.loop.time()
            backend_stats.first_byte.observe(now - ex.started)
        head = framing.response_head(
            status,
            headers,
            method=request.method,
            version=request.version,
            upgrade=request.upgrade,
            keep_alive=request.keep_alive and not conn.closing and conn.more_may_follow(),
        )
        ex.framing = head.framing
        ex.client_keep_alive = head.keep_alive
        ex.upstream_until_close = head.until_close
        rewritten = None
        if backend is not None:
            if head.content_type.startswith(b"text/event-stream"):
                if not ex.slot_stream:
                    ex.slot_stream = True
                    conn.runtime.cluster.admission.became_stream(backend)
                if ex.framing in (framing.CHUNKED, framing.UNTIL_CLOSE):
                    # Keep-alive comments may be added between its events (not to a
                    # Content-Length body: the length would no longer match).
                    ex.sse_at = now if status == 200 else 0.0
                    ex.sse_tail = b"\n\n"
            sticky = ex.sticky
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
        conn = self.conn
        ex = conn.ex
        conn.active = True
        ex.response_bytes += len(data)
        if ex.sse_at:
            ex.sse_at = self.read_time or conn.loop.time()
            ex.sse_tail = (ex.sse_tail + data)[-4:] if len(data) < 4 else data[-4:]
        sticky = ex.sticky
        if sticky is not None and sticky.learner is not None:
            data, job = sticky.on_body(data)
            if job is not None:
                self._hold_for(job)
            if not data:
                return
        if ex.framing == framing.CHUNKED:
            self.out.append(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.out.append(data)

    def upstream_complete(self) -> None:
        conn = self.conn
        ex = conn.ex
        if ex.framing == framing.TUNNEL:
            return
        if ex.holding:
            ex.complete_pending = True
            return
        sticky = ex.sticky
        if sticky is not None and sticky.learner is not None:
            rest, job = sticky.on_complete()
            if rest:
                self.out.append(chunk(rest) if ex.framing == framing.CHUNKED else rest)
            if job is not None:
                self._hold_for(job)
                ex.complete_pending = True
                return
        if ex.framing == framing.CHUNKED:
            self.out.append(LAST_CHUNK)
        now = self.read_time or conn.loop.time()
        self.flush()
        request = conn.current
        assert request is not None
        upstream = ex.upstream
        reusable = ex.upstream_keep_alive and http11.fully_sent(
            request.complete, request.upgrade, request.content_length, request.body_size
        )
        if upstream is not None:
            # Pooled first: a request woken by the slot this frees can take the connection.
            ex.detach_upstream(upstream)
            if reusable:
                upstream.pool.release(upstream, now)
            else:
                upstream.close()
        ex.end(now)
        conn.next_request(request)

    def upstream_tunnel(self, data: bytes) -> None:
        conn = self.conn
        if conn.state != TUNNEL:
            upstream = conn.ex.upstream
            if conn.ex.framing != framing.TUNNEL or upstream is None:
                conn.close()
                return
            conn.state = TUNNEL
            if conn.upgrade_leftover:
                upstream.send(conn.upgrade_leftover)
                conn.upgrade_leftover = b""
            conn.resume_reading(PAUSE_BUFFER_FULL)
        conn.active = True
        if data:
            # Behind the 101 head, which waits in ``out`` when the same read brought both.
            self.out.append(data)
        self.flush()

    def upstream_lost(self, error: BaseException | None) -> None:
        conn = self.conn
        ex = conn.ex
        upstream = ex.upstream
        request = conn.current
        if upstream is None or request is None:
            return
        if conn.state == TUNNEL:
            ex.end()
            conn.close()
        elif not ex.response_started:
            backend = ex.backend
            ex.end()
            retry = None
            if (
                not upstream.received
                and request.replay is not None
                and backend is not None
                and conn.state != CLOSED
            ):
                retry = self._retry_after_reset(request, backend, reused=upstream.requests > 1)
            if retry is not None:
                # Not another pooled connection to the same backend: it may be as stale.
                ex.resend(request, retry, fresh=retry is backend)
            elif isinstance(error, httptools.HttpParserError):
                self.answer(answers.INVALID_RESPONSE)
            else:
                self.answer(answers.BACKEND_CLOSED)
        elif ex.upstream_until_close:
            ex.upstream_keep_alive = False
            self.upstream_complete()
        else:
            # Mid-body: the client must see the response as truncated.
            ex.end()
            conn.close()

    def upstream_write_paused(self, paused: bool) -> None:
        if paused:
            self.conn.pause_reading(PAUSE_UPSTREAM_FULL)
        else:
            self.conn.resume_reading(PAUSE_UPSTREAM_FULL)

    # -- retries after a backend failure ------------------------------------------------

    def _retry_after_reset(
        self, request: Request, backend: Backend, reused: bool
    ) -> Backend | None:
        """Where to resend a request whose connection died before any response byte."""
        ex = self.conn.ex
        if reused:
            # Most likely the backend closed the idle pooled connection as we wrote:
            # a fresh connection to the same backend.
            log.debug("pooled connection to %s was closed; retrying", backend.name)
            return ex.retry_target(request, "reset", sent=True, same=backend)
        if ex.bound_backend is not None:
            return None
        ex.attempted |= {backend.name}
        return ex.retry_target(request, "reset", sent=True)

    def _retry_after_status(self, request: Request, status: int) -> bool:
        """Resend a request the backend answered 502/503/504, if configured; True if so."""
        conn = self.conn
        ex = conn.ex
        backend = ex.backend
        upstream = ex.upstream
        if (
            backend is None
            or upstream is None
            or ex.bound_backend is not None
            or not request.complete
            or request.replay is None
            or str(status) not in conn.runtime.config.retries.on
        ):
            return False
        ex.attempted |= {backend.name}
        retry = ex.retry_target(request, str(status), sent=True)
        if retry is None:
            return False
        conn.runtime.cluster.health.responded(backend, status)
        conn.stats.backends[backend.name].requests[(request.method, status // 100)] += 1
        ex.detach_upstream(upstream)
        upstream.abort()  # its body is not wanted: not worth reading to reuse the connection
        ex.end()
        ex.resend(request, retry)
        return True

    # -- holding the answer for a session store update ----------------------------------

    def _hold_for(self, job: Job) -> None:
        """Hold the response while ``job`` (a store update) runs, then release it."""
        conn = self.conn
        conn.ex.holding = True
        conn.pause_upstream(UP_PAUSE_HOLD)
        conn.spawn(self._release_after(job))

    async def _release_after(self, job: Job) -> None:
        try:
            await job
        except Exception:
            log.exception("session store update failed")
        conn = self.conn
        conn.ex.holding = False
        self.flush()
        conn.resume_upstream(UP_PAUSE_HOLD)
        if conn.ex.complete_pending:
            conn.ex.complete_pending = False
            self.upstream_complete()

    # -- the proxy's own answers --------------------------------------------------------

    def answer(self, answer: Answer, headers: Headers | None = None) -> None:
        """Answer the current request with an error (only if no response byte was sent)."""
        conn = self.conn
        request = conn.current
        if conn.ex.response_started or request is None:
            conn.close()
            return
        keep = request.complete and request.keep_alive and not conn.closing
        status = answer.status
        conn.ex.status = status
        conn.stats.proxy_errors[str(status)] += 1
        if status >= 500:
            method = request.method.decode()
            log.warning("%d %s: %s %s", status, answer.code, method, answer.message)
        if request.verdict is not None:
            # A 2026-07-28 client reads a JSON-RPC error for its request, with its id. (A
            # 2025 request keeps the proxy's JSON body, as before: legacy is unchanged.)
            body = answers.jsonrpc_error(answer, request.rpc_id)
            self._write_answer(
                http11.json_response(
                    status,
                    body,
                    close=not keep,
                    extra_headers=answers.extra_headers(answer, headers),
                ),
                keep,
            )
            return
        self._write_answer(answers.render(answer, close=not keep, headers=headers), keep)

    def reject(self, answer: Answer) -> None:
        """Answer a request that could not be parsed or accepted, then close."""
        conn = self.conn
        if conn.state == CLOSED:
            return
        conn.ex.abandon()
        lingering = False
        if not conn.ex.response_started and conn.transport is not None:
            conn.transport.write(answers.render(answer, close=True))
            conn.ex.status = answer.status
            conn.stats.proxy_errors[str(answer.status)] += 1
            lingering = True
        conn.close(linger=lingering)

    def keep_alive(self, now: float) -> None:
        """An SSE comment on a quiet event stream, where an event has ended and the client
        has read what it was sent: it keeps intermediaries in front from cutting the
        stream; clients ignore comments. Not backend activity (``conn.active`` untouched:
        timeouts.idle still ends a stream the backend abandoned)."""
        conn = self.conn
        ex = conn.ex
        tail = ex.sse_tail
        transport = conn.transport
        if transport is None or transport.get_write_buffer_size() > 0:
            return
        if not (tail.endswith(b"\n\n") or tail.endswith(b"\r\r") or tail.endswith(b"\r\n\r\n")):
            return  # inside an event: wait for its end
        ex.sse_at = now
        transport.write(chunk(KEEP_ALIVE) if ex.framing == framing.CHUNKED else KEEP_ALIVE)

    def answer_json(self, status: int, body: bytes) -> None:
        """Answer the current request with a JSON body of the proxy's own (a JSON-RPC error
        for an MCP request), only if no response byte was sent."""
        conn = self.conn
        request = conn.current
        if conn.ex.response_started or request is None:
            conn.close()
            return
        keep = request.complete and request.keep_alive and not conn.closing
        conn.ex.status = status
        conn.stats.proxy_errors[str(status)] += 1
        self._write_answer(http11.json_response(status, body, close=not keep), keep)

    def answer_key_not_found(self, found: KeyFound) -> None:
        """404 for a key (a session id) whose backend is unknown or cannot serve it."""
        conn = self.conn
        conn.stats.session_not_found += 1
        conn.ex.status = 404
        request = conn.current
        keep = request is not None and request.complete and request.keep_alive
        self._write_answer(found.kind.not_found(close=not keep), keep)

    def _write_answer(self, data: bytes, keep_alive: bool) -> None:
        conn = self.conn
        request = conn.current
        if conn.transport is None or request is None or conn.state == CLOSED:
            return
        conn.ex.response_started = True
        conn.transport.write(data)
        if keep_alive:
            conn.next_request(request)
        else:
            # Input may still be arriving (an upload answered early): close lingering, or
            # the unread bytes would reset the connection and lose the answer.
            conn.close(linger=not request.complete)

    def log_access(self, request: Request, client_left: bool = False) -> None:
        """``client_left``: the client closed before the answer ended; before it began,
        the status is 499 (as nginx logs it)."""
        conn = self.conn
        assert conn.access_log is not None
        request.logged = True
        session = request.session_id
        # Never the raw id: it is a bearer credential for the session.
        hashed = hashlib.sha256(session.encode()).hexdigest()[:12] if session else "-"
        ex = conn.ex
        if request is conn.current:
            status = ex.status if ex.response_started or not client_left else 499
            duration = (ex.finished or conn.loop.time()) - ex.started
            backend, bytes_out = ex.served_by or "-", ex.response_bytes
        else:  # pipelined behind the current one: never started
            status, duration, backend, bytes_out = 499, 0.0, "-", 0
        conn.access_log.request(
            conn.client_ip,
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
