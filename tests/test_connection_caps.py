"""Connections and memory one client can hold (issue 29, N4): caps on client connections
in all and per address, sized from the descriptor limit by default, and a keep-alive idle
timeout shorter than the stream idle timeout. Real sockets from several loopback
addresses."""

from __future__ import annotations

import asyncio
import contextlib

from mcplb.proxy.config.loader import parse_config
from mcplb.proxy.config.schema import TimeoutsConfig
from mcplb.proxy.routing.connection_caps import ConnectionCaps, default_caps
from tests.conftest import ProxyFactory
from tests.support.rawhttp import RawClient
from tests.test_hostile_input import RawServe, recording_proxy


async def connect(port: int, source: str) -> RawClient:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    return RawClient(reader, writer)


async def refused(port: int, source: str) -> bool:
    """Whether a new connection from ``source`` is answered 503 too_many_connections."""
    client = await connect(port, source)
    try:
        data = await client.read_until_closed(timeout=3)
    except (ConnectionError, TimeoutError):
        return False
    finally:
        await client.close()
    return data.startswith(b"HTTP/1.1 503 ") and b"too_many_connections" in data


async def served(client: RawClient) -> bool:
    await client.send(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
    return (await client.response(timeout=3)).status == 200


async def test_caps_per_address_and_in_all(start_proxy: ProxyFactory, serve_raw: RawServe) -> None:
    proxy, _ = await recording_proxy(
        start_proxy,
        serve_raw,
        limits={"max_client_connections": 5, "max_connections_per_client": 3},
    )
    port = proxy.port
    held = [await connect(port, "127.0.0.1") for _ in range(3)]
    for client in held:
        assert await served(client)
    assert await refused(port, "127.0.0.1")  # a 4th from the same address
    held += [await connect(port, "127.0.0.2") for _ in range(2)]
    for client in held[3:]:
        assert await served(client)
    assert await refused(port, "127.0.0.3")  # 5 in all: a new address is refused too
    caps = proxy.runtime.frontend.connection_caps
    assert (caps.open, caps.by_client) == (5, {"127.0.0.1": 3, "127.0.0.2": 2})
    await held.pop().close()
    for _ in range(100):  # the proxy sees the close on its next loop turns
        if caps.open == 4:
            break
        await asyncio.sleep(0.01)
    fresh = await connect(port, "127.0.0.3")
    assert await served(fresh)
    held.append(fresh)
    for client in held:
        await client.close()


def test_default_caps_come_from_the_descriptor_limit() -> None:
    assert default_caps(None, None, 1024) == (448, 224)
    assert default_caps(None, None, 20000) == (9936, 4968)
    assert default_caps(None, None, 100) == (16, 8)  # never none at all
    assert default_caps(100, None, 20000) == (100, 50)
    assert default_caps(100, 500, 20000) == (100, 100)  # per address never above the total
    limits = parse_config(
        "backends: [{name: a, url: 'http://127.0.0.1:1'}]\n"
        "limits: {max_client_connections: 10, max_connections_per_client: 2}\n"
    ).limits
    assert (limits.max_client_connections, limits.max_connections_per_client) == (10, 2)


def test_the_address_table_never_outgrows_the_connections() -> None:
    caps = ConnectionCaps(total=1000, per_client=1)
    for n in range(500):
        assert caps.admit(f"10.0.{n // 256}.{n % 256}")
        caps.release(f"10.0.{n // 256}.{n % 256}")
    assert caps.by_client == {} and caps.open == 0


async def test_an_idle_keep_alive_connection_closes_after_timeouts_keepalive(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    assert TimeoutsConfig().keepalive == 15.0  # the default (nginx 75 s, HAProxy 10 s)
    proxy, _ = await recording_proxy(
        start_proxy, serve_raw, timeouts={"keepalive": 0.5, "idle": 60.0}
    )
    client = await connect(proxy.port, "127.0.0.1")
    assert await served(client)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await client.is_closed(timeout=5)
    assert loop.time() - start < 3.0  # keepalive and the sweep's precision, not idle's 60 s
    with contextlib.suppress(ConnectionError):
        await client.close()
    assert proxy.runtime.frontend.connection_caps.open == 0
