"""Health decisions as the relay applies them: eviction, readmission, sessions, panic."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web

from mcplb.proxy.config.schema import ActiveHealthConfig, HealthConfig, PassiveHealthConfig
from mcplb.proxy.server.worker import ProxyServer
from tests.conftest import AppFactory, ProxyFactory, backend_config
from tests.support.eventually import eventually
from tests.support.peers import LOOPBACK, _logs, _ManagedProcess, free_port, wait_for_port

INTERVAL = 0.2
TIMEOUT = 0.15
FALL = 2
RISE = 2
SLACK = 0.6  # the probe jitter, the ticker and the event loop's own scheduling


def active_health(**overrides: object) -> HealthConfig:
    active = ActiveHealthConfig(
        enabled=True,
        type="http",
        path="/health",
        interval=INTERVAL,
        timeout=TIMEOUT,
        rise=RISE,
        fall=FALL,
    )
    return HealthConfig(active=active, **overrides)  # type: ignore[arg-type]


class ToggleBackend:
    """An HTTP backend whose /health can fail on demand and which mints session ids."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.healthy = True
        self.sessions = 0
        self.app = web.Application()
        self.app.router.add_get("/health", self.health)
        self.app.router.add_post("/mcp", self.mcp)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 500)

    async def mcp(self, request: web.Request) -> web.Response:
        session = request.headers.get("Mcp-Session-Id")
        if session is None:
            self.sessions += 1
            session = f"{self.name}-{self.sessions}"
            return web.json_response({"served_by": self.name}, headers={"Mcp-Session-Id": session})
        return web.json_response({"served_by": self.name, "session": session})


async def until(probe: Callable[[], bool], limit: float) -> float:
    """Seconds until ``probe`` held (polled by ``eventually``)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    await eventually(probe, within=limit, every=0.02)
    return loop.time() - start


async def post(http: aiohttp.ClientSession, proxy: ProxyServer, session: str | None = None):  # type: ignore[no-untyped-def]
    headers = {"Mcp-Session-Id": session} if session else {}
    async with http.post(f"http://127.0.0.1:{proxy.port}/mcp", json={}, headers=headers) as resp:
        body = await resp.json()
        return resp.status, resp.headers.get("Mcp-Session-Id"), body


async def test_evicted_backend_gets_no_traffic_and_its_sessions_404_until_readmitted(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    a, b = ToggleBackend("a"), ToggleBackend("b")
    proxy = await start_proxy(
        [
            backend_config("a", await serve_app(a.app), weight=10),
            backend_config("b", await serve_app(b.app)),
        ],
        health=active_health(slow_start=1.0),
    )
    backend_a = proxy.runtime.cluster.backends.by_name["a"]
    async with aiohttp.ClientSession() as http:
        status, session, body = await post(http, proxy)
        assert status == 200 and body["served_by"] == "a" and session == "a-1"

        a.healthy = False
        took = await until(lambda: not backend_a.available, INTERVAL * FALL + TIMEOUT + SLACK)
        assert took <= INTERVAL * FALL + TIMEOUT + SLACK
        # No new work goes to a; its session is answered 404 so the client re-initializes.
        served = Counter([(await post(http, proxy))[2]["served_by"] for _ in range(6)])
        assert served == Counter({"b": 6})
        status, _, body = await post(http, proxy, session)
        assert status == 404
        assert body["error"]["message"] == "Session not found"

        a.healthy = True
        took = await until(lambda: backend_a.available, INTERVAL * RISE + SLACK)
        assert took <= INTERVAL * RISE + SLACK
        # Slow start: readmitted with a reduced weight that ramps back to the configured one.
        assert backend_a.weight < backend_a.base_weight
        await until(lambda: backend_a.weight == backend_a.base_weight, 3.0)
        # The binding survived the outage: the session works again where it lives.
        status, _, body = await post(http, proxy, session)
        assert status == 200
        assert body == {"served_by": "a", "session": "a-1"}


@pytest.mark.parametrize("panic", ["fail_closed", "fail_open"])
async def test_every_backend_down(
    start_proxy: ProxyFactory, serve_app: AppFactory, panic: str
) -> None:
    a = ToggleBackend("a")
    a.healthy = False
    proxy = await start_proxy(
        [backend_config("a", await serve_app(a.app))],
        health=active_health(panic=panic, initial="unhealthy"),
    )
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{proxy.port}/mcp", json={}) as resp,
    ):
        if panic == "fail_closed":
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "1"
        else:
            assert resp.status == 200
            assert (await resp.json())["served_by"] == "a"


class NameServer(_ManagedProcess):
    """``python -m tests.support.name_server``: a killable plain HTTP backend."""

    label = "name server"

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.port = port
        argv = [
            sys.executable,
            "-m",
            "tests.support.name_server",
            "--name",
            name,
            "--port",
            str(port),
        ]
        log = _logs() / f"name-server-{name}-{port}.log"
        super().__init__(argv, stdout_path=log, stderr_path=log, own_group=False)


async def test_backend_killed_under_load_fails_only_requests_it_held(
    start_proxy: ProxyFactory,
) -> None:
    servers = [NameServer(name, free_port()) for name in ("one", "two", "three")]
    try:
        for server in servers:
            await wait_for_port(LOOPBACK, server.port, process=server)
        proxy = await start_proxy(
            [backend_config(s.name, s.port) for s in servers],
            health=HealthConfig(
                active=ActiveHealthConfig(
                    enabled=True, path="/health", interval=0.2, timeout=0.15, fall=2, rise=2
                ),
                passive=PassiveHealthConfig(consecutive_failures=2),
            ),
        )
        outcomes: Counter[str] = Counter()
        served: Counter[str] = Counter()
        done = asyncio.Event()

        async def client() -> None:
            async with aiohttp.ClientSession() as http:
                for _ in range(400):  # bounded
                    if done.is_set():
                        return
                    try:
                        async with http.get(f"http://127.0.0.1:{proxy.port}/") as resp:
                            text = await resp.text()
                            outcomes[str(resp.status)] += 1
                            if resp.status == 200:
                                served[text] += 1
                    except aiohttp.ClientError as exc:
                        outcomes[type(exc).__name__] += 1

        clients = [asyncio.create_task(client()) for _ in range(8)]
        await until(lambda: sum(outcomes.values()) >= 200, 30)
        await servers[1].kill()
        killed_at = served["two"]
        await until(lambda: not proxy.runtime.cluster.backends.by_name["two"].available, 5)
        await until(lambda: sum(outcomes.values()) >= 1200, 60)
        done.set()
        await asyncio.gather(*clients)
        # Connect failures were retried on the others: only requests that were already on
        # the killed backend (at most one per client) may have failed.
        failed = sum(count for outcome, count in outcomes.items() if outcome != "200")
        assert failed <= 8, outcomes
        # Responses it wrote before dying may still have been on their way (one per client).
        assert served["two"] - killed_at <= 8
        assert served["one"] > 0 and served["three"] > 0
    finally:
        for server in servers:
            await server.kill()
