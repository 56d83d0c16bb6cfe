"""Prometheus exposition of worker snapshots (names in docs/observability.md); a worker's
snapshot is a plain dict (``server.runtime.Runtime.snapshot``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from mcplb.proxy.observability.stats import BUCKETS, merge


def render(snapshots: list[dict[str, Any]]) -> bytes:
    """The Prometheus text format for these workers' snapshots."""
    registry = CollectorRegistry()
    registry.register(_SnapshotCollector(snapshots))
    ProcessCollector(registry=registry)
    return generate_latest(registry)


class _SnapshotCollector:
    def __init__(self, snapshots: list[dict[str, Any]]) -> None:
        self.snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        stats = merge([s["stats"] for s in self.snapshots])
        views = [s["backends"] for s in self.snapshots]
        names = list(views[0]) if views else []
        yield from _traffic(stats)
        yield from _backend_gauges(names, views)
        yield from _health([s["health"] for s in self.snapshots])
        yield from _sessions(stats, views)
        yield GaugeMetricFamily(
            "mcplb_event_loop_lag_seconds", "Event loop lag (max of workers).", stats["loop_lag"]
        )
        yield CounterMetricFamily(
            "mcplb_session_store_errors",
            "Session store (Redis) failures.",
            sum(s["store_errors"] for s in self.snapshots),
        )
        yield GaugeMetricFamily("mcplb_workers", "Worker processes reporting.", len(self.snapshots))
        yield from _admission(stats, self.snapshots)
        yield from _rate_limiting(self.snapshots)
        yield from _config_changes(stats, self.snapshots)
        yield from _tracing(stats)


def _admission(stats: dict[str, Any], snapshots: list[dict[str, Any]]) -> Iterable[Metric]:
    """Admission queue, refusals and the retry budget."""
    rejected = CounterMetricFamily(
        "mcplb_rejected", "Requests refused by the proxy's protections.", labels=["reason"]
    )
    for reason, count in sorted(stats["rejected"].items()):
        rejected.add_metric([reason], count)
    by_tool_rule = CounterMetricFamily(
        "mcplb_tool_rate_limited",
        "Tool calls refused by a rate_limit.tools rule (also in mcplb_rejected).",
        labels=["rule"],
    )
    for rule, count in sorted(stats["tool_rate_limited"].items()):
        by_tool_rule.add_metric([rule], count)
    wait = HistogramMetricFamily("mcplb_queue_wait_seconds", "Time spent waiting for a slot.")
    wait.add_metric([], _buckets(stats["queue_wait"]["counts"]), stats["queue_wait"]["sum"])
    return [
        rejected,
        by_tool_rule,
        CounterMetricFamily("mcplb_queued", "Requests that waited for a slot.", stats["queued"]),
        wait,
        GaugeMetricFamily(
            "mcplb_queue_length",
            "Requests waiting for a slot now.",
            sum(s["queue_length"] for s in snapshots),
        ),
        CounterMetricFamily(
            "mcplb_retry_budget_exhausted",
            "Retries not made because the budget was spent.",
            stats["retry_budget_exhausted"],
        ),
    ]


def _rate_limiting(snapshots: list[dict[str, Any]]) -> Iterable[Metric]:
    """How often the rate limit store failed, and the requests that went through unchecked."""
    return [
        CounterMetricFamily(
            "mcplb_rate_limit_store_errors",
            "Rate limit store (Redis) failures (failed open).",
            sum(s["rate_limit_errors"] for s in snapshots),
        ),
        CounterMetricFamily(
            "mcplb_rate_limit_fail_open",
            "Requests let through unchecked because the rate limit store was unreachable.",
            sum(s["rate_limit_fail_open"] for s in snapshots),
        ),
    ]


