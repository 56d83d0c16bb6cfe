"""sticky (proxy/config/): session affinity, its stores, keys, Redis, cookie and header."""

from __future__ import annotations

import re
import textwrap

import pytest

from mcplb.proxy.config.loader import parse_config
from mcplb.proxy.config.schema import (
    CookieConfig,
    RedisConfig,
    StickyConfig,
)
from tests.support.config_docs import BACKEND, EXAMPLE, doc, error, errors, parse

# --- sticky, timeouts, limits -------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("mcp_sessions: 'yes'", "sticky.mcp_sessions: must be a boolean (true or false, unquoted)"),
        ("mcp_sessions: 1", "sticky.mcp_sessions: must be a boolean (true or false, unquoted)"),
        ("session_ttl: 0", "sticky.session_ttl: must be greater than 0"),
        ("session_ttl: 0s", "sticky.session_ttl: must be greater than 0"),
        ("session_ttl: -5", "sticky.session_ttl: invalid duration -5: must not be negative"),
        (
            "session_ttl: soon",
            'sticky.session_ttl: invalid duration "soon": expected seconds or a number with unit'
            ' ms, s, m or h (e.g. "250ms", "2s", "1m30s")',
        ),
        ("max_sessions: 0", "sticky.max_sessions: must be an integer >= 1"),
        ("max_sessions: 1.0", "sticky.max_sessions: must be an integer >= 1"),
        ("max_sessions: '10'", "sticky.max_sessions: must be an integer >= 1"),
    ],
)
def test_sticky_invalid(line: str, message: str) -> None:
    assert error(BACKEND + f"sticky:\n  {line}\n") == f"{message} (line 5)"


# --- sticky: stores, keys, redis, cookie, header ------------------------------

KEY_1 = "k1-" + "1" * 40
KEY_2 = "k2-" + "2" * 40
KEYS_EG = 'e.g. keys: ["${MCPLB_SESSION_KEY}"] with a random secret of at least 32 characters'
BY_WORKERS = (
    "store: signed, the default with workers > 1",
    "; or use store: redis, or mcp_sessions: false for backends without MCP sessions",
)
TOKEN_CHARS = "letters, digits and !#$%&'*+-.^_`|~"


def sticky_doc(body: str, workers: int | str = 1) -> str:
    """workers on line 1, BACKEND on lines 2-4, "sticky:" on line 5, ``body`` from line 6."""
    return f"workers: {workers}\n" + BACKEND + "sticky:\n" + textwrap.indent(doc(body), "  ")


def test_sticky_defaults() -> None:
    sticky = parse(BACKEND).sticky
    assert sticky == StickyConfig()
    assert (sticky.store, sticky.keys, sticky.cookie, sticky.header) == ("memory", (), None, None)
    assert sticky.redis == RedisConfig("redis://127.0.0.1:6379/0", 0.25, "mcplb:session:")
    assert CookieConfig() == CookieConfig("mcplb_backend", None, False, True, "Lax")


def test_sticky_full() -> None:
    body = """
        mcp_sessions: true
        session_ttl: 10m
        max_sessions: 500
        store: redis
        keys: ["${K1}", "${K2}"]
        redis:
          url: rediss://:pw@redis.example.com:6380/2
          timeout: 100ms
          prefix: "lb:"
        cookie:
          name: lb
          ttl: 1h
          secure: true
          http_only: false
          same_site: None
        header: X-Tenant-Id
        """
    config = parse(sticky_doc(body, workers=3), K1=KEY_1, K2=KEY_2)
    assert config.sticky == StickyConfig(
        mcp_sessions=True,
        session_ttl=600.0,
        max_sessions=500,
        store="redis",
        keys=(KEY_1, KEY_2),
        redis=RedisConfig("rediss://:pw@redis.example.com:6380/2", 0.1, "lb:"),
        cookie=CookieConfig("lb", 3600.0, True, False, "None"),
        header="x-tenant-id",
    )
    assert config.lines["sticky.redis.prefix"] == 14
    assert config.lines["sticky.cookie.same_site"] == 20


