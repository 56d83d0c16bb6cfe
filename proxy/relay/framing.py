"""How a message is framed on the other side of the proxy: pure functions, no I/O.

``request_head`` builds the head the backend gets from what the client sent;
``response_head`` decides how a backend's response is framed toward the client
(``body_framing``, as h11's ``_body_framing`` and ``_keep_alive`` do) and which of its
headers go on; ``head_refusal`` which request heads are refused. All are tested by
feeding values (tests/test_framing.py); the relay only applies what they return.
"""

from __future__ import annotations

import re
from typing import Any, Final

import httptools

from mcplb.proxy.relay import http11
from mcplb.proxy.relay.http11 import Headers
from mcplb.proxy.relay.request import Request
from mcplb.proxy.sessions import affinity

SESSION_HEADER: Final = b"mcp-session-id"

# How a response body is framed toward the client (CHUNKED and UNTIL_CLOSE: re-framed).
NO_BODY: Final = 0
LENGTH: Final = 1
CHUNKED: Final = 2
UNTIL_CLOSE: Final = 3
TUNNEL: Final = 4

# Framing fields the proxy adds to a response, in wire form.
TE_CHUNKED: Final = (b"transfer-encoding", b": ", b"chunked", b"\r\n")
CONNECTION_CLOSE: Final = (b"connection", b": ", b"close", b"\r\n")
CONNECTION_KEEP_ALIVE: Final = (b"connection", b": ", b"keep-alive", b"\r\n")


class ResponseHead:
    """What ``response_head`` decided for one response."""

    __slots__ = ("body_framing", "content_type", "keep_alive", "session_id", "until_close", "wire")

    def __init__(
        self,
        body_framing: int,
        wire: list[bytes],
        keep_alive: bool,
        until_close: bool,
        session_id: bytes | None,
        content_type: bytes,
    ) -> None:
        self.body_framing = body_framing  # NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE or TUNNEL
        # The end-to-end header fields to send, framing ones included, already in wire
        # form (name, ": ", value, CRLF for each): the common response is sent as it is,
        # without a second pass over its fields.
        self.wire = wire
        self.keep_alive = keep_alive  # whether the client connection stays open after it
        self.until_close = until_close  # the backend's body ends when it closes
        self.session_id = session_id  # the backend's Mcp-Session-Id, if it sent one
        self.content_type = content_type

    @property
    def headers(self) -> Headers:
        """The fields to send as (name, value) pairs, to read them (the relay itself only
        ever sends or edits ``wire``)."""
        return http11.field_pairs(self.wire)


def response_head(
    status: int,
    headers: Headers,
    *,
    method: bytes,
    version: str,
    upgrade: bool,
    keep_alive: bool,
) -> ResponseHead:
    """The framing and headers toward the client of a (final) response to a request with
    ``method``, HTTP ``version`` and ``upgrade``; ``keep_alive``: whether the client's side
    may stay open at all (its request allowed it, the proxy is not closing, and the request
    parser is still reading)."""
    wire: list[bytes] = []
    has_length = chunked = named_hops = False
    session_id: bytes | None = None
    content_type = b""
    for name, value in headers:
        if name in http11.HOP_BY_HOP:
            if name == b"transfer-encoding":
                chunked = True
            elif name == b"connection" and value.lower() not in (b"keep-alive", b"close"):
                named_hops = True
            continue
        if name == b"content-length":
            has_length = True
        elif name == SESSION_HEADER:
            session_id = value
        elif name == b"content-type":
            content_type = value
        wire += (name, b": ", value, b"\r\n")
    if named_hops:
        # Content-Length and the session id stay whatever Connection names: the body is
        # framed by the length, and the client must get what the proxy learned.
        hop = http11.connection_tokens(headers) - http11.END_TO_END
        wire = http11.wire_fields(http11.end_to_end(http11.field_pairs(wire), hop))
    if status == 101 and upgrade:
        token = upgrade_token(headers)
        if token is not None:
            wire += (b"connection", b": ", b"upgrade", b"\r\n", b"upgrade", b": ", token, b"\r\n")
        return ResponseHead(TUNNEL, wire, True, False, session_id, content_type)
    framing = body_framing(method, status, version, has_length and not chunked)
    # A chunked or close-delimited body is re-framed; chunked keeps the client alive.
    until_close = not chunked and framing in (CHUNKED, UNTIL_CLOSE)
    if framing == CHUNKED:
        if has_length:
            pairs = http11.field_pairs(wire)
            wire = http11.wire_fields([(n, v) for n, v in pairs if n != b"content-length"])
        wire += TE_CHUNKED
    elif framing == UNTIL_CLOSE:
        keep_alive = False
    if not keep_alive:
        wire += CONNECTION_CLOSE
    elif version == "1.0":
        wire += CONNECTION_KEEP_ALIVE
    return ResponseHead(framing, wire, keep_alive, until_close, session_id, content_type)


