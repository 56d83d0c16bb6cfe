"""Slow uploads cannot take the request slots (issue 29, N3).

The audit's case: ``max_in_flight: 20`` and 16 slow clients (70 KiB sent at once then
silence, or a trickle just above ``min_body_rate``); before, each took a slot when its head
was read and kept it until ``timeouts.body``, and 11 of 31 normal requests were served,
none in the first ~10 s. Now a body is read (up to ``limits.request_buffer``) before the
request takes a slot, and the minimum rate is judged over a sliding window. Real sockets
through a proxy, the slow clients on 127.0.0.2, the normal ones on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import statistics

from aiohttp import web

from mcplb.proxy.routing.body_pace import BodyPace
from tests.conftest import AppFactory, ProxyFactory, backend_config

WORK = 0.5  # seconds the backend takes per request: slots matter


def app() -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(WORK)
        return web.Response(text="ok")

    application = web.Application()
    application.router.add_route("*", "/{tail:.*}", handle)
    return application


async def slow_client(port: int, kind: str, stop: asyncio.Event) -> bytes:
    """A slow upload from 127.0.0.2; what the proxy answered (b"" if nothing)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
    writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 204800\r\n\r\n")
    try:
        if kind == "burst":
            writer.write(b"b" * 70 * 1024)  # then silence
        while not stop.is_set():
            if kind == "trickle":
                writer.write(b"t" * 300)  # 1.2 KiB/s, just above the 1 KiB/s minimum
            with_answer = asyncio.ensure_future(reader.read(200))
            done, _ = await asyncio.wait({with_answer}, timeout=0.25)
            if done:
                return with_answer.result()
            with_answer.cancel()
        return b""
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def normal(port: int) -> tuple[int, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
    writer.close()
    return int(head.split(b" ", 2)[1]), loop.time() - start


async def test_sixteen_slow_clients_do_not_delay_normal_requests(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    proxy = await start_proxy(
        [backend_config("a", await serve_app(app()))],
        limits={"max_in_flight": 20, "queue_timeout": 5.0},
    )
    stop = asyncio.Event()
    slow = [
        asyncio.create_task(slow_client(proxy.port, "burst" if n % 2 else "trickle", stop))
        for n in range(16)
    ]
    await asyncio.sleep(1.0)  # every slow upload has begun
    held = proxy.runtime.cluster.admission.requests
    loop = asyncio.get_running_loop()
    results = []
    for _ in range(3):  # 31 normal requests in three bursts over ~3 s
        results += await asyncio.gather(*(normal(proxy.port) for _ in range(10)))
    results.append(await normal(proxy.port))
    stop_at = loop.time() + 8.0
    while loop.time() < stop_at and not all(t.done() for t in slow[1::2]):
        await asyncio.sleep(0.1)
    stop.set()
    answers = await asyncio.gather(*slow)
    latencies = sorted(seconds for _, seconds in results)
    print(
        f"\nslots held by 16 slow uploads: {held}; normal requests: "
        f"{sum(1 for s, _ in results if s == 200)}/{len(results)} served, latency median "
        f"{statistics.median(latencies):.2f} s, max {latencies[-1]:.2f} s "
        f"(backend work {WORK} s)"
    )
    # The tricklers' bodies are still being read: no slot. The 70 KiB bursts passed
    # request_buffer (64 KiB) and stream on, holding a slot until the window cuts them.
    assert held <= 8
    assert [status for status, _ in results] == [200] * 31
    assert latencies[-1] < 3 * WORK  # never queued behind the slow clients
    # 70 KiB then silence: too slow over the last 5 s, so 408 well before timeouts.body.
    bursts = answers[1::2]
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in bursts), bursts


def test_the_window_forgets_an_early_burst() -> None:
    pace = BodyPace(5.0)
    # 70 KiB in the first read, then nothing: the average from the start stays above
    # 1 KiB/s for 70 s; the window sees nothing for 5 s.
    verdicts = [pace.too_slow(t / 2, 70 * 1024, 1024) for t in range(1, 13)]
    assert verdicts[:9] == [False] * 9  # not yet a whole window
    assert verdicts[-1] is True
    steady = BodyPace(5.0)
    assert not any(steady.too_slow(t / 2, 600 * t, 1024) for t in range(1, 40))  # 1.2 KiB/s
    slow = BodyPace(5.0)
    assert any(slow.too_slow(t / 2, 400 * t, 1024) for t in range(1, 40))  # 0.8 KiB/s
    assert len(slow.marks) <= 12


async def test_one_address_cannot_hold_every_slot(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> None:
    """max_in_flight_per_client 2: one address holds or queues for at most 2 requests;
    another address is served meanwhile."""
    proxy = await start_proxy(
        [backend_config("a", await serve_app(app()))],
        limits={"max_in_flight": 4, "max_in_flight_per_client": 2, "queue_timeout": 5.0},
    )

    async def get(source: str) -> int:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", proxy.port, local_addr=(source, 0)
        )
        writer.write(b"GET /g HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
        return int(head.split(b" ", 2)[1])

    greedy = await asyncio.gather(*(get("127.0.0.2") for _ in range(6)))
    assert sorted(greedy) == [200, 200, 429, 429, 429, 429]
    both = await asyncio.gather(get("127.0.0.3"), *(get("127.0.0.2") for _ in range(2)))
    assert both[0] == 200
    assert proxy.runtime.frontend.client_slots.by_client == {}  # all given back
