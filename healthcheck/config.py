"""The health settings (the ``health:`` section of the config), as frozen dataclasses.

They live with the health checks that read them; ``proxy/config/schema.py`` declares their
YAML keys (checks, with ``declare``) and re-exports them, so the dependency runs one way:
proxy -> healthcheck. A field added here must be declared there (``declare`` insists).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

HealthInitial = Literal["healthy", "unhealthy"]
HealthPanic = Literal["fail_closed", "fail_open"]
ProbeType = Literal["http", "mcp"]
ProbeMethod = Literal["GET", "HEAD"]
DEFAULT_PROBE_PATHS: Final[Mapping[str, str]] = {"http": "/", "mcp": "/mcp"}


@dataclass(frozen=True, slots=True)
class ActiveHealthConfig:
    """Active probes: one request (http) or one MCP handshake (mcp) per backend per interval."""

    enabled: bool = False  # False when the "active" key is absent
    type: ProbeType = "http"
    path: str = ""  # joined after the backend's path prefix; "" = "/" for http, "/mcp" for mcp
    method: ProbeMethod = "GET"  # http only
    expect_status: tuple[tuple[int, int], ...] = ((200, 399),)  # inclusive ranges, http only
    expect_tools: tuple[str, ...] = ()  # mcp only: tools that tools/list must include
    interval: float = 2.0
    timeout: float = 1.0  # < interval
    rise: int = 2  # consecutive successes to become healthy
    fall: int = 3  # consecutive failures to become unhealthy
    fast_interval: float | None = None  # while counting toward a change of state
    down_interval: float | None = None  # while unhealthy

    def __post_init__(self) -> None:
        if not self.path:
            object.__setattr__(self, "path", DEFAULT_PROBE_PATHS[self.type])


@dataclass(frozen=True, slots=True)
class PassiveHealthConfig:
    """Outlier ejection from the failures the relay sees on real traffic."""

    enabled: bool = True
    consecutive_failures: int = 5  # connect failures / timeouts (and 5xx if on_5xx) in a row
    on_5xx: bool = False
    ejection_time: float = 30.0  # times the ejections within ejection_memory, capped
    max_ejection_time: float = 300.0
    ejection_memory: float = 600.0
    max_ejection_percent: int = 50  # floor(backends * pct / 100) may be ejected at once


@dataclass(frozen=True, slots=True)
class HealthConfig:
    initial: HealthInitial = "healthy"  # state before the first active verdict
    panic: HealthPanic = "fail_closed"  # when every backend is down
    slow_start: float = 0.0  # seconds over which a readmitted backend's weight ramps up; 0 = off
    active: ActiveHealthConfig = field(default_factory=ActiveHealthConfig)
    passive: PassiveHealthConfig = field(default_factory=PassiveHealthConfig)
