"""The retry budget of one cluster (Envoy's retry budget): retries kept to a share of the
requests the cluster got, so that a failing cluster gets a trickle of extra load, not a
multiple of it. Sans-IO: time is passed in. Whether one failure may be retried at all
(the method, the condition) is ``routing.retries.may_retry``."""

from __future__ import annotations

from typing import Final

# Seconds of history the budget looks at, and retries it always allows in that window
# (so that a quiet proxy can still retry its rare failures).
BUDGET_WINDOW: Final = 10
BUDGET_FLOOR: Final = 10


class RetryBudget:
    """Requests and retries per whole second over the last ``BUDGET_WINDOW`` seconds."""

    __slots__ = ("_requests", "_retries", "_seconds", "percent")

    def __init__(self, percent: float) -> None:
        self.percent = percent  # retries.budget_percent (a reload sets it anew)
        self._seconds = [-1] * BUDGET_WINDOW
        self._requests = [0] * BUDGET_WINDOW
        self._retries = [0] * BUDGET_WINDOW

    def _slot(self, now: float) -> int:
        second = int(now)
        slot = second % BUDGET_WINDOW
        if self._seconds[slot] != second:
            self._seconds[slot] = second
            self._requests[slot] = 0
            self._retries[slot] = 0
        return slot

    def record_request(self, now: float) -> None:
        # ``_slot``, inline: this runs on every request.
        second = int(now)
        slot = second % BUDGET_WINDOW
        if self._seconds[slot] != second:
            self._seconds[slot] = second
            self._requests[slot] = 1
            self._retries[slot] = 0
        else:
            self._requests[slot] += 1

    def try_retry(self, now: float) -> bool:
        """Whether one more retry fits the budget now; if so, it is counted."""
        current = self._slot(now)
        oldest = int(now) - BUDGET_WINDOW
        requests = retries = 0
        for slot, second in enumerate(self._seconds):
            if second > oldest:
                requests += self._requests[slot]
                retries += self._retries[slot]
        if retries >= max(BUDGET_FLOOR, requests * self.percent / 100):
            return False
        self._retries[current] += 1
        return True
