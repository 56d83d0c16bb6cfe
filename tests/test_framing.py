"""The relay's framing decisions, fed values and read back (no sockets), as h11's tests do."""

from __future__ import annotations

import pytest

from mcplb.proxy.relay.framing import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    TUNNEL,
    UNTIL_CLOSE,
    body_framing,
    head_refusal,
    named_hops,
    origin_form,
    request_head,
    response_head,
    upgrade_token,
)
from mcplb.proxy.relay.http11 import Headers
from mcplb.proxy.relay.request import Request

CL = (b"content-length", b"2")
TE = (b"transfer-encoding", b"chunked")


@pytest.mark.parametrize(
    ("status", "headers", "method", "version", "expected"),
    [
        # (framing, keep-alive, body ends at close, framing headers sent)
        (200, [CL], b"GET", "1.1", (LENGTH, True, False, [CL])),
        (200, [TE], b"GET", "1.1", (CHUNKED, True, False, [TE])),
        (200, [], b"GET", "1.1", (CHUNKED, True, True, [TE])),  # close-delimited, re-chunked
        (200, [], b"GET", "1.0", (UNTIL_CLOSE, False, True, [(b"connection", b"close")])),
        (200, [CL], b"GET", "1.0", (LENGTH, True, False, [CL, (b"connection", b"keep-alive")])),
        (200, [CL, TE], b"GET", "1.1", (CHUNKED, True, False, [TE])),  # TE wins, CL dropped
        (204, [], b"GET", "1.1", (NO_BODY, True, False, [])),
        (304, [CL], b"GET", "1.1", (NO_BODY, True, False, [CL])),
        (200, [CL], b"HEAD", "1.1", (NO_BODY, True, False, [CL])),
    ],
)
def test_response_framing(
    status: int,
    headers: Headers,
    method: bytes,
    version: str,
    expected: tuple[int, bool, bool, Headers],
) -> None:
    head = response_head(
        status, headers, method=method, version=version, upgrade=False, keep_alive=True
    )
    sent = [(n, v) for n, v in head.headers if n in (b"content-length", b"transfer-encoding")]
    sent += [(n, v) for n, v in head.headers if n == b"connection"]
    assert (head.body_framing, head.keep_alive, head.until_close, sent) == expected


def test_client_that_must_close_gets_connection_close() -> None:
    head = response_head(200, [CL], method=b"GET", version="1.1", upgrade=False, keep_alive=False)
    assert (head.body_framing, head.keep_alive) == (LENGTH, False)
    assert head.headers[-1] == (b"connection", b"close")


def test_switching_protocols_tunnels_only_an_upgrade_request() -> None:
    upgrade = [(b"upgrade", b"websocket"), (b"connection", b"upgrade")]
    head = response_head(101, upgrade, method=b"GET", version="1.1", upgrade=True, keep_alive=False)
    assert (head.body_framing, head.keep_alive) == (TUNNEL, True)
    assert head.headers == [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]


def test_hop_by_hop_response_headers_are_dropped_but_never_the_framing() -> None:
    headers = [
        (b"connection", b"content-length, mcp-session-id, x-hop"),
        (b"x-hop", b"1"),
        (b"keep-alive", b"timeout=5"),
        CL,
        (b"mcp-session-id", b"s1"),
        (b"content-type", b"text/event-stream"),
    ]
    head = response_head(
        200, headers, method=b"POST", version="1.1", upgrade=False, keep_alive=True
    )
    names = [n for n, _ in head.headers]
    assert names == [b"content-length", b"mcp-session-id", b"content-type"]
    assert (head.session_id, head.content_type) == (b"s1", b"text/event-stream")


def request_of(raw_headers: Headers, *, target: bytes = b"/p", method: bytes = b"POST") -> Request:
    request = Request()
    request.method, request.target, request.headers = method, target, raw_headers
    for name, value in raw_headers:
        if name == b"host":
            request.host = value
        elif name == b"connection":
            request.connection = True
        elif name == b"transfer-encoding":
            request.chunked = True
        elif name == b"mcp-session-id":
            request.session_id = value.decode()
    return request


def head_of(request: Request, **overrides: object) -> list[bytes]:
    options: dict[str, object] = {
        "path_prefix": b"",
        "host_header": b"127.0.0.1:9001",
        "preserve_host": False,
        "client_ip": b"127.0.0.1",
        "proto": b"http",
        "request_id": b"rid-1",
    }
    options.update(overrides)
    return request_head(request, **options).split(b"\r\n")  # type: ignore[arg-type]


