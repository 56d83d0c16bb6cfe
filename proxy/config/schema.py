"""Configuration model and YAML loader (sans-IO except for reading the file)."""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Literal, NamedTuple, TypeVar, cast
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor
from yaml.reader import ReaderError
from yaml.resolver import Resolver

# The health section is declared with the health checks; re-exported for the loader's users.
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
from mcplb.proxy.config.hosts import check_host_pattern
from mcplb.strategies.registry import unknown_strategy


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    url: str
    scheme: str  # "http" | "https"
    host: str  # hostname or IP literal (IPv6 without brackets)
    port: int  # explicit, or 80/443 from the scheme
    path_prefix: str = ""  # "" or "/prefix", never a trailing slash
    weight: int = 1  # 0 = no new traffic
    max_sessions: int | None = None  # MCP sessions this backend may hold (least_sessions)
    max_connections: int | None = None  # concurrent requests (not streams); excess queues
    max_streams: int | None = None  # concurrent event streams; excess gets 503 at once
    ca: str | None = None  # https only: CA bundle to verify it with (None = system CAs)
    verify: bool = True  # https only: False skips certificate checks (logged loudly)


SessionStoreKind = Literal["memory", "signed", "redis"]
CookieSameSite = Literal["Lax", "Strict", "None"]


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """Where ``sticky.store: redis`` keeps session bindings."""

    # redis://, rediss:// (TLS) or unix://; may hold a password (messages never repeat it)
    url: str = "redis://127.0.0.1:6379/0"
    timeout: float = 0.25  # seconds per Redis command; > 0 and <= 5
    prefix: str = "mcplb:session:"  # prepended to every key; non-empty


@dataclass(frozen=True, slots=True)
class CookieConfig:
    """``sticky.cookie``: pin clients that keep cookies to a backend (a signed cookie)."""

    name: str = "mcplb_backend"  # RFC 6265 token characters
    ttl: float | None = None  # Max-Age in seconds; None = a browser-session cookie
    secure: bool = False
    http_only: bool = True
    same_site: CookieSameSite = "Lax"  # "None" only with secure


@dataclass(frozen=True, slots=True)
class StickyConfig:
    mcp_sessions: bool = True
    session_ttl: float = 1800.0  # seconds a binding lives without use
    max_sessions: int = 1_000_000  # bindings kept per process; oldest evicted past this
    # Where session bindings live. The loader resolves an absent "store" to "signed" when
    # workers > 1 and mcp_sessions is true, else "memory"; a loaded "signed" always has keys.
    store: SessionStoreKind = "memory"
    keys: tuple[str, ...] = field(default=(), repr=False)  # first signs, all verify; secret
    redis: RedisConfig = field(default_factory=RedisConfig)  # read only with store "redis"
    cookie: CookieConfig | None = None  # None = no sticky cookie
    header: str | None = None  # lower-case header name whose value is hashed to a backend


@dataclass(frozen=True, slots=True)
class TimeoutsConfig:
    connect: float = 2.0  # TCP connect to a backend
    header: float = 10.0  # a client must send its complete request head within this
    upstream_header: float = 60.0  # a backend must send its response head within this
    idle: float = 300.0  # no byte either way on a connection or stream
    body: float = 60.0  # a client must send its whole request body within this
    upstream_keepalive: float = 4.0  # pooled idle upstream connections are closed after this
    grace: float = 30.0  # on SIGTERM, in-flight requests get this long to finish
    # On SIGTERM, keep accepting (answering with Connection: close, /readyz 503) this
    # long before the grace period: a load balancer in front needs time to stop sending.
    shutdown_delay: float = 0.0


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_header_bytes: int = 65536
    max_body_bytes: int = 10_485_760  # 0 = unlimited
    max_in_flight: int | None = None  # requests (not streams) per worker; excess queues
    max_streams: int | None = None  # event streams per worker; excess gets 503 at once
    max_queue: int = 1000  # requests waiting for a slot per worker; past it, 503 at once
    queue_timeout: float = 5.0  # a queued request waits this long, then gets 503
    # A request body slower than this (bytes a second, averaged from its start, judged
    # after BODY_RATE_GRACE seconds) gets 408: a trickling upload holds a request slot.
    min_body_rate: int = 1024  # 0 = no minimum


RetryCondition = Literal["connect_failure", "reset", "502", "503", "504"]


@dataclass(frozen=True, slots=True)
class RetriesConfig:
    """Sending a failed request again, on another backend where it has no session."""

    attempts: int = 2  # retries after the first try; 0 = never retry
    budget_percent: float = 20.0  # retries may add this share of the request rate
    on: frozenset[RetryCondition] = frozenset({"connect_failure", "reset"})
    non_idempotent: bool = False  # also retry POST/PATCH (MCP calls) once they were sent


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """A token bucket per client: ``rate`` tokens a second, holding at most ``burst``."""

    rate: float = 10.0
    burst: int = 20
    header: str | None = None  # lower-case header whose value is the key; None = address
    store: Literal["memory", "redis"] = "memory"
    redis: RedisConfig = field(
        default_factory=lambda: RedisConfig(prefix="mcplb:ratelimit:")
    )  # read only with store "redis"
    # CIDRs of proxies in front: behind them, the address is read from X-Forwarded-For
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ListenTlsConfig:
    """TLS on the client listener."""

    cert: str  # PEM certificate chain
    key: str  # PEM private key


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin API listener (metrics, status, drain)."""

    enabled: bool = True
    listen_host: str = "127.0.0.1"
    listen_port: int = 9901
    token: str | None = field(default=None, repr=False)  # Bearer token for status and changes
    protect_metrics: bool = False  # /metrics needs the token too (Prometheus can send it)


DnsRecord = Literal["A", "AAAA", "SRV"]


@dataclass(frozen=True, slots=True)
class DnsDiscoveryConfig:
    """``discovery.dns``: every address ``name`` resolves to is a backend (see
    proxy/cluster/discovery.py)."""

    name: str  # e.g. the headless Service of the MCP server pods
    record: DnsRecord = "A"
    port: int | None = None  # A/AAAA: the backends' port (required); SRV records carry theirs
    scheme: Literal["http", "https"] = "http"
    path_prefix: str = ""  # as in backends[].url: "" or "/prefix"
    interval: float = 5.0  # seconds between resolutions
    resolvers: tuple[tuple[str, int], ...] = ()  # (IP, port); () = the system's resolvers


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    dns: DnsDiscoveryConfig


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: Literal["text", "json"] = "text"  # access log line format
    access: bool = True  # one line per request on stdout
    level: Literal["debug", "info", "warning", "error"] = "info"  # application log


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
    # Host names (or "*.domain", "*") this listener serves; None: loopback names for a
    # loopback listener, any host otherwise (see proxy/routing/host_check.py).
    allowed_hosts: tuple[str, ...] | None = None
    source: str | None = None  # path of the file it was loaded from
    lines: Mapping[str, int] = field(default_factory=dict)  # "backends[1].url" -> 12
    # Valid but probably not meant (a backend URL ending in /mcp): shown by check and run.
    warnings: tuple[ConfigIssue, ...] = ()
    health: HealthConfig = field(default_factory=HealthConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    log: LogConfig = field(default_factory=LogConfig)
    retries: RetriesConfig = field(default_factory=RetriesConfig)
    rate_limit: RateLimitConfig | None = None  # None = no rate limiting
    listen_tls: ListenTlsConfig | None = None  # None = plain HTTP
    watch_config: bool = False  # reload when the config file changes
    discovery: DiscoveryConfig | None = None  # None = the static backends only


# ---------------------------------------------------------------------------
# Errors


class ConfigIssue(NamedTuple):
    """One problem in a config: where it is (dotted path, 1-based line) and what is wrong."""

    path: str  # "backends[1].url", "timeouts.connect", "" for the document root
    message: str
    line: int | None = None

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return text if self.line is None else f"{text} (line {self.line})"


class ConfigWarning(ConfigIssue):
    """A valid setting that is probably a mistake: reported, never refused. Builders add it
    to the same list as the issues; parse_config sorts them apart."""

    __slots__ = ()


# Checks that need more than the file (the strategy's code, TLS files): they see the built
# config, also when it has other errors (passed along), so that one run lists every problem.
ExtraChecks = Callable[["Config", Sequence[ConfigIssue]], Iterable[ConfigIssue]]


class ConfigError(Exception):
    """Every problem found in a config; ``str()`` lists them one per line."""

    def __init__(
        self,
        issues: Iterable[ConfigIssue],
        source: str | None = None,
        warnings: Iterable[ConfigIssue] = (),
    ) -> None:
        self.issues = list(issues)
        self.source = source
        self.warnings = list(warnings)
        # Passing all to Exception keeps the error picklable (e.g. across worker processes).
        super().__init__(self.issues, source, self.warnings)

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


# ---------------------------------------------------------------------------
# Durations and sizes

_DURATION_UNITS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(rf"({_NUMBER})\s*(ms|s|m|h)", re.ASCII)
_DURATION_RE = re.compile(rf"(?:{_NUMBER}\s*(?:ms|s|m|h)\s*)+", re.ASCII)
_DURATION_HINT = (
    'expected seconds or a number with unit ms, s, m or h (e.g. "250ms", "2s", "1m30s")'
)

_KILO, _KIBI = 1000, 1024
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    **{f"{p}{s}": _KILO**n for n, p in enumerate("kmgt", 1) for s in ("", "b")},
    **{f"{p}{s}": _KIBI**n for n, p in enumerate("kmgt", 1) for s in ("i", "ib")},
}
_SIZE_RE = re.compile(rf"({_NUMBER})\s*([a-z]*)", re.ASCII | re.IGNORECASE)
_SIZE_HINT = (
    "expected bytes, optionally with a unit: B, KB/MB/GB (powers of 1000) "
    'or KiB/MiB/GiB (powers of 1024), e.g. "64KiB"'
)


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string like "250ms", "2s", "5m", "1h", "1h30m"."""
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(_NUMBER, text, re.ASCII):
            seconds = Decimal(text)
        elif _DURATION_RE.fullmatch(text):
            parts = _DURATION_PART.findall(text)
            seconds = sum((Decimal(n) * _DURATION_UNITS[unit] for n, unit in parts), Decimal(0))
        else:
            raise ValueError(f'invalid duration "{value}": {_DURATION_HINT}')
        result = float(seconds)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            result = float(value)
        except OverflowError:
            result = math.inf
        if result < 0:
            raise ValueError(f"invalid duration {value}: must not be negative")
    else:
        raise ValueError(f"invalid duration: {_DURATION_HINT}, got {_kind(value)}")
    if not math.isfinite(result):
        raise ValueError("invalid duration: must be a finite number of seconds")
    return result