def head_refusal(request: Request) -> str | None:
    """Why a request head is refused (400, then close), or None: its framing or routing
    fields could be read otherwise by the backend than by the proxy."""
    refusal = http11.head_refusal(request.version, request.host, request.duplicate)
    if refusal is None and request.connection:
        refusal = http11.connection_refusal(named_hops(request))
    if refusal is None and request.upgrade and (request.chunked or request.content_length):
        # Its body would be taken for the first bytes of the new protocol, or (refused
        # switch) for the next request on the backend connection.
        refusal = "an Upgrade request must not have a body"
    return refusal


def named_hops(request: Request) -> frozenset[bytes]:
    """The names the request's Connection header lists (hop-by-hop for this request):
    read once from its complete head (clients of both MCP SDKs send Connection:
    keep-alive), then kept for its refusal check, its head and any retry."""
    names = request.hop_names
    if names is None:
        headers = request.headers
        names = http11.connection_tokens(headers) if request.connection else http11.NO_NAMES
        request.hop_names = names
    return names


def body_framing(method: bytes, status: int, version: str, by_length: bool) -> int:
    """How a response body is framed toward the client (as h11's ``_body_framing``):
    none, by its Content-Length (``by_length``: it has one and is not chunked), else
    re-framed, chunked to an HTTP/1.1 client and until the close to an HTTP/1.0 one."""
    if http11.no_body_expected(method, status):
        return NO_BODY
    if by_length:
        return LENGTH
    return CHUNKED if version == "1.1" else UNTIL_CLOSE


def upgrade_token(headers: Headers) -> bytes | None:
    """The protocol an Upgrade header names, if any."""
    for name, value in headers:
        if name == b"upgrade":
            return value
    return None


def request_head(
    request: Request,
    *,
    path_prefix: bytes,
    host_header: bytes,
    preserve_host: bool,
    client_ip: bytes,
    proto: bytes,
    request_id: bytes | None,
    via: bytes = b"",
    trusted_peer: bool = False,
) -> bytes:
    """The request head the backend gets: origin-form target under the backend's path
    prefix, hop-by-hop headers dropped (and those Connection names), the session id swapped
    for the backend's own, ``Host`` set to the backend's unless ``preserve_host``,
    ``X-Forwarded-*`` added, and ``via`` (RFC 9110 section 7.6.3; ``loops``).
    ``request_id``: an id to add when the client sent none or an unusable one
    (``usable_request_id``); ``trusted_peer``: a client in ``rate_limit.trusted_proxies``,
    whose ``CLIENT_FORWARDING`` fields go on (from anyone else a backend would take them
    for the proxy's word)."""
    target, upstream_session_id = request.target, request.upstream_session_id
    if path_prefix or upstream_session_id is not None or not target.startswith(b"/"):
        target, upstream_session_id = upstream_target(request, path_prefix)
    lines = [request.method, b" ", target, b" HTTP/1.1\r\n"]
    forwarded = _client_fields(
        request,
        lines,
        preserve_host,
        upstream_session_id,
        request_id is not None,
        REBUILT if trusted_peer else REBUILT_AND_FORWARDING,
    )
    # The fields added below, each ending where the next one's constant begins: fewer
    # pieces to join.
    if not preserve_host or request.host is None:
        lines += (b"host: ", host_header, b"\r\nx-forwarded-for: ")
    else:
        lines.append(b"x-forwarded-for: ")
    if forwarded:
        forwarded.append(client_ip)
        lines.append(b", ".join(forwarded))
    else:
        lines.append(client_ip)
    lines += (b"\r\nx-forwarded-proto: ", proto)
    if request.host is not None:
        lines += (b"\r\nx-forwarded-host: ", request.host)
    if request_id is not None:
        lines += (b"\r\nx-request-id: ", request_id)
    if via:
        lines += (b"\r\nvia: ", via)
    if request.chunked:
        lines.append(b"\r\ntransfer-encoding: chunked")
    token = upgrade_token(request.headers) if request.upgrade else None
    if token is not None:
        lines += (b"\r\nconnection: upgrade\r\nupgrade: ", token)
    lines.append(b"\r\n\r\n")
    return b"".join(lines)


