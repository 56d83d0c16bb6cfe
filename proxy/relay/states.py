"""The constants the relay's objects share: what a client connection waits for, why it
stopped reading, and how much it keeps of a request body."""

from __future__ import annotations

from typing import Final

# What the client connection is waiting for; the timeout sweep reads it.
IDLE: Final = 0
HEAD: Final = 1
ROUTING: Final = 2
WAIT_RESPONSE: Final = 3
STREAMING: Final = 4
TUNNEL: Final = 5
CLOSED: Final = 6
BUFFERING: Final = 7  # reading a request body up to limits.request_buffer, before routing

# Reasons to stop reading from the client (bits); reading resumes when none is left.
PAUSE_PIPELINE: Final = 1
PAUSE_UPSTREAM_FULL: Final = 2
PAUSE_BUFFER_FULL: Final = 4

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