def test_request_head_rewrites_for_the_backend() -> None:
    request = request_of(
        [
            (b"host", b"localhost:8080"),
            (b"connection", b"keep-alive, x-hop"),
            (b"x-hop", b"1"),
            (b"x-forwarded-for", b"192.0.2.1"),
            (b"x-forwarded-for", b"198.51.100.2"),
            (b"x-forwarded-host", b"spoofed"),
            (b"transfer-encoding", b"chunked"),
            (b"accept", b"*/*"),
        ]
    )
    lines = head_of(request, path_prefix=b"/base")
    assert lines[0] == b"POST /base/p HTTP/1.1"
    assert lines[1:] == [
        b"accept: */*",
        b"host: 127.0.0.1:9001",
        b"x-forwarded-for: 192.0.2.1, 198.51.100.2, 127.0.0.1",
        b"x-forwarded-proto: http",
        b"x-forwarded-host: localhost:8080",
        b"x-request-id: rid-1",
        b"transfer-encoding: chunked",
        b"",
        b"",
    ]


def test_the_names_connection_lists_are_read_once_per_request() -> None:
    """Read from the complete head by the refusal check, then kept for the head sent
    upstream (and any retry's): clients of both MCP SDKs send Connection: keep-alive."""
    request = request_of([(b"host", b"h"), (b"connection", b"Keep-Alive, X-Hop"), (b"x-hop", b"1")])
    assert head_refusal(request) is None
    assert request.hop_names == frozenset({b"keep-alive", b"x-hop"})
    assert named_hops(request) is request.hop_names
    first = head_of(request)
    assert not any(line.startswith(b"x-hop") for line in first)
    assert head_of(request) == first  # a retry sends the same head
    plain = request_of([(b"host", b"h"), (b"x-hop", b"1")])
    assert named_hops(plain) == frozenset() and b"x-hop: 1" in head_of(plain)


def test_request_head_keeps_host_and_swaps_the_session_id() -> None:
    request = request_of([(b"host", b"mcp.example"), (b"mcp-session-id", b"sealed")])
    request.upstream_session_id = "raw-id"
    lines = head_of(request, preserve_host=True, request_id=None)
    assert b"host: mcp.example" in lines and b"mcp-session-id: raw-id" in lines
    assert not any(line.startswith(b"x-request-id") for line in lines)


def test_request_head_swaps_a_legacy_session_in_the_query() -> None:
    request = request_of([(b"host", b"localhost")], target=b"/messages/?sessionId=sealed")
    request.session_id, request.session_in_query = "sealed", True
    request.upstream_session_id = "raw"
    assert head_of(request)[0] == b"POST /messages/?sessionId=raw HTTP/1.1"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"http://169.254.169.254/latest?x=1", b"/latest?x=1"),
        (b"http://example.com", b"/"),
        (b"*", b"*"),
        (b"http://[::1", b"/"),
    ],
)
def test_absolute_form_never_keeps_its_authority(target: bytes, expected: bytes) -> None:
    assert origin_form(target) == expected


@pytest.mark.parametrize(
    ("method", "status", "version", "by_length", "expected"),
    [
        (b"GET", 200, "1.1", True, LENGTH),
        (b"GET", 200, "1.1", False, CHUNKED),  # chunked or close-delimited: re-chunked
        (b"GET", 200, "1.0", False, UNTIL_CLOSE),  # an HTTP/1.0 client reads to the close
        (b"HEAD", 200, "1.1", True, NO_BODY),
        (b"GET", 204, "1.1", False, NO_BODY),
        (b"GET", 304, "1.0", True, NO_BODY),
        (b"GET", 101, "1.1", False, NO_BODY),
    ],
)
def test_body_framing(
    method: bytes, status: int, version: str, by_length: bool, expected: int
) -> None:
    assert body_framing(method, status, version, by_length) == expected


def test_upgrade_token() -> None:
    assert upgrade_token([(b"host", b"x"), (b"upgrade", b"websocket")]) == b"websocket"
    assert upgrade_token([(b"connection", b"upgrade")]) is None


def head(headers: Headers, version: str = "1.1", upgrade: bool = False) -> Request:
    request = Request()
    request.version = version
    request.upgrade = upgrade
    for name, value in headers:
        request.headers.append((name, value))
        if name == b"host":
            request.host = value
        elif name == b"connection":
            request.connection = True
        elif name == b"content-length":
            request.content_length = int(value)
    return request


def test_head_refusal() -> None:
    host = (b"host", b"x")
    assert head_refusal(head([host])) is None
    assert head_refusal(head([], version="1.0")) is None  # HTTP/1.0 may leave Host out
    assert head_refusal(head([])) == "an HTTP/1.1 request must have a Host header"
    duplicated = head([host, host])
    duplicated.duplicate = b"host"
    assert head_refusal(duplicated) == "more than one host header"
    named = head([host, (b"connection", b"close, Host")])
    assert head_refusal(named) == "Connection must not name host"
    upgrade_with_body = head([host, (b"content-length", b"3")], upgrade=True)
    assert head_refusal(upgrade_with_body) == "an Upgrade request must not have a body"
    assert head_refusal(head([host, (b"content-length", b"0")], upgrade=True)) is None
