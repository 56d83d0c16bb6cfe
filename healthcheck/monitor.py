"""The health monitor: the one object the relay talks to about backend health.

It runs the active probes, takes the relay's passive reports, and writes the outcome onto
the backend objects that strategies read (:class:`~mcplb.healthcheck.target.HealthTarget`,
implemented by ``mcplb.proxy.cluster.backends.Backend``):

- ``backend.available = up and not ejected and not draining``;
- ``backend.weight`` ramps from ~0 to ``backend.config.weight`` during slow start.

Every change of a backend's routing state (:meth:`HealthMonitor.routing_state`, the state
``/status`` shows) is logged once on the ``mcplb.health`` logger, with its reason and the URL
probed or used: WARNING when a backend goes down (unhealthy or ejected), INFO otherwise.
Changes inside the state machines that leave the routing state as it was (an ejected backend
also failing its probes) are not logged again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final

import aiohttp

from mcplb.healthcheck.config import ActiveHealthConfig, HealthConfig
from mcplb.healthcheck.probes import BOTH, http_probe, mcp_probe, probe_url, spoken
from mcplb.healthcheck.state import (
    DOWN_STATES,
    EJECTED,
    HEALTHY,
    ActiveState,
    OutlierDetector,
    SlowStart,
    Transition,
)
from mcplb.healthcheck.target import HealthTarget

logger = logging.getLogger("mcplb.health")

TICK: Final = 0.5  # seconds between ejection-expiry and slow-start weight updates
Probe = Callable[
    [aiohttp.ClientSession, HealthTarget, ActiveHealthConfig], Awaitable[tuple[bool, str]]
]
PROBES: Final[dict[str, Probe]] = {"http": http_probe, "mcp": mcp_probe}


class HealthMonitor:
    """Active probes, passive outlier ejection, slow start and panic mode for a backend set."""

    def __init__(
        self,
        config: HealthConfig,
        backends: Iterable[HealthTarget],
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        probing: bool = True,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        """``probing`` False: run no probes, take the verdicts of the worker that does
        (``adopt``); passive checks stay this process's own. ``on_change`` is called
        after a backend's ``available`` or ``weight`` changed (so that the owner of the
        backend set can recompute what it derives from them)."""
        self.config = config
        self.probing = probing
        self._on_change = on_change
        self.backends: list[HealthTarget] = list(backends)
        self._by_name: dict[str, HealthTarget] = {b.name: b for b in self.backends}
        self._clock = clock
        self._rng = rng or random.Random()
        active = config.active
        self._active: dict[str, ActiveState] = (
            {b.name: ActiveState(b.name, active, config.initial) for b in self.backends}
            if active.enabled
            else {}
        )
        self._outliers = OutlierDetector(config.passive, (b.name for b in self.backends))
        self._passive = config.passive.enabled
        self._on_5xx = config.passive.on_5xx
        self._slow = SlowStart(config.slow_start)
        self._last_probe: dict[str, tuple[bool, str, float]] = {}  # name -> (ok, detail, when)
        # The backends the MCP probe found to speak one era only: name -> "legacy" or
        # "modern" (dual-era and unknown ones have no entry). Routing keeps a request of
        # one era off the backends of the other (proxy/routing/steps.py); a new dict
        # whenever it changes, so that what is derived from it can be cached by identity.
        self.mcp_eras: dict[str, str] = {}
        self._spoken: dict[str, str] = {}  # name -> legacy, modern or both (for /status)
        self._counts: Counter[tuple[str, str, str]] = Counter()  # (kind, backend, label)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._logged: dict[str, str] = {b.name: self.routing_state(b.name) for b in self.backends}
        for backend in self.backends:
            self.refresh(backend)

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Start one probe task per backend (if active checks are on) and the ticker."""
        if self._tasks:
            return
        self._stopping.clear()
        if self._active and self.probing:
            self._session = aiohttp.ClientSession(
                # A fresh connection per probe: a pooled one could hide a dead listener.
                connector=aiohttp.TCPConnector(force_close=True, limit=0),
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=False,
                trust_env=False,
            )
            probe = PROBES[self.config.active.type]
            for backend in self.backends:
                task = asyncio.create_task(
                    self._probe_loop(backend, probe), name=f"health-probe-{backend.name}"
                )
                self._tasks.append(task)
        self._tasks.append(asyncio.create_task(self._tick_loop(), name="health-ticker"))

    async def stop(self) -> None:
        """Stop probing. Probes in flight may finish (they are bounded by the timeout) so that
        an MCP probe still ends its session; anything left after that is cancelled."""
        tasks, self._tasks = self._tasks, []
        self._stopping.set()
        if tasks:
            bound = 2 * self.config.active.timeout + 1.0 if self._active else 1.0
            _, pending = await asyncio.wait(tasks, timeout=bound)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def reconfigure(self, config: HealthConfig, backends: Iterable[HealthTarget]) -> None:
        """Watch a reloaded backend set with reloaded settings. Backends that stay keep
        their state (probe verdict, ejection, slow start); new ones start as ``initial``."""
        running = bool(self._tasks)
        await self.stop()
        old_active, old_outliers, old_slow = self._active, self._outliers, self._slow
        old_names = set(self._by_name)
        self.config = config
        self.backends = list(backends)
        self._by_name = {b.name: b for b in self.backends}
        active = config.active
        self._active = {}
        if active.enabled:
            for backend in self.backends:
                previous = old_active.get(backend.name)
                self._active[backend.name] = (
                    ActiveState(backend.name, active, config.initial)
                    if previous is None
                    else previous.with_config(active)
                )
        self._outliers = OutlierDetector(config.passive, (b.name for b in self.backends))
        self._outliers.carry_over(old_outliers)
        self._passive = config.passive.enabled
        self._on_5xx = config.passive.on_5xx
        self._slow = SlowStart(config.slow_start)
        self._slow.carry_over(old_slow)
        names = set(self._by_name)
        self._last_probe = {k: v for k, v in self._last_probe.items() if k in names}
        if active.enabled and active.type == "mcp":
            self.mcp_eras = {k: v for k, v in self.mcp_eras.items() if k in names}
            self._spoken = {k: v for k, v in self._spoken.items() if k in names}
        else:
            self.mcp_eras, self._spoken = {}, {}  # nothing probes MCP any more
        self._logged = {n: self._logged.get(n) or self.routing_state(n) for n in names}
        now = self._clock()
        for backend in self.backends:
            if backend.name not in old_names and self._serving(backend.name):
                # Added (a reload, DNS discovery) and in service at once: ramp it up too.
                self._slow.start(backend.name, now)
            self.refresh(backend, now)
        if running:
            await self.start()

    async def _sleep(self, delay: float) -> bool:
        """Wait ``delay`` seconds; False if stopping meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), max(delay, 0.0))
        return not self._stopping.is_set()

    async def _probe_loop(self, backend: HealthTarget, probe: Probe) -> None:
        state = self._active[backend.name]
        cfg = self.config.active
        loop = asyncio.get_running_loop()
        # Spread the first probes of all backends (and all workers) over one interval.
        if not await self._sleep(self._rng.uniform(0, cfg.interval)):
            return
        while True:
            started = loop.time()
            assert self._session is not None
            try:
                ok, detail = await probe(self._session, backend, cfg)
            except Exception as exc:  # probes do not raise; stay alive if one does anyway
                logger.exception("health probe of %s crashed", backend.name)
                ok, detail = False, f"probe error: {type(exc).__name__}"
            self.record_probe(backend, ok, detail)
            if cfg.type == "mcp":
                self._learn_era(backend.name, spoken(backend, cfg))
            if not await self._sleep(state.next_interval(self._rng) - (loop.time() - started)):
                return

    async def _tick_loop(self) -> None:
        while await self._sleep(TICK):
            try:
                self.tick()
            except Exception:  # pragma: no cover - tick is pure bookkeeping
                logger.exception("health ticker failed")

    # --- inputs -----------------------------------------------------------------------

    def record_probe(self, backend: HealthTarget, ok: bool, detail: str) -> None:
        """Count one active probe result (called by the probe loop; public for tests)."""
        now = self._clock()
        self._last_probe[backend.name] = (ok, detail, now)
        self._counts[("probe", backend.name, "success" if ok else "failure")] += 1
        self._apply(backend, self._active[backend.name].record(ok, detail), now, probed=True)
        if ok and self._active[backend.name].up:
            # A passing active check ends a passive ejection (Envoy's default): the probe
            # sees the backend serving again sooner than the ejection timer would.
            reason = f"active {self.config.active.type} check passed: {detail}"
            release = self._outliers.release(backend.name, reason)
            self._apply(backend, release, now, probed=True)

    def connect_failed(self, backend: HealthTarget, reason: str) -> None:
        """The relay could not connect to ``backend`` (refused, unreachable, connect timeout)."""
        if self._passive:
            now = self._clock()
            self._apply(backend, self._outliers.failure(backend.name, reason, now), now)

    def timed_out(self, backend: HealthTarget) -> None:
        """``backend`` did not send its response head in time."""
        if self._passive:
            now = self._clock()
            self._apply(backend, self._outliers.failure(backend.name, "timeout", now), now)

    def responded(self, backend: HealthTarget, status: int) -> None:
        """``backend`` sent a response head: a 5xx is a failure if on_5xx, anything else (and
        any status when on_5xx is off) resets the failure count."""
        if not self._passive:
            return
        if status >= 500 and self._on_5xx:
            now = self._clock()
            reason = f"HTTP {status}"
            self._apply(backend, self._outliers.failure(backend.name, reason, now), now)
        else:
            self._outliers.success(backend.name)

    def tick(self) -> None:
        """Readmit backends whose ejection is over and move slow-start weights along
        (every 0.5 s once started; public for tests that drive the clock)."""
        now = self._clock()
        for transition in self._outliers.expire(now):
            backend = self._by_name.get(transition.backend)
            active = self._active.get(transition.backend)
            if active is not None and not active.up:
                # The ejection is over but active checks still fail: it stays out.
                transition = dataclasses.replace(transition, new="unhealthy")
            if backend is not None:
                self._apply(backend, transition, now)
        changed = False
        for name in self._slow.ramping():
            backend = self._by_name.get(name)
            if backend is not None:
                changed = self._set_weight(backend, now) or changed
        if changed:
            self._on_change()

    def _learn_era(self, name: str, era: str | None) -> None:
        """Record what the MCP probe found ``name`` to speak (see ``mcp_eras``)."""
        if era is None:
            self._spoken.pop(name, None)
        else:
            self._spoken[name] = era
        single = None if era is None or era == BOTH else era
        if self.mcp_eras.get(name) != single:
            eras = {k: v for k, v in self.mcp_eras.items() if k != name}
            if single is not None:
                eras[name] = single
            self.mcp_eras = eras

    def verdicts(self) -> dict[str, list[Any]]:
        """The active checks' state per backend, for workers that do not probe:
        name -> [healthy (None until known), consecutive successes, last probe detail,
        the eras the MCP probe found it to speak (legacy, modern, both) or None]."""
        return {
            name: [
                state.healthy,
                state.successes,
                self._last_probe.get(name, (0, ""))[1],
                self._spoken.get(name),
            ]
            for name, state in self._active.items()
        }

    def adopt(self, verdicts: Mapping[str, list[Any]]) -> None:
        """Take the verdicts of the probing worker (see ``verdicts``)."""
        now = self._clock()
        for name, verdict in verdicts.items():
            healthy, successes, detail = verdict[0], verdict[1], verdict[2]
            state = self._active.get(name)
            backend = self._by_name.get(name)
            if state is None or backend is None:
                continue
            era = verdict[3] if len(verdict) > 3 else None  # (none from an older worker)
            self._learn_era(name, era if isinstance(era, str) else None)
            state.successes = successes  # a recovering backend's sessions are tried
            if healthy is not None and healthy != state.healthy:
                # The probing worker logged this change: here it is a debug line.
                reason = f"active {self.config.active.type} check (probing worker): {detail}"
                self._apply(backend, state.adopt(healthy, reason), now, probed=True, echo=True)
                if healthy:
                    release = self._outliers.release(name, reason)
                    self._apply(backend, release, now, probed=True, echo=True)

    # --- queries ----------------------------------------------------------------------

    def panic_open(self) -> bool:
        """True when panic is fail_open and no backend is available: send to all of them."""
        return self.config.panic == "fail_open" and not any(b.available for b in self.backends)

    def down(self, backend: HealthTarget) -> bool:
        """Unhealthy or ejected (its sessions get 404); never while panic_open()."""
        state = self._active.get(backend.name)
        is_down = (state is not None and not state.up) or self._outliers.ejected(backend.name)
        return is_down and not self.panic_open()

    def refuses_sessions(self, backend: HealthTarget) -> bool:
        """Whether requests of sessions bound to ``backend`` get 404 now: while it is down,
        unless active checks already see it recovering (a passing probe counted toward
        ``rise``). Workers judge health on their own, and one may readmit a backend a
        moment before another; a recovering backend's sessions are tried, not dropped (a
        refused connection still ends them)."""
        if not self.down(backend):
            return False
        state = self._active.get(backend.name)
        recovering = state is not None and not state.up and state.successes > 0
        return not recovering or self._outliers.ejected(backend.name)

    def unhealthy(self, backend: HealthTarget) -> bool:
        """Active checks say it is down."""
        state = self._active.get(backend.name)
        return state is not None and not state.up

    def ejected(self, backend: HealthTarget) -> bool:
        return self._outliers.ejected(backend.name)

    def routing_state(self, name: str) -> str:
        """What routing sees: ejected (first: it ends by itself or on a passing probe),
        else the active checks' label (unknown, healthy, unhealthy), else healthy."""
        if self._outliers.ejected(name):
            return EJECTED
        state = self._active.get(name)
        return HEALTHY if state is None else state.label

    def counters(self) -> dict[str, Any]:
        """Probe results and transitions so far, for metrics (JSON-serialisable)."""
        return {"counts": [[*key, count] for key, count in self._counts.items()]}

    def status(self) -> dict[str, dict[str, Any]]:
        """Per-backend health, for an admin API (JSON-serialisable)."""
        now = self._clock()
        result: dict[str, dict[str, Any]] = {}
        for backend in self.backends:
            state = self._active.get(backend.name)
            until = self._outliers.ejected_until(backend.name)
            probe = self._last_probe.get(backend.name)
            result[backend.name] = {
                "state": "unchecked" if state is None else state.label,
                "available": backend.available,
                "ejected": until is not None,
                "ejected_for": None if until is None else round(max(until - now, 0.0), 3),
                "consecutive_failures": self._outliers.failures(backend.name),
                "probe_successes": 0 if state is None else state.successes,
                "probe_failures": 0 if state is None else state.failures,
                "last_probe_ok": None if probe is None else probe[0],
                "last_probe": None if probe is None else probe[1],
                "last_probe_age": None if probe is None else round(now - probe[2], 3),
                "weight": backend.weight,
                "slow_start_factor": round(self._slow.factor(backend.name, now), 3),
            }
            spoken_eras = self._spoken.get(backend.name)
            if spoken_eras is not None:
                # What the MCP probe found it to speak: legacy, modern or both.
                result[backend.name]["mcp_eras"] = spoken_eras
        return result

    # --- applying state ---------------------------------------------------------------

    def _serving(self, name: str) -> bool:
        state = self._active.get(name)
        return (state is None or state.up) and not self._outliers.ejected(name)

    def _apply(
        self,
        backend: HealthTarget,
        transition: Transition | None,
        now: float,
        *,
        probed: bool = False,
        echo: bool = False,
    ) -> None:
        """Apply a state machine's transition; log it if the routing state changed.
        ``probed``: caused by an active check; ``echo``: adopted from the probing worker."""
        if transition is None:
            return
        self._counts[("transition", backend.name, transition.new)] += 1
        old, new = self._logged.get(backend.name), self.routing_state(backend.name)
        if new != old:
            self._logged[backend.name] = new
            if probed:
                where = f"probed {probe_url(backend, self.config.active.path)}"
            else:
                where = f"backend {backend.config.url}"
            level = logging.WARNING if new in DOWN_STATES else logging.INFO
            logger.log(
                logging.DEBUG if echo else level,
                "backend %s: %s -> %s (%s; %s)",
                backend.name,
                old,
                new,
                transition.reason,
                where,
            )
        if self._serving(backend.name):
            if transition.old in ("unhealthy", "ejected"):
                self._slow.start(backend.name, now)  # back in service: ramp its weight up
        else:
            self._slow.stop(backend.name)
        self.refresh(backend, now)

    def refresh(self, backend: HealthTarget, now: float | None = None) -> None:
        """Write ``available`` and ``weight`` onto ``backend`` (call after changing its
        ``draining`` flag)."""
        available = self._serving(backend.name) and not backend.draining
        changed = self._set_weight(backend, self._clock() if now is None else now)
        if available != backend.available:
            backend.available = available
            changed = True
        if changed:
            self._on_change()

    def _set_weight(self, backend: HealthTarget, now: float) -> bool:
        """Write the slow-start weight; whether it changed."""
        full = backend.base_weight
        factor = self._slow.factor(backend.name, now)
        weight = full if factor >= 1.0 or full <= 0 else max(1, round(full * factor))
        if weight == backend.weight:
            return False
        backend.weight = weight
        return True
