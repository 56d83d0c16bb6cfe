"""Tests for the pure HTTP/1.1 helpers (proxy/relay/http11.py).

Header names reach these helpers lower-cased (the relay and pool lower-case them on parse).
"""

from __future__ import annotations

import json
from typing import Any

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcplb.proxy.relay.http11 import (
    HOP_BY_HOP,
    LAST_CHUNK,
    SESSION_NOT_FOUND,
    chunk,
    connection_tokens,
    end_to_end,
    error_response,
    field_pairs,
    json_response,
    no_body_expected,
    serialize_headers,
    status_line,
    wire_fields,
)


class ParsedResponse:
    """httptools callbacks collecting one response."""

    def __init__(self) -> None:
        self.status_reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = False
        self.keep_alive: bool | None = (
            None  # read at headers-complete, as proxy/cluster/pool.py does
        )
        self.parser: Any = None

    def on_headers_complete(self) -> None:
        if self.parser is not None:
            self.keep_alive = self.parser.should_keep_alive()

    def on_status(self, reason: bytes) -> None:
        self.status_reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.complete = True

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n == name]
        assert len(values) <= 1, (name, values)
        return values[0] if values else None


def parse_response(raw: bytes) -> tuple[ParsedResponse, Any]:
    result = ParsedResponse()
    parser = httptools.HttpResponseParser(result)
    result.parser = parser
    parser.feed_data(raw)
    return result, parser


# -- connection tokens and hop-by-hop filtering -----------------------------------------


def test_connection_tokens_lowercase_strip_and_skip_empty() -> None:
    headers = [(b"connection", b" Keep-Alive ,X-Trace-ID,,  Upgrade  ")]
    assert connection_tokens(headers) == frozenset({b"keep-alive", b"x-trace-id", b"upgrade"})


def test_connection_tokens_merge_several_headers_and_ignore_others() -> None:
    headers = [
        (b"host", b"example"),
        (b"connection", b"close"),
        (b"x-other", b"connection, x-not-a-token"),
        (b"connection", b"X-Foo, x-bar"),
    ]
    assert connection_tokens(headers) == frozenset({b"close", b"x-foo", b"x-bar"})


def test_connection_tokens_empty() -> None:
    assert connection_tokens([]) == frozenset()
    assert connection_tokens([(b"connection", b"")]) == frozenset()
    assert connection_tokens([(b"connection", b" , ,")]) == frozenset()


# RFC 9110 7.6.1 and RFC 9112 (Connection, TE, Trailer, Transfer-Encoding, Upgrade,
# Proxy-*), plus Keep-Alive and Proxy-Connection, which old clients still send. Written
# out here, not read from the module: the test checks the relay against the RFCs.
RFC_HOP_BY_HOP = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
]


def test_end_to_end_removes_every_hop_by_hop_header() -> None:
    headers = [(name, b"v") for name in RFC_HOP_BY_HOP]
    headers.insert(3, (b"content-type", b"text/plain"))
    headers.append((b"mcp-session-id", b"abc"))
    assert end_to_end(headers) == [(b"content-type", b"text/plain"), (b"mcp-session-id", b"abc")]


def test_end_to_end_removes_headers_named_by_connection_and_keeps_order() -> None:
    headers = [
        (b"x-a", b"1"),
        (b"connection", b"X-Trace, keep-alive"),
        (b"x-trace", b"t1"),
        (b"keep-alive", b"timeout=5"),
        (b"x-b", b"2"),
        (b"x-trace", b"t2"),
        (b"x-a", b"3"),
        (b"transfer-encoding", b"chunked"),
    ]
    out = end_to_end(headers, connection_tokens(headers))
    assert out == [(b"x-a", b"1"), (b"x-b", b"2"), (b"x-a", b"3")]
    assert end_to_end([], frozenset({b"x"})) == []


header_names = st.sampled_from(
    [*sorted(HOP_BY_HOP), b"x-a", b"x-b", b"content-type", b"mcp-session-id", b"host"]
)
header_values = st.lists(
    st.sampled_from([b"x-a", b"X-B", b"close", b"keep-alive", b" ", b"text/html"]), max_size=3
).map(b",".join)


@settings(max_examples=150, deadline=None)
@given(headers=st.lists(st.tuples(header_names, header_values), max_size=12))
def test_end_to_end_is_an_order_preserving_filter(headers: list[tuple[bytes, bytes]]) -> None:
    hop = connection_tokens(headers)
    out = end_to_end(headers, hop)
    dropped = HOP_BY_HOP | hop
    assert out == [(n, v) for n, v in headers if n not in dropped]
    assert not any(n in dropped for n, _ in out)


def test_serialize_headers() -> None:
    assert serialize_headers([]) == b""
    assert serialize_headers([(b"a", b"1"), (b"b", b"")]) == b"a: 1\r\nb: \r\n"


# -- status line and chunks --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [
        (200, None, b"HTTP/1.1 200 OK\r\n"),
        (404, None, b"HTTP/1.1 404 Not Found\r\n"),
        (503, None, b"HTTP/1.1 503 Service Unavailable\r\n"),
        (101, None, b"HTTP/1.1 101 Switching Protocols\r\n"),
        (200, b"OK", b"HTTP/1.1 200 OK\r\n"),  # the constant line
        (200, b"Fine Thanks", b"HTTP/1.1 200 Fine Thanks\r\n"),
        (200, b"ok", b"HTTP/1.1 200 ok\r\n"),  # the backend's own, not the constant
        (404, b"", b"HTTP/1.1 404 Not Found\r\n"),
        (599, None, b"HTTP/1.1 599 Unknown\r\n"),
        (599, b"Custom", b"HTTP/1.1 599 Custom\r\n"),
    ],
)
def test_status_line(status: int, reason: bytes | None, expected: bytes) -> None:
    assert status_line(status, reason) == expected


