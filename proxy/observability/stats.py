"""Traffic counters of one worker process: plain integers on the hot path (sans-IO).

The relay bumps these; the admin API turns snapshots of every worker into Prometheus
metrics at scrape time, so a request costs a few integer additions, not a metrics library
call per label set.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import Counter
from typing import Any, Final

# Seconds; the last bucket is +Inf.
BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# Method and tool names come from request bodies (never from the routing headers, which are
# claims: proxy/routing/mcp_era.py) and become Prometheus labels: a method counts under its
# own name only if the MCP specification defines it (2024-11-05 to 2026-07-28, with the
# tasks extension), and a name only for the methods in MCP_NAMED (tools/call: the `tool`
# label), in the spec's form, up to MCP_TOOL_CAP names per method and worker. So no client
# can grow /metrics, and one method's names (task ids, say) can never crowd out another's.
KNOWN_MCP_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "server/discover",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/read",
        "resources/templates/list",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "sampling/createMessage",
        "elicitation/create",
        "roots/list",
        "subscriptions/listen",
        "tasks/get",
        "tasks/update",
        "tasks/cancel",
        "tasks/result",
        "tasks/list",
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/message",
        "notifications/roots/list_changed",
        "notifications/resources/updated",
        "notifications/resources/list_changed",
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
        "notifications/elicitation/complete",
        "notifications/tasks/status",
        "notifications/tasks",
        "notifications/subscriptions/acknowledged",
    }
)
MCP_NAMED = frozenset({"tools/call"})  # the methods whose name is a label (`tool`)
MCP_TOOL_CAP = 50  # distinct names per named method and worker
TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")  # the spec's tool name characters


class Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    def snapshot(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.sum}


class BackendStats:
    """Counters of one backend."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "connect_failures",
        "duration",
        "first_byte",
        "requests",
        "retries",
        "sessions_created",
        "sessions_ended",
        "timeouts",
    )

    def __init__(self) -> None:
        self.requests: Counter[tuple[bytes, int]] = Counter()  # (method, status // 100)
        self.first_byte = Histogram()
        self.duration = Histogram()
        self.bytes_in = 0
        self.bytes_out = 0
        self.connect_failures = 0
        self.timeouts = 0
        self.retries = 0
        self.sessions_created = 0
        self.sessions_ended = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": [[m.decode("latin-1"), f"{c}xx", n] for (m, c), n in self.requests.items()],
            "first_byte": self.first_byte.snapshot(),
            "duration": self.duration.snapshot(),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "connect_failures": self.connect_failures,
            "timeouts": self.timeouts,
            "retries": self.retries,
            "sessions_created": self.sessions_created,
            "sessions_ended": self.sessions_ended,
        }


class Stats:
    """Everything one worker counts."""

    def __init__(self, backend_names: list[str]) -> None:
        self.backends: dict[str, BackendStats] = {name: BackendStats() for name in backend_names}
        self.proxy_errors: Counter[str] = Counter()  # status code -> answers made by the proxy
        self.session_not_found = 0
        # edge auth on: session/task ids refused as another principal's, by "kind reason"
        # (relay/affinity.py; kinds session, task; reasons principal, unbound, anonymous)
        self.binding_refused: Counter[str] = Counter()
        self.mcp: Counter[tuple[str, str]] = Counter()  # (method, tool)
        self.mcp_names: Counter[str] = Counter()  # method -> names counted under their own
        # refused MCP requests whose routing headers did not match their body, by reason
        self.mcp_header_mismatches: Counter[str] = Counter()
        self.loop_lag = 0.0
        # reason (queue_full, queue_timeout, max_streams, rate_limited) -> refused requests
        self.rejected: Counter[str] = Counter()
        # rate_limit.tools rule name (from the config, never a client's) -> refused calls
        self.tool_rate_limited: Counter[str] = Counter()
        self.queued = 0  # requests that waited for a slot
        self.queue_wait = Histogram()
        self.retry_budget_exhausted = 0
        self.reloads: Counter[str] = Counter()  # "success" / "failure"
        # DNS discovery lookups (worker 0's): changed, unchanged, empty, failed
        self.discovery: Counter[str] = Counter()
        # tracing (observability/tracing.py): spans exported, failed, dropped; client trace
        # contexts refused as malformed. Written by the exporter's thread too (its own keys).
        self.tracing: Counter[str] = Counter()

    def add_backend(self, name: str) -> None:
        """Count a backend added by a reload (a re-added name keeps its counters)."""
        self.backends.setdefault(name, BackendStats())

    def count_mcp(self, method: str, tool: str) -> None:
        """Count one MCP request by its body's method and, for MCP_NAMED methods, name."""
        if method not in KNOWN_MCP_METHODS:
            method, tool = "other", ""
        elif method not in MCP_NAMED:
            tool = ""
        elif tool and (method, tool) not in self.mcp:
            if self.mcp_names[method] >= MCP_TOOL_CAP or not TOOL_NAME.fullmatch(tool):
                tool = "other"
            else:
                self.mcp_names[method] += 1
        self.mcp[(method, tool)] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "backends": {name: b.snapshot() for name, b in self.backends.items()},
            "proxy_errors": dict(self.proxy_errors),
            "session_not_found": self.session_not_found,
            "binding_refused": dict(self.binding_refused),
            "mcp": [[m, t, n] for (m, t), n in self.mcp.items()],
            "mcp_header_mismatches": dict(self.mcp_header_mismatches),
            "loop_lag": self.loop_lag,
            "rejected": dict(self.rejected),
            "tool_rate_limited": dict(self.tool_rate_limited),
            "queued": self.queued,
            "queue_wait": self.queue_wait.snapshot(),
            "retry_budget_exhausted": self.retry_budget_exhausted,
            "reloads": dict(self.reloads),
            "discovery": dict(self.discovery),
            "tracing": dict(self.tracing),
        }


def merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum several workers' snapshots (counters and histograms add; loop lag takes the max)."""
    total: dict[str, Any] = {
        "backends": {},
        "proxy_errors": Counter(),
        "session_not_found": 0,
        "binding_refused": Counter(),
        "mcp": Counter(),
        "mcp_header_mismatches": Counter(),
        "loop_lag": 0.0,
        "rejected": Counter(),
        "tool_rate_limited": Counter(),
        "queued": 0,
        "queue_wait": {"counts": [0] * (len(BUCKETS) + 1), "sum": 0.0},
        "retry_budget_exhausted": 0,
        "reloads": Counter(),
        "discovery": Counter(),
        "tracing": Counter(),
    }
    for snap in snapshots:
        for name, backend in snap["backends"].items():
            into = total["backends"].setdefault(name, _empty_backend())
            for method, code, count in backend["requests"]:
                into["requests"][(method, code)] += count
            for key in ("first_byte", "duration"):
                histogram = into[key]
                for i, count in enumerate(backend[key]["counts"]):
                    histogram["counts"][i] += count
                histogram["sum"] += backend[key]["sum"]
            for key in _SCALARS:
                into[key] += backend[key]
        total["proxy_errors"].update(snap["proxy_errors"])
        total["session_not_found"] += snap["session_not_found"]
        total["binding_refused"].update(snap.get("binding_refused", {}))
        for method, tool, count in snap["mcp"]:
            total["mcp"][(method, tool)] += count
        total["mcp_header_mismatches"].update(snap.get("mcp_header_mismatches", {}))
        total["loop_lag"] = max(total["loop_lag"], snap["loop_lag"])
        total["rejected"].update(snap["rejected"])
        total["tool_rate_limited"].update(snap.get("tool_rate_limited", {}))
        total["reloads"].update(snap["reloads"])
        total["discovery"].update(snap.get("discovery", {}))
        total["tracing"].update(snap.get("tracing", {}))
        total["queued"] += snap["queued"]
        total["retry_budget_exhausted"] += snap["retry_budget_exhausted"]
        for i, count in enumerate(snap["queue_wait"]["counts"]):
            total["queue_wait"]["counts"][i] += count
        total["queue_wait"]["sum"] += snap["queue_wait"]["sum"]
    return total


_SCALARS = (
    "bytes_in",
    "bytes_out",
    "connect_failures",
    "timeouts",
    "retries",
    "sessions_created",
    "sessions_ended",
)


def _empty_backend() -> dict[str, Any]:
    empty: dict[str, Any] = {key: 0 for key in _SCALARS}
    empty["requests"] = Counter()
    for key in ("first_byte", "duration"):
        empty[key] = {"counts": [0] * (len(BUCKETS) + 1), "sum": 0.0}
    return empty
