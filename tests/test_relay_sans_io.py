"""The relay without sockets: a ClientConnection is fed request bytes through
``data_received`` and its answer is read from a recording transport, as h11's tests feed
and read bytes. The backend side is a real UpstreamConnection on a recording transport
too, waiting in its pool, fed the backend's response bytes. Timeouts are judged by
calling ``check_timeouts(now)`` with chosen times. The end-to-end tests with sockets are
in test_relay.py and test_hostile_*.py."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from mcplb.proxy.cluster.pool import UpstreamConnection
from mcplb.proxy.config.loader import parse_config
from mcplb.proxy.config.schema import Config
from mcplb.proxy.relay import answers
from mcplb.proxy.relay.affinity import SignedSessions, StoredSessions, with_session_id
from mcplb.proxy.relay.connection import ClientConnection, slow_upload
from mcplb.proxy.relay.framing import LENGTH, ResponseHead
from mcplb.proxy.relay.http11 import SESSION_NOT_FOUND, wire_fields
from mcplb.proxy.relay.mcp_method import jsonrpc_method
from mcplb.proxy.relay.request import Request
from mcplb.proxy.server.runtime import Runtime

KEY = "k" * 32
CONFIG = """
listen: 127.0.0.1:0
allowed_hosts: [mcp.example.com]
admin: {enabled: false}
log: {access: false}
backends:
  - name: a
    url: http://10.0.0.1:8000/
"""
GET = b"GET /mcp HTTP/1.1\r\nHost: mcp.example.com\r\n\r\n"


class RecordingTransport(asyncio.Transport):
    """Stands for a socket: keeps what is written, and whether reading is paused and
    how the connection was closed."""

    def __init__(self, peer: tuple[str, int] = ("10.0.0.7", 40000)) -> None:
        super().__init__({"peername": peer})
        self.written = bytearray()
        self.reading = True
        self.closed = False
        self.aborted = False
        self.eof = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def take(self) -> bytes:
        """What was written since the last take."""
        data = bytes(self.written)
        self.written.clear()
        return data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_size(self) -> int:
        return 0


class Relay:
    """One client connection of a proxy built from ``config``, with a recording client."""

    def __init__(self, config: str = CONFIG) -> None:
        self.runtime = Runtime(parse_config(config), probing=False)
        self.connections: set[ClientConnection] = set()
        self.conn = ClientConnection(self.runtime, self.connections)
        self.client = RecordingTransport()
        self.conn.connection_made(self.client)

    def send(self, data: bytes) -> bytes:
        """Feed the client's bytes; what the client got back."""
        self.conn.data_received(data)
        return self.client.take()

    def backend_connection(self, name: str = "a") -> tuple[UpstreamConnection, RecordingTransport]:
        """An idle keep-alive connection to backend ``name``, for the next request."""
        backend = self.runtime.cluster.backends.get(name)
        assert backend is not None
        pool = self.runtime.cluster.pool(backend)
        upstream = UpstreamConnection(pool)
        transport = RecordingTransport(("10.0.0.1", 8000))
        upstream.connection_made(transport)
        pool.idle.append(upstream)
        return upstream, transport


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def error_of(raw: bytes) -> tuple[int, str, dict[str, Any]]:
    status, headers, body = parse(raw)
    assert headers["content-length"] == str(len(body))
    return status, headers.get("connection", ""), json.loads(body)


def statuses(raw: bytes) -> list[int]:
    """The statuses of the responses in ``raw`` (bodies here never hold a status line)."""
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


# -- early answers: nothing reaches a backend ----------------------------------------------


async def test_malformed_request_is_answered_400_and_the_connection_lingers() -> None:
    relay = Relay()
    status, connection, body = error_of(relay.send(b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n"))
    assert (status, connection, body["error"]) == (400, "close", "bad_request")
    assert body["message"].startswith("malformed request: ")
    # Lingering close: no more bytes out, input still read (and dropped) for a moment.
    assert relay.client.eof and not relay.client.closed and relay.client.reading
    assert relay.send(GET) == b""


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "an HTTP/1.1 request must have a Host header"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one host header"),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\n\r\n",
            "Connection must not name content-length",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: ws\r\nConnection: upgrade\r\n"
            b"Content-Length: 1\r\n\r\nx",
            "an Upgrade request must not have a body",
        ),
    ],
)
async def test_ambiguous_heads_are_refused_400_with_the_reason(head: bytes, reason: str) -> None:
    relay = Relay()
    status, connection, body = error_of(relay.send(head))
    assert (status, connection, body["message"]) == (400, "close", reason)


