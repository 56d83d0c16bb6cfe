"""Which config an open connection sees after a reload: the current one, for every key
(docs/architecture.md, "Which config a connection sees"). A connection opened before the
reload, kept alive across it, is held to the reloaded limits, timeouts, Host rule and
retries on its next request, sans-IO (the relay fed bytes, the backend a recording
transport)."""

from __future__ import annotations

from mcplb.proxy.config.loader import parse_config
from tests.test_relay_sans_io import CONFIG, Relay, error_of, parse

POST = b"POST /mcp HTTP/1.1\r\nHost: mcp.example.com\r\nContent-Length: %d\r\n\r\n"
RELOADED = (
    CONFIG
    + "preserve_host: true\n"
    + "limits: {max_body_bytes: 10, max_header_bytes: 1KiB}\n"
    + "timeouts: {header: 3s, body: 7s}\n"
)


async def answered_then_reloaded(relay: Relay) -> None:
    """One request answered on the connection, which stays open; then the reload."""
    upstream, backend = relay.backend_connection()
    assert relay.send(POST % 20 + b"x" * 20) == b""
    assert "\r\nhost: 10.0.0.1:8000\r\n" in backend.take().decode()
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert parse(relay.client.take())[0] == 200
    assert not relay.client.closed
    await relay.runtime.reload(parse_config(RELOADED))


async def test_a_kept_alive_connection_gets_the_reloaded_body_limit() -> None:
    relay = Relay()
    await answered_then_reloaded(relay)
    status, _, body = error_of(relay.send(POST % 20 + b"x" * 20))
    assert (status, body["error"]) == (413, "body_too_large")


async def test_a_kept_alive_connection_gets_the_reloaded_header_limit() -> None:
    relay = Relay()
    await answered_then_reloaded(relay)
    raw = relay.send(b"GET / HTTP/1.1\r\nHost: mcp.example.com\r\nX-A: " + b"a" * 2000 + b"\r\n")
    assert error_of(raw)[0] == 431


async def test_a_kept_alive_connection_gets_the_reloaded_host_rule() -> None:
    relay = Relay()
    await answered_then_reloaded(relay)
    _, backend = relay.backend_connection()
    assert relay.send(POST % 2 + b"ok") == b""
    assert "\r\nhost: mcp.example.com\r\n" in backend.take().decode()  # preserve_host


async def test_a_kept_alive_connection_gets_the_reloaded_timeouts() -> None:
    relay = Relay()
    await answered_then_reloaded(relay)
    # timeouts.header: 3 s now (10 s before)
    relay.send(b"GET / HTTP/1.1\r\nHost: mcp.example.com\r\n")
    relay.conn.check_timeouts(100.0)
    relay.conn.check_timeouts(103.5)
    status, _, body = error_of(relay.client.take())
    assert (status, body["message"]) == (408, "request head not received in time")


async def test_an_upload_on_a_kept_alive_connection_gets_the_reloaded_body_timeout() -> None:
    relay = Relay()
    await answered_then_reloaded(relay)
    relay.backend_connection()
    relay.send(POST % 8 + b"x")  # 1 of its 8 bytes: still uploading
    started = relay.conn.ex.started
    relay.conn.check_timeouts(started + 4.0)  # within the rate grace time
    assert relay.client.take() == b""
    relay.conn.check_timeouts(started + 7.5)  # timeouts.body: 7 s now (60 s before)
    status, _, body = error_of(relay.client.take())
    assert (status, body["message"]) == (408, "request body not received within timeouts.body")
