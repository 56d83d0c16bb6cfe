"""Everything a running proxy shares: backends, pools, strategy and session store."""

from __future__ import annotations

import logging
import ssl

from healthcheck.monitor import HealthMonitor
from proxy.backends import Backend, BackendSet
from proxy.config import Config
from proxy.pool import UpstreamPool
from proxy.sessions import MemorySessionStore, SessionStore
from strategies import registry
from strategies.base import Strategy

log = logging.getLogger("mcplb")


class Runtime:
    """Built once from a Config; the relay reads it, nothing here reads the relay."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.backends = BackendSet(config.backends)
        self.strategy: Strategy = registry.build(config.strategy, config.strategy_options)
        self.pools: dict[str, UpstreamPool] = {
            b.name: UpstreamPool(
                b,
                config.timeouts.connect,
                config.timeouts.upstream_keepalive,
                _client_tls() if b.config.scheme == "https" else None,
            )
            for b in self.backends
        }
        self.health = HealthMonitor(config.health, self.backends.backends)
        self.sessions: SessionStore = MemorySessionStore(
            config.sticky.session_ttl,
            config.sticky.max_sessions,
            on_expire=self._session_expired,
        )

    def pool(self, backend: Backend) -> UpstreamPool:
        return self.pools[backend.name]

    def session_bound(self, backend_name: str) -> None:
        backend = self.backends.get(backend_name)
        if backend is not None:
            backend.sessions += 1

    def session_ended(self, backend_name: str) -> None:
        backend = self.backends.get(backend_name)
        if backend is not None and backend.sessions > 0:
            backend.sessions -= 1

    def _session_expired(self, session_id: str, backend_name: str) -> None:
        self.session_ended(backend_name)


def _client_tls() -> ssl.SSLContext:
    return ssl.create_default_context()