async def test_connect_is_refused_405() -> None:
    relay = Relay()
    raw = relay.send(b"CONNECT mcp.example.com:443 HTTP/1.1\r\nHost: mcp.example.com\r\n\r\n")
    assert error_of(raw)[2] == {
        "error": "method_not_allowed",
        "message": "CONNECT is not supported",
    }


async def test_a_host_not_served_gets_421() -> None:
    relay = Relay()
    raw = relay.send(b"GET / HTTP/1.1\r\nHost: rebound.example.net\r\n\r\n")
    status, connection, body = error_of(raw)
    assert (status, body["error"]) == (421, "misdirected_request")
    # Answered from the head, before the message was complete: the connection closes
    # (lingering), as for every answer given while a request is still being read.
    assert connection == "close" and relay.client.eof


async def test_oversized_heads_get_431_whether_or_not_a_header_ended() -> None:
    config = CONFIG + "limits: {max_header_bytes: 1KiB}\n"
    relay = Relay(config)
    raw = relay.send(b"GET / HTTP/1.1\r\nHost: mcp.example.com\r\nX-A: " + b"a" * 2000 + b"\r\n")
    assert error_of(raw)[:2] == (431, "close")
    relay = Relay(config)
    raw = relay.send(b"GET / HTTP/1.1\r\nHost: mcp.example.com\r\nX-A: " + b"a" * 2000)
    assert error_of(raw)[2]["error"] == "headers_too_large"


async def test_pipelined_early_answers_come_in_request_order() -> None:
    relay = Relay()
    upstream, backend = relay.backend_connection()
    raw = relay.send(
        GET
        + b"GET /sse?sessionId=1&sessionId=2 HTTP/1.1\r\nHost: mcp.example.com\r\n\r\n"
        + b"GET / HTTP/1.1\r\nHost: rebound.example.net\r\n\r\n"
        + b"GET /last HTTP/1.1\r\nHost: mcp.example.com\r\n\r\n"
    )
    assert raw == b""  # all wait behind the first, which is at the backend
    assert not relay.client.reading
    assert backend.take().startswith(b"GET /mcp ")
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    # Complete requests answered early keep the connection open: in order, then the last
    # one goes to the backend on the connection the first gave back.
    raw = relay.client.take()
    assert statuses(raw) == [200, 400, 421] and b"connection: close" not in raw
    assert backend.take().startswith(b"GET /last ")
    assert relay.client.reading
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert statuses(relay.client.take()) == [200]


async def test_a_refused_head_pipelined_behind_an_exchange_is_answered_in_its_turn() -> None:
    """The requests before a refused head are answered in order, then its 400, then the
    connection closes; nothing after the refused head is read. Before, the connection
    closed after the first answer: the queued requests and the 400 were never sent."""
    relay = Relay()
    upstream, backend = relay.backend_connection()
    second = b"GET /second HTTP/1.1\r\nHost: mcp.example.com\r\n\r\n"
    relay.send(GET + second + b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + GET)
    assert backend.take().count(b"GET ") == 1
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    first = relay.client.take()
    assert statuses(first) == [200] and b"connection: close" not in first
    assert not relay.client.closed and not relay.client.eof
    assert backend.take().startswith(b"GET /second ")  # nothing after the refused head
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    raw = relay.client.take()
    assert statuses(raw) == [200, 400]
    assert raw.count(b"connection: close") == 1 and raw.rindex(b"connection: close") > raw.index(
        b" 400 "
    )
    assert relay.client.eof  # then the lingering close of an error answer
    assert backend.take() == b""


async def test_connection_close_is_honoured_on_an_early_answer() -> None:
    relay = Relay()
    upstream, _ = relay.backend_connection()
    raw = relay.send(
        GET + b"GET / HTTP/1.1\r\nHost: rebound.example.net\r\nConnection: close\r\n\r\n"
    )
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    raw = relay.client.take()
    assert statuses(raw) == [200, 421]
    assert raw.count(b"connection: close") == 1 and relay.client.closed
    assert relay.send(GET) == b""  # nothing more is read


