"""Active health with several workers: one worker probes, the others take its verdicts.

A real ``mcplb run`` with ``workers: 2`` in front of aiohttp backends that count the probes
they receive. Passive ejection and retries are off, so a worker that still believed in a
dead backend would answer 502: every request must succeed once the verdict is known.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import AppFactory
from tests.support.peers import Peers, free_port, proxy_admin_port

INTERVAL = 0.2  # seconds between probes of one backend


class CountingBackend:
    def __init__(self, name: str) -> None:
        self.name = name
        self.probes: list[float] = []  # arrival times of GET /healthz
        self.failing = False  # answer probes with 503
        self.runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        async def healthz(request: web.Request) -> web.Response:
            self.probes.append(time.monotonic())
            return web.Response(status=503 if self.failing else 200, text="ok")

        async def hello(request: web.Request) -> web.Response:
            return web.Response(text=self.name)

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_route("*", "/{tail:.*}", hello)
        return app


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # A fresh connection per request: the kernel spreads them over both workers.
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def start(
    peers: Peers, tmp_path: Path, serve_app: AppFactory, *backends: CountingBackend
) -> tuple[int, int]:
    ports = [await serve_app(b.app()) for b in backends]
    port = free_port()
    lines = "".join(
        f"  - {{name: {b.name}, url: 'http://127.0.0.1:{p}'}}\n"
        for b, p in zip(backends, ports, strict=True)
    )
    config = (
        f"listen: 127.0.0.1:{port}\nworkers: 2\nsticky: {{mcp_sessions: false}}\n"
        f"log: {{access: false}}\nretries: {{attempts: 0}}\nbackends:\n{lines}"
        "health:\n  active: {type: http, path: /healthz, interval: 200ms, timeout: 150ms,"
        " rise: 1, fall: 1}\n  passive: {enabled: false}\n"
    )
    proxy = await peers.proxy(config, tmp_path, port=port)
    return port, await proxy_admin_port(proxy)


async def test_only_one_worker_probes(peers: Peers, tmp_path: Path, serve_app: AppFactory) -> None:
    backend = CountingBackend("a")
    await start(peers, tmp_path, serve_app, backend)
    async with asyncio.timeout(10):
        while len(backend.probes) < 3:  # the first probe comes at a random point
            await asyncio.sleep(0.05)
    first = backend.probes[-1]
    await asyncio.sleep(2.0)  # a measuring window, not a synchronisation
    window = [t for t in backend.probes if t > first]
    # One prober sends about 2.0 / 0.2 = 10 (interval jitter +-10%); two would send ~20.
    assert 7 <= len(window) <= 13, len(window)


async def test_every_worker_follows_the_probing_workers_verdict(
    peers: Peers, tmp_path: Path, serve_app: AppFactory, http: aiohttp.ClientSession
) -> None:
    good, doomed = CountingBackend("good"), CountingBackend("doomed")
    port, admin = await start(peers, tmp_path, serve_app, good, doomed)
    url = f"http://127.0.0.1:{port}/"

    async def answers(count: int) -> list[tuple[int, str]]:
        out = []
        for _ in range(count):
            async with http.get(url) as response:
                out.append((response.status, await response.text()))
        return out

    seen = await answers(40)
    assert {body for _, body in seen} == {"good", "doomed"}  # both workers, both backends

    doomed.failing = True  # its probes fail from now on; its requests would still work
    async with asyncio.timeout(10):
        while await backend_state(http, admin, "doomed") != "unhealthy":
            await asyncio.sleep(0.05)
        # Both workers stop sending it requests: worker 1 runs no probes of its own.
        while any(body == "doomed" for _, body in await answers(20)):
            pass
    assert [body for _, body in await answers(60)] == ["good"] * 60

    doomed.failing = False
    async with asyncio.timeout(10):
        while {body for _, body in await answers(20)} != {"good", "doomed"}:
            pass


async def backend_state(http: aiohttp.ClientSession, admin: int, name: str) -> str:
    async with http.get(f"http://127.0.0.1:{admin}/status") as response:
        status = await response.json()
    states = {b["name"]: b["state"] for b in status["backends"]}
    return str(states[name])