def _client_fields(
    request: Request,
    lines: list[bytes],
    preserve_host: bool,
    upstream_session_id: str | None,
    own_request_id: bool,
    dropped: frozenset[bytes],
) -> list[bytes]:
    """Append the client's header fields the backend gets to ``lines``; return its
    X-Forwarded-For chain, in order (``own_request_id``: the proxy's own replaces any)."""
    hop = named_hops(request) if request.connection else http11.NO_NAMES
    forwarded: list[bytes] = []
    for name, value in request.headers:
        if name in http11.HOP_BY_HOP or name in hop or name in dropped:
            continue
        if name == b"host":
            if not preserve_host:
                continue
        elif name == b"x-forwarded-for":
            forwarded.append(value)
            continue
        elif name == SESSION_HEADER and upstream_session_id is not None:
            value = upstream_session_id.encode("latin-1")
        elif name == b"x-request-id" and own_request_id:
            continue  # not usable (usable_request_id): the proxy's own replaces it
        lines += (name, b": ", value, b"\r\n")
    return forwarded


def upstream_target(request: Request, path_prefix: bytes) -> tuple[bytes, str | None]:
    """The target the backend gets (origin-form, under its path prefix, with a legacy
    query session id swapped for the backend's own), and the session id still to swap in
    the Mcp-Session-Id header (None: none, or already in the query)."""
    target = request.target
    if not target.startswith(b"/"):
        target = origin_form(target)
    upstream_session_id = request.upstream_session_id
    if upstream_session_id is not None and request.session_in_query:
        assert request.session_id is not None
        target = affinity.replace_query_value(target, request.session_id, upstream_session_id)
        upstream_session_id = None
    if path_prefix and target != b"*":
        target = path_prefix + target
    return target, upstream_session_id


# A client's X-Request-Id is kept (logged, forwarded) only if it is this short and of these
# bytes: UUIDs, ULIDs, base64 and trace ids fit; spaces, quotes and controls, which would
# forge access-log fields, do not.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+/=@-]{1,128}")


def usable_request_id(value: bytes) -> bool:
    return _REQUEST_ID.fullmatch(value) is not None


# Forwarding fields only a trusted proxy in front may send (X-Forwarded-For, -Proto and
# -Host are rebuilt by the proxy for everyone).
CLIENT_FORWARDING: Final = frozenset((b"forwarded", b"x-real-ip", b"x-forwarded-port"))
# Rebuilt by the proxy for everyone: the client's are dropped.
REBUILT: Final = frozenset((b"x-forwarded-proto", b"x-forwarded-host"))
REBUILT_AND_FORWARDING: Final = REBUILT | CLIENT_FORWARDING


def loops(request: Request, via: bytes) -> bool:
    """Whether the request already passed through this proxy: its ``Via`` fields name
    ``via``'s pseudonym (a discovered or configured backend that is the proxy itself)."""
    pseudonym = via.rpartition(b" ")[2]
    for name, value in request.headers:
        if name == b"via":
            for entry in value.split(b","):
                parts = entry.split()
                if len(parts) >= 2 and parts[1] == pseudonym:
                    return True
    return False


def origin_form(target: bytes) -> bytes:
    """The path and query of an absolute-form target; the authority never steers routing."""
    if target == b"*":
        return target
    try:
        # Any: httptools' stubs say bytes, but an absent part is None, and compiled code
        # (mypyc) checks the declared type on every attribute read.
        url: Any = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        return b"/"
    raw_path: bytes | None = url.path
    query: bytes | None = url.query
    path = raw_path or b"/"
    if query:
        path += b"?" + query
    return path