def test_status_line_default_reason() -> None:
    assert status_line(204) == b"HTTP/1.1 204 No Content\r\n"


def test_chunk_framing() -> None:
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert chunk(b"y" * 4096) == b"1000\r\n" + b"y" * 4096 + b"\r\n"
    assert chunk(b"\r\n") == b"2\r\n\r\n\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"


def test_chunk_of_empty_data_is_nothing() -> None:
    # A zero-size chunk would end the body early.
    assert chunk(b"") == b""


def test_chunks_round_trip_through_a_parser() -> None:
    raw = (
        status_line(200)
        + serialize_headers([(b"transfer-encoding", b"chunked")])
        + b"\r\n"
        + chunk(b"hello")
        + chunk(b" ")
        + chunk(b"w" * 300)
        + LAST_CHUNK
    )
    parsed, _ = parse_response(raw)
    assert parsed.complete
    assert parsed.body == b"hello " + b"w" * 300


# -- complete responses --------------------------------------------------------------------


def test_error_response_is_well_formed_http_with_json_body() -> None:
    raw = error_response(
        503,
        "no_backend",
        'no backend is available ("all down") \u2013 retry later',
        close=True,
        extra_headers=[(b"retry-after", b"1"), (b"x-request-id", b"abc123")],
    )
    assert raw.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert json.loads(body) == {
        "error": "no_backend",
        "message": 'no backend is available ("all down") \u2013 retry later',
    }
    parsed, parser = parse_response(raw)
    assert parsed.complete
    assert parser.get_status_code() == 503
    assert parsed.status_reason == b"Service Unavailable"
    assert parsed.body == body
    assert parsed.header(b"content-length") == str(len(body)).encode()
    assert parsed.header(b"content-type") == b"application/json"
    assert parsed.header(b"connection") == b"close"
    assert parsed.header(b"retry-after") == b"1"
    assert parsed.header(b"x-request-id") == b"abc123"
    assert parsed.keep_alive is False
    assert [name for name, _ in parsed.headers] == [
        b"content-type",
        b"content-length",
        b"retry-after",
        b"x-request-id",
        b"connection",
    ]
    assert head.count(b"\r\n") == 5  # status line + five headers (the last "\r\n" split off)


def test_error_response_without_close_keeps_the_connection_alive() -> None:
    raw = error_response(404, "not_found", "nothing here", close=False)
    parsed, parser = parse_response(raw)
    assert parsed.complete
    assert parser.get_status_code() == 404
    assert parsed.header(b"connection") is None
    assert parsed.keep_alive is True
    assert json.loads(parsed.body) == {"error": "not_found", "message": "nothing here"}
    assert parsed.header(b"content-length") == str(len(parsed.body)).encode()


def test_two_responses_back_to_back_parse_separately() -> None:
    # A wrong content-length would make the second response bleed into the first body.
    first = error_response(429, "busy", "slow down", close=False)
    second = json_response(200, b'{"ok":true}', close=False)
    messages: list[ParsedResponse] = []

    class Collector(ParsedResponse):
        def on_message_complete(self) -> None:
            super().on_message_complete()
            messages.append(self.snapshot())

        def snapshot(self) -> ParsedResponse:
            copy = ParsedResponse()
            copy.body, copy.complete = self.body, True
            self.body = b""
            return copy

    parser = httptools.HttpResponseParser(Collector())
    parser.feed_data(first + second)
    assert [json.loads(m.body) for m in messages] == [
        {"error": "busy", "message": "slow down"},
        {"ok": True},
    ]


def test_json_response_exact_bytes() -> None:
    raw = json_response(200, b"{}", close=True, extra_headers=[(b"x-a", b"1")])
    assert raw == (
        b"HTTP/1.1 200 OK\r\n"
        b"content-type: application/json\r\n"
        b"content-length: 2\r\n"
        b"x-a: 1\r\n"
        b"connection: close\r\n"
        b"\r\n"
        b"{}"
    )


def test_json_response_with_empty_body() -> None:
    raw = json_response(202, b"", close=False)
    parsed, parser = parse_response(raw)
    assert parsed.complete
    assert parser.get_status_code() == 202
    assert parsed.header(b"content-length") == b"0"
    assert parsed.body == b""


def test_session_not_found_body_is_a_json_rpc_error() -> None:
    assert json.loads(SESSION_NOT_FOUND) == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32600, "message": "Session not found"},
    }


# -- bodiless responses --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "status", "expected"),
    [
        (b"HEAD", 200, True),
        (b"HEAD", 404, True),
        (b"GET", 100, True),
        (b"POST", 101, True),
        (b"GET", 103, True),
        (b"GET", 199, True),
        (b"GET", 204, True),
        (b"DELETE", 204, True),
        (b"GET", 304, True),
        (b"GET", 200, False),
        (b"POST", 200, False),
        (b"POST", 201, False),
        (b"GET", 205, False),
        (b"GET", 302, False),
        (b"GET", 404, False),
        (b"POST", 500, False),
    ],
)
def test_no_body_expected(method: bytes, status: int, expected: bool) -> None:
    assert no_body_expected(method, status) is expected


def test_fields_in_wire_form_round_trip() -> None:
    headers = [(b"content-type", b"text/plain"), (b"x-a", b"1"), (b"x-a", b"")]
    wire = wire_fields(headers)
    assert b"".join(wire) == b"content-type: text/plain\r\nx-a: 1\r\nx-a: \r\n"
    assert field_pairs(wire) == headers
    assert serialize_headers(headers) == b"".join(wire)
