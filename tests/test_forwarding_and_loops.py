"""Forwarding headers from clients (issue 29, N10) and loops through the proxy itself (N2).

``Forwarded``, ``X-Real-IP`` and ``X-Forwarded-Port`` reach the backend only from a peer in
``rate_limit.trusted_proxies``; every request gets the proxy's ``Via`` entry, and a request
already carrying it (a backend that is the proxy itself) gets 508 instead of going round.
"""

from __future__ import annotations

import asyncio

import pytest

from mcplb.proxy.config.schema import AdminConfig, Config, RateLimitConfig
from mcplb.proxy.relay import framing
from mcplb.proxy.relay.request import Request
from mcplb.proxy.server.worker import ProxyServer
from tests.conftest import ProxyFactory, backend_config
from tests.support.peers import free_port
from tests.support.rawhttp import request
from tests.test_hostile_input import RawServe, recording_proxy

SPOOFED = (
    b"GET /f HTTP/1.1\r\nHost: x\r\nForwarded: for=10.1.2.3;proto=https\r\n"
    b"X-Real-IP: 10.1.2.3\r\nX-Forwarded-Port: 443\r\nVia: 1.1 corp-gw\r\n\r\n"
)


async def test_forwarding_headers_of_an_untrusted_client_are_dropped(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    resp = await request(proxy.port, SPOOFED)
    assert resp.status == 200
    seen = recorder.requests[-1]
    for name in (b"forwarded", b"x-real-ip", b"x-forwarded-port"):
        assert seen.values(name) == [], name
    # Via is a list every proxy appends to: the client's entry stays, the proxy's follows.
    assert seen.values(b"via") == [b"1.1 corp-gw", proxy.runtime.frontend.via]
    assert proxy.runtime.frontend.via.startswith(b"1.1 mcplb-")


async def test_forwarding_headers_of_a_trusted_proxy_go_on(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    trusted = RateLimitConfig(rate=1000.0, burst=1000, trusted_proxies=("127.0.0.1/32",))
    proxy, recorder = await recording_proxy(start_proxy, serve_raw, rate_limit=trusted)
    resp = await request(proxy.port, SPOOFED)
    assert resp.status == 200
    seen = recorder.requests[-1]
    assert seen.values(b"forwarded") == [b"for=10.1.2.3;proto=https"]
    assert seen.values(b"x-real-ip") == [b"10.1.2.3"]
    assert seen.values(b"x-forwarded-port") == [b"443"]


async def test_a_request_carrying_the_proxys_own_via_gets_508(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    own = proxy.runtime.frontend.via.split(b" ")[1]
    for via in (b"1.1 " + own, b"1.0 other, 1.1 " + own + b" (mcplb)", b"HTTP/1.1 " + own):
        resp = await request(proxy.port, b"GET /l HTTP/1.1\r\nHost: x\r\nVia: " + via + b"\r\n\r\n")
        assert resp.status == 508, via
        assert b"loop_detected" in resp.body
    assert recorder.targets == []
    # Another mcplb's entry is not ours.
    resp = await request(proxy.port, b"GET /l HTTP/1.1\r\nHost: x\r\nVia: 1.1 mcplb-0\r\n\r\n")
    assert resp.status == 200


async def test_a_proxy_whose_backend_is_itself_answers_at_once() -> None:
    """What a discovered SRV record naming the proxy did: one request went round 733
    times. Now it goes round once and comes back 508, relayed as the answer."""
    port = free_port()
    config = Config(
        listen_host="127.0.0.1",
        listen_port=port,
        allowed_hosts=("*",),
        backends=(backend_config("self", port),),
        # No admin listener: its default port (9901) would be taken by a test beside it.
        admin=AdminConfig(enabled=False),
    )
    proxy = ProxyServer(config)
    await proxy.start()
    try:
        resp = await asyncio.wait_for(
            request(port, b"GET /loop HTTP/1.1\r\nHost: x\r\n\r\n"), timeout=5
        )
        assert resp.status == 508
        stats = proxy.runtime.stats
        assert stats is not None
    finally:
        await proxy.shutdown(grace=0)


@pytest.mark.parametrize(
    ("values", "loops"),
    [
        ([], False),
        ([b"1.1 mcplb-abc"], True),
        ([b"1.1 a, 1.1 mcplb-abc"], True),
        ([b"1.1 mcplb-abcd"], False),
        ([b"mcplb-abc"], False),
    ],
)
def test_loops_reads_every_via_entry(values: list[bytes], loops: bool) -> None:
    request = Request()
    request.headers = [(b"via", v) for v in values]
    assert framing.loops(request, b"1.1 mcplb-abc") is loops
