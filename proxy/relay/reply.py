"""What the client of one exchange is answered: whether a response byte went out, the
status, and the proxy's own answers (``answer``, ``answer_json``, ``reject``,
``answer_key_not_found``), written through ``ClientSide``.

``Reply`` is the base class of the one object per request: ``Response`` (response.py)
relays the backend's answer, ``Exchange`` (exchange.py) takes the request to a backend.
It owns what every kind of answer shares: the request, the client, whether the connection
went on without the exchange (``done``), what the client was told.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mcplb.proxy.cluster.pool import ResponseSink
from mcplb.proxy.relay import answers, http11
from mcplb.proxy.relay.affinity import KeyFound
from mcplb.proxy.relay.answers import Answer
from mcplb.proxy.relay.client_side import ClientSide
from mcplb.proxy.relay.http11 import Headers
from mcplb.proxy.relay.request import Request
from mcplb.proxy.relay.shared import Shared

log = logging.getLogger("mcplb.relay")


class Reply(ResponseSink):
    """What the client of one request is answered, and the proxy's own answers. (The
    backend connection's ``ResponseSink``: ``Response`` implements what it receives.)"""

    __slots__ = ("client", "done", "request", "response_started", "runtime", "status")

    def __init__(self, client: ClientSide, runtime: Shared) -> None:
        self.client = client
        self.runtime = runtime
        self.request: Request | None = None  # set when the request starts (route.start)
        self.done = False  # the connection went on without it (answered, closed, left)
        self.response_started = False  # a byte of the answer went to the client
        self.status = 0  # for metrics and the access log

    def abandon(self) -> None:
        """End the exchange cut short (``Exchange`` decides how)."""
        raise NotImplementedError

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
        if request.mcp is None:
            data = answers.render(answer, close=not keep, headers=headers)
        else:  # 2026-07-28: a JSON-RPC error with the request's id (null before the body)
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
