"""Costs that must not grow into stalls as the work grows (see bench/scale_bench.py)."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from mcplb.proxy.relay.connection import ClientConnection
from mcplb.proxy.server.worker import SWEEP_SLICE
from tests.conftest import ProxyFactory, backend_config


async def test_timeout_sweep_lets_io_through_between_slices(
    start_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sweep checked every connection in one go: with 10,000 event streams open it held
    # the event loop ~15 ms twice a second, and the streams' p99 latency grew by 6 ms.
    proxy = await start_proxy([backend_config("a", 9)])  # never reached
    loop = asyncio.get_running_loop()
    turns = 0

    def tick() -> None:  # counts the event loop's turns
        nonlocal turns
        turns += 1
        handle[0] = loop.call_soon(tick)

    handle = [loop.call_soon(tick)]
    seen: dict[float, set[int]] = defaultdict(set)  # sweep (its "now") -> turns it spanned
    check = ClientConnection.check_timeouts

    def recording(conn: ClientConnection, now: float) -> None:
        seen[now].add(turns)
        check(conn, now)

    monkeypatch.setattr(ClientConnection, "check_timeouts", recording)
    count = 2 * SWEEP_SLICE + 100
    clients = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(count)]
    try:
        deadline = loop.time() + 10
        while not any(len(turns_of) >= 3 for turns_of in seen.values()):
            assert loop.time() < deadline, f"turns per sweep: {[len(t) for t in seen.values()]}"
            await asyncio.sleep(0.05)
    finally:
        handle[0].cancel()
        for _, writer in clients:
            writer.close()
