"""What one key cannot check alone: each section's rules across its keys.

A rule gets its section as read (each key checked, absent and invalid ones at their default,
see proxy/config/fields.py) and makes the setting, adding issues and warnings. Cross-checks
compare only valid values (or defaults): a bad value is reported already.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from mcplb.proxy.config.checks import (
    KEYS_EXAMPLE,
    Url,
    check_header_name,
    format_seconds,
    is_loopback,
)
from mcplb.proxy.config.errors import ConfigIssue, ConfigWarning
from mcplb.proxy.config.fields import Context, ListRule, Read, Rule, keys_of
from mcplb.proxy.config.schema import (
    ActiveHealthConfig,
    AdminConfig,
    AuthConfig,
    BackendConfig,
    BackendTlsConfig,
    CookieConfig,
    DiscoveryConfig,
    DnsDiscoveryConfig,
    IdentityHeadersConfig,
    JwtConfig,
    ListenTlsConfig,
    PassiveHealthConfig,
    RateLimitConfig,
    RedisConfig,
    StickyConfig,
    ToolRateConfig,
    TracingConfig,
)
from mcplb.proxy.config.yaml_tree import join


def _issue(ctx: Context, read: Read, name: str, message: str) -> None:
    """An issue at key ``name`` of the section, on its line."""
    ctx.issues.append(ConfigIssue(join(read.path, name), message, read.line(name)))


# --- backends ---------------------------------------------------------------------------


def _backends(reads: list[Read], ctx: Context) -> tuple[BackendConfig, ...]:
    """The valid backends; each name once."""
    backends: list[BackendConfig] = []
    first_index: dict[str, int] = {}
    for index, read in enumerate(reads):
        backend = _backend(read, ctx)
        name = read.given.get("name")
        if name in first_index:
            message = (
                f'duplicate backend name "{name}" (already used by backends[{first_index[name]}])'
            )
            value = read.value("name")
            line = None if value is None else value.line
            ctx.issues.append(ConfigIssue(join(read.path, "name"), message, line))
        elif name:
            first_index[name] = index
        if backend is not None:
            backends.append(backend)
    return tuple(backends)


def _backend(read: Read, ctx: Context) -> BackendConfig | None:
    """One backend; None when its name or url is missing or invalid (reported)."""
    url: Url | None = read.given.get("url")
    ca, verify = read.values["ca"], read.values["verify"]
    if ca is not None and not verify and url is not None and url.scheme == "https":
        _issue(ctx, read, "ca", "is not used with verify: false (remove one of them)")
    if url is not None and url.scheme != "https":
        tls_keys = ("ca", "verify", "client_cert", "client_key")
        for name in tls_keys:
            if read.values[name] != read.defaults[name]:
                _issue(ctx, read, name, "only used with https:// backend urls")
    else:
        _client_pair(read, ctx)
    if url is not None and url.path_prefix.rsplit("/", 1)[-1].lower() == "mcp":
        path = join(read.path, "url")
        ctx.issues.append(ConfigWarning(path, _mcp_suffix_warning(url), read.line("url")))
    if "name" not in read.given or url is None:
        return None
    return BackendConfig(**read.values)


def _client_pair(read: Read, ctx: Context) -> None:
    """A client certificate goes with its key: each of the two needs the other."""
    cert, key = read.values["client_cert"], read.values["client_key"]
    if (cert is None) != (key is None) and read.valid("client_cert") and read.valid("client_key"):
        given, missing = (
            ("client_cert", "client_key") if key is None else ("client_key", "client_cert")
        )
        _issue(ctx, read, given, f"needs {missing} too (a client certificate and its key)")


def _backend_tls(read: Read, ctx: Context) -> BackendTlsConfig:
    _client_pair(read, ctx)
    return BackendTlsConfig(**read.values)


def _mcp_suffix_warning(url: Url) -> str:
    parent, _, last = url.url.rpartition("/")
    return (
        f"ends in /{last}, but a backend URL's path is put before every request path: a "
        f"client's POST /mcp is sent to {url.url}/mcp. Write {parent} to reach the server's /mcp"
    )


# --- sticky -----------------------------------------------------------------------------


def _sticky(read: Read, ctx: Context) -> StickyConfig:
    """Where a binding lives only matters with mcp_sessions: true. An absent store is "signed"
    when several workers share the port (each has its own memory; "auto" counts as several,
    so that a file's validity does not depend on the machine that checks it) and "memory"
    otherwise; with mcp_sessions: false it stays "memory", so no keys are demanded for a store
    that is never used. "signed" (explicit or default) and a cookie need keys."""
    values = read.values
    workers = ctx.top.get("workers", 1)
    several = workers == "auto" or workers > 1
    given_store = read.given.get("store")
    by_workers = given_store is None and values["mcp_sessions"] and several
    store = given_store or ("signed" if by_workers else "memory")
    store_ok = read.valid("store")
    keys_ok = _distinct_keys(read, ctx)
    _unused_redis(read, ctx, store if store_ok else None)
    in_use = store_ok and read.valid("mcp_sessions") and values["mcp_sessions"]
    if in_use and store == "memory" and several:
        message = (
            f'"memory" cannot serve {_workers(workers)}: each worker process has its own memory '
            "and a client's connections spread over all workers, so most workers would not "
            "know its session; use store: signed (session ids carry their backend, signed "
            "with keys) or store: redis (shared)"
        )
        _issue(ctx, read, "store", message)
    needed_by = []
    if store_ok and read.valid("mcp_sessions") and store == "signed":
        default = f"the default with {'workers: auto' if workers == 'auto' else 'workers > 1'}"
        needed_by.append(f"store: signed, {default}" if by_workers else "store: signed")
    if values["cookie"] is not None:
        needed_by.append("cookie")
    if needed_by and keys_ok and values["keys"] == ():
        message = f"required by {' and by '.join(needed_by)} ({KEYS_EXAMPLE})"
        if by_workers:
            message += (
                "; or use store: redis, or mcp_sessions: false for backends without MCP sessions"
            )
        # The line of "keys: []", else of what needs keys, else of workers (default store).
        if "keys" in read.section.entries:
            line = read.line("keys")
        elif given_store == "signed":
            line = read.line("store")
        elif values["cookie"] is not None:
            line = read.line("cookie")
        else:
            line = ctx.lines.get("workers")
        ctx.issues.append(ConfigIssue(join(read.path, "keys"), message, line))
    _mcp_sticky_warnings(read, ctx, store if store_ok else None, several)
    return StickyConfig(**{**values, "store": store, "keys": values["keys"] if keys_ok else ()})


# MCP 2026-07-28 routing headers: claims checked against the body, but per request.
_ROUTING_HEADERS = {"mcp-name": "Mcp-Name", "mcp-method": "Mcp-Method"}


def _mcp_sticky_warnings(read: Read, ctx: Context, store: str | None, several: bool) -> None:
    """What is valid but wrong for MCP 2026-07-28 routing: hashing a routing header, and task
    bindings that a signed store cannot carry across replicas."""
    values = read.values
    header = values["header"]
    if read.valid("header") and header in _ROUTING_HEADERS:
        message = (
            f"hashing {_ROUTING_HEADERS[header]} sends requests of one task to different "
            "backends: the tools/call creating a task names the tool, the tasks/get polling "
            "it names the task id; task affinity (mcp_tasks, on by default) routes tasks/* to "
            "the backend holding the task"
        )
        ctx.issues.append(ConfigWarning(join(read.path, "header"), message, read.line("header")))
    if values["mcp_tasks"] and store == "signed" and several:
        message = (
            "task bindings (mcp_tasks) cannot be carried by store: signed: a task id is minted "
            "by the backend inside an answer body and sent back in request bodies and "
            "Mcp-Name, so sealing it would mean rewriting bodies of every tasks/* call; the "
            "workers of one host share them (files in the supervisor's state directory), "
            "but a tasks/* request reaching another replica goes to the strategy's pick. "
            "Behind several replicas, use store: redis to route tasks across them (or "
            "mcp_tasks: false to silence this)"
        )
        line = read.line("mcp_tasks") if "mcp_tasks" in read.given else read.line("store")
        if line is None:
            line = ctx.lines.get("workers")
        ctx.issues.append(ConfigWarning(join(read.path, "mcp_tasks"), message, line))


def _workers(workers: int | str) -> str:
    return "a worker per CPU (workers: auto)" if workers == "auto" else f"{workers} workers"


def _distinct_keys(read: Read, ctx: Context) -> bool:
    """Whether ``keys`` is absent or valid with each key once (a duplicate is reported)."""
    if not read.valid("keys"):
        return False
    val = read.value("keys")
    if val is None:
        return True
    elements = val.value if isinstance(val.value, list) else [val]
    first: dict[str, int] = {}
    distinct = True
    for index, (secret, item) in enumerate(zip(read.values["keys"], elements, strict=True)):
        if secret in first:
            message = f"duplicate of keys[{first[secret]}] (each key must be different)"
            ctx.issues.append(ConfigIssue(f"{read.path}.keys[{index}]", message, item.line))
            distinct = False
        else:
            first[secret] = index
    return distinct


def _unused_redis(read: Read, ctx: Context, store: str | None) -> None:
    """``store``: the resolved store, None if invalid. Settings the chosen store never reads
    would be silently ignored: refuse them (unless they are just the defaults, as when a
    commented example is uncommented)."""
    val = read.value("redis")
    if store in (None, "redis") or val is None or not isinstance(val.value, dict):
        return
    redis: RedisConfig = read.values["redis"]
    default: RedisConfig = read.defaults["redis"]
    for name in keys_of(RedisConfig):
        entry = val.value.get(name)
        if entry is not None and getattr(redis, name) != getattr(default, name):
            message = f'only used when store is "redis" (the store is "{store}")'
            path = join(join(read.path, "redis"), name)
            ctx.issues.append(ConfigIssue(path, message, entry.line))


_SENTINEL_ONLY = ("service", "password", "sentinel_password", "tls", "ca")


def _redis(read: Read, ctx: Context) -> RedisConfig:
    """One server (``url``) or a Sentinel service (``sentinels`` and ``service``), not both;
    the keys only Sentinel connections read need ``sentinels`` (one server takes its password
    and TLS in the url: ``rediss://:PASSWORD@HOST``)."""
    entries = read.section.entries
    if "sentinels" in entries:
        if "url" in entries:
            message = (
                "cannot be given with url: the sentinels name the master (remove url, or "
                "sentinels for one server)"
            )
            _issue(ctx, read, "sentinels", message)
        if "service" not in entries:
            message = (
                "needs service: the master's name as the sentinels know it (sentinel monitor "
                "NAME ...), e.g. service: mymaster"
            )
            _issue(ctx, read, "sentinels", message)
        if "ca" in entries and read.valid("tls") and not read.values["tls"]:
            _issue(ctx, read, "ca", "only used with tls: true")
    else:
        for name in _SENTINEL_ONLY:
            if name in entries:
                message = (
                    "only used with sentinels (for one server, write the password and "
                    'rediss:// for TLS in url: "rediss://:PASSWORD@HOST:PORT/0")'
                )
                _issue(ctx, read, name, message)
    return RedisConfig(**read.values)


def _cookie(read: Read, ctx: Context) -> CookieConfig | None:
    if read.val is not None and read.val.value is not None and not isinstance(read.val.value, dict):
        return None  # reported (not a mapping, or already invalid): no knock-on errors
    values = read.values
    if read.valid("secure") and not values["secure"]:
        if values["same_site"] == "None":
            message = 'SameSite "None" requires secure: true (browsers drop such cookies)'
            _issue(ctx, read, "same_site", message)
        prefix = next((p for p in ("__Secure-", "__Host-") if values["name"].startswith(p)), None)
        if prefix is not None:
            _issue(ctx, read, "name", f'a name starting with "{prefix}" requires secure: true')
    return CookieConfig(**values)


# --- other sections ---------------------------------------------------------------------


def _tool_rules(reads: list[Read], ctx: Context) -> tuple[ToolRateConfig, ...]:
    """The valid per-tool rules; each name once (the first that matches a call applies)."""
    rules: list[ToolRateConfig] = []
    first_index: dict[str, int] = {}
    for index, read in enumerate(reads):
        name = read.given.get("name")
        if name in first_index:
            message = f'duplicate rule name "{name}" (already used by tools[{first_index[name]}])'
            value = read.value("name")
            line = None if value is None else value.line
            ctx.issues.append(ConfigIssue(join(read.path, "name"), message, line))
        elif name:
            first_index[name] = index
        if "name" in read.given and "rate" in read.given:
            rules.append(ToolRateConfig(**read.values))
    return tuple(rules)


def _rate_limit(read: Read, ctx: Context) -> RateLimitConfig:
    _unused_redis(read, ctx, read.values["store"] if read.valid("store") else None)
    return RateLimitConfig(**read.values)


def _listen_tls(read: Read, ctx: Context) -> ListenTlsConfig | None:
    # Also with one file missing or invalid (the config is refused then): validate.py still
    # checks that the other one exists, so that one run lists both problems.
    cert, key = read.values.get("cert", ""), read.values.get("key", "")
    return ListenTlsConfig(cert, key, read.values["client_ca"]) if cert or key else None


def _auth(read: Read, ctx: Context) -> AuthConfig | None:
    values = read.values
    if "resource" not in values or "jwt" not in values or values["jwt"] is None:
        return None  # a required key missing or invalid: reported already
    jwt: JwtConfig = values["jwt"]
    if not jwt.audience:
        # RFC 8707 / MCP: a token must have been issued for this resource.
        values["jwt"] = dataclasses.replace(jwt, audience=(values["resource"],))
    return AuthConfig(**values)


def _jwt(read: Read, ctx: Context) -> JwtConfig | None:
    values = read.values
    both = read.valid("jwks_min_refresh") and read.valid("jwks_refresh")
    if both and values["jwks_min_refresh"] > values["jwks_refresh"]:
        refresh = format_seconds(values["jwks_refresh"])
        _issue(ctx, read, "jwks_min_refresh", f"must not exceed jwks_refresh ({refresh})")
    if not values["algorithms"] and "algorithms" in read.section.entries:
        _issue(ctx, read, "algorithms", "must name at least one algorithm, e.g. [RS256]")
    if "issuer" not in values or "jwks_url" not in values:
        return None
    return JwtConfig(**values)


def _identity_headers(read: Read, ctx: Context) -> IdentityHeadersConfig:
    values = read.values
    if values["subject"] == values["scopes"] and read.valid("subject") and read.valid("scopes"):
        _issue(ctx, read, "scopes", "must differ from subject")
    return IdentityHeadersConfig(**values)


def _admin(read: Read, ctx: Context) -> AdminConfig:
    values = read.values
    host, token = values["listen_host"], values["token"]
    if values["enabled"] and token is None and not is_loopback(host):
        message = (
            f"the admin API on {host} (not loopback) needs admin.token: its drain/undrain "
            "calls would be open to the network"
        )
        _issue(ctx, read, "listen", message)
    if values["protect_metrics"] and token is None and "token" not in read.section.entries:
        _issue(ctx, read, "protect_metrics", "needs admin.token")
    return AdminConfig(**values)


def _active_health(read: Read, ctx: Context) -> ActiveHealthConfig:
    values = read.values
    default = ActiveHealthConfig()
    if read.valid("type"):
        # A setting that only the other probe type reads would be silently ignored: refuse it
        # (unless it is just the default, as when a whole commented example is uncommented).
        ignored = (
            ("method", "http", values["method"] != default.method),
            ("expect_status", "http", values["expect_status"] != default.expect_status),
            ("expect_tools", "mcp", bool(values["expect_tools"])),
        )
        for name, owner, is_set in ignored:
            if is_set and values["type"] != owner:
                _issue(ctx, read, name, f'only used when type is "{owner}"')
    interval, timeout = values["interval"], values["timeout"]
    timeout_ok = read.valid("timeout")
    if timeout_ok and read.valid("interval") and timeout >= interval:
        if "timeout" in read.section.entries:
            _issue(ctx, read, "timeout", f"must be less than interval ({format_seconds(interval)})")
        else:
            _issue(
                ctx, read, "interval", f"must be greater than timeout ({format_seconds(timeout)})"
            )
    for name in ("fast_interval", "down_interval"):
        if values[name] is not None and timeout_ok and values[name] <= timeout:
            _issue(ctx, read, name, f"must be greater than timeout ({format_seconds(timeout)})")
    return ActiveHealthConfig(**values)


def _passive_health(read: Read, ctx: Context) -> PassiveHealthConfig:
    values = read.values
    base, cap = values["ejection_time"], values["max_ejection_time"]
    if read.valid("ejection_time") and read.valid("max_ejection_time") and base > cap:
        if "max_ejection_time" in read.section.entries:
            message = f"must not be less than ejection_time ({format_seconds(base)})"
            _issue(ctx, read, "max_ejection_time", message)
        else:
            message = f"must not be greater than max_ejection_time ({format_seconds(cap)})"
            _issue(ctx, read, "ejection_time", message)
    return PassiveHealthConfig(**values)


def _discovery(read: Read, ctx: Context) -> DiscoveryConfig | None:
    dns = read.values.get("dns")
    return None if dns is None else DiscoveryConfig(dns)


def _dns(read: Read, ctx: Context) -> DnsDiscoveryConfig | None:
    record, port = read.values["record"], read.values["port"]
    if record == "SRV" and port is not None:
        message = "not used with record SRV (SRV records carry the port): remove it"
        _issue(ctx, read, "port", message)
    elif record != "SRV" and port is None and "port" not in read.section.entries:
        message = f"record {record} needs a port: the backends' port, e.g. port: 8000"
        line = None if read.val is None else read.val.line
        ctx.issues.append(ConfigIssue(read.path, message, line))
    return DnsDiscoveryConfig(**read.values) if "name" in read.given else None


# --- tracing ----------------------------------------------------------------------------

_FIELD_VALUE = re.compile(r"[\x20-\x7e\t]*")  # RFC 9110 field-value, no obs-text


def _tracing(read: Read, ctx: Context) -> TracingConfig:
    values = read.values
    values["headers"] = _export_headers(read, ctx)
    both = read.valid("batch_size") and read.valid("max_queue")
    if both and values["batch_size"] > values["max_queue"]:
        _issue(ctx, read, "batch_size", f"must not exceed max_queue ({values['max_queue']})")
    endpoint = urlsplit(values["endpoint"])
    if (
        values["headers"]
        and read.valid("endpoint")
        and endpoint.scheme == "http"
        and not is_loopback(endpoint.hostname or "")
    ):
        message = (
            "would be sent in clear text: the endpoint must use https:// (plain http only "
            "to a loopback collector)"
        )
        _issue(ctx, read, "headers", message)
    return TracingConfig(**values)


def _export_headers(read: Read, ctx: Context) -> dict[str, str]:
    """``tracing.headers``: header names (lower-cased) to values, both checked; the values
    are secrets, never repeated in a message."""
    val = read.value("headers")
    headers: dict[str, str] = {}
    if val is None or not isinstance(val.value, dict):
        return headers  # absent, or not a mapping (said by its reader)
    for name, entry in val.value.items():
        if not isinstance(name, str):
            continue  # said by its reader
        path = join(join(read.path, "headers"), name)
        try:
            header = check_header_name(name)
        except ValueError as exc:
            ctx.issues.append(ConfigIssue(path, str(exc), entry.line))
            continue
        value = entry.val.value
        if not isinstance(value, str) or not _FIELD_VALUE.fullmatch(value):
            message = "must be a string of printable ASCII (no line breaks or controls)"
            ctx.issues.append(ConfigIssue(path, message, entry.line))
            continue
        headers[header] = value
    return headers


RULES: Mapping[type, Rule] = {
    StickyConfig: _sticky,
    CookieConfig: _cookie,
    RateLimitConfig: _rate_limit,
    RedisConfig: _redis,
    ListenTlsConfig: _listen_tls,
    BackendTlsConfig: _backend_tls,
    AuthConfig: _auth,
    JwtConfig: _jwt,
    IdentityHeadersConfig: _identity_headers,
    AdminConfig: _admin,
    ActiveHealthConfig: _active_health,
    PassiveHealthConfig: _passive_health,
    DiscoveryConfig: _discovery,
    DnsDiscoveryConfig: _dns,
    TracingConfig: _tracing,
}
LIST_RULES: Mapping[type, ListRule] = {
    BackendConfig: _backends,
    ToolRateConfig: _tool_rules,
}
