"""When a failed request may be sent again (sans-IO).

A retry is safe when nothing reached a backend (the connect failed). Once the request may
have reached one, only idempotent methods are sent again, unless the config allows more:
an MCP POST could otherwise run a tool twice. A budget, as in Envoy, keeps retries to a
share of the request rate, so a failing cluster gets a trickle of extra load, not a
multiple of it.
"""

from __future__ import annotations

from typing import Final

from mcplb.proxy.config.schema import RetriesConfig

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# Seconds of history the budget looks at, and retries it always allows in that window
# (so that a quiet proxy can still retry its rare failures).
BUDGET_WINDOW: Final = 10
BUDGET_FLOOR: Final = 10


class RetryBudget:
    """Requests and retries per whole second over the last ``BUDGET_WINDOW`` seconds."""

    __slots__ = ("_requests", "_retries", "_seconds", "percent")

    def __init__(self, percent: float) -> None:
        self.percent = percent
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
        self._requests[self._slot(now)] += 1

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


def may_retry(config: RetriesConfig, condition: str, method: bytes, sent: bool) -> bool:
    """Whether ``condition`` (connect_failure, reset, or a status code) allows sending a
    ``method`` request again; ``sent``: it may have reached the backend."""
    if condition not in config.on:
        return False
    return not sent or config.non_idempotent or method in IDEMPOTENT_METHODS
