"""A cluster: the backend set of one config and what follows its membership (connection
pools, admission slots, health checks, the balancing strategy), and its retry budget."""

from __future__ import annotations

import time

from mcplb.healthcheck.monitor import HealthMonitor
from mcplb.proxy.cluster.admission import Admission
from mcplb.proxy.cluster.backends import Backend, BackendSet
from mcplb.proxy.cluster.pool import UpstreamPool
from mcplb.proxy.cluster.retry_budget import RetryBudget
from mcplb.proxy.config.schema import BackendConfig, Config
from mcplb.proxy.config.tls import backend_context
from mcplb.strategies import registry
from mcplb.strategies.base import Strategy


class Cluster:
    """The backends and their pools, admission, health and strategy; the retry budget.

    One owner per flag: ``draining`` (and its deadline) is written here only
    (``set_draining``, retirement by a reload); ``available`` and ``weight`` only by the
    health monitor, which recomputes them from its verdicts and ``draining``.
    """

    def __init__(self, config: Config, *, probing: bool = True) -> None:
        """``probing``: whether this process runs the active health checks."""
        self._timeouts = config.timeouts
        self.backends = BackendSet(config.backends)
        # Bumped when the routing list's membership or a backend's availability or weight
        # changes: what is derived from them (``candidates``) is recomputed once per version.
        self.version = 0
        self._candidates: list[Backend] = []
        self._candidates_version = -1
        self.strategy: Strategy = registry.build(config.strategy, config.strategy_options)
        for backend in self.backends:  # with the settings of backend_tls, which it may lack
            backend.tls = backend_context(backend.config, config.backend_tls)
        self.pools: dict[Backend, UpstreamPool] = {b: self._new_pool(b) for b in self.backends}
        self.health = HealthMonitor(
            config.health, self.backends.backends, probing=probing, on_change=self._changed
        )
        self.admission = Admission(config.limits, self.backends)
        # Retries as a share of the requests this cluster got (the relay counts both).
        self.retry_budget = RetryBudget(config.retries.budget_percent)
        self._use_strategy(self.strategy)

    @property
    def candidates(self) -> list[Backend]:
        """The routing list the strategy picks from: every backend in config order (the
        strategy skips unavailable ones), as a new list object whenever membership,
        availability or a weight changed. So a strategy that is handed the same object
        again may keep its indexes (see strategies/base.py), and a pick stays O(1) or
        O(log n) however many backends there are."""
        if self._candidates_version != self.version:
            self._candidates = list(self.backends.backends)
            self._candidates_version = self.version
        return self._candidates

    def _use_strategy(self, strategy: Strategy) -> None:
        """Pick with ``strategy`` from now on; one that indexes backends by load hears of
        every load change."""
        self.strategy = strategy
        self.admission.on_load = strategy.load_changed if strategy.tracks_load else None

    def pool(self, backend: Backend) -> UpstreamPool:
        return self.pools[backend]

    def set_draining(self, name: str, draining: bool, until: float | None = None) -> None:
        """Drain (or undrain) the backend named ``name``: no new work; after ``until``
        (wall clock) its sessions end too. Raises KeyError for an unknown name."""
        backend = self.backends.get(name)
        if backend is None:
            raise KeyError(name)
        self._set_draining(backend, draining, until)

    async def reload(self, config: Config) -> list[str]:
        """Switch to a reloaded config's backend set without dropping anything: backends
        that stay keep their connections, sessions and health; removed ones (and the old
        endpoint of a moved one) drain until ``timeouts.grace`` from now. Returns what
        changed, one line each. Raises TlsError (a backend's CA, certificate or key file) or
        StrategyLoadError before changing anything.

        Every https backend's TLS files are read again: a rotated client certificate (or CA
        bundle) applies to the connections made from then on, the relay's and the probes'."""
        strategy = registry.build(config.strategy, config.strategy_options)
        contexts = {b.name: backend_context(b, config.backend_tls) for b in config.backends}
        self._timeouts = config.timeouts
        current = {b.name: b for b in self.backends}
        changes: list[str] = []
        staying: list[Backend] = []
        moved: list[Backend] = []
        for backend_config in config.backends:
            backend = current.pop(backend_config.name, None)
            if backend is not None and backend.same_endpoint(backend_config):
                self._keep(backend, backend_config, changes)
            else:
                if backend is not None:
                    moved.append(backend)  # same name, new endpoint: the old one drains
                    changes.append(f"backend {backend.name} now at {backend_config.url}")
                else:
                    changes.append(f"backend {backend_config.name} added")
                backend = Backend(backend_config)
                self.pools[backend] = self._new_pool(backend)
            backend.tls = contexts[backend.name]
            staying.append(backend)
        changes.extend(f"backend {name} removed (draining)" for name in current)
        deadline = time.time() + config.timeouts.grace
        retired = [*current.values(), *moved]
        for backend in retired:
            self._set_draining(backend, True, deadline)
        # Health first: it knows the new backends before anything can look them up.
        await self.health.reconfigure(config.health, staying)
        self.backends.replace(staying, retired)
        self._changed()
        self._use_strategy(strategy)
        self.admission.configure(config.limits, staying)
        self.retry_budget.percent = config.retries.budget_percent  # its history kept
        return changes

    def retire_over(self) -> list[Backend]:
        """Removed backends whose drain deadline passed: gone now (their pools closed)."""
        done = self.backends.retire_over()
        for backend in done:
            pool = self.pools.pop(backend, None)
            if pool is not None:
                pool.close_all()
        return done

    def expire_idle(self, now: float) -> None:
        """Close pooled connections idle past the keep-alive timeout (``now``: loop time)."""
        for pool in self.pools.values():
            pool.expire(now)

    def close_pools(self) -> None:
        for pool in self.pools.values():
            pool.close_all()

    def _keep(self, backend: Backend, config: BackendConfig, changes: list[str]) -> None:
        """A backend that stays at its endpoint takes its reloaded settings."""
        if backend.config != config:
            changes.append(f"backend {backend.name} reconfigured")
        backend.reconfigure(config)
        pool = self.pools[backend]
        pool.connect_timeout = self._timeouts.connect
        pool.keepalive_timeout = self._timeouts.upstream_keepalive

    def _set_draining(self, backend: Backend, draining: bool, until: float | None) -> None:
        # By object, not name: a moved backend's old endpoint shares its name with the new.
        backend.draining = draining
        backend.drain_until = until if draining else None
        self.health.refresh(backend)  # available follows draining

    def _new_pool(self, backend: Backend) -> UpstreamPool:
        timeouts = self._timeouts
        return UpstreamPool(backend, timeouts.connect, timeouts.upstream_keepalive)

    def _changed(self) -> None:
        self.version += 1
