"""The config: frozen dataclasses, each YAML key declared once on its field.

A field with ``metadata=key(...)`` (or ``items``/``section``/``sections``) is a YAML key: its
check, its name if not the field's, whether it is required. Its default is the field's. The
accepted keys of each section, in the order messages list them, are the declared fields in
field order (proxy/config/fields.py). Rules across keys are in proxy/config/rules.py; the
loader (proxy/config/loader.py) reads YAML with both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# The health section's dataclasses live with the health checks; re-exported for the
# config's users, their keys declared below.
from mcplb.healthcheck.config import (
    ActiveHealthConfig as ActiveHealthConfig,
)
from mcplb.healthcheck.config import (
    HealthConfig as HealthConfig,
)
from mcplb.healthcheck.config import (
    HealthInitial as HealthInitial,
)
from mcplb.healthcheck.config import (
    HealthPanic as HealthPanic,
)
from mcplb.healthcheck.config import (
    PassiveHealthConfig as PassiveHealthConfig,
)
from mcplb.healthcheck.config import (
    ProbeMethod as ProbeMethod,
)
from mcplb.healthcheck.config import (
    ProbeType as ProbeType,
)
from mcplb.proxy.config import checks as c
from mcplb.proxy.config import fields  # fields.key where a field named "key" hides key()
from mcplb.proxy.config.checks import CookieSameSite as CookieSameSite
from mcplb.proxy.config.checks import Workers as Workers
from mcplb.proxy.config.errors import ConfigIssue
from mcplb.proxy.config.fields import (
    KEY,
    Key,
    declare,
    free_mapping,
    items,
    key,
    section,
    sections,
)
from mcplb.proxy.config.hosts import check_host_pattern

_AT_LEAST_ONE = c.int_range(1, None, "must be an integer >= 1")
_URL_PARTS = ("url", "scheme", "host", "port", "path_prefix")  # fields of checks.Url


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str = field(metadata=key(c.check_name, required=True))
    url: str = field(metadata=key(c.check_url, required=True, into=_URL_PARTS))
    scheme: str  # "http" | "https"
    host: str  # hostname or IP literal (IPv6 without brackets)
    port: int  # explicit, or 80/443 from the scheme
    path_prefix: str = ""  # "" or "/prefix", never a trailing slash
    # 0 = no new traffic
    weight: int = field(
        default=1, metadata=key(c.int_range(0, 1000, "must be an integer between 0 and 1000"))
    )
    # MCP sessions this backend may hold (least_sessions)
    max_sessions: int | None = field(default=None, metadata=key(_AT_LEAST_ONE))
    # concurrent requests (not streams); excess queues
    max_connections: int | None = field(default=None, metadata=key(_AT_LEAST_ONE))
    # concurrent event streams; excess gets 503 at once
    max_streams: int | None = field(default=None, metadata=key(_AT_LEAST_ONE))
    # https only: CA bundle to verify it with (None = system CAs)
    ca: str | None = field(default=None, metadata=key(c.check_file_path))
    # https only: False skips certificate checks (logged loudly)
    verify: bool = field(default=True, metadata=key(c.check_bool))
    # https only: the client certificate (PEM chain) and its key this backend requires
    # (mTLS); None = backend_tls's, if any. Read again on every reload.
    client_cert: str | None = field(default=None, metadata=key(c.check_file_path))
    client_key: str | None = field(default=None, metadata=key(c.check_file_path))


SessionStoreKind = Literal["memory", "signed", "redis"]


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """Where a Redis store (sessions, rate limits) keeps its data: one server (``url``) or
    the master of a Sentinel ``service`` (``sentinels``)."""

    # redis://, rediss:// (TLS) or unix://; may hold a password (messages never repeat it)
    url: str = field(default="redis://127.0.0.1:6379/0", metadata=key(c.check_redis_url))
    # seconds per Redis command; > 0 and <= 5
    timeout: float = field(default=0.25, metadata=key(c.check_redis_timeout))
    # prepended to every key; non-empty
    prefix: str = field(default="mcplb:session:", metadata=key(c.check_prefix))
    # Sentinel, in place of url: the sentinels' HOST:PORT addresses and the master's name
    sentinels: tuple[tuple[str, int], ...] = field(
        default=(),
        metadata=items(
            c.check_host_port,
            'must be a list of sentinel addresses, e.g. ["10.0.0.5:26379", "10.0.0.6:26379"]',
            scalar_ok=True,
        ),
    )
    service: str | None = field(default=None, metadata=key(c.check_sentinel_service))
    # with sentinels: the password of the Redis servers, and of the sentinels (secrets)
    password: str | None = field(default=None, repr=False, metadata=key(c.check_password))
    sentinel_password: str | None = field(default=None, repr=False, metadata=key(c.check_password))
    # with sentinels: TLS to the servers and the sentinels, verified with ca (or system CAs)
    tls: bool = field(default=False, metadata=key(c.check_bool))
    ca: str | None = field(default=None, metadata=key(c.check_file_path))


@dataclass(frozen=True, slots=True)
class CookieConfig:
    """``sticky.cookie``: pin clients that keep cookies to a backend (a signed cookie)."""

    # RFC 6265 token characters
    name: str = field(default="mcplb_backend", metadata=key(c.check_cookie_name))
    # Max-Age in seconds; None = a browser-session cookie
    ttl: float | None = field(default=None, metadata=key(c.optional(c.check_positive_duration)))
    secure: bool = field(default=False, metadata=key(c.check_bool))
    http_only: bool = field(default=True, metadata=key(c.check_bool))
    # "None" only with secure
    same_site: CookieSameSite = field(default="Lax", metadata=key(c.check_same_site))


@dataclass(frozen=True, slots=True)
class StickyConfig:
    mcp_sessions: bool = field(default=True, metadata=key(c.check_bool))
    # seconds a binding lives without use
    session_ttl: float = field(default=1800.0, metadata=key(c.check_positive_duration))
    # bindings kept per process; oldest evicted past this
    max_sessions: int = field(default=1_000_000, metadata=key(_AT_LEAST_ONE))
    # Where session bindings live. The loader resolves an absent "store" to "signed" when
    # workers > 1 (or auto) and mcp_sessions is true, else "memory"; a loaded "signed"
    # always has keys.
    store: SessionStoreKind = field(
        default="memory", metadata=key(c.choice("memory", "signed", "redis"))
    )
    # first signs, all verify; secret
    keys: tuple[str, ...] = field(
        default=(),
        repr=False,
        metadata=items(
            c.check_key,
            f"must be a list of secrets, {c.KEYS_EXAMPLE}",
            scalar_ok=True,
            empty_ok=True,
        ),
    )
    # read only with store "redis"
    redis: RedisConfig = field(default_factory=RedisConfig, metadata=section(RedisConfig))
    # None = no sticky cookie ("cookie:" alone turns it on)
    cookie: CookieConfig | None = field(default=None, metadata=section(CookieConfig))
    # lower-case header name whose value is hashed to a backend
    header: str | None = field(default=None, metadata=key(c.optional(c.check_header_name)))
    # MCP 2026-07-28 tasks (SEP-2663): learn task id -> backend from the answer creating a
    # task, route tasks/get|update|cancel (by the validated Mcp-Name) to that backend
    mcp_tasks: bool = field(default=True, metadata=key(c.check_bool))
    # a task binding lives the task's ttlMs, at most this (and this when ttlMs is null)
    task_ttl_max: float = field(default=3600.0, metadata=key(c.check_positive_duration))


def _timeout(seconds: float) -> Any:
    return field(default=seconds, metadata=key(c.check_positive_duration))


@dataclass(frozen=True, slots=True)
class TimeoutsConfig:
    connect: float = _timeout(2.0)  # TCP connect to a backend
    header: float = _timeout(10.0)  # a client must send its complete request head within this
    upstream_header: float = _timeout(60.0)  # a backend must send its response head within this
    idle: float = _timeout(300.0)  # no byte either way on a connection or stream
    # a client connection between two requests (keep-alive); see config.example.yaml
    keepalive: float = _timeout(15.0)
    body: float = _timeout(60.0)  # a client must send its whole request body within this
    upstream_keepalive: float = _timeout(4.0)  # pooled idle upstream connections closed after
    grace: float = _timeout(30.0)  # on SIGTERM, in-flight requests get this long to finish
    # An MCP POST (a JSON-RPC request) may run a long tool call that sends nothing until its
    # result: its backend gets this long for the response head instead of upstream_header.
    mcp_call: float = _timeout(300.0)
    # On a text/event-stream answer quiet this long, write an SSE comment (":") between
    # events, so that intermediaries do not cut a quiet stream. 0 turns it off.
    sse_keepalive: float = field(default=15.0, metadata=key(c.parse_duration))
    # On SIGTERM, keep accepting (answering with Connection: close, /readyz 503) this
    # long before the grace period: a load balancer in front needs time to stop sending.
    # No delay is the default: the only timeout that may be 0.
    shutdown_delay: float = field(default=0.0, metadata=key(c.parse_duration))


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_header_bytes: int = field(default=65536, metadata=key(c.check_header_size))
    # 0 = unlimited
    max_body_bytes: int = field(default=10_485_760, metadata=key(c.parse_size))
    # requests (not streams) per worker; excess queues
    max_in_flight: int | None = field(default=None, metadata=key(c.optional(_AT_LEAST_ONE)))
    # event streams per worker; excess gets 503 at once
    max_streams: int | None = field(default=None, metadata=key(c.optional(_AT_LEAST_ONE)))
    # requests of one client address holding a slot or queued, per worker; past it, 429.
    # None: no cap (behind a load balancer every client has its address).
    max_in_flight_per_client: int | None = field(
        default=None, metadata=key(c.optional(_AT_LEAST_ONE))
    )
    # requests waiting for a slot per worker; past it, 503 at once
    max_queue: int = field(
        default=1000, metadata=key(c.int_range(0, None, "must be an integer >= 0"))
    )
    # a queued request waits this long, then gets 503
    queue_timeout: float = field(default=5.0, metadata=key(c.check_positive_duration))
    # A request body slower than this (bytes a second over the last BODY_RATE_WINDOW
    # seconds, a sliding window) gets 408: a trickling upload holds a connection or a slot.
    min_body_rate: int = field(default=1024, metadata=key(c.parse_size))  # 0 = no minimum
    # A request body is read up to this size (or whole) before the request takes a slot:
    # a slow upload holds no slot while it trickles in (nginx buffers bodies too).
    request_buffer: int = field(default=65536, metadata=key(c.check_request_buffer))
    # Client connections per worker, in all and from one address; past either, 503 and
    # close. None: sized from the descriptor limit (proxy/routing/connection_caps.py).
    max_client_connections: int | None = field(
        default=None, metadata=key(c.optional(_AT_LEAST_ONE))
    )
    max_connections_per_client: int | None = field(
        default=None, metadata=key(c.optional(_AT_LEAST_ONE))
    )


RetryCondition = Literal["connect_failure", "reset", "502", "503", "504"]


@dataclass(frozen=True, slots=True)
class RetriesConfig:
    """Sending a failed request again, on another backend where it has no session."""

    # retries after the first try; 0 = never retry
    attempts: int = field(
        default=2, metadata=key(c.int_range(0, 10, "must be an integer from 0 to 10"))
    )
    # retries may add this share of the request rate
    budget_percent: float = field(default=20.0, metadata=key(c.check_percent))
    on: frozenset[RetryCondition] = field(
        default=frozenset({"connect_failure", "reset"}),
        metadata=items(
            c.check_retry_condition,
            "must be a list, e.g. [connect_failure, reset, 502, 503]",
            scalar_ok=True,
            empty_ok=True,
            convert=frozenset,
        ),
    )
    # also retry POST/PATCH (MCP calls) once they were sent
    non_idempotent: bool = field(default=False, metadata=key(c.check_bool))


@dataclass(frozen=True, slots=True)
class ToolRateConfig:
    """One ``rate_limit.tools`` rule: the calls of the tools whose name matches ``name``
    (exact, or a glob of ``*`` and ``?``, case-sensitive) take a token from a bucket of
    their own per client, besides the client's main bucket."""

    name: str = field(metadata=key(c.check_tool_pattern, required=True))
    rate: float = field(metadata=key(c.check_rate, required=True))
    burst: int = field(default=1, metadata=key(_AT_LEAST_ONE))


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """A token bucket per client: ``rate`` tokens a second, holding at most ``burst``."""

    rate: float = field(default=10.0, metadata=key(c.check_rate, required=True))
    burst: int = field(default=20, metadata=key(_AT_LEAST_ONE))
    # lower-case header whose value is the key; None = address
    header: str | None = field(default=None, metadata=key(c.check_rate_key, yaml="key"))
    # CIDRs of proxies in front: behind them, the address is read from X-Forwarded-For
    trusted_proxies: tuple[str, ...] = field(
        default=(),
        metadata=items(
            c.check_network,
            'must be a list of networks, e.g. ["10.0.0.0/8", "127.0.0.1/32"]',
            scalar_ok=True,
            empty_ok=True,
        ),
    )
    store: Literal["memory", "redis"] = field(
        default="memory", metadata=key(c.choice("memory", "redis"))
    )
    # per-tool rules (the first whose name matches a tools/call's tool), in the same store
    tools: tuple[ToolRateConfig, ...] = field(
        default=(),
        metadata=sections(
            ToolRateConfig, 'must be a list of rules, e.g. [{name: "search_*", rate: 10/m}]'
        ),
    )
    # read only with store "redis"
    redis: RedisConfig = field(
        default_factory=lambda: RedisConfig(prefix="mcplb:ratelimit:"),
        metadata=section(RedisConfig),
    )


