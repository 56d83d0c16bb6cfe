"""Health state machines, sans-IO: every call takes the current time instead of reading a clock.

- :class:`ActiveState`: rise/fall counting over active probe results, for one backend.
- :class:`OutlierDetector`: passive ejection from consecutive failures on real traffic.
- :class:`SlowStart`: the weight ramp of a backend that has just come back.

State changes are returned as :class:`Transition` values; logging and applying them is the
caller's job (see :mod:`healthcheck.monitor`).
"""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from mcplb.healthcheck.config import ActiveHealthConfig, HealthInitial, PassiveHealthConfig

HEALTHY: Final = "healthy"
UNHEALTHY: Final = "unhealthy"
UNKNOWN: Final = "unknown"
EJECTED: Final = "ejected"
DOWN_STATES: Final = frozenset({UNHEALTHY, EJECTED})

JITTER: Final = 0.1  # probe intervals vary by +-10%
MIN_SLOW_START_FACTOR: Final = 0.01  # the first moment of a ramp: "almost no" traffic


@dataclass(frozen=True, slots=True)
class Transition:
    """One backend changing state (active: unknown/healthy/unhealthy; passive: healthy/ejected)."""

    backend: str
    old: str
    new: str
    reason: str

    @property
    def down(self) -> bool:
        """Whether this is a change for the worse (logged as a warning)."""
        return self.new in DOWN_STATES

    def __str__(self) -> str:
        return f"backend {self.backend}: {self.old} -> {self.new} ({self.reason})"


def seconds(value: float) -> str:
    """A duration for messages: 30.0 -> "30s", 0.25 -> "0.25s"."""
    if not math.isfinite(value):
        return f"{value}s"
    return format(Decimal(repr(round(value, 3))).normalize(), "f") + "s"


class ActiveState:
    """Rise/fall counting of active probe results for one backend.

    Until the first verdict the state is unknown and the backend counts as ``initial``
    (``up``). Counting starts from that assumption: with ``initial="healthy"`` it takes
    ``fall`` consecutive failures to become unhealthy (and one success confirms healthy);
    with ``initial="unhealthy"`` it takes ``rise`` consecutive successes to become healthy
    (and one failure confirms unhealthy).
    """

    __slots__ = ("_cfg", "_initial_up", "failures", "healthy", "name", "successes")

    def __init__(self, name: str, cfg: ActiveHealthConfig, initial: HealthInitial) -> None:
        self.name = name
        self._cfg = cfg
        self._initial_up = initial == "healthy"
        self.healthy: bool | None = None  # None until the first verdict
        self.successes = 0  # consecutive, since the last result of the other kind
        self.failures = 0

    def with_config(self, cfg: ActiveHealthConfig) -> ActiveState:
        """This state under reloaded settings: the verdict stays, counting restarts."""
        if cfg == self._cfg:
            return self
        state = ActiveState(self.name, cfg, "healthy" if self._initial_up else "unhealthy")
        state.healthy = self.healthy
        return state

    @property
    def up(self) -> bool:
        """Whether the backend should get traffic as far as active checks are concerned."""
        return self._initial_up if self.healthy is None else self.healthy

    @property
    def label(self) -> str:
        if self.healthy is None:
            return UNKNOWN
        return HEALTHY if self.healthy else UNHEALTHY

    def record(self, ok: bool, detail: str) -> Transition | None:
        """Count one probe result; the transition it causes, if any."""
        if ok:
            self.successes += 1
            self.failures = 0
        else:
            self.failures += 1
            self.successes = 0
        old, up = self.label, self.up
        check = f"active {self._cfg.type} check"
        if up and not ok and self.failures >= self._cfg.fall:
            reason = f"{check}: {_count(self.failures, 'failure')}, last: {detail}"
            return self._become(False, old, reason)
        if not up and ok and self.successes >= self._cfg.rise:
            reason = f"{check}: {_count(self.successes, 'success')}, last: {detail}"
            return self._become(True, old, reason)
        if self.healthy is None and ok == up:  # the first result agreeing with ``initial``
            verdict = "passed" if ok else "failed"
            return self._become(up, old, f"{check}: {verdict}, last: {detail}")
        return None

    def adopt(self, healthy: bool, reason: str) -> Transition:
        """Take a verdict reached elsewhere (by the worker that probes)."""
        successes = self.successes
        transition = self._become(healthy, self.label, reason)
        self.successes = successes if not healthy else 0
        return transition

    def _become(self, healthy: bool, old: str, reason: str) -> Transition:
        self.healthy = healthy
        self.successes = self.failures = 0
        return Transition(self.name, old, self.label, reason)

    @property
    def counting(self) -> bool:
        """Whether some results toward a change of state have been counted."""
        return self.failures > 0 if self.up else self.successes > 0

    def next_interval(self, rng: random.Random) -> float:
        """Seconds until the next probe: interval, fast_interval while counting toward a
        change, down_interval while unhealthy; each with +-10% jitter."""
        cfg = self._cfg
        base = cfg.interval
        if self.counting and cfg.fast_interval is not None:
            base = cfg.fast_interval
        elif self.healthy is False and cfg.down_interval is not None:
            base = cfg.down_interval
        return base * rng.uniform(1 - JITTER, 1 + JITTER)


