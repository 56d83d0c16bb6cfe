"""Value checks for config keys: each takes a YAML value and returns the setting's value, or
raises ValueError with the message shown after the key's path (never the value if secret).

They are pure: no file system, no process state. Checks that need the machine (files exist,
the CPU count) are in ``proxy/config/validate.py``.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final, Literal, NamedTuple, TypeVar
from urllib.parse import urlsplit

from mcplb.strategies.registry import unknown_strategy

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[[object], object])

# ---------------------------------------------------------------------------
# What each check accepts, as JSON Schema: mcplb.schema.json is generated from these and the
# schema's declarations (proxy/config/json_schema.py). A check's schema may accept more than
# the check (JSON Schema cannot say "a duration greater than 0" of "0s"), never less: an
# editor must not mark a config that `mcplb check` accepts. A check without one is described
# by its field's type.

JsonSchema = dict[str, Any]
_ACCEPTS: dict[Callable[[object], object], JsonSchema] = {}


def accepts(schema: JsonSchema) -> Callable[[_F], _F]:
    """Declares the JSON Schema of the YAML values the decorated check may accept."""

    def declare(check: _F) -> _F:
        _ACCEPTS[check] = schema
        return check

    return declare


def accepted(check: Callable[[object], object]) -> JsonSchema | None:
    """The JSON Schema declared for ``check`` with :func:`accepts`, if any."""
    return _ACCEPTS.get(check)


def anycase(word: str) -> str:
    """A regular expression matching ``word`` in any case (JSON Schema has no (?i))."""
    return "".join(f"[{ch.upper()}{ch.lower()}]" if ch.isalpha() else re.escape(ch) for ch in word)


# ---------------------------------------------------------------------------
# Durations and sizes

_DURATION_UNITS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(rf"({_NUMBER})\s*(ms|s|m|h)", re.ASCII)
_DURATION_RE = re.compile(rf"(?:{_NUMBER}\s*(?:ms|s|m|h)\s*)+", re.ASCII)
# The strings parse_duration and parse_size accept, as JSON Schema patterns.
_DURATION_PATTERN = rf"^\s*(?:{_NUMBER}|(?:{_NUMBER}\s*(?:ms|s|m|h)\s*)+)\s*$"
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
_SIZE_PATTERN = rf"^\s*{_NUMBER}\s*(?:[bB]|[kKmMgGtT][iI]?[bB]?)?\s*$"
_SIZE_HINT = (
    "expected bytes, optionally with a unit: B, KB/MB/GB (powers of 1000) "
    'or KiB/MiB/GiB (powers of 1024), e.g. "64KiB"'
)


def _duration(**number: float) -> JsonSchema:
    return {
        "anyOf": [{"type": "number", **number}, {"type": "string", "pattern": _DURATION_PATTERN}],
        "description": 'seconds, or a duration with units: "250ms", "2s", "5m", "1h30m"',
    }


def _size(**integer: int) -> JsonSchema:
    return {
        "anyOf": [{"type": "integer", **integer}, {"type": "string", "pattern": _SIZE_PATTERN}],
        "description": 'bytes, or a size with a unit: "512B", "10MB" (1000s), "64KiB" (1024s)',
    }


@accepts(_duration(minimum=0))
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
        raise ValueError(f"invalid duration: {_DURATION_HINT}, got {kind(value)}")
    if not math.isfinite(result):
        raise ValueError("invalid duration: must be a finite number of seconds")
    return result


@accepts(_size(minimum=0))
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
        raise ValueError(f"invalid size: {_SIZE_HINT}, got {kind(value)}")
    if value < 0:
        raise ValueError(f"invalid size {value}: must not be negative")
    return value


def kind(value: object) -> str:
    """The YAML-ish name of a value's type, for messages."""
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "list"}
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "mapping"
    return names.get(type(value), type(value).__name__)


def format_seconds(value: float) -> str:
    """A duration for messages: 2 -> "2s", 0.25 -> "0.25s"."""
    return format(Decimal(repr(value)).normalize(), "f") + "s"


# ---------------------------------------------------------------------------
# Generic checks


@accepts({"type": "boolean"})
def check_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be a boolean (true or false, unquoted)")
    return value


def int_range(low: int, high: int | None, message: str) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(message)
        if value < low or (high is not None and value > high):
            raise ValueError(message)
        return value

    _ACCEPTS[check] = {"type": "integer", "minimum": low}
    if high is not None:
        _ACCEPTS[check]["maximum"] = high
    return check