@pytest.mark.parametrize(
    ("workers", "body", "store"),
    [
        (1, "", "memory"),
        (4, "keys: ['${K1}']", "signed"),
        (4, "mcp_sessions: false", "memory"),  # the store is never used: no keys needed
        (4, "mcp_sessions: false\nstore: memory", "memory"),
        (4, "store: redis", "redis"),
        (1, "store: signed\nkeys: ['${K1}']", "signed"),
        (1, "store: redis", "redis"),
        (1, "mcp_sessions: false\nstore: redis", "redis"),
        ("auto", "store: redis", "redis"),
    ],
)
def test_sticky_store_resolution(workers: int | str, body: str, store: str) -> None:
    assert parse(sticky_doc(body, workers), K1=KEY_1).sticky.store == store


def test_memory_store_refused_with_several_workers() -> None:
    assert error(sticky_doc("session_ttl: 5m\nstore: memory", 4)) == (
        'sticky.store: "memory" cannot serve 4 workers: each worker process has its own memory'
        " and a client's connections spread over all workers, so most workers would not know"
        " its session; use store: signed (session ids carry their backend, signed with keys)"
        " or store: redis (shared) (line 7)"
    )


def test_default_signed_store_needs_keys() -> None:
    expected = f"sticky.keys: required by {BY_WORKERS[0]} ({KEYS_EG}){BY_WORKERS[1]} (line 1)"
    assert error(sticky_doc("", 4)) == expected
    assert error(sticky_doc("session_ttl: 5m", 4)) == expected
    assert error("workers: 4\n" + BACKEND) == expected  # no sticky section at all
    assert error(BACKEND + "workers: 2\n") == expected.replace("(line 1)", "(line 4)")


def test_auto_workers_count_as_several_for_the_store() -> None:
    """Whether a file is valid does not depend on the CPUs of the machine checking it."""
    by_auto = BY_WORKERS[0].replace("workers > 1", "workers: auto")
    assert error(sticky_doc("", "auto")) == (
        f"sticky.keys: required by {by_auto} ({KEYS_EG}){BY_WORKERS[1]} (line 1)"
    )
    assert parse(sticky_doc("keys: ['${K1}']", "auto"), K1=KEY_1).sticky.store == "signed"
    assert error(sticky_doc("store: memory", "auto")).startswith(
        'sticky.store: "memory" cannot serve a worker per CPU (workers: auto): each worker'
    )


def test_explicit_signed_store_needs_keys() -> None:
    message = f"sticky.keys: required by store: signed ({KEYS_EG})"
    assert error(sticky_doc("store: signed")) == f"{message} (line 6)"
    assert error(sticky_doc("store: signed\nkeys: []")) == f"{message} (line 7)"
    # Named explicitly, it is refused without keys even while mcp_sessions is false: a loaded
    # config with store "signed" always has keys.
    assert error(sticky_doc("mcp_sessions: false\nstore: signed")) == f"{message} (line 7)"


def test_cookie_needs_keys() -> None:
    message = f"sticky.keys: required by cookie ({KEYS_EG})"
    assert error(sticky_doc("cookie: {name: lb}")) == f"{message} (line 6)"
    assert error(sticky_doc("header: x-a\ncookie:")) == f"{message} (line 7)"
    assert error(sticky_doc("mcp_sessions: false\ncookie:", 4)) == f"{message} (line 7)"
    assert error(sticky_doc("store: redis\nkeys: []\ncookie:", 4)) == f"{message} (line 7)"
    both = f"{BY_WORKERS[0]} and by cookie ({KEYS_EG}){BY_WORKERS[1]}"
    assert (
        error(sticky_doc("header: x-a\ncookie:", 2)) == f"sticky.keys: required by {both} (line 7)"
    )
    explicit = f"sticky.keys: required by store: signed and by cookie ({KEYS_EG}) (line 6)"
    assert error(sticky_doc("store: signed\ncookie:")) == explicit


def test_unused_keys_are_checked_and_kept() -> None:
    assert parse(sticky_doc("keys: ['${K1}']"), K1=KEY_1).sticky.keys == (KEY_1,)
    assert parse(sticky_doc("keys: ${K1}"), K1=KEY_1).sticky.keys == (KEY_1,)  # one, unbracketed
    assert error(sticky_doc("keys: [short]")) == (
        "sticky.keys[0]: must be at least 32 characters long (this one has 5) (line 6)"
    )