def _count(n: int, noun: str) -> str:
    plural = "successes" if noun == "success" else f"{noun}s"
    return f"{n} consecutive {noun if n == 1 else plural}"


class OutlierDetector:
    """Passive ejection: ``consecutive_failures`` failures in a row eject a backend.

    An ejection lasts ``ejection_time`` times the number of this backend's ejections within
    ``ejection_memory`` (this one included), capped at ``max_ejection_time``. At most
    ``floor(len(names) * max_ejection_percent / 100)`` backends are ejected at once; a
    failure that would exceed that is counted but ejects nothing.
    """

    def __init__(self, cfg: PassiveHealthConfig, names: Iterable[str]) -> None:
        self._cfg = cfg
        self._names = list(dict.fromkeys(names))
        self.max_ejected = len(self._names) * cfg.max_ejection_percent // 100
        self._failures: dict[str, int] = dict.fromkeys(self._names, 0)
        self._last_reason: dict[str, str] = {}
        self._until: dict[str, float] = {}  # ejected backend -> when the ejection ends
        self._length: dict[str, float] = {}  # ejected backend -> length of its ejection
        self._history: dict[str, collections.deque[float]] = {
            name: collections.deque() for name in self._names
        }
        self.refused = 0  # ejections refused by max_ejection_percent (for status/metrics)

    def carry_over(self, old: OutlierDetector) -> None:
        """Take the failure counts, ejections and history of backends that stay."""
        for name in self._names:
            if name in old._failures:
                self._failures[name] = old._failures[name]
                self._history[name] = old._history[name]
                if name in old._until:
                    self._until[name] = old._until[name]
                    self._length[name] = old._length[name]
                if name in old._last_reason:
                    self._last_reason[name] = old._last_reason[name]
        self.refused = old.refused

    def ejected(self, name: str) -> bool:
        return name in self._until

    def ejected_until(self, name: str) -> float | None:
        return self._until.get(name)

    def failures(self, name: str) -> int:
        """Consecutive failures counted for ``name`` since its last success or ejection."""
        return self._failures.get(name, 0)

    def success(self, name: str) -> None:
        if self._failures.get(name):
            self._failures[name] = 0

    def failure(self, name: str, reason: str, now: float) -> Transition | None:
        """Count a failure; the ejection it causes, if any."""
        cfg = self._cfg
        if not cfg.enabled or name not in self._failures or name in self._until:
            return None
        count = self._failures[name] = self._failures[name] + 1
        self._last_reason[name] = reason
        if count < cfg.consecutive_failures:
            return None
        if len(self._until) >= self.max_ejected:
            self.refused += 1
            return None
        history = self._history[name]
        while history and history[0] <= now - cfg.ejection_memory:
            history.popleft()
        history.append(now)
        length = min(cfg.ejection_time * len(history), cfg.max_ejection_time)
        self._until[name] = now + length
        self._length[name] = length
        self._failures[name] = 0
        nth = (
            ""
            if len(history) == 1
            else f", ejection {len(history)} within {seconds(cfg.ejection_memory)}"
        )
        reason = (
            f"passive: {_count(count, 'failure')}, last: {reason}; "
            f"ejected for {seconds(length)}{nth}"
        )
        return Transition(name, HEALTHY, EJECTED, reason)

    def release(self, name: str, reason: str) -> Transition | None:
        """End ``name``'s ejection early (an active check passed, as in Envoy)."""
        if name not in self._until:
            return None
        del self._until[name]
        self._length.pop(name)
        return Transition(name, EJECTED, HEALTHY, reason)

    def expire(self, now: float) -> list[Transition]:
        """Readmit every backend whose ejection is over."""
        over = [name for name, until in self._until.items() if until <= now]
        transitions = []
        for name in over:
            del self._until[name]
            length = self._length.pop(name)
            transitions.append(
                Transition(name, EJECTED, HEALTHY, f"ejection of {seconds(length)} over")
            )
        return transitions


class SlowStart:
    """Weight ramps of backends that came back: from ~0 to full over ``duration`` seconds."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self._started: dict[str, float] = {}

    def start(self, name: str, now: float) -> None:
        if self.duration > 0:
            self._started[name] = now

    def carry_over(self, old: SlowStart) -> None:
        """Continue the ramps in progress (when slow start is still on)."""
        if self.duration > 0:
            self._started.update(old._started)

    def stop(self, name: str) -> None:
        """Forget a ramp (the backend went down again)."""
        self._started.pop(name, None)

    def ramping(self) -> list[str]:
        return list(self._started)

    def factor(self, name: str, now: float) -> float:
        """Share of its weight the backend gets now, in (0, 1]; 1 when not ramping."""
        started = self._started.get(name)
        if started is None:
            return 1.0
        elapsed = now - started
        if elapsed >= self.duration:
            del self._started[name]
            return 1.0
        return max(elapsed / self.duration, MIN_SLOW_START_FACTOR)
