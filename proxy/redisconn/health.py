"""Whether a store uses its Redis now, and how it reports Redis failures.

Both Redis stores (sessions, rate limits) follow one rule: a request never waits for a Redis
that just failed. The first failure marks Redis down and counts it; requests answer without
Redis (the local table, or fail open) until ``retry_at``; then one probe finds out whether
it is back (the sessions' background task, or one rate-limited request), after closing the
pooled connections, which a restart or a failover left dead. The wait doubles from
BACKOFF_MIN while probes fail, up to BACKOFF_MAX. Warnings are rate-limited per kind of
failure, counting the lines left out.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

BACKOFF_MIN = 0.5  # seconds without Redis after a failure, doubling while it stays down...
BACKOFF_MAX = 5.0  # ...up to this
LOG_INTERVAL = 5.0  # at most one warning per kind of failure per this many seconds


class RedisHealth:
    """One store's view of its Redis: up, or down until ``retry_at``; failures counted.

    ``name`` starts each warning ("Redis session store"); ``meanwhile`` ends it, saying
    what requests get while Redis is down ("answering from the local table")."""

    def __init__(
        self,
        logger: logging.Logger,
        name: str,
        meanwhile: str,
        clock: Callable[[], float] = time.monotonic,
        *,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        """``backoff_max``: the longest wait between probes."""
        self.errors = 0  # Redis failures seen (connect, timeout, protocol), for metrics
        self.healthy = True  # False: requests skip Redis until a probe succeeds
        self.retry_at = 0.0  # while down: the clock time from which a probe may run
        self._backoff = BACKOFF_MIN
        self._backoff_max = backoff_max
        self._logger = logger
        self._name = name
        self._meanwhile = meanwhile
        self._clock = clock
        self._log = LogThrottle(clock)

    def probe_due(self) -> bool:
        """Whether Redis is down and its backoff is over (a probe may run now)."""
        return not self.healthy and self._clock() >= self.retry_at

    def wait(self) -> float:
        """Seconds until a probe may run (0 if it may run now)."""
        return max(0.0, self.retry_at - self._clock())

    def failed(self, error: BaseException, *, probe: bool = False) -> None:
        """Count and report a failure; mark Redis down. Calls already in flight when Redis
        failed do not stretch the backoff; a failed ``probe`` does."""
        self.errors += 1
        if self.healthy or probe:
            self.healthy = False
            self.retry_at = self._clock() + self._backoff
            self._backoff = min(self._backoff * 2, self._backoff_max)
        kind = error_kind(error)
        more = self._log.due(kind)
        if more is not None:
            self._logger.warning(
                "%s: Redis %s error: %s%s; %s (%d Redis errors in all)",
                self._name,
                kind,
                str(error) or type(error).__name__,
                more,
                self._meanwhile,
                self.errors,
            )

    def recovered(self, news: str) -> None:
        """A probe succeeded: requests use Redis again; ``news`` says what happens now."""
        self.healthy = True
        self.retry_at = 0.0
        self._backoff = BACKOFF_MIN
        self._logger.warning("%s: Redis answers again; %s", self._name, news)


class LogThrottle:
    """At most one log line per kind of error per LOG_INTERVAL; the lines left out are
    counted into the next one."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._state: dict[str, tuple[float, int]] = {}  # kind -> (last logged, left out)

    def due(self, kind: str) -> str | None:
        """None to stay quiet now, else the text to add about the lines left out."""
        now = self._clock()
        last, suppressed = self._state.get(kind, (-math.inf, 0))
        if now - last < LOG_INTERVAL:
            self._state[kind] = (last, suppressed + 1)
            return None
        self._state[kind] = (now, 0)
        return f" ({suppressed} more since the last report)" if suppressed else ""


def error_kind(error: BaseException) -> str:
    if isinstance(error, TimeoutError | RedisTimeoutError):
        return "timeout"
    if isinstance(error, RedisConnectionError | OSError):
        return "connection"
    if isinstance(error, ResponseError):
        return "response"
    if isinstance(error, RedisError):
        return "protocol"
    return "unexpected"