async def test_a_request_head_too_slow_gets_408_at_the_sweep() -> None:
    relay = Relay()
    relay.send(b"GET / HTTP/1.1\r\nHost: mcp.example.com\r\n")
    header = relay.runtime.config.timeouts.header
    relay.conn.check_timeouts(100.0)  # the sweep notes where the connection is
    relay.conn.check_timeouts(100.0 + header)
    assert relay.client.take() == b""
    relay.conn.check_timeouts(100.0 + header + 0.5)
    status, _, body = error_of(relay.client.take())
    assert (status, body["message"]) == (408, "request head not received in time")


async def test_a_connection_that_never_sends_is_closed_without_an_answer() -> None:
    relay = Relay()
    header = relay.runtime.config.timeouts.header
    relay.conn.check_timeouts(100.0)
    relay.conn.check_timeouts(100.0 + header + 0.5)
    assert relay.client.closed and relay.client.take() == b""


def test_slow_uploads_are_judged_by_deadline_then_rate() -> None:
    config = parse_config(CONFIG + "timeouts: {body: 30s}\nlimits: {min_body_rate: 100}\n")
    assert slow_upload(31.0, 10**9, config) is answers.BODY_TIMEOUT
    assert slow_upload(4.0, 0, config) is None  # within the grace time, any pace
    assert slow_upload(10.0, 999, config) is answers.BODY_TOO_SLOW
    assert slow_upload(10.0, 1000, config) is None


# -- through a backend connection: the request head, and how the answer is framed ---------


async def test_a_request_goes_out_on_a_pooled_connection_and_comes_back() -> None:
    relay = Relay()
    upstream, backend = relay.backend_connection()
    assert relay.send(GET) == b""
    head = backend.take().decode()
    assert head.startswith("GET /mcp HTTP/1.1\r\n")
    assert "\r\nhost: 10.0.0.1:8000\r\n" in head
    assert "\r\nx-forwarded-for: 10.0.0.7\r\n" in head
    assert "\r\nx-forwarded-host: mcp.example.com\r\n" in head
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: 5\r\n\r\nhello")
    assert relay.client.take() == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
    assert upstream.pool.idle == [upstream]  # whole on both sides: kept for the next
    assert relay.runtime.cluster.admission.requests == 0


async def test_a_chunked_response_stays_chunked() -> None:
    relay = Relay()
    upstream, _ = relay.backend_connection()
    relay.send(GET)
    upstream.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    assert relay.client.take() == (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n"
    )
    upstream.data_received(b"2\r\nde\r\n0\r\n\r\n")
    assert relay.client.take() == b"2\r\nde\r\n0\r\n\r\n"
    assert upstream.pool.idle == [upstream]