def choice(*options: str) -> Callable[[object], str]:
    quoted = [f'"{option}"' for option in options]
    message = "must be " + (
        " or ".join(quoted) if len(quoted) == 2 else "one of " + ", ".join(quoted)
    )

    def check(value: object) -> str:
        if isinstance(value, str) and value in options:
            return value
        raise ValueError(message)

    _ACCEPTS[check] = {"enum": list(options)}
    return check


def optional(check: Callable[[object], _T]) -> Callable[[object], _T | None]:
    """``check``, but null is accepted and means None."""

    def optional(value: object) -> _T | None:
        return None if value is None else check(value)

    inner = accepted(check)
    if inner is not None:
        _ACCEPTS[optional] = {"anyOf": [inner, {"type": "null"}]}
    return optional


@accepts(_duration(exclusiveMinimum=0))
def check_positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be greater than 0")
    return seconds


@accepts(_size(minimum=0, maximum=256 * _KIBI))
def check_request_buffer(value: object) -> int:
    size = parse_size(value)
    if not 0 <= size <= 256 * _KIBI:
        raise ValueError("must be between 0 and 256KiB (0 to 262144 bytes)")
    return size


@accepts(_size(minimum=_KIBI, maximum=_KIBI**2))
def check_header_size(value: object) -> int:
    size = parse_size(value)
    if not _KIBI <= size <= _KIBI**2:
        raise ValueError("must be between 1KiB and 1MiB (1024 to 1048576 bytes)")
    return size