def _scopes(message: str) -> dict[str, Key]:
    return items(c.check_scope, message, scalar_ok=True, empty_ok=True)


@dataclass(frozen=True, slots=True)
class JwtConfig:
    """``auth.jwt``: JWT access tokens signed by ``issuer``, keys from its JWKS."""

    issuer: str = field(metadata=key(c.check_issuer, required=True))  # the "iss" it must carry
    # fetched, cached, refreshed on an unknown "kid" (at most every jwks_min_refresh)
    jwks_url: str = field(metadata=key(c.check_auth_url, required=True))
    # "aud" must hold one of these; () = [auth.resource]
    audience: tuple[str, ...] = field(
        default=(),
        metadata=items(
            c.check_audience,
            "must be a list of audiences, e.g. [https://mcp.example.com/mcp]",
            scalar_ok=True,
        ),
    )
    algorithms: tuple[str, ...] = field(
        default=("RS256", "ES256"),
        metadata=items(
            c.check_jwt_algorithm,
            "must be a list of algorithms, e.g. [RS256, ES256]",
            scalar_ok=True,
        ),
    )
    # every token must carry all of these ("scope" or "scp"); else 403 insufficient_scope
    required_scopes: tuple[str, ...] = field(
        default=(), metadata=_scopes("must be a list of scopes, e.g. [mcp:tools]")
    )
    # clock skew allowed on exp and nbf, seconds
    leeway: float = field(default=30.0, metadata=key(c.parse_duration))
    # the JWKS is fetched again this often (Cache-Control max-age, if longer, wins)
    jwks_refresh: float = field(default=300.0, metadata=key(c.check_positive_duration))
    # an unknown "kid" fetches the JWKS at most this often: a kid flood cannot hammer the IdP
    jwks_min_refresh: float = field(default=10.0, metadata=key(c.check_positive_duration))
    # the IdP unreachable: cached keys keep working this long after the last fetch
    jwks_max_stale: float = field(default=86400.0, metadata=key(c.check_positive_duration))
    jwks_timeout: float = field(default=5.0, metadata=key(c.check_positive_duration))
    # verified tokens kept per process (each token's signature checked once)
    token_cache: int = field(default=10_000, metadata=key(_AT_LEAST_ONE))
    # longer Authorization values get 401 before any parsing
    max_token_bytes: int = field(default=8192, metadata=key(c.parse_size))


