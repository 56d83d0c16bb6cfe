"""Everything a running proxy shares: backends, pools, strategy and session store."""

from __future__ import annotations

import itertools
import logging
import os
import ssl

from healthcheck.monitor import HealthMonitor
from proxy.affinity import HeaderAffinity
from proxy.backends import Backend, BackendSet
from proxy.config import Config
from proxy.pool import UpstreamPool
from proxy.redis_store import RedisSessionStore
from proxy.session_ids import TokenCodec
from proxy.sessions import MemorySessionStore, SessionStore
from proxy.stats import Stats
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
        self.stats = Stats([b.name for b in self.backends])
        # Request ids: a random per-process prefix and a counter (no syscall per request).
        self._request_prefix = os.urandom(3).hex()
        self._request_numbers = itertools.count()
        sticky = config.sticky
        self.sessions: SessionStore = (
            RedisSessionStore(
                sticky.redis.url,
                ttl=sticky.session_ttl,
                timeout=sticky.redis.timeout,
                prefix=sticky.redis.prefix,
                max_local=sticky.max_sessions,
                on_expire=self._session_expired,
            )
            if sticky.store == "redis"
            else MemorySessionStore(
                sticky.session_ttl, sticky.max_sessions, on_expire=self._session_expired
            )
        )
        # Signed ids name their backend: no table to consult (store "signed").
        self.session_codec = (
            TokenCodec(sticky.keys, "session") if sticky.store == "signed" else None
        )
        self.cookie_codec = TokenCodec(sticky.keys, "cookie") if sticky.cookie else None
        self.header_hash = HeaderAffinity(sticky.header) if sticky.header else None

    def pool(self, backend: Backend) -> UpstreamPool:
        return self.pools[backend.name]

    def session_bound(self, backend_name: str) -> None:
        backend = self.backends.get(backend_name)
        if backend is not None:
            backend.sessions += 1
            self.stats.backends[backend_name].sessions_created += 1

    def session_ended(self, backend_name: str) -> None:
        backend = self.backends.get(backend_name)
        if backend is not None and backend.sessions > 0:
            backend.sessions -= 1
            self.stats.backends[backend_name].sessions_ended += 1

    def next_request_id(self) -> bytes:
        return f"{self._request_prefix}{next(self._request_numbers):010x}".encode()

    def store_errors(self) -> int:
        errors: int = getattr(self.sessions, "errors", 0)
        return errors

    def _session_expired(self, session_id: str, backend_name: str) -> None:
        self.session_ended(backend_name)


def _client_tls() -> ssl.SSLContext:
    return ssl.create_default_context()
