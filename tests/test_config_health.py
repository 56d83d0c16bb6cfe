"""health (proxy/config/): active probes and passive ejection."""

from __future__ import annotations

import textwrap

import pytest

from mcplb.proxy.config.loader import parse_config
from mcplb.proxy.config.schema import (
    ActiveHealthConfig,
    HealthConfig,
    PassiveHealthConfig,
)
from tests.support.config_docs import (
    BACKEND,
    DURATION_HINT,
    EXAMPLE,
    doc,
    error,
    errors,
    parse,
    with_top,
)

# --- health -------------------------------------------------------------------


def health_doc(body: str) -> str:
    """BACKEND (lines 1-3) then "health:" on line 4 and ``body`` from line 5."""
    return BACKEND + "health:\n" + textwrap.indent(doc(body), "  ")


def test_health_defaults() -> None:
    health = parse(BACKEND).health
    assert health == HealthConfig()
    assert (health.initial, health.panic, health.slow_start) == ("healthy", "fail_closed", 0.0)
    assert health.active == ActiveHealthConfig(
        enabled=False,
        type="http",
        path="/",
        method="GET",
        expect_status=((200, 399),),
        expect_tools=(),
        interval=2.0,
        timeout=1.0,
        rise=2,
        fall=3,
        fast_interval=None,
        down_interval=None,
    )
    assert health.passive == PassiveHealthConfig(
        enabled=True,
        consecutive_failures=5,
        on_5xx=False,
        ejection_time=30.0,
        max_ejection_time=300.0,
        ejection_memory=600.0,
        max_ejection_percent=50,
    )
    assert parse(BACKEND + "health:\n").health == HealthConfig()
    assert parse(BACKEND + "health: {passive: ~}\n").health == HealthConfig()


@pytest.mark.parametrize("active", ["active:", "active: {}", "active: ~"])
def test_health_active_key_turns_probes_on(active: str) -> None:
    assert parse(health_doc(active)).health.active == ActiveHealthConfig(enabled=True)


def test_health_active_disabled_and_default_paths() -> None:
    off = parse(health_doc("active:\n  enabled: false\n  type: mcp\n")).health.active
    assert (off.enabled, off.type, off.path) == (False, "mcp", "/mcp")
    assert ActiveHealthConfig(type="mcp").path == "/mcp"
    assert ActiveHealthConfig().path == "/"
    assert ActiveHealthConfig(type="mcp", path="/x").path == "/x"


def test_health_full() -> None:
    config = parse(
        health_doc(
            """
            initial: unhealthy
            panic: fail_open
            slow_start: 1m
            active:
              enabled: true
              type: http
              path: /healthz?deep=1
              method: head
              expect_status: [200, 204-299, "404"]
              interval: 500ms
              timeout: 250ms
              rise: 1
              fall: 10
              fast_interval: 300ms
              down_interval: 5s
            passive:
              enabled: false
              consecutive_failures: 1
              on_5xx: true
              ejection_time: 10s
              max_ejection_time: 10s
              ejection_memory: 0
              max_ejection_percent: 100
            """
        )
    )
    assert config.health == HealthConfig(
        initial="unhealthy",
        panic="fail_open",
        slow_start=60.0,
        active=ActiveHealthConfig(
            enabled=True,
            type="http",
            path="/healthz?deep=1",
            method="HEAD",
            expect_status=((200, 200), (204, 299), (404, 404)),
            interval=0.5,
            timeout=0.25,
            rise=1,
            fall=10,
            fast_interval=0.3,
            down_interval=5.0,
        ),
        passive=PassiveHealthConfig(
            enabled=False,
            consecutive_failures=1,
            on_5xx=True,
            ejection_time=10.0,
            max_ejection_time=10.0,
            ejection_memory=0.0,
            max_ejection_percent=100,
        ),
    )
    assert config.lines["health.active.expect_status[1]"] == 13
    assert config.lines["health.passive.max_ejection_percent"] == 27


def test_health_mcp_probe() -> None:
    active = parse(
        health_doc(
            """
            active:
              type: mcp
              expect_tools: [whoami, countdown, whoami]
              expect_status: [200-399]  # the default: tolerated for an mcp probe
              method: GET
            """
        )
    ).health.active
    assert (active.type, active.path, active.expect_tools) == (
        "mcp",
        "/mcp",
        ("whoami", "countdown"),
    )
    single = parse(health_doc("active:\n  expect_status: 200-299\n")).health.active
    assert single.expect_status == ((200, 299),)


