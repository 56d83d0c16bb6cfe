"""What the health checks need of a backend: a small protocol, so that ``healthcheck``
depends on no ``proxy`` module (``proxy.cluster.backends.Backend`` is the implementation).

The monitor is the one owner of ``available`` and ``weight``: it alone writes them, from
its verdicts, the drain flag and slow start; strategies and the relay only read them.
"""

from __future__ import annotations

import ssl
from typing import Protocol


class TargetConfig(Protocol):
    """The configured side of a backend, as far as probes and log lines read it."""

    @property
    def url(self) -> str: ...
    @property
    def scheme(self) -> str: ...
    @property
    def weight(self) -> int: ...


class HealthTarget(Protocol):
    """A backend as the health monitor and the probes see it."""

    available: bool  # written by the monitor: up, not ejected, not draining
    weight: int  # written by the monitor: base_weight, ramped during slow start

    @property
    def name(self) -> str: ...
    @property
    def config(self) -> TargetConfig: ...
    @property
    def base_weight(self) -> int: ...
    @property
    def draining(self) -> bool: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def host_header(self) -> bytes: ...
    @property
    def path_prefix(self) -> bytes: ...

    def tls_context(self) -> ssl.SSLContext | None:
        """The client TLS context of an https backend (None for http); raises
        TlsSetupError when its settings cannot be used."""


class TlsSetupError(Exception):
    """A backend's TLS settings (certificate, CA) cannot be used."""