def parse_size(value: object) -> int:
    """Bytes from an int or a string like "512B", "1k", "10MB", "64KiB", "10MiB", "1GiB".

    KB/MB/GB (and k/M/G) are powers of 1000, KiB/MiB/GiB (and Ki/Mi/Gi) powers of 1024.
    """
    if isinstance(value, str):
        match = _SIZE_RE.fullmatch(value.strip())
        unit = _SIZE_UNITS.get(match[2].lower()) if match else None
        if match is None or unit is None:
            raise ValueError(f'invalid size "{value}": {_SIZE_HINT}')
        size = Decimal(match[1]) * unit
        if size != size.to_integral_value():
            raise ValueError(f'invalid size "{value}": not a whole number of bytes')
        return int(size)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"invalid size: {_SIZE_HINT}, got {_kind(value)}")
    if value < 0:
        raise ValueError(f"invalid size {value}: must not be negative")
    return value


def _kind(value: object) -> str:
    """The YAML-ish name of a value's type, for messages."""
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "list"}
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "mapping"
    return names.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------
# Environment variables

_ENV_REF = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<body>[^}]*)\}|(?P<open>\{))?")
_ENV_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


def _expand_env(text: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``$$``; return the text and any errors.

    As in the shell, ``:-`` also applies when VAR is set but empty. A ``$`` followed by
    anything else is kept literally.
    """
    errors: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match["dollar"]:
            return "$"
        if match["open"]:
            errors.append('unterminated "${" (write "$$" for a literal "$")')
            return match[0]
        body = match["body"]
        if body is None:
            return "$"
        ref = _ENV_BODY.fullmatch(body)
        if ref is None:
            errors.append(f'invalid variable reference "${{{body}}}"')
            return match[0]
        name, default = ref["name"], ref["default"]
        value = environ.get(name)
        if default is not None and not value:
            return str(default)
        if value is None:
            errors.append(
                f'environment variable "{name}" is not set (use ${{{name}:-default}} for a default)'
            )
            return ""
        return value

    if "$" not in text:
        return text, errors
    return _ENV_REF.sub(replace, text), errors


# ---------------------------------------------------------------------------
# Phase 1: YAML nodes -> values with lines (env expanded, duplicates and aliases handled)

_STR_TAG = "tag:yaml.org,2002:str"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"
_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# PyYAML resolves plain "=" to this tag but has no constructor for it; it is just text to us.
_VALUE_TAG = "tag:yaml.org,2002:value"
_INVALID: Final = object()  # stands for a value already reported as an issue


@dataclass(frozen=True, slots=True)
class _Val:
    """A YAML value after env expansion: a scalar, list[_Val], dict[key, _Entry] or _INVALID."""

    value: object
    line: int


@dataclass(frozen=True, slots=True)
class _Entry:
    """One key of a mapping: the key as written (for paths), its line, and its value."""

    key: str
    line: int
    val: _Val


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _tag_name(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org") else tag


def _has_explicit_tag(text: str, node: yaml.Node) -> bool:
    """Whether a plain scalar was written with a tag, e.g. ``!!str ${PORT}``."""
    # The composed node does not say whether its tag was explicit. A plain scalar cannot start
    # with "!" or "&", so leading tokens starting with those are its properties (tag, anchor).
    source = text[node.start_mark.index : node.end_mark.index]
    for token in source.split(maxsplit=2)[:2]:
        if token.startswith("!"):
            return True
        if not token.startswith("&"):
            return False
    return False


def _implicit_tag(text: str) -> str:
    """The tag the YAML loader gives a plain scalar with this text (int, bool, null, ...)."""
    resolvers = Resolver.yaml_implicit_resolvers
    for tag, regexp in [*resolvers.get(text[:1], []), *resolvers.get(None, [])]:
        if regexp.match(text):
            return str(tag)
    return _STR_TAG


class _Walker:
    """Turns a composed node tree into a _Val tree, recording issues and the line of each path."""

    def __init__(
        self,
        text: str,
        environ: Mapping[str, str],
        issues: list[ConfigIssue],
        lines: dict[str, int],
    ) -> None:
        self._text = text
        self._environ = environ
        self._issues = issues
        self._lines = lines
        self._constructor = SafeConstructor()
        # Aliases make the tree a graph: convert each node once (so "billion laughs" stays
        # linear) and detect an alias used inside its own anchor.
        self._done: dict[int, _Val] = {}
        self._active: set[int] = set()

    def walk(self, node: yaml.Node, path: str) -> _Val:
        key = id(node)
        if key in self._active:
            self._issue(path, "recursive alias (an anchor used inside itself)", _line(node))
            return _Val(_INVALID, _line(node))
        done = self._done.get(key)
        if done is not None:
            return done
        self._active.add(key)
        try:
            if isinstance(node, yaml.MappingNode):
                val = self._mapping(node, path)
            elif isinstance(node, yaml.SequenceNode):
                val = self._sequence(node, path)
            elif isinstance(node, yaml.ScalarNode):
                val = self._scalar(node, path)
            else:  # pragma: no cover - the composer makes only these three
                raise TypeError(f"unexpected YAML node {node!r}")
        finally:
            self._active.discard(key)
        self._done[key] = val
        return val

    def _issue(self, path: str, message: str, line: int | None) -> None:
        self._issues.append(ConfigIssue(path, message, line))

    def _mapping(self, node: yaml.MappingNode, path: str) -> _Val:
        if node.tag != _MAP_TAG:
            self._issue(path, f'unsupported YAML tag "{_tag_name(node.tag)}"', _line(node))
            return _Val(_INVALID, _line(node))
        entries: dict[object, _Entry] = {}
        merged: dict[object, _Entry] = {}
        for key_node, value_node in node.value:
            key_line = _line(key_node)
            if key_node.tag == _MERGE_TAG:
                self._merge(merged, value_node, _join(path, "<<"))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._issue(path, "a key must be a scalar, not a list or mapping", key_line)
                continue
            key_path = _join(path, key_node.value)
            key = self._construct(key_node.tag, key_node.value, key_path, key_line)
            if key is _INVALID:
                continue
            first = entries.get(key)
            if first is not None:
                self._issue(
                    key_path, f"duplicate key (first defined on line {first.line})", key_line
                )
                continue
            self._lines[key_path] = key_line
            entries[key] = _Entry(key_node.value, key_line, self.walk(value_node, key_path))
        for key, entry in merged.items():
            if key not in entries:
                entries[key] = entry
                self._lines.setdefault(_join(path, entry.key), entry.line)
        return _Val(entries, _line(node))

    def _merge(self, merged: dict[object, _Entry], node: yaml.Node, path: str) -> None:
        """Apply a ``<<`` merge key: earlier sources win, explicit keys win over all."""
        source = self.walk(node, path)
        sources = source.value if isinstance(source.value, list) else [source]
        for item in sources:
            if isinstance(item.value, dict):
                for key, entry in item.value.items():
                    merged.setdefault(key, entry)
            elif item.value is not _INVALID:
                self._issue(path, "a merge (<<) needs a mapping or a list of mappings", item.line)

    def _sequence(self, node: yaml.SequenceNode, path: str) -> _Val:
        if node.tag != _SEQ_TAG:
            self._issue(path, f'unsupported YAML tag "{_tag_name(node.tag)}"', _line(node))
            return _Val(_INVALID, _line(node))
        items = []
        for index, item in enumerate(node.value):
            item_path = f"{path}[{index}]"
            self._lines[item_path] = _line(item)
            items.append(self.walk(item, item_path))
        return _Val(items, _line(node))

    def _scalar(self, node: yaml.ScalarNode, path: str) -> _Val:
        line = _line(node)
        tag, text = node.tag, str(node.value)
        # Expansion runs after composing so that line numbers refer to the file as written.
        if tag == _STR_TAG and "$" in text:
            text, errors = _expand_env(text, self._environ)
            for message in errors:
                self._issue(path, message, line)
            if errors:
                return _Val(_INVALID, line)
            if node.style is None and not _has_explicit_tag(self._text, node):
                tag = _implicit_tag(text)
        return _Val(self._construct(tag, text, path, line), line)

    def _construct(self, tag: str, text: str, path: str, line: int) -> object:
        """The Python value of a scalar, or _INVALID (reported) if its tag cannot take it."""
        if tag in (_STR_TAG, _MERGE_TAG, _VALUE_TAG):
            return text
        if tag not in SafeConstructor.yaml_constructors:
            self._issue(path, f'unsupported YAML tag "{_tag_name(tag)}"', line)
            return _INVALID
        try:
            value: object = self._constructor.construct_object(yaml.ScalarNode(tag, text), True)
        except Exception:  # the constructors raise assorted errors on malformed tagged values
            self._issue(path, f'"{text}" is not a valid {_tag_name(tag)}', line)
            return _INVALID
        return value


# ---------------------------------------------------------------------------
# Phase 2: schema validation

_T = TypeVar("_T")
_TOP_KEYS = (
    "listen",
    "workers",
    "strategy",
    "strategy_options",
    "preserve_host",
    "allowed_hosts",
    "backends",
    "sticky",
    "timeouts",
    "limits",
    "health",
    "admin",
    "log",
    "retries",
    "rate_limit",
    "listen_tls",
    "watch_config",
    "discovery",
)
_DISCOVERY_KEYS = ("dns",)
_DNS_KEYS = ("name", "record", "port", "scheme", "path", "interval", "resolvers")
_RETRY_KEYS = ("attempts", "budget_percent", "on", "non_idempotent")
_RATE_LIMIT_KEYS = ("rate", "burst", "key", "trusted_proxies", "store", "redis")
_LISTEN_TLS_KEYS = ("cert", "key")
_ADMIN_KEYS = ("enabled", "listen", "token", "protect_metrics")
_LOG_KEYS = ("format", "access", "level")
_BACKEND_KEYS = (
    "name",
    "url",
    "weight",
    "max_sessions",
    "max_connections",
    "max_streams",
    "ca",
    "verify",
)
_STICKY_KEYS = (
    "mcp_sessions",
    "session_ttl",
    "max_sessions",
    "store",
    "keys",
    "redis",
    "cookie",
    "header",
)
_REDIS_KEYS = ("url", "timeout", "prefix")
_COOKIE_KEYS = ("name", "ttl", "secure", "http_only", "same_site")
_TIMEOUT_KEYS = (
    "connect",
    "header",
    "upstream_header",
    "idle",
    "body",
    "upstream_keepalive",
    "grace",
    "shutdown_delay",
)
_LIMIT_KEYS = (
    "max_header_bytes",
    "max_body_bytes",
    "max_in_flight",
    "max_streams",
    "max_queue",
    "queue_timeout",
    "min_body_rate",
)
_HEALTH_KEYS = ("initial", "panic", "slow_start", "active", "passive")
_ACTIVE_KEYS = (
    "enabled",
    "type",
    "path",
    "method",
    "expect_status",
    "expect_tools",
    "interval",
    "timeout",
    "rise",
    "fall",
    "fast_interval",
    "down_interval",
)
_PASSIVE_KEYS = (
    "enabled",
    "consecutive_failures",
    "on_5xx",
    "ejection_time",
    "max_ejection_time",
    "ejection_memory",
    "max_ejection_percent",
)

_MAX_WORKERS = 256
_LISTEN_HINT = 'must be "host:port", e.g. "127.0.0.1:8080" or "[::1]:8080"'
_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?", re.ASCII)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
_STRATEGY_NAME_RE = re.compile(r"[a-z0-9_]+", re.ASCII)
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_STRATEGY_PATH_RE = re.compile(rf"{_IDENT}(?:\.{_IDENT})*:{_IDENT}", re.ASCII)


class _Section:
    """One mapping of the schema: rejects unknown keys, then hands out validated values."""

    def __init__(
        self,
        val: _Val | None,
        path: str,
        keys: tuple[str, ...],
        issues: list[ConfigIssue],
        required: tuple[str, ...] = (),
    ) -> None:
        self._path = path
        self._issues = issues
        self.entries: dict[str, _Entry] = {}
        # A section whose keys are all commented out is null in YAML; treat it as empty.
        if val is None or val.value is _INVALID or (val.value is None and not required):
            return
        if not isinstance(val.value, dict):
            issues.append(ConfigIssue(path, "must be a mapping", val.line))
            return
        for key, entry in val.value.items():
            if isinstance(key, bool) and entry.key in keys:
                key = entry.key  # YAML 1.1 reads a plain on/off/yes/no key as a boolean
            if isinstance(key, str) and key in keys:
                self.entries[key] = entry
            else:
                issues.append(
                    ConfigIssue(_join(path, entry.key), _unknown_key(entry.key, keys), entry.line)
                )
        for key in required:
            if key not in val.value:
                issues.append(ConfigIssue(path, f'missing required key "{key}"', val.line))

    def val(self, key: str) -> _Val | None:
        entry = self.entries.get(key)
        return None if entry is None else entry.val

    def get(self, key: str, check: Callable[[object], _T], default: _T) -> _T:
        """The checked value of ``key``; its default if absent or invalid (invalid is reported)."""
        entry = self.entries.get(key)
        if entry is None or entry.val.value is _INVALID:
            return default
        try:
            return check(entry.val.value)
        except ValueError as exc:
            self._issues.append(ConfigIssue(_join(self._path, key), str(exc), entry.val.line))
            return default


def _unknown_key(key: str, keys: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, keys, n=1)
    if close:
        return f'unknown key (did you mean "{close[0]}"?)'
    return f"unknown key (expected one of: {', '.join(keys)})"


def _valid_host(host: str) -> bool:
    """A DNS name (underscores allowed, as in container names) or an IPv4 address."""
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    return _HOSTNAME_RE.fullmatch(host) is not None


def _valid_port(text: str, low: int) -> bool:
    return len(text) <= 5 and text.isascii() and text.isdigit() and low <= int(text) <= 65535


def _check_listen(value: object) -> tuple[str, int]:
    if isinstance(value, list):
        # An unquoted [::1]:8080 is read by YAML as a flow list.
        raise ValueError(f"{_LISTEN_HINT} (quote IPv6 addresses)")
    if not isinstance(value, str):
        raise ValueError(_LISTEN_HINT)
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise ValueError(_LISTEN_HINT)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f'invalid IPv6 address "{host}"') from None
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            raise ValueError(_LISTEN_HINT)
        if ":" in host:
            raise ValueError('IPv6 addresses must be in brackets, e.g. "[::1]:8080"')
        if not host:
            raise ValueError('host is missing (use "0.0.0.0:PORT" for all interfaces)')
        if not _valid_host(host):
            raise ValueError(f'invalid host "{host}"')
    if not _valid_port(port, 0):
        raise ValueError("port must be a number between 0 and 65535")
    return host, int(port)


def _check_workers(value: object) -> int:
    if value == "auto":
        return min(os.cpu_count() or 1, _MAX_WORKERS)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError('must be an integer >= 1 or "auto"')
    if value > _MAX_WORKERS:
        raise ValueError(f"must be at most {_MAX_WORKERS}")
    return value


def _check_strategy(value: object) -> str:
    if isinstance(value, str) and (
        _STRATEGY_NAME_RE.fullmatch(value) or _STRATEGY_PATH_RE.fullmatch(value)
    ):
        return value
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_-]+", value):
        raise ValueError(unknown_strategy(value))  # "round-robin": the names it may have meant
    raise ValueError('must be a built-in strategy name ([a-z0-9_]+) or "package.module:ClassName"')


def _check_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be a boolean (true or false, unquoted)")
    return value


def _int_range(low: int, high: int | None, message: str) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(message)
        if value < low or (high is not None and value > high):
            raise ValueError(message)
        return value

    return check


def _check_positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be greater than 0")
    return seconds


def _check_header_size(value: object) -> int:
    size = parse_size(value)
    if not _KIBI <= size <= _KIBI**2:
        raise ValueError("must be between 1KiB and 1MiB (1024 to 1048576 bytes)")
    return size


def _check_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ValueError(
            "must be a string of 1 to 64 letters, digits, _ . or -, starting with a letter or digit"
        )
    return value


class _Url(NamedTuple):
    url: str
    scheme: str
    host: str
    port: int
    path_prefix: str


def _host_and_port(host_port: str, host: str | None) -> tuple[str, str]:
    """The checked host and port text ("" if none) of a URL's ``host[:port]`` part."""
    if not host:
        raise ValueError("host is missing")
    if host_port.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f'invalid IPv6 address "{host}"') from None
    elif not _valid_host(host):
        raise ValueError(f'invalid host "{host}"')
    _, colon, port = host_port.rpartition("]")[2].rpartition(":")
    port = port if colon else ""
    if port and not _valid_port(port, 1):
        raise ValueError("port must be a number between 1 and 65535")
    return host, port


