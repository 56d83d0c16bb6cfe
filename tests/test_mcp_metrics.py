"""MCP metrics from validated values only: the method and the `tool` label come from the
body (never from Mcp-Method/Mcp-Name), the `tool` label is for tools/call only, names are
capped per method, the 2026-07-28 methods count by name, and refused header mismatches
have a counter of their own. Fed as values to Stats and the exposition."""

from __future__ import annotations

import pytest

from mcplb.proxy.observability import stats as stats_mod
from mcplb.proxy.observability.metrics import _traffic
from mcplb.proxy.observability.stats import MCP_TOOL_CAP, Stats, merge
from mcplb.proxy.relay import mcp_method
from mcplb.proxy.relay.request import Request

MODERN_METHODS = [
    "server/discover",
    "subscriptions/listen",
    "tasks/get",
    "tasks/update",
    "tasks/cancel",
    "notifications/tasks",
    "notifications/subscriptions/acknowledged",
]


def test_2026_methods_count_by_name() -> None:
    stats = Stats([])
    for method in MODERN_METHODS:
        stats.count_mcp(method, "")
    assert all(stats.mcp[(method, "")] == 1 for method in MODERN_METHODS)
    assert stats.mcp[("other", "")] == 0


def test_names_label_tools_call_only() -> None:
    stats = Stats([])
    stats.count_mcp("tasks/get", "786512e2-9e0d")
    stats.count_mcp("prompts/get", "code_review")
    stats.count_mcp("resources/read", "file:///a")
    stats.count_mcp("tools/call", "echo")
    assert set(stats.mcp) == {
        ("tasks/get", ""),
        ("prompts/get", ""),
        ("resources/read", ""),
        ("tools/call", "echo"),
    }


def test_polled_task_ids_never_crowd_out_tool_names() -> None:
    """Before: every Mcp-Name became a `tool` label; after 60 polled tasks, 49 task-id
    series filled the shared cap and real tool calls counted as `other`."""
    stats = Stats([])
    for i in range(60):
        stats.count_mcp("tasks/get", f"task-{i}")
    for i in range(MCP_TOOL_CAP):
        stats.count_mcp("tools/call", f"tool{i}")
    assert stats.mcp[("tasks/get", "")] == 60
    assert all(stats.mcp[("tools/call", f"tool{i}")] == 1 for i in range(MCP_TOOL_CAP))
    stats.count_mcp("tools/call", "one_too_many")
    assert stats.mcp[("tools/call", "other")] == 1


def test_caps_are_per_named_method(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats_mod, "MCP_NAMED", frozenset({"tools/call", "prompts/get"}))
    stats = Stats([])
    for i in range(MCP_TOOL_CAP + 5):
        stats.count_mcp("prompts/get", f"p{i}")
    stats.count_mcp("tools/call", "echo")  # prompts filled their cap, not the tools'
    assert stats.mcp[("tools/call", "echo")] == 1
    assert stats.mcp[("prompts/get", "other")] == 5


def sniffed(headers: list[tuple[bytes, bytes]], body: bytes) -> Stats:
    stats = Stats([])
    request = Request()
    request.headers = [(n.lower(), v) for n, v in headers]
    mcp_method.count_head(stats, request)
    request.body_size = len(body)
    mcp_method.keep_body(request, body)
    mcp_method.count_body(stats, request)
    return stats


JSON = (b"content-type", b"application/json")


def test_the_headers_are_never_counted() -> None:
    """Before: a body `tools/call echo` sent with Mcp-Method: tools/list and Mcp-Name:
    drop_tables counted as tools/list drop_tables."""
    call = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}'
    lies = [(b"Mcp-Method", b"tools/list"), (b"Mcp-Name", b"drop_tables")]
    # A 2025 request: the headers mean nothing, the body counts.
    legacy = sniffed([JSON, (b"MCP-Protocol-Version", b"2025-11-25"), *lies], call)
    assert dict(legacy.mcp) == {("tools/call", "echo"): 1}
    # A 2026 request: refused (counted as a mismatch where it is answered), not as a call.
    modern = sniffed([JSON, (b"MCP-Protocol-Version", b"2026-07-28"), *lies], call)
    assert not modern.mcp
    honest = [(b"Mcp-Method", b"tools/call"), (b"Mcp-Name", b"echo")]
    checked = sniffed([JSON, (b"MCP-Protocol-Version", b"2026-07-28"), *honest], call)
    assert dict(checked.mcp) == {("tools/call", "echo"): 1}
    headers_only = sniffed([(b"Mcp-Method", b"tools/list")], b"{}")
    assert not headers_only.mcp


def test_mismatches_are_exposed_by_reason_and_merged() -> None:
    one, two = Stats([]), Stats([])
    one.mcp_header_mismatches["name_mismatch"] += 2
    two.mcp_header_mismatches["name_mismatch"] += 1
    two.mcp_header_mismatches["method_mismatch"] += 1
    total = merge([one.snapshot(), two.snapshot()])
    assert total["mcp_header_mismatches"] == {"name_mismatch": 3, "method_mismatch": 1}
    text = "\n".join(f"{m.name} {s.labels} {s.value}" for m in _traffic(total) for s in m.samples)
    assert "mcplb_mcp_header_mismatches {'reason': 'name_mismatch'} 3" in text
    assert "mcplb_mcp_header_mismatches {'reason': 'method_mismatch'} 1" in text