@accepts({"type": "number", "minimum": 0, "maximum": 100})
def check_percent(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise ValueError("must be a number from 0 to 100")
    return float(value)


# ---------------------------------------------------------------------------
# Addresses and URLs

MAX_WORKERS = 256
_LISTEN_HINT = 'must be "host:port", e.g. "127.0.0.1:8080" or "[::1]:8080"'
_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?", re.ASCII)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
_STRATEGY_NAME_RE = re.compile(r"[a-z0-9_]+", re.ASCII)
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_STRATEGY_PATH_RE = re.compile(rf"{_IDENT}(?:\.{_IDENT})*:{_IDENT}", re.ASCII)
# "host:port" or "[IPv6]:port" (the host and the port's range checked by check_listen)
_LISTEN_SCHEMA: JsonSchema = {
    "type": "string",
    "pattern": r"^(?:\[[^\]]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$",
    "description": '"host:port", e.g. "127.0.0.1:8080" or "[::1]:8080"',
}


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


def valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@accepts(_LISTEN_SCHEMA)
def check_listen(value: object) -> tuple[str, int]:
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


Workers = int | Literal["auto"]


@accepts({"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_WORKERS}, {"const": "auto"}]})
def check_workers(value: object) -> Workers:
    if value == "auto":
        return "auto"  # one per CPU: validate.py counts them, loading stays pure
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError('must be an integer >= 1 or "auto"')
    if value > MAX_WORKERS:
        raise ValueError(f"must be at most {MAX_WORKERS}")
    return value


@accepts(
    {
        "type": "string",
        "pattern": f"^(?:{_STRATEGY_NAME_RE.pattern}|{_STRATEGY_PATH_RE.pattern})$",
    }
)
def check_strategy(value: object) -> str:
    if isinstance(value, str) and (
        _STRATEGY_NAME_RE.fullmatch(value) or _STRATEGY_PATH_RE.fullmatch(value)
    ):
        return value
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_-]+", value):
        raise ValueError(unknown_strategy(value))  # "round-robin": the names it may have meant
    raise ValueError('must be a built-in strategy name ([a-z0-9_]+) or "package.module:ClassName"')


@accepts({"type": "string", "pattern": f"^{_NAME_RE.pattern}$"})
def check_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ValueError(
            "must be a string of 1 to 64 letters, digits, _ . or -, starting with a letter or digit"
        )
    return value


class Url(NamedTuple):
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


@accepts({"type": "string", "pattern": f"^{anycase('http')}[Ss]?://[^\\s?#@/]+(?:/[^\\s?#]*)?$"})
def check_url(value: object) -> Url:
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
    return Url(
        url=f"{parts.scheme}://{netloc}{prefix}",
        scheme=parts.scheme,
        host=host,
        port=int(port) if port else (443 if parts.scheme == "https" else 80),
        path_prefix=prefix,
    )


@accepts({"type": "string", "pattern": f"^{_HOST_LABEL}(?:\\.{_HOST_LABEL})*\\.?$"})
def check_dns_name(value: object) -> str:
    if not isinstance(value, str) or not _HOSTNAME_RE.fullmatch(value) or valid_ip(value):
        raise ValueError('must be a DNS name, e.g. "mcp-headless.default.svc.cluster.local"')
    return value


@accepts({"type": "string", "pattern": "^(?:/[^?# \\t\\r\\n]*)?$"})
def check_path_prefix(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError('must be a URL path such as "/api", or ""')
    if value and (not value.startswith("/") or any(c in value for c in "?# \t\r\n")):
        raise ValueError('must be a URL path starting with "/" (no query, fragment or blanks)')
    return value.rstrip("/")


@accepts(_LISTEN_SCHEMA)
def check_resolver(value: object) -> tuple[str, int]:
    host, port = check_listen(value)
    if not valid_ip(host):
        raise ValueError(f'must be an IP address and port, e.g. "10.96.0.10:53" (not "{host}")')
    if port == 0:
        raise ValueError("port must be a number between 1 and 65535")
    return host, port


@accepts({"type": "string", "pattern": "\\S"})  # "10.0.0.0/8", or an address alone
def check_network(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError('must be a network in CIDR notation, e.g. "10.0.0.0/8"')
    try:
        ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f'"{value}" is not a network in CIDR notation') from None
    return value.strip()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------
# Sessions, headers, Redis

# The shortest key sticky.keys accepts (sessions/tokens.py enforces it again on the codec).
MIN_KEY_LENGTH: Final = 32  # characters of a str key, bytes of a bytes key
_MAX_REDIS_TIMEOUT = 5.0
_SERVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", re.ASCII)  # RFC 9110 token
_TOKEN_CHARS = "letters, digits and !#$%&'*+-.^_`|~"
KEYS_EXAMPLE = 'e.g. keys: ["${MCPLB_SESSION_KEY}"] with a random secret of at least 32 characters'


@accepts({"type": "string", "minLength": MIN_KEY_LENGTH})
def check_key(value: object) -> str:
    # Never put the value in a message: it is a secret.
    if not isinstance(value, str):
        raise ValueError(f"must be a string (quote it), at least {MIN_KEY_LENGTH} characters")
    if len(value) < MIN_KEY_LENGTH:
        raise ValueError(
            f"must be at least {MIN_KEY_LENGTH} characters long (this one has {len(value)})"
        )
    return value


@accepts({"type": "string", "pattern": f"^{_TOKEN_RE.pattern}$"})
def check_cookie_name(value: object) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise ValueError(f"must be a cookie name: {_TOKEN_CHARS}")
    return value


CookieSameSite = Literal["Lax", "Strict", "None"]


@accepts(
    {"type": "string", "pattern": f"^(?:{anycase('lax')}|{anycase('strict')}|{anycase('none')})$"}
)
def check_same_site(value: object) -> CookieSameSite:
    # Case-insensitive like the Set-Cookie attribute; kept in its usual spelling.
    options: dict[str, CookieSameSite] = {"lax": "Lax", "strict": "Strict", "none": "None"}
    if isinstance(value, str) and value.lower() in options:
        return options[value.lower()]
    raise ValueError('must be "Lax", "Strict" or "None"')


@accepts({"type": "string", "pattern": f"^{_TOKEN_RE.pattern}$"})
def check_header_name(value: object) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise ValueError(f'must be a header name ({_TOKEN_CHARS}), e.g. "X-Tenant-Id"')
    name = value.lower()
    if name == "mcp-session-id":
        raise ValueError(
            "cannot be Mcp-Session-Id: a backend mints it after the routing decision "
            "(mcp_sessions routes requests that carry it)"
        )
    return name


@accepts({"type": "string", "pattern": f"^(?:{anycase('redis')}[Ss]?|{anycase('unix')}):"})
def check_redis_url(value: object) -> str:
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


def check_host_port(value: object) -> tuple[str, int]:
    """A ``HOST:PORT`` address (IPv6 in brackets), port 1 to 65535."""
    if not isinstance(value, str):
        raise ValueError('must be "HOST:PORT", e.g. "10.0.0.5:26379"')
    host, port = check_listen(value)
    if port == 0:
        raise ValueError("port must be a number between 1 and 65535")
    return host, port


def check_sentinel_service(value: object) -> str:
    # What Sentinel accepts as a master name (sentinel.conf "sentinel monitor NAME ...").
    if not isinstance(value, str) or not _SERVICE_RE.fullmatch(value):
        raise ValueError(
            'must be the master\'s name as the sentinels know it, e.g. "mymaster" (letters, '
            "digits, . _ -)"
        )
    return value


def check_password(value: object) -> str:
    # A secret: never put it in a message.
    if not isinstance(value, str) or not value:
        raise ValueError('must be a non-empty string, e.g. "${REDIS_PASSWORD}"')
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError("must not contain whitespace or control characters")
    return value


@accepts(_duration(exclusiveMinimum=0, maximum=_MAX_REDIS_TIMEOUT))
def check_redis_timeout(value: object) -> float:
    seconds = check_positive_duration(value)
    if seconds > _MAX_REDIS_TIMEOUT:
        raise ValueError(
            f"must be at most {format_seconds(_MAX_REDIS_TIMEOUT)} (every request that carries "
            "a session may wait this long for Redis)"
        )
    return seconds


@accepts({"type": "string", "minLength": 1})
def check_prefix(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError('must be a non-empty string, e.g. "mcplb:session:"')
    return value


@accepts({"anyOf": [{"type": "string", "minLength": 16}, {"type": "null"}]})
def check_token(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) < 16:
        raise ValueError("must be a string of at least 16 characters")
    return value


# ---------------------------------------------------------------------------
# Retries, rate limits, files, health probes

_RETRY_CONDITIONS = ("connect_failure", "reset", "502", "503", "504")


@accepts({"enum": [*_RETRY_CONDITIONS, *(int(c) for c in _RETRY_CONDITIONS if c.isdigit())]})
def check_retry_condition(value: object) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(text, str) and text in _RETRY_CONDITIONS:
        return text
    raise ValueError("must be one of " + ", ".join(_RETRY_CONDITIONS))


_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*([smh]))?\s*", re.ASCII)


@accepts(
    {
        "anyOf": [
            {"type": "number", "exclusiveMinimum": 0},
            {"type": "string", "pattern": f"^{_RATE_RE.pattern}$"},
        ]
    }
)
def check_rate(value: object) -> float:
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


# rate_limit.key "principal": the token's issuer and subject (auth:), else the address.
# Stored in rate_limit.header as ":principal", which no header name can be.
RATE_KEY_PRINCIPAL = ":principal"


# A word ("address"; "principal" with edge auth) or "header:NAME".
@accepts({"type": "string", "pattern": f"^(?:[a-z]+|header:{_TOKEN_RE.pattern})$"})
def check_rate_key(value: object) -> str | None:
    if value == "address":
        return None
    if value == "principal":
        return RATE_KEY_PRINCIPAL
    if isinstance(value, str) and value.startswith("header:"):
        return check_header_name(value.removeprefix("header:"))
    raise ValueError('must be "address", "principal" or "header:NAME", e.g. "header:X-Api-Key"')


# A rate_limit.tools rule's name: an MCP tool name (the spec's characters, and "/" some
# servers use to namespace theirs), or a glob of one with "*" (any run) and "?" (one).
# Bounded and plain: it is a metrics label and the RateLimit-Policy name.
_TOOL_PATTERN_RE = re.compile(r"[A-Za-z0-9_./*?-]{1,128}", re.ASCII)


@accepts({"type": "string", "pattern": "^[A-Za-z0-9_./*?-]{1,128}$"})
def check_tool_pattern(value: object) -> str:
    if isinstance(value, str) and _TOOL_PATTERN_RE.fullmatch(value):
        return value
    raise ValueError(
        'must be a tool name or a glob of one, 1 to 128 of A-Z a-z 0-9 _ . / - * ?, e.g. "search_*"'
    )


@accepts({"type": "string", "minLength": 1})
def check_file_path(value: object) -> str:
    # Whether the file exists is the machine's business: validate.py checks that.
    if not isinstance(value, str) or not value:
        raise ValueError("must be a file path")
    return value


@accepts({"type": "string", "pattern": f"^(?:{anycase('get')}|{anycase('head')})$"})
def check_method(value: object) -> str:
    if isinstance(value, str) and value.upper() in ("GET", "HEAD"):
        return value.upper()
    raise ValueError("must be GET or HEAD")


@accepts({"type": "string", "pattern": "^/[\\x21\\x22\\x24-\\x7e]*$"})
def check_probe_path(value: object) -> str:
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


@accepts(
    {
        "anyOf": [
            {"type": "integer", "minimum": 100, "maximum": 599},
            {"type": "string", "pattern": f"^{_STATUS_RE.pattern}$"},
        ]
    }
)
def check_status_range(value: object) -> tuple[int, int]:
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


@accepts({"type": "string", "pattern": "\\S"})
def check_tool_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a tool name (a non-empty string)")
    return value


# ---------------------------------------------------------------------------
# Edge authentication (auth:)

# JWS algorithms with public keys (RFC 7518, RFC 8037). Never "none"; never HS*: an HMAC
# "verified" with a key from the JWKS would accept a token signed with the public key.
JWT_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


def check_jwt_algorithm(value: object) -> str:
    if isinstance(value, str):
        if value.lower() == "none":
            raise ValueError('"none" would accept unsigned tokens: never allowed')
        if value.upper().startswith("HS"):
            raise ValueError(
                f'"{value}" is a shared-secret algorithm: with a JWKS of public keys it would '
                "accept tokens signed with a public key; use RS*, PS*, ES* or EdDSA"
            )
        for name in JWT_ALGORITHMS:
            if value == name:
                return name
    raise ValueError(f"must be one of {', '.join(JWT_ALGORITHMS)}")


def _auth_url(value: object, what: str) -> str:
    """An absolute http(s) URL with a host, no user info, no fragment; https unless its
    host is a loopback one."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be {what}, an absolute URL")
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError("must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError as exc:
        raise ValueError(f"cannot be parsed ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(f'must be {what}, an absolute https:// URL, e.g. "https://{value}"')
    if "@" in parts.netloc:
        raise ValueError("must not contain user info (user:password@)")
    if "#" in value:
        raise ValueError("must not have a fragment")
    if parts.scheme != "https" and not is_loopback(host):
        raise ValueError("must use https (plain http only for a loopback host)")
    return value


def check_resource(value: object) -> str:
    # RFC 8707 section 2 / RFC 9728: the canonical URI clients ask tokens for; no query.
    url = _auth_url(value, "the MCP server's canonical URI")
    if "?" in url:
        raise ValueError("must not have a query string (RFC 8707 section 2)")
    return url


def check_issuer(value: object) -> str:
    url = _auth_url(value, "the authorization server's issuer identifier")
    if "?" in url:
        raise ValueError("must not have a query string (RFC 8414 section 2)")
    return url


def check_auth_url(value: object) -> str:
    return _auth_url(value, "a URL")


def check_audience(value: object) -> str:
    if not isinstance(value, str) or not value or not value.isprintable():
        raise ValueError("must be an audience value (a non-empty string, usually a URI)")
    return value


def check_scope(value: object) -> str:
    # RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
    if (
        not isinstance(value, str)
        or not value
        or any(not ("\x21" <= ch <= "\x7e") or ch in '"\\' for ch in value)
    ):
        raise ValueError('must be a scope name (printable ASCII, no space, " or \\)')
    return value


def check_identity_header(value: object) -> str:
    name = check_header_name(value)
    if name in ("authorization", "host", "content-length", "transfer-encoding", "connection"):
        raise ValueError(f'cannot be "{name}": the proxy and the backend read it')
    return name


# ---------------------------------------------------------------------------
# Tracing


@accepts({"type": "string", "pattern": "^https?://"})
def check_otlp_endpoint(value: object) -> str:
    """The collector's OTLP/HTTP traces URL: http or https (a collector in the cluster
    often has no TLS; ``tracing.headers`` are refused over plain http to a non-loopback
    host, rules.py), with a host, no user info, no fragment."""
    if not isinstance(value, str) or not value:
        raise ValueError('must be a URL, e.g. "http://127.0.0.1:4318/v1/traces"')
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ValueError("must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        host = parts.hostname
        _ = parts.port  # a port out of range raises here
    except ValueError as exc:
        raise ValueError(f"cannot be parsed ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(
            'must be an http:// or https:// URL, e.g. "http://127.0.0.1:4318/v1/traces"'
        )
    if "@" in parts.netloc:
        raise ValueError("must not contain user info (user:password@): use tracing.headers")
    if "#" in value:
        raise ValueError("must not have a fragment")
    return value


_SERVICE_NAME_MAX = 255


@accepts({"type": "string", "minLength": 1, "maxLength": _SERVICE_NAME_MAX})
def check_service_name(value: object) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value) > _SERVICE_NAME_MAX
        or not value.isprintable()
    ):
        raise ValueError(
            f"must be a name of 1 to {_SERVICE_NAME_MAX} printable characters, e.g. mcplb"
        )
    return value


@accepts({"type": "number", "minimum": 0, "maximum": 1})
def check_ratio(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError("must be a number from 0 to 1, e.g. 0.01 for 1%")
    return float(value)
