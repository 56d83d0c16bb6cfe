"""bench/validation_bench.py measures what it says: both kinds of request have their body
read and counted by method (the 2026-07-28 one judged against its headers, and not
refused), and the figure is per request."""

from __future__ import annotations

from bench import validation_bench
from mcplb.proxy.observability.stats import Stats


def test_both_kinds_are_read_counted_and_not_refused() -> None:
    for kind, headers in validation_bench.HEADERS.items():
        stats = Stats(["a"])
        ns = validation_bench.per_request(headers, stats, 1000)  # asserts the id was read
        assert 0 < ns < 1_000_000, kind
        assert stats.mcp[("tools/call", "echo")] == 1000, kind
        assert not stats.mcp_header_mismatches, kind