@dataclass(frozen=True, slots=True)
class IdentityHeadersConfig:
    """``auth.identity_headers``: what the backend gets when ``forward_token`` is false.
    Incoming headers of these names are always removed."""

    subject: str = field(default="x-auth-subject", metadata=key(c.check_identity_header))
    scopes: str = field(default="x-auth-scopes", metadata=key(c.check_identity_header))


_REQUIRED_SECTION = dataclasses.replace(section(JwtConfig)[KEY], required=True)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``auth``: an OAuth 2.1 resource server at the edge (off when absent)."""

    # the canonical URI clients use (RFC 8707), as published; the default audience
    resource: str = field(metadata=key(c.check_resource, required=True))
    jwt: JwtConfig = field(metadata={KEY: _REQUIRED_SECTION})
    # True: the backend gets the client's Authorization; False: identity headers instead
    forward_token: bool = field(default=True, metadata=key(c.check_bool))
    identity_headers: IdentityHeadersConfig = field(
        default_factory=IdentityHeadersConfig, metadata=section(IdentityHeadersConfig)
    )
    # published in the Protected Resource Metadata (RFC 9728 section 2)
    scopes_supported: tuple[str, ...] = field(
        default=(), metadata=_scopes("must be a list of scopes, e.g. [mcp:tools, mcp:read]")
    )
    resource_documentation: str | None = field(
        default=None, metadata=key(c.optional(c.check_auth_url))
    )


@dataclass(frozen=True, slots=True)
class ListenTlsConfig:
    """TLS on the client listener."""

    cert: str = field(metadata=key(c.check_file_path, required=True))  # PEM certificate chain
    key: str = field(metadata=key(c.check_file_path, required=True))  # PEM private key
    # PEM CA bundle: clients must present a certificate it issued; None = no client certs
    client_ca: str | None = field(default=None, metadata=fields.key(c.check_file_path))


@dataclass(frozen=True, slots=True)
class BackendTlsConfig:
    """``backend_tls``: TLS toward every https backend, static or discovered; a backend's
    own ``ca``, ``client_cert`` and ``client_key`` win over these."""

    # CA bundle to verify backends with (None = the system CAs)
    ca: str | None = field(default=None, metadata=key(c.check_file_path))
    # client certificate (PEM chain) and key for backends that require mTLS
    client_cert: str | None = field(default=None, metadata=key(c.check_file_path))
    client_key: str | None = field(default=None, metadata=key(c.check_file_path))


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin API listener (metrics, status, drain)."""

    enabled: bool = field(default=True, metadata=key(c.check_bool))
    listen_host: str = field(
        default="127.0.0.1",
        metadata=key(c.check_listen, yaml="listen", into=("listen_host", "listen_port")),
    )
    listen_port: int = 9901
    # Bearer token for status and changes
    token: str | None = field(default=None, repr=False, metadata=key(c.check_token))
    # /metrics needs the token too (Prometheus can send it)
    protect_metrics: bool = field(default=False, metadata=key(c.check_bool))
    # Host names the admin API answers to; None: loopback names on a loopback listener,
    # any host otherwise (as the proxy's allowed_hosts): the DNS-rebinding defence.
    allowed_hosts: tuple[str, ...] | None = field(
        default=None,
        metadata=items(
            check_host_pattern,
            'must be a list of host names, e.g. [admin.internal, "10.0.0.5"]',
            scalar_ok=True,
        ),
    )