def test_keys_are_checked_one_by_one_without_echoing_them() -> None:
    text = sticky_doc("store: signed\nkeys:\n  - ${K1}\n  - short-secret\n  - 12345\n  - ''", 4)
    found = errors(text, K1=KEY_1)
    assert found == [
        "sticky.keys[1]: must be at least 32 characters long (this one has 12) (line 9)",
        "sticky.keys[2]: must be a string (quote it), at least 32 characters (line 10)",
        "sticky.keys[3]: must be at least 32 characters long (this one has 0) (line 11)",
    ]  # and no "required" error on top
    assert not any("short-secret" in message for message in found)


def test_duplicate_sticky_keys() -> None:
    found = errors(sticky_doc("keys: ['${K1}', '${K2}', '${K1}']"), K1=KEY_1, K2=KEY_2)
    assert found == ["sticky.keys[2]: duplicate of keys[0] (each key must be different) (line 6)"]
    assert KEY_1 not in found[0]


def test_keys_other_errors_have_no_knock_on_errors() -> None:
    assert error(sticky_doc("keys: {a: b}", 4)) == (
        f"sticky.keys: must be a list of secrets, {KEYS_EG} (line 6)"
    )
    assert error(sticky_doc("keys: ['${NOPE}']", 4)) == (
        'sticky.keys[0]: environment variable "NOPE" is not set'
        " (use ${NOPE:-default} for a default) (line 6)"
    )
    assert error(sticky_doc("store: disk", 4)) == (
        'sticky.store: must be one of "memory", "signed", "redis" (line 6)'
    )
    assert error(sticky_doc("mcp_sessions: 'no'", 4)) == (
        "sticky.mcp_sessions: must be a boolean (true or false, unquoted) (line 6)"
    )


def test_keys_are_not_in_repr() -> None:
    config = parse(sticky_doc("store: signed\nkeys: ['${K1}']"), K1=KEY_1)
    assert config.sticky.keys == (KEY_1,)
    assert KEY_1 not in repr(config)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("stroe: signed", 'sticky.stroe: unknown key (did you mean "store"?) (line 6)'),
        ("key: []", 'sticky.key: unknown key (did you mean "keys"?) (line 6)'),
        ("headers: x-a", 'sticky.headers: unknown key (did you mean "header"?) (line 6)'),
        (
            "store: redis\nredis: {ulr: 'redis://h'}",
            'sticky.redis.ulr: unknown key (did you mean "url"?) (line 7)',
        ),
        (
            "keys: ['${K1}']\ncookie: {same_sit: Lax}",
            'sticky.cookie.same_sit: unknown key (did you mean "same_site"?) (line 7)',
        ),
        (
            "redis: {port: 1}",
            "sticky.redis.port: unknown key (expected one of: url, timeout, prefix, sentinels,"
            " service, password, sentinel_password, tls, ca) (line 6)",
        ),
    ],
)
def test_sticky_unknown_keys(body: str, message: str) -> None:
    assert error(sticky_doc(body), K1=KEY_1) == message


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "redis://127.0.0.1:6379/0",
        "rediss://:pw@h.example:6380/3",
        "redis://user:p%40ss@h/15",
        "'redis://[::1]:6379'",
        "redis://h:6379/0?socket_keepalive=true",
        "redis://redis_1/",
        "unix:///run/redis.sock",
        "unix://:pw@/tmp/r.sock?db=2",
    ],
)
def test_redis_url_valid(url: str) -> None:
    config = parse(sticky_doc(f"store: redis\nredis:\n  url: {url}"))
    assert config.sticky.redis.url == url.strip("'")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:6379", "scheme must be redis, rediss or unix"),
        ("h:6379", "scheme must be redis, rediss or unix"),
        ("redis://", "host is missing"),
        ("redis://h:0", "port must be a number between 1 and 65535"),
        ("redis://h:99999/0", "port must be a number between 1 and 65535"),
        ("redis://h/zero", 'the path must be a database number, e.g. "redis://127.0.0.1:6379/0"'),
        ("redis://h/0#x", "must not have a fragment"),
        ("'redis://h /0'", "must not contain whitespace or control characters"),
        ("'redis://[::1'", "cannot be parsed as a URL"),
        ("redis://:hunter2@bad!host/0", 'invalid host "bad!host"'),
        (
            "unix://run/redis.sock",
            'must be "unix://" then the socket\'s absolute path, e.g. "unix:///run/redis.sock"',
        ),
        (
            "'unix:'",
            'must be "unix://" then the socket\'s absolute path, e.g. "unix:///run/redis.sock"',
        ),
        (
            "6379",
            'must be a Redis URL: "redis://HOST[:PORT][/DB]", "rediss://..." (TLS)'
            ' or "unix:///PATH/TO/SOCKET"',
        ),
    ],
)
def test_redis_url_invalid(url: str, message: str) -> None:
    found = error(sticky_doc(f"store: redis\nredis:\n  url: {url}"))
    assert found == f"sticky.redis.url: {message} (line 8)"
    assert "hunter2" not in found  # a password in the URL is never repeated


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("timeout: 0", "sticky.redis.timeout: must be greater than 0"),
        (
            "timeout: 5001ms",
            "sticky.redis.timeout: must be at most 5s (every request that carries a session"
            " may wait this long for Redis)",
        ),
        ("prefix: ''", 'sticky.redis.prefix: must be a non-empty string, e.g. "mcplb:session:"'),
        ("prefix: 7", 'sticky.redis.prefix: must be a non-empty string, e.g. "mcplb:session:"'),
    ],
)
def test_redis_settings_invalid(line: str, message: str) -> None:
    assert error(sticky_doc(f"store: redis\nredis:\n  {line}")) == f"{message} (line 8)"


