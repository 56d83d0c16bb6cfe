"""The client connection's state machine (a table of legal moves, checked on every move
as h11 checks its own) and its flow control (pause reasons as bits), sans-IO."""

from __future__ import annotations

import asyncio

import pytest

from mcplb.proxy.relay.flow import FlowControl
from mcplb.proxy.relay.states import (
    CLOSED,
    HEAD,
    IDLE,
    LEGAL,
    NAMES,
    PAUSE_BUFFER_FULL,
    PAUSE_PIPELINE,
    ROUTING,
    STREAMING,
    TUNNELLING,
    WAIT_RESPONSE,
    IllegalTransition,
    transition,
)
from tests.test_relay_sans_io import GET, RecordingTransport, Relay


def test_every_state_has_its_moves_and_may_close() -> None:
    assert sorted(LEGAL) == list(range(len(NAMES)))
    assert all(CLOSED in moves for moves in LEGAL.values())
    assert LEGAL[CLOSED] == {CLOSED}


@pytest.mark.parametrize(
    ("state", "new"),
    [
        (IDLE, STREAMING),  # a response with no request
        (IDLE, WAIT_RESPONSE),
        (HEAD, STREAMING),
        (TUNNELLING, IDLE),  # a tunnel never goes back to HTTP
        (TUNNELLING, HEAD),
        (CLOSED, IDLE),  # nothing after the end
        (CLOSED, ROUTING),
        (ROUTING, TUNNELLING),  # only an answered upgrade tunnels
    ],
)
def test_an_illegal_move_raises(state: int, new: int) -> None:
    with pytest.raises(IllegalTransition, match=f"{NAMES[state]} -> {NAMES[new]}"):
        transition(state, new)


async def test_the_connection_moves_only_through_the_table() -> None:
    relay = Relay()
    upstream, _ = relay.backend_connection()
    assert relay.conn.state == IDLE
    relay.send(GET[:20])
    assert relay.conn.state == HEAD
    relay.send(GET[20:])  # HEAD -> ROUTING -> WAIT_RESPONSE, each move checked
    assert relay.conn.state == WAIT_RESPONSE
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert relay.conn.state == IDLE  # STREAMING, then answered
    # A bug that moved a closed connection back would raise, not go unnoticed.
    relay.conn.close()
    assert relay.conn.state == CLOSED
    with pytest.raises(IllegalTransition, match="CLOSED -> HEAD"):
        relay.conn.set_state(HEAD)


async def test_reading_resumes_only_when_no_pause_reason_is_left() -> None:
    loop = asyncio.get_running_loop()
    flow = FlowControl(loop)
    transport = RecordingTransport()
    flow.transport = transport
    flow.pause_reading(PAUSE_PIPELINE)
    flow.pause_reading(PAUSE_BUFFER_FULL)
    assert not transport.reading
    assert flow.resume_reading(PAUSE_PIPELINE) == 0.0  # still held by the buffer
    assert not transport.reading
    assert flow.resume_reading(PAUSE_PIPELINE) == 0.0  # a reason not held: nothing
    assert flow.resume_reading(PAUSE_BUFFER_FULL) >= 0.0
    assert transport.reading and flow.reasons == 0
    assert flow.paused_for(loop.time()) == 0.0