DnsRecord = Literal["A", "AAAA", "SRV"]


@dataclass(frozen=True, slots=True)
class DnsDiscoveryConfig:
    """``discovery.dns``: every address ``name`` resolves to is a backend (see
    proxy/cluster/discovery.py)."""

    # e.g. the headless Service of the MCP server pods
    name: str = field(metadata=key(c.check_dns_name, required=True))
    record: DnsRecord = field(default="A", metadata=key(c.choice("A", "AAAA", "SRV")))
    # A/AAAA: the backends' port (required); SRV records carry theirs
    port: int | None = field(
        default=None, metadata=key(c.int_range(1, 65535, "must be a port between 1 and 65535"))
    )
    scheme: Literal["http", "https"] = field(
        default="http", metadata=key(c.choice("http", "https"))
    )
    # as in backends[].url: "" or "/prefix"
    path_prefix: str = field(default="", metadata=key(c.check_path_prefix, yaml="path"))
    # seconds between resolutions
    interval: float = field(default=5.0, metadata=key(c.check_positive_duration))
    # (IP, port); () = the system's resolvers
    resolvers: tuple[tuple[str, int], ...] = field(
        default=(),
        metadata=items(
            c.check_resolver, 'must be a list of "IP:port", e.g. ["10.96.0.10:53"]', empty_ok=True
        ),
    )
    # Networks whose addresses may be adopted although local (loopback, link-local): by
    # default answers naming them are refused, as unspecified and multicast addresses and
    # the proxy's own endpoints always are (see proxy/cluster/discovery.py).
    allow_networks: tuple[str, ...] = field(
        default=(),
        metadata=items(
            c.check_network,
            'must be a list of networks, e.g. ["127.0.0.0/8"]',
            scalar_ok=True,
            empty_ok=True,
        ),
    )
    # backends adopted from one answer at most (sorted; the rest are left out, logged)
    max_backends: int = field(default=64, metadata=key(_AT_LEAST_ONE))


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    dns: DnsDiscoveryConfig = field(metadata=section(DnsDiscoveryConfig))