def test_redis_timeout_limits() -> None:
    assert parse(sticky_doc("store: redis\nredis: {timeout: 5s}")).sticky.redis.timeout == 5.0
    assert parse(sticky_doc("store: redis\nredis: {timeout: 1ms}")).sticky.redis.timeout == 0.001


def test_redis_settings_refused_with_another_store() -> None:
    body = "redis:\n  url: redis://r:6379/0\n  timeout: 1s\n  prefix: 'lb:'"
    assert errors(sticky_doc(body)) == [
        f'sticky.redis.{key}: only used when store is "redis" (the store is "memory") (line {n})'
        for n, key in enumerate(("url", "timeout", "prefix"), 7)
    ]
    signed = sticky_doc("keys: ['${K1}']\nredis: {prefix: 'lb:'}", 4)
    assert error(signed, K1=KEY_1) == (
        'sticky.redis.prefix: only used when store is "redis" (the store is "signed") (line 7)'
    )
    # The defaults written out (an uncommented example) are not refused.
    body = "redis:\n  url: redis://127.0.0.1:6379/0\n  timeout: 250ms\n  prefix: 'mcplb:session:'"
    assert parse(sticky_doc(body)).sticky.redis == RedisConfig()
    assert parse(sticky_doc("redis:")).sticky.redis == RedisConfig()


def cookie_doc(body: str) -> str:
    """Keys on line 6, "cookie:" on line 7, ``body`` from line 8."""
    return sticky_doc("keys: ['${K1}']\ncookie:\n" + textwrap.indent(doc(body), "  "))


def test_cookie_defaults_and_values() -> None:
    assert parse(cookie_doc(""), K1=KEY_1).sticky.cookie == CookieConfig()
    assert parse(sticky_doc("keys: ['${K1}']\ncookie: {}"), K1=KEY_1).sticky.cookie == (
        CookieConfig()
    )
    body = "name: __Host-lb\nttl: 90\nsecure: true\nsame_site: strict"
    assert parse(cookie_doc(body), K1=KEY_1).sticky.cookie == CookieConfig(
        "__Host-lb", 90.0, True, True, "Strict"
    )
    assert parse(cookie_doc("ttl: null\nsame_site: LAX"), K1=KEY_1).sticky.cookie == (
        CookieConfig()
    )
    body = 'name: "!#$%&\'*+-.^_`|~Az09"\nsecure: true\nsame_site: None'
    cookie = parse(cookie_doc(body), K1=KEY_1).sticky.cookie
    assert cookie is not None
    assert (cookie.name, cookie.same_site) == ("!#$%&'*+-.^_`|~Az09", "None")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "same_site: None",
            'sticky.cookie.same_site: SameSite "None" requires secure: true'
            " (browsers drop such cookies) (line 8)",
        ),
        (
            "secure: false\nsame_site: none",
            'sticky.cookie.same_site: SameSite "None" requires secure: true'
            " (browsers drop such cookies) (line 9)",
        ),
        (
            "name: __Secure-lb",
            'sticky.cookie.name: a name starting with "__Secure-" requires secure: true (line 8)',
        ),
        (
            "name: __Host-lb",
            'sticky.cookie.name: a name starting with "__Host-" requires secure: true (line 8)',
        ),
        ("name: a b", f"sticky.cookie.name: must be a cookie name: {TOKEN_CHARS} (line 8)"),
        ("name: 'a;b'", f"sticky.cookie.name: must be a cookie name: {TOKEN_CHARS} (line 8)"),
        ("name: ''", f"sticky.cookie.name: must be a cookie name: {TOKEN_CHARS} (line 8)"),
        ("name: 5", f"sticky.cookie.name: must be a cookie name: {TOKEN_CHARS} (line 8)"),
        ("ttl: 0", "sticky.cookie.ttl: must be greater than 0 (line 8)"),
        (
            "same_site: sometimes",
            'sticky.cookie.same_site: must be "Lax", "Strict" or "None" (line 8)',
        ),
        (
            "http_only: 'yes'",
            "sticky.cookie.http_only: must be a boolean (true or false, unquoted) (line 8)",
        ),
        # An invalid "secure" is reported once, with no guess about SameSite=None.
        (
            "secure: 1\nsame_site: None",
            "sticky.cookie.secure: must be a boolean (true or false, unquoted) (line 8)",
        ),
    ],
)
def test_cookie_invalid(body: str, message: str) -> None:
    assert error(cookie_doc(body), K1=KEY_1) == message


