"""Everything a running proxy shares: the cluster (backends, pools, health, strategy),
the session store and the request policies' state."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from mcplb.proxy.cluster.cluster import Cluster
from mcplb.proxy.config.schema import Config
from mcplb.proxy.observability.stats import Stats
from mcplb.proxy.relay.affinity import SessionCounts, build_affinity
from mcplb.proxy.relay.shared import Shared
from mcplb.proxy.routing.frontend import Frontend
from mcplb.proxy.routing.rate_limit import RedisRateLimiter
from mcplb.proxy.sessions.host_share import HostSharedStore
from mcplb.proxy.sessions.outage_share import OutageShare
from mcplb.proxy.sessions.redis_store import RedisSessionStore
from mcplb.proxy.sessions.store import MemorySessionStore, SessionStore

# Settings a running process cannot take over: a reload keeps the old value and says so.
RESTART_ONLY = (
    "listen_host",
    "listen_port",
    "workers",
    "admin",
    "log",
    "tracing",
    ("sticky", "store"),
    ("sticky", "redis"),
    ("sticky", "max_sessions"),
)

log = logging.getLogger("mcplb")


class Runtime(Shared):
    """Built once from a Config; the relay reads it, nothing here reads the relay."""

    def __init__(
        self, config: Config, state_dir: Path | None = None, *, probing: bool = True
    ) -> None:
        """``state_dir``: the supervisor's directory shared by this host's workers;
        ``probing``: whether this process runs the active health checks."""
        self.config = config
        self.generation = 0  # successful reloads
        # SIGTERM received: /readyz answers 503 and every answer closes its connection.
        self.stopping = False
        self.cluster = Cluster(config, probing=probing)
        self.frontend = Frontend(config)
        self.stats = Stats([b.name for b in self.cluster.backends])
        # Request ids: 16 hex digits, a random per-process prefix (its top bit set, so that
        # every id has all 16) counting up in the low 40 bits; formatted with one "%x"
        # (an f-string and encode cost as much as the rest of the request head).
        prefix = int.from_bytes(os.urandom(3), "big") | 0x800000
        self._request_number = prefix << 40
        sticky = config.sticky
        self.session_counts = SessionCounts(self.cluster, self.stats)
        self.sessions: SessionStore = (
            RedisSessionStore(
                sticky.redis,
                ttl=sticky.session_ttl,
                max_local=sticky.max_sessions,
                on_expire=self.session_counts.expired,
                outage_share=None if state_dir is None else OutageShare(state_dir / "sessions"),
            )
            if sticky.store == "redis"
            else MemorySessionStore(
                sticky.session_ttl, sticky.max_sessions, on_expire=self.session_counts.expired
            )
        )
        # MCP task bindings (task id -> backend), apart from the sessions: no session count.
        # store: signed cannot carry them (see sticky.mcp_tasks): they live in memory then,
        # shared by the workers of this host (state_dir: several workers) through files.
        self.tasks: SessionStore
        if sticky.store == "redis":
            self.tasks = RedisSessionStore(
                dataclasses.replace(sticky.redis, prefix=sticky.redis.prefix + "task:"),
                ttl=sticky.task_ttl_max,
                max_local=sticky.max_sessions,
            )
        elif sticky.store == "signed" and state_dir is not None:
            self.tasks = HostSharedStore(
                state_dir / "tasks", sticky.task_ttl_max, sticky.max_sessions
            )
        else:
            self.tasks = MemorySessionStore(sticky.task_ttl_max, sticky.max_sessions)
        self._set_affinity(config)

    def _set_affinity(self, config: Config) -> None:
        sticky = config.sticky
        # The affinity key kinds, each in the variant the config asks for: chosen once.
        self.affinity = build_affinity(
            sticky,
            self.sessions,
            self.session_counts,
            self.tasks if sticky.mcp_tasks else None,
            config.auth,
        )

    async def reload(self, config: Config, *, counted: bool = True) -> list[str]:
        """Switch to a reloaded config without dropping anything: backends that stay keep
        their connections, sessions and health; removed ones drain until ``timeouts.grace``
        from now. Returns what changed, one line each (restart-only settings are kept and
        listed as such). Raises what ``Cluster.reload`` raises, before changing anything.
        ``counted`` False: not a new config generation (a backend set DNS discovery found)."""
        old = self.config
        changes = [f"{name} changed: needs a restart (kept)" for name in _restart_only(old, config)]
        config = _keep_restart_only(old, config)
        # The backend set first: it refuses a config before anything changed.
        changes += await self.cluster.reload(config)
        self.config = config
        # Counters for added backends (a known name keeps its own); no await since the
        # cluster switched, so the relay cannot reach a backend without them.
        for backend in self.cluster.backends:
            self.stats.add_backend(backend.name)
        limiter = self.frontend.rate_limiter
        self.frontend = Frontend(config, self.frontend)
        if config.rate_limit != old.rate_limit:
            if isinstance(limiter, RedisRateLimiter):
                await limiter.close()
            changes.append("rate_limit changed")
        if config.auth != old.auth:  # the new Frontend's auth fetches keys and verifies anew
            changes.append("auth changed")
        self._set_affinity(config)
        for key in ("strategy", "strategy_options", "limits", "retries", "timeouts", "health"):
            if getattr(old, key) != getattr(config, key):
                changes.append(f"{key} changed")
        if counted:
            self.generation += 1
        return changes

    def snapshot(self, worker: int) -> dict[str, Any]:
        """What one worker reports: its counters, its view of each backend, its health counts."""
        cluster = self.cluster
        health = cluster.health
        backends = {}
        for backend in cluster.backends:
            backends[backend.name] = {
                "in_flight": backend.in_flight,
                "streams": backend.streams,
                "sessions": backend.sessions,
                "available": backend.available,
                "draining": backend.draining,
                "weight": backend.weight,
                "healthy": not health.unhealthy(backend),
                "ejected": health.ejected(backend),
            }
        return {
            "worker": worker,
            "time": time.time(),
            "stats": self.stats.snapshot(),
            "backends": backends,
            "health": health.counters(),
            "store_errors": self.store_errors(),
            "rate_limit_errors": 0
            if self.frontend.rate_limiter is None
            else self.frontend.rate_limiter.errors,
            "rate_limit_fail_open": (
                0 if self.frontend.rate_limiter is None else self.frontend.rate_limiter.fail_open
            ),
            "queue_length": len(cluster.admission.queue),
            "generation": self.generation,
        }

    def next_request_id(self) -> bytes:
        self._request_number += 1
        return b"%x" % self._request_number

    def store_errors(self) -> int:
        errors: int = getattr(self.sessions, "errors", 0)
        return errors


def _restart_only(old: Config, new: Config) -> list[str]:
    changed = []
    for key in RESTART_ONLY:
        if isinstance(key, tuple):
            section, field = key
            if getattr(getattr(old, section), field) != getattr(getattr(new, section), field):
                changed.append(f"{section}.{field}")
        elif getattr(old, key) != getattr(new, key):
            changed.append(key)
    return changed


def _keep_restart_only(old: Config, new: Config) -> Config:
    """``new`` with the settings that need a restart taken from ``old``."""
    sticky = dataclasses.replace(
        new.sticky,
        store=old.sticky.store,
        redis=old.sticky.redis,
        max_sessions=old.sticky.max_sessions,
    )
    return dataclasses.replace(
        new,
        listen_host=old.listen_host,
        listen_port=old.listen_port,
        workers=old.workers,
        admin=old.admin,
        log=old.log,
        sticky=sticky,
    )