def _config_changes(stats: dict[str, Any], snapshots: list[dict[str, Any]]) -> Iterable[Metric]:
    """Reloads, the generation each worker runs, and DNS discovery lookups."""
    reloads = CounterMetricFamily(
        "mcplb_config_reloads", "Config reloads by result.", labels=["result"]
    )
    for result in ("success", "failure"):
        reloads.add_metric([result], stats["reloads"].get(result, 0))
    generation = GaugeMetricFamily(
        "mcplb_config_generation", "Successful reloads applied, per worker.", labels=["worker"]
    )
    for snapshot in snapshots:
        generation.add_metric([str(snapshot["worker"])], snapshot["generation"])
    discovery = CounterMetricFamily(
        "mcplb_discovery_lookups",
        "DNS discovery lookups by result (failed and empty ones keep the last backend set).",
        labels=["result"],
    )
    for result, count in sorted(stats["discovery"].items()):
        discovery.add_metric([result], count)
    return [reloads, generation, discovery]


_SPAN_OUTCOMES = ("exported", "failed", "dropped")


def _tracing(stats: dict[str, Any]) -> Iterable[Metric]:
    """Spans by outcome (tracing on; all 0 when off), and client trace contexts refused."""
    spans = CounterMetricFamily(
        "mcplb_trace_spans",
        "Request spans by outcome: exported to the collector, failed (the collector refused "
        "them or was unreachable), dropped (the export queue was full).",
        labels=["outcome"],
    )
    for outcome in _SPAN_OUTCOMES:
        spans.add_metric([outcome], stats["tracing"].get(outcome, 0))
    refused = CounterMetricFamily(
        "mcplb_trace_context_refused",
        "Malformed client traceparent headers, ignored (a new trace was started).",
        stats["tracing"].get("context_refused", 0),
    )
    return [spans, refused]


# Per-backend counters exposed as they are: (snapshot key, metric name, help).
_BACKEND_COUNTERS = (
    ("bytes_in", "mcplb_request_bytes", "Request body bytes."),
    ("bytes_out", "mcplb_response_bytes", "Response body bytes."),
    ("connect_failures", "mcplb_upstream_connect_failures", "Failed connects to backends."),
    ("timeouts", "mcplb_upstream_timeouts", "Response heads not received in time."),
    ("retries", "mcplb_retries", "Requests sent again (to this backend)."),
)


def _traffic(stats: dict[str, Any]) -> Iterable[Metric]:
    """Per backend: latency, requests and the plain counters; then the proxy's own answers
    and the MCP methods."""
    histograms = {
        "first_byte": HistogramMetricFamily(
            "mcplb_response_first_byte_seconds",
            "Request start to response head.",
            labels=["backend"],
        ),
        "duration": HistogramMetricFamily(
            "mcplb_request_duration_seconds",
            "Request start to last response byte.",
            labels=["backend"],
        ),
    }
    requests = CounterMetricFamily(
        "mcplb_requests", "Responses relayed from backends.", labels=["backend", "method", "code"]
    )
    counters = {
        key: CounterMetricFamily(name, doc, labels=["backend"])
        for key, name, doc in _BACKEND_COUNTERS
    }
    for name, backend in stats["backends"].items():
        for (method, code), count in sorted(backend["requests"].items()):
            requests.add_metric([name, method, code], count)
        for key, counter in counters.items():
            counter.add_metric([name], backend[key])
        for key, family in histograms.items():
            family.add_metric([name], _buckets(backend[key]["counts"]), backend[key]["sum"])
    errors = CounterMetricFamily(
        "mcplb_proxy_errors", "Answers the proxy made itself, by status.", labels=["code"]
    )
    for code, count in sorted(stats["proxy_errors"].items()):
        errors.add_metric([code], count)
    mcp = CounterMetricFamily(
        "mcplb_mcp_requests", "MCP requests by method and tool.", labels=["method", "tool"]
    )
    for (method, tool), count in sorted(stats["mcp"].items()):
        mcp.add_metric([method, tool], count)
    mismatches = CounterMetricFamily(
        "mcplb_mcp_header_mismatches",
        "MCP requests refused (400 HeaderMismatch) because their routing headers did not "
        "match their body.",
        labels=["reason"],
    )
    for reason, count in sorted(stats["mcp_header_mismatches"].items()):
        mismatches.add_metric([reason], count)
    return [*histograms.values(), requests, *counters.values(), errors, mcp, mismatches]


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    cumulative = 0
    out = []
    for bound, count in zip([*map(str, BUCKETS), "+Inf"], counts, strict=True):
        cumulative += count
        out.append((bound, float(cumulative)))
    return out