def test_cookie_not_a_mapping() -> None:
    # Reported once: no "keys required by cookie" on top.
    assert error(sticky_doc("cookie: true")) == "sticky.cookie: must be a mapping (line 6)"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("X-Tenant-Id", "x-tenant-id"), ("x_user", "x_user"), ("null", None), ("~", None)],
)
def test_header_valid(value: str, expected: str | None) -> None:
    assert parse(sticky_doc(f"header: {value}")).sticky.header == expected


@pytest.mark.parametrize("value", ["X Tenant", "''", "5", "'a:b'", "[x]", "'x\u00e9'"])
def test_header_invalid(value: str) -> None:
    assert error(sticky_doc(f"header: {value}")) == (
        f'sticky.header: must be a header name ({TOKEN_CHARS}), e.g. "X-Tenant-Id" (line 6)'
    )


def test_header_cannot_be_the_session_header() -> None:
    assert error(sticky_doc("mcp_sessions: false\nheader: MCP-Session-Id")) == (
        "sticky.header: cannot be Mcp-Session-Id: a backend mints it after the routing"
        " decision (mcp_sessions routes requests that carry it) (line 7)"
    )


def test_sticky_issues_are_gathered() -> None:
    body = """
        store: memory
        keys: [short]
        redis: {timeout: 9s}
        cookie:
          same_site: None
          name: "a b"
        header: "X Y"
        """
    assert errors(sticky_doc(body, 4)) == [
        'sticky.store: "memory" cannot serve 4 workers: each worker process has its own memory'
        " and a client's connections spread over all workers, so most workers would not know"
        " its session; use store: signed (session ids carry their backend, signed with keys)"
        " or store: redis (shared) (line 6)",
        "sticky.keys[0]: must be at least 32 characters long (this one has 5) (line 7)",
        "sticky.redis.timeout: must be at most 5s (every request that carries a session may"
        " wait this long for Redis) (line 8)",
        'sticky.cookie.same_site: SameSite "None" requires secure: true'
        " (browsers drop such cookies) (line 10)",
        f"sticky.cookie.name: must be a cookie name: {TOKEN_CHARS} (line 11)",
        f'sticky.header: must be a header name ({TOKEN_CHARS}), e.g. "X-Tenant-Id" (line 12)',
    ]


def test_example_sticky_section_uncommented_loads() -> None:
    text = EXAMPLE.read_text()
    start, end = text.index("\nsticky:\n"), text.index("\n# Timeouts")
    section = re.sub(r"^  # (keys|redis|cookie):", r"  \1:", text[start:end], flags=re.M)
    keys = "url|timeout|prefix|name|ttl|secure|http_only|same_site"
    section = re.sub(rf"^  #   ({keys}):", r"    \1:", section, flags=re.M)
    assert section.count("\n  #") < text[start:end].count("\n  #") - 10  # it did uncomment
    config = parse_config(text[:start] + section + text[end:], environ={"MCPLB_SESSION_KEY": KEY_1})
    assert config.sticky == StickyConfig(keys=(KEY_1,), cookie=CookieConfig())
