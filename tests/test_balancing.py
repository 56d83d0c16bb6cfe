"""Strategies through the running proxy, against real backends (one of them slow)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from mcplb.proxy.server.worker import ProxyServer
from tests.conftest import AppFactory, ProxyFactory, backend_config
from tests.support.peers import Peers, free_port

SLOW_SECONDS = 0.2
CLIENTS = 12
REQUESTS_PER_CLIENT = 20


def named_app(name: str, delay: float = 0.0) -> web.Application:
    async def handler(req: web.Request) -> web.Response:
        if delay:
            await asyncio.sleep(delay)  # the backend's service time, not a synchronisation
        return web.Response(text=name)

    app = web.Application()
    app.router.add_get("/", handler)
    return app


async def three_backends(serve_app: AppFactory) -> list[tuple[str, int]]:
    return [
        ("fast-1", await serve_app(named_app("fast-1"))),
        ("fast-2", await serve_app(named_app("fast-2"))),
        ("slow", await serve_app(named_app("slow", SLOW_SECONDS))),
    ]


async def load(proxy: ProxyServer) -> Counter[str]:
    """CLIENTS concurrent clients, each sending REQUESTS_PER_CLIENT requests in turn."""
    served: Counter[str] = Counter()
    url = f"http://127.0.0.1:{proxy.port}/"

    async def client() -> None:
        async with aiohttp.ClientSession() as http:
            for _ in range(REQUESTS_PER_CLIENT):
                async with http.get(url) as resp:
                    assert resp.status == 200
                    served[await resp.text()] += 1

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return served


@pytest.mark.parametrize("strategy", ["least_connections", "power_of_two"])
async def test_load_aware_strategies_spare_the_slow_backend(
    start_proxy: ProxyFactory, serve_app: AppFactory, strategy: str
) -> None:
    backends = [backend_config(name, port) for name, port in await three_backends(serve_app)]
    round_robin = await load(await start_proxy(backends))
    load_aware = await load(await start_proxy(backends, strategy=strategy))
    total = CLIENTS * REQUESTS_PER_CLIENT
    assert round_robin["slow"] == total // 3  # round-robin ignores load
    # The slow backend holds its requests 200 ms, so it looks busy and is picked less.
    assert load_aware["slow"] < round_robin["slow"] / 2, load_aware


async def test_ip_hash_keeps_each_client_address_on_one_backend(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    backends = [backend_config(name, port) for name, port in await three_backends(serve_app)]
    proxy = await start_proxy(backends, strategy="ip_hash")
    url = f"http://127.0.0.1:{proxy.port}/"
    owners: dict[str, set[str]] = {}
    for host in range(2, 22):
        address = f"127.0.0.{host}"  # all of 127.0.0.0/8 is loopback
        connector = aiohttp.TCPConnector(local_addr=(address, 0), force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            for _ in range(5):
                async with http.get(url) as resp:
                    owners.setdefault(address, set()).add(await resp.text())
    assert all(len(names) == 1 for names in owners.values()), owners
    assert len(set().union(*owners.values())) == 3  # 20 addresses spread over all three


async def test_plugin_strategy_from_config(serve_app: AppFactory, tmp_path: Path) -> None:
    ports = [port for _, port in await three_backends(serve_app)]
    port = free_port()
    async with Peers() as peers, aiohttp.ClientSession() as http:
        await peers.proxy(
            f"listen: 127.0.0.1:{port}\n"
            'strategy: "tests.support.plugin_strategies:FirstAvailable"\n'
            "backends:\n"
            f"  - {{name: second, url: 'http://127.0.0.1:{ports[1]}'}}\n"
            f"  - {{name: first, url: 'http://127.0.0.1:{ports[0]}'}}\n",
            tmp_path,
            port=port,
        )
        for _ in range(6):
            async with http.get(f"http://127.0.0.1:{port}/") as resp:
                # FirstAvailable takes the first backend in config order.
                assert await resp.text() == "fast-2"