def _backend_gauges(names: list[str], views: list[dict[str, Any]]) -> Iterable[Metric]:
    summed = {
        "in_flight": GaugeMetricFamily(
            "mcplb_in_flight_requests", "Requests in flight.", labels=["backend"]
        ),
        "streams": GaugeMetricFamily(
            "mcplb_open_streams", "Open event-stream responses.", labels=["backend"]
        ),
    }
    flags = {
        "available": GaugeMetricFamily(
            "mcplb_backend_up", "1 when available for new work.", labels=["backend"]
        ),
        "healthy": GaugeMetricFamily(
            "mcplb_backend_healthy", "1 unless active checks failed.", labels=["backend"]
        ),
        "ejected": GaugeMetricFamily(
            "mcplb_backend_ejected", "1 while ejected by passive checks.", labels=["backend"]
        ),
        "draining": GaugeMetricFamily(
            "mcplb_backend_draining", "1 while draining.", labels=["backend"]
        ),
        "weight": GaugeMetricFamily(
            "mcplb_backend_weight", "Effective weight (configured x 100).", labels=["backend"]
        ),
    }
    for name in names:
        for key, family in summed.items():
            family.add_metric([name], sum(view[name][key] for view in views if name in view))
        for key, family in flags.items():
            # Workers judge health on their own; a backend counts as up if any worker has it up.
            family.add_metric([name], max(float(view[name][key]) for view in views if name in view))
    return [*summed.values(), *flags.values()]


def _health(counts: list[dict[str, Any]]) -> Iterable[Metric]:
    checks = CounterMetricFamily(
        "mcplb_health_checks", "Active probe results.", labels=["backend", "result"]
    )
    transitions = CounterMetricFamily(
        "mcplb_backend_transitions", "Health state changes.", labels=["backend", "to"]
    )
    ejections = CounterMetricFamily("mcplb_ejections", "Passive ejections.", labels=["backend"])
    total: dict[tuple[str, str, str], int] = {}
    for worker in counts:
        for kind, backend, label, count in worker["counts"]:
            key = (kind, backend, label)
            total[key] = total.get(key, 0) + count
    for (kind, backend, label), count in sorted(total.items()):
        if kind == "probe":
            checks.add_metric([backend, label], count)
        elif kind == "transition":
            transitions.add_metric([backend, label], count)
            if label == "ejected":
                ejections.add_metric([backend], count)
    return [checks, transitions, ejections]


def _sessions(stats: dict[str, Any], views: list[dict[str, Any]]) -> Iterable[Metric]:
    active = GaugeMetricFamily("mcplb_sessions_active", "MCP sessions bound.", labels=["backend"])
    created = CounterMetricFamily(
        "mcplb_sessions_created", "MCP sessions bound.", labels=["backend"]
    )
    ended = CounterMetricFamily("mcplb_sessions_ended", "MCP sessions ended.", labels=["backend"])
    for name, backend in stats["backends"].items():
        active.add_metric([name], sum(view[name]["sessions"] for view in views if name in view))
        created.add_metric([name], backend["sessions_created"])
        ended.add_metric([name], backend["sessions_ended"])
    not_found = CounterMetricFamily(
        "mcplb_session_not_found",
        "404s for unknown or invalid session ids.",
        stats["session_not_found"],
    )
    refused = CounterMetricFamily(
        "mcplb_binding_refused",
        "Edge auth on: signed session ids (and ids without a principal) answered as unknown,"
        " by kind and reason.",
        labels=["kind", "reason"],
    )
    for key, count in sorted(stats.get("binding_refused", {}).items()):
        kind, _, reason = key.partition(" ")
        refused.add_metric([kind, reason], count)
    return [active, created, ended, not_found, refused]