@dataclass(frozen=True, slots=True)
class LogConfig:
    # access log line format
    format: Literal["text", "json"] = field(default="text", metadata=key(c.choice("text", "json")))
    access: bool = field(default=True, metadata=key(c.check_bool))  # one line per request
    # application log
    level: Literal["debug", "info", "warning", "error"] = field(
        default="info", metadata=key(c.choice("debug", "info", "warning", "error"))
    )


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """``tracing``: an OpenTelemetry span per request, exported over OTLP/HTTP (protobuf);
    needs the ``otel`` extra (proxy/observability/tracing.py, otlp_export.py)."""

    # off by default; "tracing:" given: on unless false
    enabled: bool = field(default=False, metadata=key(c.check_bool, default=True))
    # the collector's OTLP/HTTP traces URL
    endpoint: str = field(
        default="http://127.0.0.1:4318/v1/traces", metadata=key(c.check_otlp_endpoint)
    )
    service_name: str = field(default="mcplb", metadata=key(c.check_service_name))
    # share of the requests without a (valid) client trace context that start a recorded
    # trace; a client's context is followed (parent-based sampling)
    sample_ratio: float = field(default=1.0, metadata=key(c.check_ratio))
    # sent with every export (e.g. authorization); secrets
    headers: Mapping[str, str] = field(default_factory=dict, repr=False, metadata=free_mapping())
    # finished spans waiting for export per worker; past it they are dropped (counted)
    max_queue: int = field(default=2048, metadata=key(_AT_LEAST_ONE))
    batch_size: int = field(default=512, metadata=key(_AT_LEAST_ONE))  # spans per export
    # how often queued spans are sent (and whenever a batch is full)
    export_interval: float = field(default=5.0, metadata=key(c.check_positive_duration))
    # one export, the exporter's retries included
    export_timeout: float = field(default=10.0, metadata=key(c.check_positive_duration))


