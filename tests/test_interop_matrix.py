"""The interop matrix: MCP clients {Python SDK, TypeScript SDK} x servers {Python SDK,
TypeScript SDK} x transports {Streamable HTTP, legacy HTTP+SSE}, through mcplb with each
session store and 1 or 2 workers. Every session runs initialize, tools/list, a tool call,
a call with progress, a resource subscription with its update (on the GET stream), a
Last-Event-ID resume and DELETE (the last two: Streamable HTTP only), and must stay whole
on the backend that created it. Then TypeScript clients at scale: 50 sessions through 2
workers and through two replicas with signed ids.

Real processes only: Node 22 from npm (``make test`` runs ``npm ci`` in tests/interop),
SDK servers and clients, mcplb, redis-server. One proxy per backend group and
(store, workers) combination, shared by all clients; the cells run concurrently.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.interop import (
    MISSING,
    NODE,
    InteropServer,
    ServerKind,
    Transport,
    endpoint,
    run_ts_clients,
    start_interop_server_sync,
)
from tests.interop.py_client import run_session
from tests.support.alternator import Alternator
from tests.support.peers import Peers, ProxyProcess, free_port
from tests.support.redis_server import start_redis

# The matrix drives the session-era protocol on purpose (resources/subscribe on the GET
# stream), which the Python SDK flags as removed from its newest protocol revision.
pytestmark = pytest.mark.filterwarnings("ignore:resources/subscribe is removed")

KEY = "interop-matrix-key-" + "m" * 32
SESSIONS_PER_CELL = 3
# (store, workers): the memory store is per process, so it has one worker by construction.
PROXY_MODES = [("memory", 1), ("signed", 1), ("signed", 2), ("redis", 1), ("redis", 2)]
CLIENTS = ("py", "ts")
KINDS: tuple[ServerKind, ...] = ("py", "ts")
TRANSPORTS: tuple[Transport, ...] = ("streamable", "sse")
STEPS = {
    "streamable": [
        "initialize",
        *("tools/list", "tools/call", "progress", "subscription", "resume", "delete"),
    ],
    "sse": ["initialize", "tools/list", "tools/call", "progress", "subscription"],
}
# The last run's pass counts, per (store, workers) and cell, for the summary table.
RESULTS: dict[str, dict[str, str]] = {}
SUMMARY = Path(__file__).resolve().parent.parent / "build" / "interop-matrix.md"

Groups = dict[tuple[ServerKind, Transport], list[InteropServer]]


@pytest.fixture(scope="module")
def groups() -> Iterator[Groups]:
    """Two backends per server kind and transport (TypeScript servers serve both)."""
    assert NODE.exists(), MISSING
    started: list[InteropServer] = []
    try:
        ts = [start_interop_server_sync("ts", f"ts-{n}") for n in ("a", "b")]
        started += ts
        py = [start_interop_server_sync("py", f"py-{n}") for n in ("a", "b")]
        started += py
        py_sse = [start_interop_server_sync("py", f"pysse-{n}", "sse") for n in ("a", "b")]
        started += py_sse
        yield {
            ("ts", "streamable"): ts,
            ("ts", "sse"): ts,
            ("py", "streamable"): py,
            ("py", "sse"): py_sse,
        }
    finally:
        for server in started:
            server.stop_sync()


@pytest.fixture(scope="module", autouse=True)
def summary() -> Iterator[None]:
    """Write the last run's table to build/interop-matrix.md (docs/interop.md quotes it)."""
    yield
    if not RESULTS:
        return
    cells = [f"{c} → {k} {t}" for c in CLIENTS for k in KINDS for t in TRANSPORTS]
    lines = ["| client → server transport | " + " | ".join(RESULTS) + " |"]
    lines.append("|---" * (len(RESULTS) + 1) + "|")
    for cell in cells:
        lines.append(f"| {cell} | " + " | ".join(r.get(cell, "-") for r in RESULTS.values()) + " |")
    SUMMARY.parent.mkdir(exist_ok=True)
    SUMMARY.write_text("\n".join(lines) + "\n")


def proxy_yaml(port: int, backends: list[InteropServer], sticky: str, workers: int) -> str:
    entries = "".join(f"  - {{name: {b.name}, url: '{b.url}'}}\n" for b in backends)
    return f"listen: 127.0.0.1:{port}\nworkers: {workers}\nsticky:\n{sticky}backends:\n{entries}"


def sticky_yaml(store: str, redis_port: int | None = None) -> str:
    if store == "signed":
        return f"  store: signed\n  keys: ['{KEY}']\n"
    if store == "redis":
        return f"  store: redis\n  redis: {{url: 'redis://127.0.0.1:{redis_port}/0'}}\n"
    return "  store: memory\n"


async def run_cell(client: str, url: str, transport: Transport) -> list[dict[str, Any]]:
    if client == "ts":
        return await run_ts_clients(
            url, transport, sessions=SESSIONS_PER_CELL, concurrency=SESSIONS_PER_CELL
        )
    return list(
        await asyncio.gather(*(run_session(url, transport) for _ in range(SESSIONS_PER_CELL)))
    )


async def live_sessions(server: InteropServer) -> int | None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/debug/sessions") as response,
    ):
        count: int | None = (await response.json())["sessions"]
        return count


