"""The states of a client connection and the moves between them (checked, as h11 checks
its own), why it stopped reading, and how much it keeps of a request body."""

from __future__ import annotations

from typing import Final

# What the client connection is waiting for; the timeout sweep reads it.
IDLE: Final = 0  # for the next request
HEAD: Final = 1  # for the rest of a request head
ROUTING: Final = 2  # for a routing step (a store lookup, the rate limit, a slot)
WAIT_RESPONSE: Final = 3  # for the backend's response head
STREAMING: Final = 4  # relaying the response body
TUNNELLING: Final = 5  # relaying the bytes of a switched protocol, both ways
CLOSED: Final = 6
BUFFERING: Final = 7  # for a request body, read before routing (request_buffer.py)

NAMES: Final = (
    "IDLE",
    "HEAD",
    "ROUTING",
    "WAIT_RESPONSE",
    "STREAMING",
    "TUNNELLING",
    "CLOSED",
    "BUFFERING",
)

# The legal moves. Any state may close. A request starts (ROUTING) from its head, or from
# the answer before it when it was pipelined; the answer's end goes back to IDLE, or to
# HEAD when the next request's head is already being read. A request with a body may be
# BUFFERING once its head is checked (request_buffer.py), and ROUTING again once enough of
# its body is read. A retry sends
# the request again (WAIT_RESPONSE again); a retry after a routing step that waited stays
# ROUTING.
_ANSWERED: Final = frozenset((IDLE, HEAD, ROUTING))
LEGAL: Final[dict[int, frozenset[int]]] = {
    IDLE: frozenset((HEAD, CLOSED)),
    HEAD: frozenset((ROUTING, CLOSED)),
    BUFFERING: frozenset((ROUTING, CLOSED)),
    ROUTING: _ANSWERED | {BUFFERING, WAIT_RESPONSE, CLOSED},
    WAIT_RESPONSE: _ANSWERED | {WAIT_RESPONSE, STREAMING, CLOSED},
    STREAMING: _ANSWERED | {TUNNELLING, CLOSED},
    TUNNELLING: frozenset((CLOSED,)),
    CLOSED: frozenset((CLOSED,)),
}


class IllegalTransition(Exception):
    """A move the table does not allow: a bug in the relay."""


def transition(state: int, new: int) -> int:
    """``new``, if the move from ``state`` is legal; else raise IllegalTransition."""
    if new not in LEGAL[state]:
        raise IllegalTransition(f"{NAMES[state]} -> {NAMES[new]}")
    return new


# Reasons to stop reading from the client (bits); reading resumes when none is left.
PAUSE_PIPELINE: Final = 1
PAUSE_UPSTREAM_FULL: Final = 2
PAUSE_BUFFER_FULL: Final = 4
# A head check that waits (the JWKS, a Redis rate limit): no body is read until it passes.
PAUSE_CHECKING: Final = 8

# Reasons to stop reading from the backend (bits).
UP_PAUSE_CLIENT_FULL: Final = 1
UP_PAUSE_HOLD: Final = 2

# Request body bytes kept per request while no connection is ready (or while queued
# behind a pipelined request); past this, reading from the client pauses.
BODY_BUFFER_LIMIT: Final = 256 * 1024
# The most one read hands ``data_received`` (uvloop's UV_STREAM_RECV_BUF_SIZE): reading
# pauses while the buffer could not take one more whole.
MAX_READ: Final = 256_000
# Request body bytes kept for a replay when a reused connection turns out closed.
REPLAY_LIMIT: Final = 64 * 1024
