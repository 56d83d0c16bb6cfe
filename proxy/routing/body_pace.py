"""The minimum pace of a request body over a sliding window (``limits.min_body_rate``).

Pure: the relay feeds it the upload's time and bytes at every timeout sweep.
"""

from __future__ import annotations

from collections import deque


class BodyPace:
    """The minimum body rate over a sliding window: an average from the start let a
    client send 70 KiB at once and then nothing for a minute. Fed the upload's time (the
    proxy's own pauses left out) and bytes at every sweep; keeps one mark per sweep of the
    last window (about 12)."""

    __slots__ = ("marks", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self.marks: deque[tuple[float, int]] = deque()

    def too_slow(self, elapsed: float, received: int, rate: int) -> bool:
        """Whether fewer than ``rate`` bytes a second came over the last window."""
        marks = self.marks
        marks.append((elapsed, received))
        # The base: the newest mark at least a window old.
        while len(marks) > 1 and marks[1][0] <= elapsed - self.window:
            marks.popleft()
        since, then = marks[0]
        span = elapsed - since
        return span >= self.window and received - then < rate * span
