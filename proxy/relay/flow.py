"""Flow control toward the client: why reading from it is paused (bits: any reason left
keeps it paused), since when, and whether its socket takes more writes (uvicorn's
``FlowControl``, with mcplb's pause reasons)."""

from __future__ import annotations

import asyncio


class FlowControl:
    """Pauses and resumes reading from one client; counts the time it was held back."""

    __slots__ = ("loop", "paused_at", "reasons", "transport", "write_paused")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.reasons = 0  # PAUSE_* bits
        self.paused_at = 0.0  # when reading last paused
        self.write_paused = False

    def pause_reading(self, reason: int) -> None:
        if not self.reasons:
            self.paused_at = self.loop.time()
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.pause_reading()
        self.reasons |= reason

    def resume_reading(self, reason: int) -> float:
        """Drop ``reason``; the seconds reading was paused if it resumes now, else 0."""
        if not self.reasons & reason:
            return 0.0
        self.reasons &= ~reason
        if self.reasons:
            return 0.0
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()
        return self.loop.time() - self.paused_at

    def paused_for(self, now: float) -> float:
        """Seconds of the pause under way at ``now`` (0: reading)."""
        return now - self.paused_at if self.reasons else 0.0