def test_health_example_block_uncommented() -> None:
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index("# health:")
    block = [line.removeprefix("# ") for line in lines[start:]]
    text = "\n".join(lines[:start] + block) + "\n"
    health = parse_config(text, environ={}).health
    assert health == HealthConfig(active=ActiveHealthConfig(enabled=True))
    mcp = parse_config(text.replace("    type: http", "    type: mcp"), environ={}).health
    assert (mcp.active.type, mcp.active.path) == ("mcp", "/mcp")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("initial: up", 'health.initial: must be "healthy" or "unhealthy" (line 5)'),
        ("initial: true", 'health.initial: must be "healthy" or "unhealthy" (line 5)'),
        ("panic: open", 'health.panic: must be "fail_closed" or "fail_open" (line 5)'),
        ("slow_start: -1", "health.slow_start: invalid duration -1: must not be negative (line 5)"),
        (
            "slow_start: soon",
            f'health.slow_start: invalid duration "soon": {DURATION_HINT} (line 5)',
        ),
        (
            "slowstart: 1s",
            'health.slowstart: unknown key (did you mean "slow_start"?) (line 5)',
        ),
        (
            "zzz: 1",
            "health.zzz: unknown key (expected one of: initial, panic, slow_start, active, "
            "passive) (line 5)",
        ),
        ("active: true", "health.active: must be a mapping (line 5)"),
        ("passive: []", "health.passive: must be a mapping (line 5)"),
        (
            "active:\n  enable: false",
            'health.active.enable: unknown key (did you mean "enabled"?) (line 6)',
        ),
        (
            "active:\n  zzz: 1",
            "health.active.zzz: unknown key (expected one of: enabled, type, path, method, "
            "expect_status, expect_tools, interval, timeout, rise, fall, fast_interval, "
            "down_interval) (line 6)",
        ),
        (
            "active:\n  enabled: 'yes'",
            "health.active.enabled: must be a boolean (true or false, unquoted) (line 6)",
        ),
        ("active:\n  type: grpc", 'health.active.type: must be "http" or "mcp" (line 6)'),
        (
            "active:\n  path: healthz",
            'health.active.path: must be a path starting with "/", e.g. "/healthz" (line 6)',
        ),
        (
            "active:\n  path: 200",
            'health.active.path: must be a path starting with "/", e.g. "/healthz" (line 6)',
        ),
        (
            "active:\n  path: /caf\u00e9",
            "health.active.path: must be ASCII without whitespace or control characters"
            " (percent-encode others) (line 6)",
        ),
        (
            "active:\n  path: '/a b'",
            "health.active.path: must be ASCII without whitespace or control characters"
            " (percent-encode others) (line 6)",
        ),
        ("active:\n  path: '/a#b'", "health.active.path: must not have a fragment (line 6)"),
        ("active:\n  method: POST", "health.active.method: must be GET or HEAD (line 6)"),
        (
            "active:\n  type: mcp\n  method: HEAD",
            'health.active.method: only used when type is "http" (line 7)',
        ),
        (
            "active:\n  type: mcp\n  expect_status: [200]",
            'health.active.expect_status: only used when type is "http" (line 7)',
        ),
        (
            "active:\n  expect_tools: [add]",
            'health.active.expect_tools: only used when type is "mcp" (line 6)',
        ),
        ("active:\n  expect_status: []", "health.active.expect_status: must not be empty (line 6)"),
        (
            "active:\n  expect_status: {a: 1}",
            "health.active.expect_status: must be a list of status codes or ranges,"
            " e.g. [200-399] or [200, 204] (line 6)",
        ),
        (
            "active:\n  expect_status:",
            "health.active.expect_status: must be a list of status codes or ranges,"
            " e.g. [200-399] or [200, 204] (line 6)",
        ),
        (
            "active:\n  expect_status:\n    - 200\n    - 2xx",
            "health.active.expect_status[1]: must be a status code or a range of them,"
            ' e.g. 200 or "200-399" (line 8)',
        ),
        (
            "active:\n  expect_status: [200, true]",
            "health.active.expect_status[1]: must be a status code or a range of them,"
            ' e.g. 200 or "200-399" (line 6)',
        ),
        (
            "active:\n  expect_status: [99]",
            "health.active.expect_status[0]: status codes must be between 100 and 599 (line 6)",
        ),
        (
            "active:\n  expect_status: [200-600]",
            "health.active.expect_status[0]: status codes must be between 100 and 599 (line 6)",
        ),
        (
            "active:\n  expect_status: [399-200]",
            'health.active.expect_status[0]: invalid range "399-200": 399 is greater than 200'
            " (line 6)",
        ),
        (
            "active:\n  type: mcp\n  expect_tools: add",
            "health.active.expect_tools: must be a list of tool names (line 7)",
        ),
        (
            "active:\n  type: mcp\n  expect_tools: [add, '', 3]",
            "health.active.expect_tools[1]: must be a tool name (a non-empty string) (line 7)\n"
            "health.active.expect_tools[2]: must be a tool name (a non-empty string) (line 7)",
        ),
        ("active:\n  interval: 0", "health.active.interval: must be greater than 0 (line 6)"),
        (
            "active:\n  interval: 1s",
            "health.active.interval: must be greater than timeout (1s) (line 6)",
        ),
        (
            "active:\n  interval: 500ms",
            "health.active.interval: must be greater than timeout (1s) (line 6)",
        ),
        (
            "active:\n  timeout: 2s",
            "health.active.timeout: must be less than interval (2s) (line 6)",
        ),
        (
            "active:\n  interval: 250ms\n  timeout: 0.25",
            "health.active.timeout: must be less than interval (0.25s) (line 7)",
        ),
        (
            "active:\n  timeout: -1",
            "health.active.timeout: invalid duration -1: must not be negative (line 6)",
        ),
        ("active:\n  rise: 0", "health.active.rise: must be an integer >= 1 (line 6)"),
        ("active:\n  fall: 1.5", "health.active.fall: must be an integer >= 1 (line 6)"),
        ("active:\n  fall: '3'", "health.active.fall: must be an integer >= 1 (line 6)"),
        (
            "active:\n  fast_interval: 1s",
            "health.active.fast_interval: must be greater than timeout (1s) (line 6)",
        ),
        (
            "active:\n  timeout: 100ms\n  down_interval: 50ms",
            "health.active.down_interval: must be greater than timeout (0.1s) (line 7)",
        ),
        (
            "active:\n  down_interval: 0",
            "health.active.down_interval: must be greater than 0 (line 6)",
        ),
        (
            "passive:\n  enabled: 1",
            "health.passive.enabled: must be a boolean (true or false, unquoted) (line 6)",
        ),
        (
            "passive:\n  consecutive_failures: 0",
            "health.passive.consecutive_failures: must be an integer >= 1 (line 6)",
        ),
        (
            "passive:\n  on_5xx: 'no'",
            "health.passive.on_5xx: must be a boolean (true or false, unquoted) (line 6)",
        ),
        (
            "passive:\n  ejection_time: 0",
            "health.passive.ejection_time: must be greater than 0 (line 6)",
        ),
        (
            "passive:\n  ejection_time: 10m",
            "health.passive.ejection_time: must not be greater than max_ejection_time (300s)"
            " (line 6)",
        ),
        (
            "passive:\n  max_ejection_time: 20s",
            "health.passive.max_ejection_time: must not be less than ejection_time (30s) (line 6)",
        ),
        (
            "passive:\n  ejection_memory: -5",
            "health.passive.ejection_memory: invalid duration -5: must not be negative (line 6)",
        ),
        (
            "passive:\n  max_ejection_percent: 101",
            "health.passive.max_ejection_percent: must be an integer between 0 and 100 (line 6)",
        ),
        (
            "passive:\n  max_ejection_percent: 50%",
            "health.passive.max_ejection_percent: must be an integer between 0 and 100 (line 6)",
        ),
        (
            "passive:\n  on5xx: true",
            'health.passive.on5xx: unknown key (did you mean "on_5xx"?) (line 6)',
        ),
    ],
)
def test_health_invalid(body: str, message: str) -> None:
    assert "\n".join(errors(health_doc(body))) == message


