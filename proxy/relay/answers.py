"""Every answer the proxy gives on its own (not a backend's): status, error code and
message in one place, and the bytes they make. Pure: the exchange writes them
(``Response.answer``, ``reject``), tests read them here."""

from __future__ import annotations

import json
from collections.abc import Sequence

from mcplb.proxy.auth.edge import Metadata, Refusal
from mcplb.proxy.relay import http11


class Answer:
    """An error answer: a status and a short JSON body {"error": code, "message": ...}."""

    __slots__ = ("code", "message", "retry_after", "status")

    def __init__(self, status: int, code: str, message: str, retry_after: bool = False) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after  # overload: the client may try again in a second


def bad_request(reason: str) -> Answer:
    """400 for a request the proxy cannot parse or would forward ambiguously."""
    return Answer(400, "bad_request", reason)


def bad_gateway(reason: str) -> Answer:
    return Answer(502, "bad_gateway", reason)


# The request itself
REPEATED_QUERY_SESSION = bad_request("more than one session id in the query")
HEADERS_TOO_LARGE = Answer(431, "headers_too_large", "request head exceeds max_header_bytes")
BODY_TOO_LARGE = Answer(413, "body_too_large", "request body exceeds max_body_bytes")
HOST_NOT_SERVED = Answer(421, "misdirected_request", "this host name is not served here")
LOOP_DETECTED = Answer(508, "loop_detected", "the request already passed through this proxy")
CONNECT_REFUSED = Answer(405, "method_not_allowed", "CONNECT is not supported")
HEAD_TIMEOUT = Answer(408, "request_timeout", "request head not received in time")
BODY_TIMEOUT = Answer(408, "request_timeout", "request body not received within timeouts.body")
BODY_TOO_SLOW = Answer(
    408, "request_timeout", "request body arrives slower than limits.min_body_rate"
)
# Overload
RATE_LIMITED = Answer(429, "rate_limited", "too many requests from this client; retry later")
CLIENT_BUSY = Answer(
    429, "too_many_requests", "too many requests in progress from this client", retry_after=True
)
NO_BACKEND = Answer(503, "no_backend", "no backend available", retry_after=True)
QUEUE_FULL = Answer(503, "overloaded", "too many requests queued", retry_after=True)
QUEUE_TIMEOUT = Answer(
    503, "overloaded", "no backend slot freed up within queue_timeout", retry_after=True
)
TOO_MANY_CONNECTIONS = Answer(
    503, "too_many_connections", "connection limit reached", retry_after=True
)
LOCAL_RESOURCES = Answer(
    503,
    "overloaded",
    "the proxy is out of local resources (descriptors, memory, ports)",
    retry_after=True,
)
TOO_MANY_STREAMS = Answer(503, "too_many_streams", "event stream limit reached", retry_after=True)
# The backend
UNREACHABLE = bad_gateway("no backend could be reached")
INVALID_RESPONSE = bad_gateway("backend sent an invalid response")
BACKEND_CLOSED = bad_gateway("backend closed the connection")
GATEWAY_TIMEOUT = Answer(504, "gateway_timeout", "backend did not answer in time")
# The proxy
INTERNAL_ERROR = Answer(500, "internal_error", "internal proxy error")


def render(
    answer: Answer, *, close: bool, headers: Sequence[tuple[bytes, bytes]] | None = None
) -> bytes:
    """The whole response for ``answer`` (``close``: with Connection: close), with
    Retry-After when it says so, then ``headers``."""
    return http11.error_response(
        answer.status,
        answer.code,
        answer.message,
        close=close,
        extra_headers=extra_headers(answer, headers),
    )


def render_jsonrpc(
    answer: Answer,
    rpc_id: object,
    *,
    close: bool,
    headers: Sequence[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """``render`` for a 2026-07-28 MCP request: the body a JSON-RPC error with its id."""
    return http11.json_response(
        answer.status,
        jsonrpc_error(answer, rpc_id),
        close=close,
        extra_headers=extra_headers(answer, headers),
    )


def extra_headers(
    answer: Answer, headers: Sequence[tuple[bytes, bytes]] | None
) -> list[tuple[bytes, bytes]]:
    """Retry-After when the answer says so, then ``headers``."""
    extra = [(b"retry-after", b"1")] if answer.retry_after else []
    if headers:
        extra += headers
    return extra


# JSON-RPC's "Internal error": the code of every error the proxy writes for an MCP call
# (the HTTP status and the proxy's own code say which, in ``data``).
JSONRPC_PROXY_ERROR = -32603


def jsonrpc_error(answer: Answer, rpc_id: object) -> bytes:
    """The body of ``answer`` for an MCP (JSON-RPC) request whose id is ``rpc_id``."""
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": rpc_id,
            "error": {
                "code": JSONRPC_PROXY_ERROR,
                "message": answer.message,
                "data": {"status": answer.status, "error": answer.code},
            },
        },
        separators=(",", ":"),
    ).encode()


def session_not_found(*, close: bool) -> bytes:
    """404 with the JSON-RPC error MCP clients read as "initialize again" (the spec's
    answer to an unknown or ended session)."""
    return http11.json_response(404, http11.SESSION_NOT_FOUND, close=close)


# SEP-2663's example of the error for a nonexistent task.
TASK_NOT_FOUND = "Failed to retrieve task: Task not found"
JSONRPC_INVALID_PARAMS = -32602


def task_not_found(rpc_id: object, *, close: bool) -> bytes:
    """400 with the JSON-RPC error a server gives a nonexistent task (SEP-2663: "Invalid or
    nonexistent ``taskId``: ``-32602`` (Invalid params)"; 400 as the SDKs' servers answer
    it), for the request whose id is ``rpc_id``: with edge auth on, the proxy's answer to
    a task id the principal has not bound (``affinity.McpTasks``)."""
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": rpc_id,
            "error": {"code": JSONRPC_INVALID_PARAMS, "message": TASK_NOT_FOUND},
        },
        separators=(",", ":"),
    ).encode()
    return http11.json_response(400, body, close=close)


def auth_refusal(refusal: Refusal) -> tuple[Answer, list[tuple[bytes, bytes]]]:
    """401 / 403 / 400 from edge authentication, with its WWW-Authenticate challenge
    (RFC 6750 section 3, RFC 9728 section 5.1); 503 when no signing key could be fetched."""
    answer = Answer(
        refusal.status, refusal.code, refusal.message, retry_after=refusal.status == 503
    )
    return answer, [(b"www-authenticate", refusal.challenge), (b"cache-control", b"no-store")]


def resource_metadata(document: Metadata) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """The Protected Resource Metadata (RFC 9728 section 3.2): public, cacheable JSON; GET
    only."""
    if document.status == 405:
        body = b'{"error":"method_not_allowed","message":"metadata is served to GET only"}'
        return 405, body, [(b"allow", b"GET")]
    headers = [(b"cache-control", b"max-age=300"), (b"access-control-allow-origin", b"*")]
    return 200, document.body, headers