@dataclass(frozen=True, slots=True)
class Config:
    listen_host: str = field(
        default="127.0.0.1",
        metadata=key(c.check_listen, yaml="listen", into=("listen_host", "listen_port")),
    )
    listen_port: int = 8080
    # "auto" (one per CPU) is counted by proxy/config/validate.py: validated() has a number.
    workers: Workers = field(default=1, metadata=key(c.check_workers))
    strategy: str = field(default="round_robin", metadata=key(c.check_strategy))
    strategy_options: Mapping[str, Any] = field(default_factory=dict, metadata=free_mapping())
    preserve_host: bool = field(default=False, metadata=key(c.check_bool))
    # Host names (or "*.domain", "*") this listener serves; None: loopback names for a
    # loopback listener, any host otherwise (see proxy/routing/host_check.py).
    allowed_hosts: tuple[str, ...] | None = field(
        default=None,
        metadata=items(
            check_host_pattern,
            'must be a list of host names, e.g. [mcp.example.com, "*.internal"]',
            scalar_ok=True,
        ),
    )
    # Required unless "discovery" is set: it may find them all.
    backends: tuple[BackendConfig, ...] = field(
        default=(),
        metadata=sections(
            BackendConfig,
            "must be a non-empty list of backends",
            required=True,
            unless="discovery",
        ),
    )
    # Read also when absent: with workers > 1 its default store needs keys.
    sticky: StickyConfig = field(
        default_factory=StickyConfig, metadata=section(StickyConfig, always=True)
    )
    timeouts: TimeoutsConfig = field(
        default_factory=TimeoutsConfig, metadata=section(TimeoutsConfig)
    )
    limits: LimitsConfig = field(default_factory=LimitsConfig, metadata=section(LimitsConfig))
    health: HealthConfig = field(default_factory=HealthConfig, metadata=section(HealthConfig))
    admin: AdminConfig = field(default_factory=AdminConfig, metadata=section(AdminConfig))
    log: LogConfig = field(default_factory=LogConfig, metadata=section(LogConfig))
    retries: RetriesConfig = field(default_factory=RetriesConfig, metadata=section(RetriesConfig))
    # None = no rate limiting
    rate_limit: RateLimitConfig | None = field(
        default=None, metadata=section(RateLimitConfig, null_off=True)
    )
    # None = no edge authentication
    auth: AuthConfig | None = field(default=None, metadata=section(AuthConfig, null_off=True))
    # None = plain HTTP
    listen_tls: ListenTlsConfig | None = field(
        default=None, metadata=section(ListenTlsConfig, null_off=True)
    )
    # None = each https backend's own settings only
    backend_tls: BackendTlsConfig | None = field(
        default=None, metadata=section(BackendTlsConfig, null_off=True)
    )
    # reload when the config file changes
    watch_config: bool = field(default=False, metadata=key(c.check_bool))
    # None = the static backends only
    discovery: DiscoveryConfig | None = field(default=None, metadata=section(DiscoveryConfig))
    # off unless "tracing:" is given
    tracing: TracingConfig = field(default_factory=TracingConfig, metadata=section(TracingConfig))
    # Not YAML keys: where the config came from.
    source: str | None = None  # path of the file it was loaded from
    lines: Mapping[str, int] = field(default_factory=dict)  # "backends[1].url" -> 12
    # Valid but probably not meant (a backend URL ending in /mcp): shown by check and run.
    warnings: tuple[ConfigIssue, ...] = ()


