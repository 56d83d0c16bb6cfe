"""Runtime state of the configured backends: the one place strategies and health read."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator, Sequence

from mcplb.proxy.config.schema import BackendConfig
from mcplb.proxy.config.tls import backend_context

# Effective weights are the configured ones times this, so that slow start can ramp a
# weight-1 backend in 1% steps; strategies only ever compare weights with each other.
WEIGHT_SCALE = 100


class Backend:
    """A configured backend and its live counters."""

    __slots__ = (
        "available",
        "base_weight",
        "config",
        "drain_until",
        "draining",
        "host",
        "host_header",
        "in_flight",
        "max_sessions",
        "max_streams",
        "name",
        "path_prefix",
        "port",
        "sessions",
        "streams",
        "tls",
        "weight",
    )

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.name = config.name
        self.host = config.host
        self.port = config.port
        self.base_weight = config.weight * WEIGHT_SCALE
        self.weight = self.base_weight
        self.max_sessions = config.max_sessions
        # config.max_streams, read on every response (Admission.streams_full): a field
        # here, where the config dataclass (not compiled) is a dictionary lookup.
        self.max_streams = config.max_streams
        default_port = 443 if config.scheme == "https" else 80
        host = f"[{config.host}]" if ":" in config.host else config.host
        authority = host if config.port == default_port else f"{host}:{config.port}"
        self.host_header = authority.encode("ascii")
        self.path_prefix = config.path_prefix.encode("ascii")
        self.in_flight = 0  # requests sent and not yet fully answered
        self.streams = 0  # of which: open event streams (text/event-stream responses)
        self.sessions = 0  # MCP sessions bound here by this process
        self.draining = False  # no new work; existing sessions still served (admin drain)
        self.drain_until: float | None = None  # wall clock; then its sessions end too
        self.available = True  # false while unhealthy, ejected or draining
        # Built on first use (tls_context), renewed by a reload (Cluster.reload).
        self.tls: ssl.SSLContext | None = None

    def tls_context(self) -> ssl.SSLContext | None:
        """The client TLS context of an https backend, one per backend: the relay's pool and
        the health probes both connect with it. None for http. Raises TlsError when its
        files cannot be used."""
        if self.config.scheme != "https":
            return None
        if self.tls is None:
            self.tls = backend_context(self.config)
        return self.tls

    def same_endpoint(self, config: BackendConfig) -> bool:
        """Whether ``config`` reaches the same server the same way (a reload keeps it)."""
        old = self.config
        return (old.url, old.ca, old.verify) == (config.url, config.ca, config.verify)

    def reconfigure(self, config: BackendConfig) -> None:
        """Take a reloaded config for the same endpoint (weight, limits); counters stay."""
        self.config = config
        self.base_weight = config.weight * WEIGHT_SCALE
        self.max_sessions = config.max_sessions
        self.max_streams = config.max_streams

    def drain_over(self) -> bool:
        """Draining, and its deadline for existing sessions has passed."""
        return self.drain_until is not None and time.time() > self.drain_until

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, in_flight={self.in_flight}, available={self.available})"


class BackendSet:
    """The backends in config order, addressable by name, and the removed ones still
    draining (out of the routing list, still reachable by name until their deadline)."""

    def __init__(self, configs: Sequence[BackendConfig]) -> None:
        self.backends: list[Backend] = [Backend(c) for c in configs]
        self.by_name: dict[str, Backend] = {b.name: b for b in self.backends}
        self.retiring: list[Backend] = []

    def replace(self, backends: list[Backend], retired: list[Backend]) -> None:
        """Route to ``backends`` from now on; ``retired`` ones drain (see retire_over)."""
        self.backends = backends
        self.retiring = [b for b in self.retiring if b not in backends] + retired
        self.by_name = {b.name: b for b in self.retiring}
        self.by_name.update((b.name, b) for b in backends)

    def retire_over(self) -> list[Backend]:
        """Drop retired backends past their deadline (their sessions were served until
        then, as with an admin drain); returns them so that their exchanges end."""
        done = [b for b in self.retiring if b.drain_over()]
        for backend in done:
            self.retiring.remove(backend)
            if self.by_name.get(backend.name) is backend:
                del self.by_name[backend.name]
        return done

    def __iter__(self) -> Iterator[Backend]:
        return iter(self.backends)

    def __len__(self) -> int:
        return len(self.backends)

    def get(self, name: str) -> Backend | None:
        return self.by_name.get(name)