async def wait_until_no_sessions(servers: list[InteropServer]) -> None:
    """Every session was ended: by DELETE (which must have reached the backend with its own
    id) or, for the legacy transport, by the client closing its stream."""
    deadline = time.monotonic() + 10
    while True:
        counts = {s.name: await live_sessions(s) for s in servers}
        if all(not count for count in counts.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"sessions still live on the backends: {counts}")
        await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    ("store", "workers"), PROXY_MODES, ids=[f"{s}-{w}w" for s, w in PROXY_MODES]
)
async def test_matrix(
    groups: Groups, peers: Peers, tmp_path: Path, store: str, workers: int
) -> None:
    redis = await start_redis() if store == "redis" else None
    try:
        sticky = sticky_yaml(store, redis.port if redis else None)
        proxies: dict[tuple[ServerKind, Transport], ProxyProcess] = {}
        for (kind, transport), backends in groups.items():
            if (kind, "streamable") in proxies and kind == "ts":
                proxies[(kind, transport)] = proxies[(kind, "streamable")]
                continue
            port = free_port()
            proxies[(kind, transport)] = await peers.proxy(
                proxy_yaml(port, backends, sticky, workers),
                tmp_path,
                port=port,
                name=f"{kind}-{transport}",
            )
        cells = [(c, k, t) for c in CLIENTS for k in KINDS for t in TRANSPORTS]
        outcomes = await asyncio.gather(
            *(run_cell(c, proxies[(k, t)].url + endpoint(t), t) for c, k, t in cells)
        )
        column = RESULTS.setdefault(f"{store}, {workers} worker{'s' * (workers > 1)}", {})
        failures = []
        for (client, kind, transport), records in zip(cells, outcomes, strict=True):
            whole = [
                r
                for r in records
                if r["ok"]
                and len(set(r["names"])) == 1
                and r["steps"] == STEPS[transport]
                # With signed ids the client only ever holds a sealed token.
                and (transport == "sse" or r["token"].startswith("v1.") == (store == "signed"))
            ]
            backends = sorted({r["names"][0] for r in whole})
            column[f"{client} → {kind} {transport}"] = f"{len(whole)}/{len(records)}"
            if len(whole) != len(records):
                failed = [r["error"] or r for r in records if r not in whole]
                failures.append((client, kind, transport, failed))
            else:
                assert backends, (client, kind, transport)
        assert not failures, failures
        # The Python SDK's SSE server does not count its sessions; the others must be at 0.
        await wait_until_no_sessions(groups[("ts", "streamable")] + groups[("py", "streamable")])
        for proxy in {id(p): p for p in proxies.values()}.values():
            assert "Traceback" not in proxy.output(), proxy.output()
    finally:
        if redis is not None:
            await redis.stop()


def assert_whole(records: list[dict[str, Any]], expected: int, signed: bool = True) -> None:
    """Every session completed, on one backend, holding a sealed token (Streamable HTTP)."""
    broken = [
        r["error"] or r
        for r in records
        if not (r["ok"] and len(set(r["names"])) == 1)
        or (r["token"] is not None and r["token"].startswith("v1.") != signed)
    ]
    assert (len(records) - len(broken), broken) == (expected, [])


async def ts_sessions_at_scale(url: str, fresh_connections: bool) -> None:
    """50 sequential and 20 concurrent TypeScript SDK sessions, then 10 legacy SSE ones."""
    mcp, sse = url + endpoint("streamable"), url + endpoint("sse")
    sequential, concurrent, legacy = await asyncio.gather(
        run_ts_clients(
            mcp,
            "streamable",
            sessions=50,
            concurrency=1,
            steps="calls",
            fresh_connections=fresh_connections,
        ),
        run_ts_clients(
            mcp,
            "streamable",
            sessions=20,
            concurrency=20,
            steps="calls",
            fresh_connections=fresh_connections,
        ),
        run_ts_clients(
            sse,
            "sse",
            sessions=10,
            concurrency=10,
            steps="calls",
            fresh_connections=fresh_connections,
        ),
    )
    assert_whole(sequential, 50)
    assert_whole(concurrent, 20)
    assert_whole(legacy, 10)
    names = {r["names"][0] for r in sequential + concurrent + legacy}
    assert len(names) == 2, names  # balanced over both backends, each session kept whole


async def test_ts_clients_through_two_workers(groups: Groups, peers: Peers, tmp_path: Path) -> None:
    port = free_port()
    backends = groups[("ts", "streamable")]
    proxy = await peers.proxy(
        proxy_yaml(port, backends, sticky_yaml("signed"), workers=2), tmp_path, port=port
    )
    await ts_sessions_at_scale(proxy.url, fresh_connections=False)
    await wait_until_no_sessions(backends)


async def test_ts_clients_through_two_replicas(
    groups: Groups, peers: Peers, tmp_path: Path
) -> None:
    backends = groups[("ts", "streamable")]
    ports = [free_port(), free_port()]
    for index, port in enumerate(ports):
        config = proxy_yaml(port, backends, sticky_yaml("signed"), workers=1)
        await peers.proxy(config, tmp_path, port=port, name=f"replica{index}")
    alternator = Alternator(ports)
    await alternator.start()
    try:
        # A new connection per request: consecutive requests of a session change replica.
        await ts_sessions_at_scale(f"http://127.0.0.1:{alternator.port}", fresh_connections=True)
        assert min(alternator.connections.values()) >= 200, alternator.connections
    finally:
        await alternator.close()
    await wait_until_no_sessions(backends)