# The health settings' keys (their dataclasses live with the health checks, which import
# nothing from the proxy).
declare(
    HealthConfig,
    initial=key(c.choice("healthy", "unhealthy")),
    panic=key(c.choice("fail_closed", "fail_open")),
    slow_start=key(c.parse_duration),
    active=section(ActiveHealthConfig),  # absent: no probes; "active:" alone turns them on
    passive=section(PassiveHealthConfig),
)
declare(
    ActiveHealthConfig,
    enabled=key(c.check_bool, default=True),  # "active:" given: on by default
    type=key(c.choice("http", "mcp")),
    path=key(c.check_probe_path),
    method=key(c.check_method),
    expect_status=items(
        c.check_status_range,
        "must be a list of status codes or ranges, e.g. [200-399] or [200, 204]",
        scalar_ok=True,
    ),
    # Each tool once, in the order given.
    expect_tools=items(
        c.check_tool_name,
        "must be a list of tool names",
        empty_ok=True,
        convert=lambda tools: tuple(dict.fromkeys(tools)),
    ),
    interval=key(c.check_positive_duration),
    timeout=key(c.check_positive_duration),
    rise=key(_AT_LEAST_ONE),
    fall=key(_AT_LEAST_ONE),
    fast_interval=key(c.optional(c.check_positive_duration)),
    down_interval=key(c.optional(c.check_positive_duration)),
)
declare(
    PassiveHealthConfig,
    enabled=key(c.check_bool),
    consecutive_failures=key(_AT_LEAST_ONE),
    on_5xx=key(c.check_bool),
    ejection_time=key(c.check_positive_duration),
    max_ejection_time=key(c.check_positive_duration),
    ejection_memory=key(c.parse_duration),
    max_ejection_percent=key(c.int_range(0, 100, "must be an integer between 0 and 100")),
)
