"""The MCP 2026-07-28 config keys: timeouts.mcp_call, timeouts.sse_keepalive,
sticky.mcp_tasks, sticky.task_ttl_max; their defaults, their errors
(path and line), and the warnings `mcplb check` shows for routing that is valid but wrong
(hashing Mcp-Name; task bindings with store: signed across workers)."""

from __future__ import annotations

import pytest

from mcplb.proxy.config.errors import ConfigError
from mcplb.proxy.config.loader import parse_config

BASE = "backends:\n  - {name: a, url: 'http://127.0.0.1:9001'}\n"
KEY = "k" * 40


def test_defaults() -> None:
    config = parse_config(BASE)
    assert config.timeouts.mcp_call == 300.0  # minutes, not upstream_header's 60 s
    assert config.timeouts.upstream_header == 60.0
    assert config.timeouts.sse_keepalive == 15.0
    assert config.sticky.mcp_tasks is True
    assert config.sticky.task_ttl_max == 3600.0
    assert not config.warnings


def test_values() -> None:
    config = parse_config(
        BASE + "timeouts:\n  mcp_call: 30m\n  sse_keepalive: 0s\n"
        "sticky:\n  mcp_tasks: false\n  task_ttl_max: 2h\n"
    )
    assert config.timeouts.mcp_call == 1800.0
    assert config.timeouts.sse_keepalive == 0.0  # off
    assert config.sticky.mcp_tasks is False
    assert config.sticky.task_ttl_max == 7200.0


@pytest.mark.parametrize(
    ("section", "line", "path"),
    [
        ("timeouts:\n  mcp_call: 0s\n", 4, "timeouts.mcp_call"),
        ("timeouts:\n  mcp_call: soon\n", 4, "timeouts.mcp_call"),
        ("timeouts:\n  sse_keepalive: -1s\n", 4, "timeouts.sse_keepalive"),
        ("sticky:\n  mcp_tasks: maybe\n", 4, "sticky.mcp_tasks"),
        ("sticky:\n  task_ttl_max: 0s\n", 4, "sticky.task_ttl_max"),
    ],
)
def test_errors_name_path_and_line(section: str, line: int, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + section)
    [issue] = info.value.issues
    assert issue.path == path and issue.line == line


@pytest.mark.parametrize("header", ["Mcp-Name", "mcp-name", "MCP-METHOD"])
def test_hashing_a_routing_header_is_warned(header: str) -> None:
    config = parse_config(BASE + f"sticky:\n  header: {header}\n")
    [warning] = config.warnings
    assert warning.path == "sticky.header" and warning.line == 4
    assert "tasks/get" in warning.message and "mcp_tasks" in warning.message


def test_hashing_another_header_is_not_warned() -> None:
    assert not parse_config(BASE + "sticky:\n  header: X-Tenant-Id\n").warnings


def test_signed_store_with_several_workers_says_tasks_need_redis() -> None:
    config = parse_config(BASE + f"workers: 2\nsticky:\n  keys: ['{KEY}']\n")
    [warning] = config.warnings
    assert warning.path == "sticky.mcp_tasks"
    assert "store: redis" in warning.message and "signed" in warning.message
    # one worker: memory suffices; redis: shared; tasks off: nothing to say
    assert not parse_config(BASE + f"sticky:\n  store: signed\n  keys: ['{KEY}']\n").warnings
    assert not parse_config(
        BASE + "workers: 2\nsticky:\n  store: redis\n  redis: {url: 'redis://127.0.0.1:1/0'}\n"
    ).warnings
    assert not parse_config(
        BASE + f"workers: 2\nsticky:\n  mcp_tasks: false\n  keys: ['{KEY}']\n"
    ).warnings
