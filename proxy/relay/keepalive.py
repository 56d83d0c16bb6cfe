"""SSE keep-alive comments on a quiet event stream (``timeouts.sse_keepalive``).

One ``SseKeepAlive`` per event-stream answer the proxy may add comments to (chunked or
until-close framing: never a Content-Length body, whose length would no longer match). It
knows when the stream last moved and whether the bytes relayed so far end an event: a
comment goes only between events, never inside one. The timeout sweep asks it
(``Sweep.check``); the comment is written toward the client only, and is not backend
activity (timeouts.idle still ends a stream the backend abandoned). Pure: time is passed in.
"""

from __future__ import annotations

from typing import Final

from mcplb.proxy.relay.http11 import chunk

COMMENT: Final = b": keep-alive\n\n"  # an SSE comment line, then a blank line (no event)
_EVENT_ENDS: Final = (b"\n\n", b"\r\r", b"\r\n\r\n")


class SseKeepAlive:
    """When an event stream last moved, and the tail of what was relayed."""

    __slots__ = ("at", "chunked", "tail")

    def __init__(self, now: float, chunked: bool) -> None:
        self.at = now  # when the stream last moved (a relayed chunk or a comment)
        self.chunked = chunked  # the answer's framing toward the client
        self.tail = b"\n\n"  # the last bytes relayed: the head ended no event yet

    def relayed(self, data: bytes, now: float) -> None:
        """Bytes of the body went to the client at ``now``."""
        self.at = now
        self.tail = (self.tail + data)[-4:] if len(data) < 4 else data[-4:]

    def due(self, now: float, every: float) -> bytes | None:
        """The comment to write now, framed, if the stream has been quiet for ``every``
        seconds and no event is half sent; else None."""
        if now - self.at < every or not self.tail.endswith(_EVENT_ENDS):
            return None
        self.at = now
        return chunk(COMMENT) if self.chunked else COMMENT