def test_health_cross_checks_skip_invalid_values() -> None:
    # A bad value is reported once, not again by the comparisons that would use it.
    assert errors(health_doc("active:\n  interval: x\n  timeout: 5s\n  fast_interval: 1s\n")) == [
        f'health.active.interval: invalid duration "x": {DURATION_HINT} (line 6)',
        "health.active.fast_interval: must be greater than timeout (5s) (line 8)",
    ]
    assert errors(health_doc("active:\n  timeout: 0\n  interval: 0.1\n  down_interval: 1ms\n")) == [
        "health.active.timeout: must be greater than 0 (line 6)"
    ]
    assert errors(health_doc("active:\n  type: tcp\n  expect_tools: [a]\n  method: HEAD\n")) == [
        'health.active.type: must be "http" or "mcp" (line 6)'
    ]
    assert errors(health_doc("passive:\n  ejection_time: 1h\n  max_ejection_time: x\n")) == [
        f'health.passive.max_ejection_time: invalid duration "x": {DURATION_HINT} (line 7)'
    ]


def test_health_section_must_be_a_mapping() -> None:
    assert error(with_top("health: on")) == "health: must be a mapping (line 1)"
    assert error(with_top("health: [active]")) == "health: must be a mapping (line 1)"


def test_health_env_expansion() -> None:
    config = parse(health_doc("active:\n  interval: ${INTERVAL:-3s}\n  fall: ${FALL}\n"), FALL="4")
    assert (config.health.active.interval, config.health.active.fall) == (3.0, 4)


def test_admin_and_log_sections() -> None:
    config = parse(
        BACKEND + "admin: {listen: '127.0.0.1:9911'}\nlog: {format: json, access: false}\n"
    )
    assert (config.admin.listen_host, config.admin.listen_port, config.admin.enabled) == (
        "127.0.0.1",
        9911,
        True,
    )
    assert (config.log.format, config.log.access, config.log.level) == ("json", False, "info")
    assert parse(BACKEND).admin.listen_port == 9901
    assert error(BACKEND + "admin: {listen: '0.0.0.0:9901'}\n") == (
        "admin.listen: the admin API on 0.0.0.0 (not loopback) needs admin.token: its"
        " drain/undrain calls would be open to the network (line 4)"
    )
    token = "t" * 20
    assert (
        parse(BACKEND + f"admin: {{listen: '0.0.0.0:9901', token: {token}}}\n").admin.token == token
    )
    assert error(BACKEND + "admin: {token: short}\n") == (
        "admin.token: must be a string of at least 16 characters (line 4)"
    )
    assert (
        error(BACKEND + "log: {format: xml}\n") == 'log.format: must be "text" or "json" (line 4)'
    )
