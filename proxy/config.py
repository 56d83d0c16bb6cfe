"""Configuration model and YAML loader (sans-IO except for reading the file)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    url: str
    scheme: str  # "http" | "https"
    host: str  # hostname or IP literal (IPv6 without brackets)
    port: int  # explicit, or 80/443 from the scheme
    path_prefix: str = ""  # "" or "/prefix", never a trailing slash
    weight: int = 1  # 0 = no new traffic


@dataclass(frozen=True, slots=True)
class StickyConfig:
    mcp_sessions: bool = True
    session_ttl: float = 1800.0  # seconds a binding lives without use
    max_sessions: int = 1_000_000  # bindings kept per process; oldest evicted past this


@dataclass(frozen=True, slots=True)
class TimeoutsConfig:
    connect: float = 2.0  # TCP connect to a backend
    header: float = 10.0  # a client must send its complete request head within this
    upstream_header: float = 60.0  # a backend must send its response head within this
    idle: float = 300.0  # no byte either way on a connection or stream
    upstream_keepalive: float = 4.0  # pooled idle upstream connections are closed after this
    grace: float = 30.0  # on SIGTERM, in-flight requests get this long to finish


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_header_bytes: int = 65536
    max_body_bytes: int = 10_485_760  # 0 = unlimited


@dataclass(frozen=True, slots=True)
class Config:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    workers: int = 1
    strategy: str = "round_robin"
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    backends: tuple[BackendConfig, ...] = ()
    sticky: StickyConfig = field(default_factory=StickyConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    preserve_host: bool = False
    source: str | None = None  # path of the file it was loaded from
    lines: Mapping[str, int] = field(default_factory=dict)  # "backends[1].url" -> 12