async def test_a_close_delimited_body_is_chunked_to_an_http11_client() -> None:
    relay = Relay()
    upstream, _ = relay.backend_connection()
    relay.send(GET)
    upstream.data_received(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome")
    upstream.data_received(b" more")
    assert relay.client.take() == (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nsome\r\n5\r\n more\r\n"
    )
    upstream.connection_lost(None)  # the end of the body
    assert relay.client.take() == b"0\r\n\r\n"
    assert upstream.pool.idle == [] and not relay.client.closed


async def test_a_close_delimited_body_to_an_http10_client_ends_with_the_connection() -> None:
    relay = Relay()
    upstream, _ = relay.backend_connection()
    relay.send(b"GET /mcp HTTP/1.0\r\nHost: mcp.example.com\r\nConnection: keep-alive\r\n\r\n")
    upstream.data_received(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome")
    assert relay.client.take() == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nsome"
    upstream.connection_lost(None)
    assert relay.client.take() == b"" and relay.client.closed


async def test_connection_close_from_the_client_closes_after_the_answer() -> None:
    relay = Relay()
    upstream, backend = relay.backend_connection()
    relay.send(b"GET /mcp HTTP/1.1\r\nHost: mcp.example.com\r\nConnection: close\r\n\r\n")
    assert b"\r\nconnection:" not in backend.take()  # hop-by-hop: not forwarded
    upstream.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert relay.client.take() == b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"
    assert relay.client.closed
    assert upstream.pool.idle == [upstream]  # the backend's side was whole


async def test_an_event_stream_takes_a_stream_slot_and_goes_out_event_by_event() -> None:
    relay = Relay()
    upstream, _ = relay.backend_connection()
    relay.send(b"POST /mcp HTTP/1.1\r\nHost: mcp.example.com\r\nContent-Length: 2\r\n\r\n{}")
    upstream.data_received(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n7\r\ndata: 1\r\n"
    )
    assert relay.client.take().endswith(b"\r\n\r\n7\r\ndata: 1\r\n")
    admission = relay.runtime.cluster.admission
    assert (admission.requests, admission.streams) == (0, 1)  # a request became a stream
    upstream.data_received(b"7\r\ndata: 2\r\n")
    assert relay.client.take() == b"7\r\ndata: 2\r\n"
    upstream.data_received(b"0\r\n\r\n")
    assert relay.client.take() == b"0\r\n\r\n"
    assert (admission.requests, admission.streams) == (0, 0)


async def test_an_accepted_upgrade_becomes_a_tunnel_both_ways() -> None:
    relay = Relay()
    upstream, backend = relay.backend_connection()
    relay.send(
        b"GET /ws HTTP/1.1\r\nHost: mcp.example.com\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n\r\nearly"
    )
    head = backend.take()
    assert head.endswith(b"\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
    upstream.data_received(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"\r\nserver-first"
    )
    assert relay.client.take() == (
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
        b"\r\nserver-first"
    )
    assert backend.take() == b"early"  # what the client sent after its head, held till now
    assert relay.send(b"\x81\x00 not http") == b""
    assert backend.take() == b"\x81\x00 not http"
    upstream.data_received(b"\x82\x00 from the backend")
    assert relay.client.take() == b"\x82\x00 from the backend"


@pytest.mark.parametrize(
    "field",
    [b"Upgrade: websocket", b"Connection: keep-alive\r\nUpgrade: websocket"],
)
async def test_an_upgrade_header_without_connection_upgrade_is_a_plain_request(
    field: bytes,
) -> None:
    relay = Relay()
    upstream, backend = relay.backend_connection()
    relay.send(b"GET /ws HTTP/1.1\r\nHost: mcp.example.com\r\n" + field + b"\r\n\r\n")
    head = backend.take().lower()
    assert b"upgrade" not in head  # hop-by-hop, and no switch was asked for
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert relay.client.take() == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    assert upstream.pool.idle == [upstream]  # a plain exchange: the connection is kept


async def test_a_backend_connection_held_back_for_a_slow_client_is_pooled_reading() -> None:
    relay = Relay()
    upstream, backend = relay.backend_connection()
    relay.send(GET)
    relay.conn.pause_writing()  # the client's socket is full: the backend is held back
    assert not backend.reading
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert upstream.pool.idle == [upstream]
    assert backend.reading  # an idle connection must read, to notice the backend closing
    relay.conn.resume_writing()
    assert backend.reading
    # Paused and resumed while idle in the pool too (as a later exchange may).
    upstream.pause_reading()
    assert not backend.reading
    upstream.pool.release(upstream, 0.0)
    assert backend.reading


async def test_a_backend_closing_before_answering_gets_502() -> None:
    relay = Relay()
    upstream, _ = relay.backend_connection()
    relay.send(GET)
    upstream.connection_lost(ConnectionResetError())
    status, connection, body = error_of(relay.client.take())
    assert (status, connection, body["message"]) == (502, "", "backend closed the connection")


async def test_a_backend_answering_too_late_gets_504_and_its_connection_dropped() -> None:
    relay = Relay()
    upstream, backend = relay.backend_connection()
    relay.send(GET)
    late = relay.runtime.config.timeouts.upstream_header
    relay.conn.check_timeouts(100.0)
    relay.conn.check_timeouts(100.0 + late + 0.5)
    status, _, body = error_of(relay.client.take())
    assert (status, body["error"]) == (504, "gateway_timeout")
    assert backend.aborted and upstream.pool.idle == []


TWO_BACKENDS = CONFIG + "  - name: b\n    url: http://10.0.0.2:8000/\n"


async def test_a_session_this_process_holds_is_routed_at_once() -> None:
    """No task and no loop turn for a known session (nearly every MCP request): the
    request, head and body, is on its way to the session's backend when the read ends."""
    relay = Relay(TWO_BACKENDS)
    await relay.runtime.sessions.bind("s1", "b")
    _, to_a = relay.backend_connection("a")
    upstream, to_b = relay.backend_connection("b")
    for _ in range(2):  # round robin would send one of the two to a
        relay.send(
            b"POST /mcp HTTP/1.1\r\nHost: mcp.example.com\r\nMcp-Session-Id: s1\r\n"
            b"Content-Length: 2\r\n\r\n{}"
        )
        assert relay.conn.ex.task is None
        sent = to_b.take()
        assert sent.startswith(b"POST /mcp HTTP/1.1\r\n") and sent.endswith(b"\r\n\r\n{}")
        assert b"\r\nmcp-session-id: s1\r\n" in sent
        upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        assert relay.client.take() == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    assert to_a.take() == b""


async def test_a_session_the_store_does_not_hold_is_looked_up_then_answered_404() -> None:
    relay = Relay(TWO_BACKENDS)
    _, to_a = relay.backend_connection("a")
    relay.send(
        b"POST /mcp HTTP/1.1\r\nHost: mcp.example.com\r\nMcp-Session-Id: gone\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    task = relay.conn.ex.task
    assert task is not None  # the store is asked (a shared store may hold it)
    await task
    status, _, _ = parse(relay.client.take())
    assert status == 404 and to_a.take() == b""


SIGNED = CONFIG + f'sticky: {{store: signed, keys: ["{KEY}"]}}\n'


async def test_signed_session_ids_are_sealed_toward_the_client_and_opened_toward_the_backend() -> (
    None
):
    relay = Relay(SIGNED)
    upstream, backend = relay.backend_connection()
    relay.send(b"POST /mcp HTTP/1.1\r\nHost: mcp.example.com\r\nContent-Length: 2\r\n\r\n{}")
    backend.take()
    upstream.data_received(
        b"HTTP/1.1 200 OK\r\nMcp-Session-Id: raw-1\r\nContent-Length: 2\r\n\r\n{}"
    )
    status, headers, _ = parse(relay.client.take())
    token = headers["mcp-session-id"]
    assert status == 200 and token != "raw-1"
    relay.send(
        b"POST /mcp HTTP/1.1\r\nHost: mcp.example.com\r\nMcp-Session-Id: "
        + token.encode()
        + b"\r\nContent-Length: 2\r\n\r\n{}"
    )
    assert b"\r\nmcp-session-id: raw-1\r\n" in backend.take()  # the backend's own id
    upstream.data_received(
        b"HTTP/1.1 200 OK\r\nMcp-Session-Id: raw-1\r\nContent-Length: 2\r\n\r\n{}"
    )
    assert parse(relay.client.take())[1]["mcp-session-id"] == token  # the client's own


async def test_a_tampered_signed_session_id_gets_404_session_not_found() -> None:
    relay = Relay(SIGNED)
    raw = relay.send(
        b"POST /mcp HTTP/1.1\r\nHost: mcp.example.com\r\nMcp-Session-Id: forged\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    status, _, body = parse(raw)
    assert (status, body) == (404, SESSION_NOT_FOUND)


# -- the pure pieces: answers and session headers -----------------------------------------


def test_an_answer_renders_with_retry_after_before_extra_headers() -> None:
    raw = answers.render(answers.QUEUE_FULL, close=True, headers=[(b"x-a", b"1")])
    status, headers, body = parse(raw)
    assert status == 503
    assert list(headers) == ["content-type", "content-length", "retry-after", "x-a", "connection"]
    assert json.loads(body) == {"error": "overloaded", "message": "too many requests queued"}
    assert b"retry-after" not in answers.render(answers.UNREACHABLE, close=False)


def test_session_not_found_is_the_json_rpc_error() -> None:
    status, headers, body = parse(answers.session_not_found(close=False))
    assert (status, body, "connection" in headers) == (404, SESSION_NOT_FOUND, False)


def test_with_session_id_replaces_only_the_session_header() -> None:
    wire = wire_fields([(b"content-type", b"raw"), (b"mcp-session-id", b"raw"), (b"x", b"raw")])
    out = with_session_id(wire, "tok")
    assert out == wire_fields(
        [(b"content-type", b"raw"), (b"mcp-session-id", b"tok"), (b"x", b"raw")]
    )
    assert wire == wire_fields(  # the head's own fields are left as they were
        [(b"content-type", b"raw"), (b"mcp-session-id", b"raw"), (b"x", b"raw")]
    )


def runtime_of(config: str) -> Runtime:
    parsed: Config = parse_config(config)
    return Runtime(parsed, probing=False)


async def test_session_header_cases() -> None:
    runtime = runtime_of(SIGNED)
    signed = runtime.affinity.kinds[0]
    assert isinstance(signed, SignedSessions)
    head = ResponseHead(
        LENGTH, wire_fields([(b"mcp-session-id", b"raw")]), True, False, b"raw", b""
    )
    fresh = Request()
    # A new session: sealed, counted, nothing to store.
    headers, job, _ = signed.on_head(fresh, None, 200, head, "a", None)
    assert headers is not None and job is None
    assert signed.codec.open(headers[2].decode()) == ("a", "raw")
    # The same session again: the client's own token, no new seal.
    known = Request()
    known.session_id, known.upstream_session_id = "client-token", "raw"
    headers, job, _ = signed.on_head(known, None, 200, head, "a", None)
    assert (headers, job) == (wire_fields([(b"mcp-session-id", b"client-token")]), None)
    # With the memory store, a new session is a store job for the caller to await, and
    # the backend's fields go out as they are.
    memory = runtime_of(CONFIG)
    stored = memory.affinity.kinds[0]
    assert isinstance(stored, StoredSessions)
    headers, job, _ = stored.on_head(fresh, None, 200, head, "a", None)
    assert headers is None and job is not None
    await job
    assert await memory.sessions.get("raw") == "a"
    # The same session again, or an error answer: nothing to change, nothing to store.
    again = Request()
    again.session_id = "raw"
    assert stored.on_head(again, None, 200, head, "a", None) == (None, None, None)
    assert stored.on_head(fresh, None, 400, head, "a", None) == (None, None, None)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', ("tools/list", "")),
        (b'{"method":"tools/call","params":{"name":"echo"}}', ("tools/call", "echo")),
        (b'[{"method":"ping"},{"method":"tools/list"}]', ("ping", "")),  # a batch: its first
        (b'{"result":{}}', ("", "")),  # a response, not a request
        (b"not json", ("", "")),
        ('{"method":"tools/call","params":{"name":"é"}}'.encode(), ("tools/call", "é")),
        (b'{"method":"tools/call","params":{"name":"\xe9"}}', ("", "")),  # not UTF-8
        (b"[" * 65 + b"]" * 65, ("", "")),  # too deeply nested to be parsed at all
    ],
)
def test_jsonrpc_method(body: bytes, expected: tuple[str, str]) -> None:
    assert jsonrpc_method(body) == expected


# -- the common exchange, byte for byte ----------------------------------------------------


async def test_request_ids_are_16_hex_digits_counting_up() -> None:
    relay = Relay()
    ids = []
    for _ in range(3):
        upstream, backend = relay.backend_connection()
        relay.send(GET)
        head = backend.take()
        ids.append(re.search(rb"\r\nx-request-id: ([^\r]*)\r\n", head).group(1))  # type: ignore[union-attr]
        upstream.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert all(re.fullmatch(rb"[89a-f][0-9a-f]{15}", i) for i in ids), ids
    numbers = [int(i, 16) for i in ids]
    assert numbers == [numbers[0], numbers[0] + 1, numbers[0] + 2]


async def test_a_plain_response_head_goes_out_as_the_backend_sent_its_fields() -> None:
    """Fields in order, names lower-cased, hop-by-hop ones dropped, nothing else changed."""
    relay = Relay()
    upstream, _ = relay.backend_connection()
    relay.send(GET)
    upstream.data_received(
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\n"
        b"Keep-Alive: timeout=5\r\nContent-Length: 2\r\nConnection: keep-alive\r\n"
        b"X-A: 1\r\nX-A: 2\r\n\r\nok"
    )
    assert relay.client.take() == (
        b"HTTP/1.1 200 OK\r\nserver: nginx\r\ncontent-type: text/plain\r\n"
        b"content-length: 2\r\nx-a: 1\r\nx-a: 2\r\n\r\nok"
    )
    upstream, _ = relay.backend_connection()
    relay.send(b"GET / HTTP/1.0\r\nHost: mcp.example.com\r\nConnection: keep-alive\r\n\r\n")
    upstream.data_received(b"HTTP/1.1 201 Made\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    # To an HTTP/1.0 client a body of unknown length ends with the connection.
    assert relay.client.take() == b"HTTP/1.1 201 Made\r\nconnection: close\r\n\r\n"