def _check_url(value: object) -> _Url:
    if not isinstance(value, str) or not value:
        raise ValueError('must be a URL string such as "http://127.0.0.1:9001"')
    # urlsplit silently drops tabs and newlines, so reject them (and other blanks) up front.
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError("must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise ValueError(f"cannot be parsed ({exc})") from None
    if "://" not in value and not value.startswith("/"):
        # "127.0.0.1:9001" or "mcp-a:9001" would parse as a path or as scheme "mcp-a".
        raise ValueError(f'needs a scheme: write "http://{value}" (or https://)')
    if parts.scheme not in ("http", "https"):
        raise ValueError("scheme must be http or https")
    if "@" in parts.netloc:
        raise ValueError("must not contain user info (user:password@)")
    if "?" in value:
        raise ValueError("must not have a query string")
    if "#" in value:
        raise ValueError("must not have a fragment")
    host, port = _host_and_port(parts.netloc, parts.hostname)
    prefix = parts.path.rstrip("/")
    netloc = parts.netloc.removesuffix(":")  # "http://h:" means the default port
    return _Url(
        url=f"{parts.scheme}://{netloc}{prefix}",
        scheme=parts.scheme,
        host=host,
        port=int(port) if port else (443 if parts.scheme == "https" else 80),
        path_prefix=prefix,
    )


def _mcp_suffix_warning(url: _Url) -> str:
    parent, _, last = url.url.rpartition("/")
    return (
        f"ends in /{last}, but a backend URL's path is put before every request path: a "
        f"client's POST /mcp is sent to {url.url}/mcp. Write {parent} to reach the server's /mcp"
    )


def _to_python(val: _Val, memo: dict[int, Any]) -> Any:
    """Plain data from a _Val tree; values shared through YAML aliases stay shared."""
    if id(val) in memo:
        return memo[id(val)]
    result: Any
    if isinstance(val.value, dict):
        result = {key: _to_python(entry.val, memo) for key, entry in val.value.items()}
    elif isinstance(val.value, list):
        result = [_to_python(item, memo) for item in val.value]
    else:
        result = val.value
    memo[id(val)] = result
    return result


def _strategy_options(val: _Val | None, issues: list[ConfigIssue]) -> dict[str, Any]:
    if val is None or val.value is None or val.value is _INVALID:
        return {}
    if not isinstance(val.value, dict):
        issues.append(ConfigIssue("strategy_options", "must be a mapping", val.line))
        return {}
    options: dict[str, Any] = {}
    memo: dict[int, Any] = {}
    for key, entry in val.value.items():
        if isinstance(key, str):
            options[key] = _to_python(entry.val, memo)
        else:
            path = f"strategy_options.{entry.key}"
            issues.append(ConfigIssue(path, "keys must be strings", entry.line))
    return options


def _backends(val: _Val | None, issues: list[ConfigIssue]) -> tuple[BackendConfig, ...]:
    if val is None or val.value is _INVALID:
        return ()  # a missing "backends" is reported by the top-level section
    if not isinstance(val.value, list) or not val.value:
        issues.append(ConfigIssue("backends", "must be a non-empty list of backends", val.line))
        return ()
    default_weight = BackendConfig(name="", url="", scheme="", host="", port=0).weight
    check_weight = _int_range(0, 1000, "must be an integer between 0 and 1000")
    backends: list[BackendConfig] = []
    first_index: dict[str, int] = {}
    for index, item in enumerate(val.value):
        path = f"backends[{index}]"
        section = _Section(item, path, _BACKEND_KEYS, issues, required=("name", "url"))
        name = section.get("name", _check_name, "")
        url = section.get("url", _check_url, None)
        url_line = _entry_line(section, "url")
        weight = section.get("weight", check_weight, default_weight)
        at_least_one = _int_range(1, None, "must be an integer >= 1")
        max_sessions = section.get("max_sessions", at_least_one, None)
        max_connections = section.get("max_connections", at_least_one, None)
        max_streams = section.get("max_streams", at_least_one, None)
        ca = section.get("ca", _check_file, None)
        verify = section.get("verify", _check_bool, True)
        if ca is not None and not verify and url is not None and url.scheme == "https":
            message = "is not used with verify: false (remove one of them)"
            issues.append(ConfigIssue(f"{path}.ca", message, _entry_line(section, "ca")))
        if url is not None and url.scheme != "https":
            for key, is_set in (("ca", ca is not None), ("verify", not verify)):
                if is_set:
                    message = "only used with https:// backend urls"
                    issues.append(ConfigIssue(f"{path}.{key}", message, _entry_line(section, key)))
        if name in first_index:
            message = (
                f'duplicate backend name "{name}" (already used by backends[{first_index[name]}])'
            )
            issues.append(ConfigIssue(f"{path}.name", message, section.entries["name"].val.line))
        elif name:
            first_index[name] = index
        if url is not None and url.path_prefix.rsplit("/", 1)[-1].lower() == "mcp":
            issues.append(ConfigWarning(f"{path}.url", _mcp_suffix_warning(url), url_line))
        if name and url:
            backends.append(
                BackendConfig(
                    name,
                    url.url,
                    url.scheme,
                    url.host,
                    url.port,
                    url.path_prefix,
                    weight,
                    max_sessions,
                    max_connections,
                    max_streams,
                    ca,
                    verify,
                )
            )
    return tuple(backends)


_MIN_KEY_LENGTH = 32  # proxy/sessions/tokens.py MIN_KEY_LENGTH
_MAX_REDIS_TIMEOUT = 5.0
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", re.ASCII)  # RFC 9110 token
_TOKEN_CHARS = "letters, digits and !#$%&'*+-.^_`|~"
_KEYS_EXAMPLE = 'e.g. keys: ["${MCPLB_SESSION_KEY}"] with a random secret of at least 32 characters'


def _check_key(value: object) -> str:
    # Never put the value in a message: it is a secret.
    if not isinstance(value, str):
        raise ValueError(f"must be a string (quote it), at least {_MIN_KEY_LENGTH} characters")
    if len(value) < _MIN_KEY_LENGTH:
        raise ValueError(
            f"must be at least {_MIN_KEY_LENGTH} characters long (this one has {len(value)})"
        )
    return value


def _check_cookie_name(value: object) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise ValueError(f"must be a cookie name: {_TOKEN_CHARS}")
    return value


def _check_same_site(value: object) -> CookieSameSite:
    # Case-insensitive like the Set-Cookie attribute; kept in its usual spelling.
    options: dict[str, CookieSameSite] = {"lax": "Lax", "strict": "Strict", "none": "None"}
    if isinstance(value, str) and value.lower() in options:
        return options[value.lower()]
    raise ValueError('must be "Lax", "Strict" or "None"')


def _check_header_name(value: object) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise ValueError(f'must be a header name ({_TOKEN_CHARS}), e.g. "X-Tenant-Id"')
    name = value.lower()
    if name == "mcp-session-id":
        raise ValueError(
            "cannot be Mcp-Session-Id: a backend mints it after the routing decision "
            "(mcp_sessions routes requests that carry it)"
        )
    return name


def _check_redis_url(value: object) -> str:
    # The URL may hold a password: messages never repeat it.
    if not isinstance(value, str) or not value:
        raise ValueError(
            'must be a Redis URL: "redis://HOST[:PORT][/DB]", "rediss://..." (TLS) '
            'or "unix:///PATH/TO/SOCKET"'
        )
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError("must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ValueError("cannot be parsed as a URL") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("scheme must be redis, rediss or unix")
    if "#" in value:
        raise ValueError("must not have a fragment")
    if parts.scheme == "unix":
        if parts.netloc.rpartition("@")[2] or not parts.path.startswith("/"):
            raise ValueError(
                'must be "unix://" then the socket\'s absolute path, e.g. "unix:///run/redis.sock"'
            )
        return value
    _host_and_port(parts.netloc.rpartition("@")[2], parts.hostname)
    database = parts.path.removeprefix("/")
    if database and not (database.isascii() and database.isdigit()):
        raise ValueError('the path must be a database number, e.g. "redis://127.0.0.1:6379/0"')
    return value


def _check_redis_timeout(value: object) -> float:
    seconds = _check_positive_duration(value)
    if seconds > _MAX_REDIS_TIMEOUT:
        raise ValueError(
            f"must be at most {_seconds(_MAX_REDIS_TIMEOUT)} (every request that carries "
            "a session may wait this long for Redis)"
        )
    return seconds


def _check_prefix(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError('must be a non-empty string, e.g. "mcplb:session:"')
    return value


def _keys(val: _Val | None, issues: list[ConfigIssue]) -> tuple[str, ...] | None:
    """The checked keys (each error on its own item); None if invalid, () if absent."""
    path = "sticky.keys"
    if val is None:
        return ()
    keys = _list_of(
        val,
        path,
        issues,
        _check_key,
        f"must be a list of secrets, {_KEYS_EXAMPLE}",
        scalar_ok=True,
        empty_ok=True,
    )
    if keys is None:
        return None
    items = val.value if isinstance(val.value, list) else [val]
    first: dict[str, int] = {}
    duplicate = False
    for index, (key, item) in enumerate(zip(keys, items, strict=True)):
        if key in first:
            message = f"duplicate of keys[{first[key]}] (each key must be different)"
            issues.append(ConfigIssue(f"{path}[{index}]", message, item.line))
            duplicate = True
        else:
            first[key] = index
    return None if duplicate else keys


def _redis(
    val: _Val | None,
    issues: list[ConfigIssue],
    store: str | None,
    path: str = "sticky.redis",
    default: RedisConfig | None = None,
) -> RedisConfig:
    """A ``redis`` section; ``store`` is the resolved store, None if it is invalid."""
    section = _Section(val, path, _REDIS_KEYS, issues)
    default = RedisConfig() if default is None else default
    config = RedisConfig(
        url=section.get("url", _check_redis_url, default.url),
        timeout=section.get("timeout", _check_redis_timeout, default.timeout),
        prefix=section.get("prefix", _check_prefix, default.prefix),
    )
    if store is not None and store != "redis":
        # Settings the chosen store never reads would be silently ignored: refuse them
        # (unless they are just the defaults, as when a commented example is uncommented).
        for key in _REDIS_KEYS:
            if key in section.entries and getattr(config, key) != getattr(default, key):
                message = f'only used when store is "redis" (the store is "{store}")'
                issues.append(ConfigIssue(_join(path, key), message, _entry_line(section, key)))
    return config


def _cookie(val: _Val | None, issues: list[ConfigIssue]) -> CookieConfig | None:
    if val is None:
        return None  # no "cookie" key: no cookie ("cookie:" alone turns it on)
    path = "sticky.cookie"
    section = _Section(val, path, _COOKIE_KEYS, issues)
    if val.value is not None and not isinstance(val.value, dict):
        return None  # reported (not a mapping, or already invalid): no knock-on errors
    default = CookieConfig()
    given_secure = section.get("secure", _check_bool, None)
    secure = default.secure if given_secure is None else given_secure
    name = section.get("name", _check_cookie_name, default.name)
    same_site = section.get("same_site", _check_same_site, default.same_site)
    if _valid(section, "secure", given_secure) and not secure:
        if same_site == "None":
            message = 'SameSite "None" requires secure: true (browsers drop such cookies)'
            issues.append(
                ConfigIssue(_join(path, "same_site"), message, _entry_line(section, "same_site"))
            )
        prefix = next((p for p in ("__Secure-", "__Host-") if name.startswith(p)), None)
        if prefix is not None:
            message = f'a name starting with "{prefix}" requires secure: true'
            issues.append(ConfigIssue(_join(path, "name"), message, _entry_line(section, "name")))
    return CookieConfig(
        name=name,
        ttl=section.get("ttl", _optional(_check_positive_duration), default.ttl),
        secure=secure,
        http_only=section.get("http_only", _check_bool, default.http_only),
        same_site=same_site,
    )


def _sticky(
    val: _Val | None, issues: list[ConfigIssue], workers: int, workers_line: int | None
) -> StickyConfig:
    """``sticky``; ``workers`` is the resolved worker count (1 if it was invalid).

    Where a binding lives only matters with mcp_sessions: true. An absent store is "signed"
    when several workers share the port (each has its own memory) and "memory" otherwise;
    with mcp_sessions: false it stays "memory", so no keys are demanded for a store that is
    never used. "signed" (explicit or default) and a cookie need keys.
    """
    path = "sticky"
    section = _Section(val, path, _STICKY_KEYS, issues)
    default = StickyConfig()
    given_sessions = section.get("mcp_sessions", _check_bool, None)
    mcp_sessions = default.mcp_sessions if given_sessions is None else given_sessions
    check_store = _choice("memory", "signed", "redis")
    given_store = cast(SessionStoreKind | None, section.get("store", check_store, None))
    by_workers = given_store is None and mcp_sessions and workers > 1
    store: SessionStoreKind = given_store or ("signed" if by_workers else "memory")
    # Cross-checks use only valid values: a bad one is reported already.
    store_ok = _valid(section, "store", given_store)
    sessions_ok = _valid(section, "mcp_sessions", given_sessions)
    keys = _keys(section.val("keys"), issues)
    cookie = _cookie(section.val("cookie"), issues)
    redis = _redis(section.val("redis"), issues, store if store_ok else None)
    if store_ok and sessions_ok and mcp_sessions and store == "memory" and workers > 1:
        message = (
            f'"memory" cannot serve {workers} workers: each worker process has its own memory '
            "and a client's connections spread over all workers, so most workers would not "
            "know its session; use store: signed (session ids carry their backend, signed "
            "with keys) or store: redis (shared)"
        )
        issues.append(ConfigIssue(_join(path, "store"), message, _entry_line(section, "store")))
    needed_by = []
    if store_ok and sessions_ok and store == "signed":
        needed_by.append(
            "store: signed, the default with workers > 1" if by_workers else "store: signed"
        )
    if cookie is not None:
        needed_by.append("cookie")
    if needed_by and keys == ():
        message = f"required by {' and by '.join(needed_by)} ({_KEYS_EXAMPLE})"
        if by_workers:
            message += (
                "; or use store: redis, or mcp_sessions: false for backends without MCP sessions"
            )
        # The line of "keys: []", else of what needs keys, else of workers (default store).
        if "keys" in section.entries:
            line = _entry_line(section, "keys")
        elif given_store == "signed":
            line = _entry_line(section, "store")
        elif cookie is not None:
            line = _entry_line(section, "cookie")
        else:
            line = workers_line
        issues.append(ConfigIssue(_join(path, "keys"), message, line))
    return StickyConfig(
        mcp_sessions=mcp_sessions,
        session_ttl=section.get("session_ttl", _check_positive_duration, default.session_ttl),
        max_sessions=section.get(
            "max_sessions", _int_range(1, None, "must be an integer >= 1"), default.max_sessions
        ),
        store=store,
        keys=keys or (),
        redis=redis,
        cookie=cookie,
        header=section.get("header", _optional(_check_header_name), default.header),
    )


def _timeouts(val: _Val | None, issues: list[ConfigIssue]) -> TimeoutsConfig:
    section = _Section(val, "timeouts", _TIMEOUT_KEYS, issues)
    default = TimeoutsConfig()
    seconds = {
        key: section.get(
            key,
            # No delay is the default: only shutdown_delay may be 0.
            parse_duration if key == "shutdown_delay" else _check_positive_duration,
            float(getattr(default, key)),
        )
        for key in _TIMEOUT_KEYS
    }
    return TimeoutsConfig(**seconds)


def _limits(val: _Val | None, issues: list[ConfigIssue]) -> LimitsConfig:
    section = _Section(val, "limits", _LIMIT_KEYS, issues)
    default = LimitsConfig()
    at_least_one = _optional(_int_range(1, None, "must be an integer >= 1"))
    return LimitsConfig(
        max_header_bytes=section.get(
            "max_header_bytes", _check_header_size, default.max_header_bytes
        ),
        max_body_bytes=section.get("max_body_bytes", parse_size, default.max_body_bytes),
        max_in_flight=section.get("max_in_flight", at_least_one, None),
        max_streams=section.get("max_streams", at_least_one, None),
        max_queue=section.get(
            "max_queue", _int_range(0, None, "must be an integer >= 0"), default.max_queue
        ),
        queue_timeout=section.get("queue_timeout", _check_positive_duration, default.queue_timeout),
        min_body_rate=section.get("min_body_rate", parse_size, default.min_body_rate),
    )


_RETRY_CONDITIONS = ("connect_failure", "reset", "502", "503", "504")


def _check_retry_condition(value: object) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(text, str) and text in _RETRY_CONDITIONS:
        return text
    raise ValueError("must be one of " + ", ".join(_RETRY_CONDITIONS))


def _retries(val: _Val | None, issues: list[ConfigIssue]) -> RetriesConfig:
    section = _Section(val, "retries", _RETRY_KEYS, issues)
    default = RetriesConfig()
    on = _list_of(
        section.val("on"),
        "retries.on",
        issues,
        _check_retry_condition,
        "must be a list, e.g. [connect_failure, reset, 502, 503]",
        scalar_ok=True,
        empty_ok=True,
    )
    return RetriesConfig(
        attempts=section.get(
            "attempts", _int_range(0, 10, "must be an integer from 0 to 10"), default.attempts
        ),
        budget_percent=section.get("budget_percent", _check_percent, default.budget_percent),
        on=default.on if on is None else cast(frozenset[RetryCondition], frozenset(on)),
        non_idempotent=section.get("non_idempotent", _check_bool, default.non_idempotent),
    )


def _check_percent(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise ValueError("must be a number from 0 to 100")
    return float(value)


_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*([smh]))?\s*", re.ASCII)


def _check_rate(value: object) -> float:
    """Tokens per second: a number, or "N/s", "N/m", "N/h"."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            rate = float(value)
        elif isinstance(value, str) and (match := _RATE_RE.fullmatch(value)):
            rate = float(match[1]) / _RATE_UNITS[match[2] or "s"]
        else:
            raise ValueError('must be requests per second, or a string such as "600/m" or "5/s"')
    except OverflowError:
        raise ValueError("must be a finite number") from None
    if not math.isfinite(rate):
        raise ValueError("must be a finite number")
    if rate <= 0:
        raise ValueError("must be greater than 0")
    return rate


def _check_network(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError('must be a network in CIDR notation, e.g. "10.0.0.0/8"')
    try:
        ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f'"{value}" is not a network in CIDR notation') from None
    return value.strip()


def _rate_key(value: object) -> str | None:
    if value == "address":
        return None
    if isinstance(value, str) and value.startswith("header:"):
        return _check_header_name(value.removeprefix("header:"))
    raise ValueError('must be "address" or "header:NAME", e.g. "header:X-Api-Key"')


def _rate_limit(val: _Val | None, issues: list[ConfigIssue]) -> RateLimitConfig | None:
    if val is None or val.value is None:
        return None
    section = _Section(val, "rate_limit", _RATE_LIMIT_KEYS, issues, required=("rate",))
    default = RateLimitConfig()
    store = section.get("store", _choice("memory", "redis"), None)
    resolved = store or default.store
    trusted = _list_of(
        section.val("trusted_proxies"),
        "rate_limit.trusted_proxies",
        issues,
        _check_network,
        'must be a list of networks, e.g. ["10.0.0.0/8", "127.0.0.1/32"]',
        scalar_ok=True,
        empty_ok=True,
    )
    return RateLimitConfig(
        rate=section.get("rate", _check_rate, default.rate),
        burst=section.get("burst", _int_range(1, None, "must be an integer >= 1"), default.burst),
        header=section.get("key", _rate_key, None),
        trusted_proxies=trusted or (),
        store=cast(Literal["memory", "redis"], resolved),
        redis=_redis(
            section.val("redis"),
            issues,
            resolved if _valid(section, "store", store) else None,
            "rate_limit.redis",
            default.redis,
        ),
    )


def _check_file(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a file path")
    if not os.path.isfile(value):
        raise ValueError(f"no such file: {value}")
    return value


def _listen_tls(val: _Val | None, issues: list[ConfigIssue]) -> ListenTlsConfig | None:
    if val is None or val.value is None:
        return None
    section = _Section(val, "listen_tls", _LISTEN_TLS_KEYS, issues, required=("cert", "key"))
    cert = section.get("cert", _check_file, "")
    key = section.get("key", _check_file, "")
    return ListenTlsConfig(cert, key) if cert and key else None


def _admin(val: _Val | None, issues: list[ConfigIssue]) -> AdminConfig:
    section = _Section(val, "admin", _ADMIN_KEYS, issues)
    default = AdminConfig()
    host, port = section.get("listen", _check_listen, (default.listen_host, default.listen_port))
    token = section.get("token", _check_token, None)
    enabled = section.get("enabled", _check_bool, default.enabled)
    if enabled and token is None and not _is_loopback(host):
        line = _entry_line(section, "listen")
        message = (
            f"the admin API on {host} (not loopback) needs admin.token: its drain/undrain "
            "calls would be open to the network"
        )
        issues.append(ConfigIssue("admin.listen", message, line))
    protect_metrics = section.get("protect_metrics", _check_bool, default.protect_metrics)
    if protect_metrics and token is None and "token" not in section.entries:
        line = _entry_line(section, "protect_metrics")
        issues.append(ConfigIssue("admin.protect_metrics", "needs admin.token", line))
    return AdminConfig(
        enabled=enabled,
        listen_host=host,
        listen_port=port,
        token=token,
        protect_metrics=protect_metrics,
    )


def _check_token(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) < 16:
        raise ValueError("must be a string of at least 16 characters")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _log(val: _Val | None, issues: list[ConfigIssue]) -> LogConfig:
    section = _Section(val, "log", _LOG_KEYS, issues)
    default = LogConfig()
    log_format = section.get("format", _choice("text", "json"), str(default.format))
    level = section.get("level", _choice("debug", "info", "warning", "error"), str(default.level))
    return LogConfig(
        format=cast(Literal["text", "json"], log_format),
        access=section.get("access", _check_bool, default.access),
        level=cast(Literal["debug", "info", "warning", "error"], level),
    )


def _choice(*options: str) -> Callable[[object], str]:
    quoted = [f'"{option}"' for option in options]
    message = "must be " + (
        " or ".join(quoted) if len(quoted) == 2 else "one of " + ", ".join(quoted)
    )

    def check(value: object) -> str:
        if isinstance(value, str) and value in options:
            return value
        raise ValueError(message)

    return check


def _check_method(value: object) -> str:
    if isinstance(value, str) and value.upper() in ("GET", "HEAD"):
        return value.upper()
    raise ValueError("must be GET or HEAD")


def _optional(check: Callable[[object], _T]) -> Callable[[object], _T | None]:
    """``check``, but null is accepted and means None."""

    def optional(value: object) -> _T | None:
        return None if value is None else check(value)

    return optional


def _check_probe_path(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError('must be a path starting with "/", e.g. "/healthz"')
    if not value.isascii() or any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError(
            "must be ASCII without whitespace or control characters (percent-encode others)"
        )
    if "#" in value:
        raise ValueError("must not have a fragment")
    return value


_STATUS_HINT = 'must be a status code or a range of them, e.g. 200 or "200-399"'
_STATUS_RE = re.compile(r"\s*(\d{1,3})\s*(?:-\s*(\d{1,3})\s*)?", re.ASCII)


def _check_status_range(value: object) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str) and (match := _STATUS_RE.fullmatch(value)):
        low = int(match[1])
        high = int(match[2]) if match[2] else low
    else:
        raise ValueError(_STATUS_HINT)
    if not (100 <= low <= 599 and 100 <= high <= 599):
        raise ValueError("status codes must be between 100 and 599")
    if low > high:
        raise ValueError(f'invalid range "{value}": {low} is greater than {high}')
    return low, high


def _check_tool_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a tool name (a non-empty string)")
    return value


def _list_of(
    val: _Val | None,
    path: str,
    issues: list[ConfigIssue],
    check: Callable[[object], _T],
    message: str,
    *,
    scalar_ok: bool = False,
    empty_ok: bool = False,
) -> tuple[_T, ...] | None:
    """The checked items of a list value (each bad item reported); None if absent or invalid."""
    if val is None or val.value is _INVALID:
        return None
    if isinstance(val.value, list):
        items = val.value
    elif scalar_ok and val.value is not None and not isinstance(val.value, dict):
        items = [val]  # a single item written without brackets
    else:
        issues.append(ConfigIssue(path, message, val.line))
        return None
    if not items and not empty_ok:
        issues.append(ConfigIssue(path, "must not be empty", val.line))
        return None
    result: list[_T] = []
    ok = True
    for index, item in enumerate(items):
        if item.value is _INVALID:
            ok = False
            continue
        try:
            result.append(check(item.value))
        except ValueError as exc:
            issues.append(ConfigIssue(f"{path}[{index}]", str(exc), item.line))
            ok = False
    return tuple(result) if ok else None


def _seconds(value: float) -> str:
    """A duration for messages: 2 -> "2s", 0.25 -> "0.25s"."""
    return format(Decimal(repr(value)).normalize(), "f") + "s"


def _active_health(val: _Val | None, issues: list[ConfigIssue]) -> ActiveHealthConfig:
    if val is None:
        return ActiveHealthConfig()  # no "active" key: no probes
    path = "health.active"
    section = _Section(val, path, _ACTIVE_KEYS, issues)
    default = ActiveHealthConfig()
    given_type = section.get("type", _choice("http", "mcp"), None)
    probe_type = cast(ProbeType, given_type or default.type)
    method: str = section.get("method", _check_method, str(default.method))
    expect_status = _list_of(
        section.val("expect_status"),
        _join(path, "expect_status"),
        issues,
        _check_status_range,
        "must be a list of status codes or ranges, e.g. [200-399] or [200, 204]",
        scalar_ok=True,
    )
    tools = _list_of(
        section.val("expect_tools"),
        _join(path, "expect_tools"),
        issues,
        _check_tool_name,
        "must be a list of tool names",
        empty_ok=True,
    )
    if _valid(section, "type", given_type):
        # A setting that only the other probe type reads would be silently ignored: refuse it
        # (unless it is just the default, as when a whole commented example is uncommented).
        ignored = (
            ("method", "http", method != default.method),
            ("expect_status", "http", expect_status not in (None, default.expect_status)),
            ("expect_tools", "mcp", bool(tools)),
        )
        for key, owner, is_set in ignored:
            if is_set and probe_type != owner:
                message = f'only used when type is "{owner}"'
                issues.append(ConfigIssue(_join(path, key), message, _entry_line(section, key)))
    given_interval = section.get("interval", _check_positive_duration, None)
    given_timeout = section.get("timeout", _check_positive_duration, None)
    interval = default.interval if given_interval is None else given_interval
    timeout = default.timeout if given_timeout is None else given_timeout
    # Cross-checks compare only valid values (or defaults): a bad value is reported already.
    timeout_ok = _valid(section, "timeout", given_timeout)
    if timeout_ok and _valid(section, "interval", given_interval) and timeout >= interval:
        if "timeout" in section.entries:
            key, message = "timeout", f"must be less than interval ({_seconds(interval)})"
        else:
            key, message = "interval", f"must be greater than timeout ({_seconds(timeout)})"
        issues.append(ConfigIssue(_join(path, key), message, _entry_line(section, key)))
    optional: dict[str, float | None] = {}
    for key in ("fast_interval", "down_interval"):
        seconds = section.get(key, _optional(_check_positive_duration), None)
        if seconds is not None and timeout_ok and seconds <= timeout:
            message = f"must be greater than timeout ({_seconds(timeout)})"
            issues.append(ConfigIssue(_join(path, key), message, _entry_line(section, key)))
        optional[key] = seconds
    check_count = _int_range(1, None, "must be an integer >= 1")
    return ActiveHealthConfig(
        enabled=section.get("enabled", _check_bool, True),  # "active:" given: on by default
        type=probe_type,
        path=section.get("path", _check_probe_path, ""),
        method=cast(ProbeMethod, method),
        expect_status=default.expect_status if expect_status is None else expect_status,
        expect_tools=() if tools is None else tuple(dict.fromkeys(tools)),
        interval=interval,
        timeout=timeout,
        rise=section.get("rise", check_count, default.rise),
        fall=section.get("fall", check_count, default.fall),
        fast_interval=optional["fast_interval"],
        down_interval=optional["down_interval"],
    )


def _valid(section: _Section, key: str, value: object) -> bool:
    """Whether ``key`` is absent (its default applies) or was read as a valid ``value``."""
    return key not in section.entries or value is not None


def _entry_line(section: _Section, key: str) -> int | None:
    entry = section.entries.get(key)
    return None if entry is None else entry.line


def _passive_health(val: _Val | None, issues: list[ConfigIssue]) -> PassiveHealthConfig:
    path = "health.passive"
    section = _Section(val, path, _PASSIVE_KEYS, issues)
    default = PassiveHealthConfig()
    given_base = section.get("ejection_time", _check_positive_duration, None)
    given_cap = section.get("max_ejection_time", _check_positive_duration, None)
    base = default.ejection_time if given_base is None else given_base
    cap = default.max_ejection_time if given_cap is None else given_cap
    valid = _valid(section, "ejection_time", given_base)
    if valid and _valid(section, "max_ejection_time", given_cap) and base > cap:
        if "max_ejection_time" in section.entries:
            key = "max_ejection_time"
            message = f"must not be less than ejection_time ({_seconds(base)})"
        else:
            key = "ejection_time"
            message = f"must not be greater than max_ejection_time ({_seconds(cap)})"
        issues.append(ConfigIssue(_join(path, key), message, _entry_line(section, key)))
    return PassiveHealthConfig(
        enabled=section.get("enabled", _check_bool, default.enabled),
        consecutive_failures=section.get(
            "consecutive_failures",
            _int_range(1, None, "must be an integer >= 1"),
            default.consecutive_failures,
        ),
        on_5xx=section.get("on_5xx", _check_bool, default.on_5xx),
        ejection_time=base,
        max_ejection_time=cap,
        ejection_memory=section.get("ejection_memory", parse_duration, default.ejection_memory),
        max_ejection_percent=section.get(
            "max_ejection_percent",
            _int_range(0, 100, "must be an integer between 0 and 100"),
            default.max_ejection_percent,
        ),
    )


def _health(val: _Val | None, issues: list[ConfigIssue]) -> HealthConfig:
    section = _Section(val, "health", _HEALTH_KEYS, issues)
    default = HealthConfig()
    initial: str = section.get("initial", _choice("healthy", "unhealthy"), str(default.initial))
    panic: str = section.get("panic", _choice("fail_closed", "fail_open"), str(default.panic))
    return HealthConfig(
        initial=cast(HealthInitial, initial),
        panic=cast(HealthPanic, panic),
        slow_start=section.get("slow_start", parse_duration, default.slow_start),
        active=_active_health(section.val("active"), issues),
        passive=_passive_health(section.val("passive"), issues),
    )


def _check_dns_name(value: object) -> str:
    if not isinstance(value, str) or not _HOSTNAME_RE.fullmatch(value) or _valid_ip(value):
        raise ValueError('must be a DNS name, e.g. "mcp-headless.default.svc.cluster.local"')
    return value


def _valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_path_prefix(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError('must be a URL path such as "/api", or ""')
    if value and (not value.startswith("/") or any(c in value for c in "?# \t\r\n")):
        raise ValueError('must be a URL path starting with "/" (no query, fragment or blanks)')
    return value.rstrip("/")


def _check_resolver(value: object) -> tuple[str, int]:
    host, port = _check_listen(value)
    if not _valid_ip(host):
        raise ValueError(f'must be an IP address and port, e.g. "10.96.0.10:53" (not "{host}")')
    if port == 0:
        raise ValueError("port must be a number between 1 and 65535")
    return host, port


def _discovery(val: _Val | None, issues: list[ConfigIssue]) -> DiscoveryConfig | None:
    if val is None or val.value is _INVALID:
        return None
    section = _Section(val, "discovery", _DISCOVERY_KEYS, issues, required=("dns",))
    dns_val = section.val("dns")
    if dns_val is None:
        return None
    dns = _Section(dns_val, "discovery.dns", _DNS_KEYS, issues, required=("name",))
    name = dns.get("name", _check_dns_name, "")
    record = cast(DnsRecord, dns.get("record", _choice("A", "AAAA", "SRV"), "A"))
    port = dns.get("port", _int_range(1, 65535, "must be a port between 1 and 65535"), None)
    if record == "SRV" and port is not None:
        message = "not used with record SRV (SRV records carry the port): remove it"
        issues.append(ConfigIssue("discovery.dns.port", message, _entry_line(dns, "port")))
    elif record != "SRV" and port is None and "port" not in dns.entries:
        message = f"record {record} needs a port: the backends' port, e.g. port: 8000"
        issues.append(ConfigIssue("discovery.dns", message, dns_val.line))
    scheme = dns.get("scheme", _choice("http", "https"), "http")
    resolvers = _list_of(
        dns.val("resolvers"),
        "discovery.dns.resolvers",
        issues,
        _check_resolver,
        'must be a list of "IP:port", e.g. ["10.96.0.10:53"]',
        empty_ok=True,
    )
    path_prefix = dns.get("path", _check_path_prefix, "")
    interval = dns.get("interval", _check_positive_duration, 5.0)
    if not name:
        return None
    return DiscoveryConfig(
        DnsDiscoveryConfig(
            name=name,
            record=record,
            port=port,
            scheme=cast(Literal["http", "https"], scheme),
            path_prefix=path_prefix,
            interval=interval,
            resolvers=resolvers or (),
        )
    )


def _build(
    root: _Val, issues: list[ConfigIssue], lines: dict[str, int], source: str | None
) -> Config:
    """The Config for a root mapping; only meaningful if no issues were added."""
    # With DNS discovery the static backends are optional: discovery may find them all.
    discovering = isinstance(root.value, dict) and "discovery" in root.value
    top = _Section(root, "", _TOP_KEYS, issues, required=() if discovering else ("backends",))
    default = Config()
    host, port = top.get("listen", _check_listen, (default.listen_host, default.listen_port))
    workers = top.get("workers", _check_workers, default.workers)
    return Config(
        listen_host=host,
        listen_port=port,
        workers=workers,
        strategy=top.get("strategy", _check_strategy, default.strategy),
        strategy_options=_strategy_options(top.val("strategy_options"), issues),
        backends=_backends(top.val("backends"), issues),
        sticky=_sticky(top.val("sticky"), issues, workers, _entry_line(top, "workers")),
        timeouts=_timeouts(top.val("timeouts"), issues),
        limits=_limits(top.val("limits"), issues),
        preserve_host=top.get("preserve_host", _check_bool, default.preserve_host),
        allowed_hosts=_list_of(
            top.val("allowed_hosts"),
            "allowed_hosts",
            issues,
            check_host_pattern,
            'must be a list of host names, e.g. [mcp.example.com, "*.internal"]',
            scalar_ok=True,
        ),
        source=source,
        lines=lines,
        health=_health(top.val("health"), issues),
        admin=_admin(top.val("admin"), issues),
        log=_log(top.val("log"), issues),
        retries=_retries(top.val("retries"), issues),
        rate_limit=_rate_limit(top.val("rate_limit"), issues),
        listen_tls=_listen_tls(top.val("listen_tls"), issues),
        watch_config=top.get("watch_config", _check_bool, default.watch_config),
        discovery=_discovery(top.val("discovery"), issues),
    )


# ---------------------------------------------------------------------------
# Entry points


def _yaml_issue(exc: yaml.YAMLError, text: str) -> ConfigIssue:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if exc.context and problem.startswith("but "):  # "expected X" + "but found Y"
            problem = f"{exc.context} {problem}"
        if mark is None:
            return ConfigIssue("", f"invalid YAML: {problem}")
        return ConfigIssue(
            "", f"invalid YAML at column {mark.column + 1}: {problem}", mark.line + 1
        )
    if isinstance(exc, ReaderError):
        position = int(exc.position)
        line = text.count("\n", 0, position) + 1
        column = position - text.rfind("\n", 0, position)
        char = exc.character
        code = ord(char) if isinstance(char, str) else int(char)
        message = f"invalid YAML at column {column}: character #x{code:04x}: {exc.reason}"
        return ConfigIssue("", message, line)
    return ConfigIssue("", f"invalid YAML: {exc}")


def _parse(
    text: str,
    source: str | None,
    environ: Mapping[str, str],
    issues: list[ConfigIssue],
    lines: dict[str, int],
) -> Config | None:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        issues.append(_yaml_issue(exc, text))
        return None
    if node is None or (node.tag == _NULL_TAG and node.value == ""):  # blank, or just "---"
        issues.append(ConfigIssue("", 'the config is empty (at least "backends" is required)'))
        return None
    root = _Walker(text, environ, issues, lines).walk(node, "")
    if not isinstance(root.value, dict):
        if root.value is not _INVALID:
            message = f"the top level must be a mapping of settings, not a {_kind(root.value)}"
            issues.append(ConfigIssue("", message, root.line))
        return None
    return _build(root, issues, lines, source)


def parse_config(
    text: str,
    source: str | None = None,
    environ: Mapping[str, str] | None = None,
    checks: ExtraChecks | None = None,
) -> Config:
    """Parse and validate YAML config text; raise ConfigError listing every problem found.

    ``source`` is the file name kept in ``Config.source``; ``environ`` (default ``os.environ``)
    supplies ``${VAR}`` expansions; ``checks`` adds the issues of checks beyond the file.
    """
    found: list[ConfigIssue] = []
    lines: dict[str, int] = {}
    try:
        config = _parse(text, source, os.environ if environ is None else environ, found, lines)
    except RecursionError:
        found.append(ConfigIssue("", "the document is nested too deeply"))
        config = None
    if config is not None and checks is not None:
        found.extend(checks(config, list(found)))
    found.sort(key=lambda issue: issue.line or 0)
    warnings = [issue for issue in found if isinstance(issue, ConfigWarning)]
    issues = [issue for issue in found if not isinstance(issue, ConfigWarning)]
    if issues or config is None:
        raise ConfigError(issues, source, warnings)
    return dataclasses.replace(config, warnings=tuple(warnings)) if warnings else config


def file_mtime(path: str | None) -> float | None:
    """When the config file last changed (None if there is none), to notice edits."""
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def load_config(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    checks: ExtraChecks | None = None,
) -> Config:
    """Read and parse a config file; an unreadable file is reported as a ConfigError too."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigIssue("", f"cannot read {source}: {reason}")], source) from exc
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise ConfigError([ConfigIssue("", f"cannot read {source}: {reason}")], source) from exc
    return parse_config(text, source, environ, checks)
