"""DNS answers are untrusted input (issue 29, N2), against a real dnsmasq.

The audit's cases: an SRV answer naming the proxy's admin API or its own listener, A
answers 0.0.0.0 and 169.254.169.254 (the cloud metadata service), multicast, and 100 A
records where a handful was meant. No traffic goes anywhere but 127.0.0.0/8.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from mcplb.proxy.cluster.discovery import AddressScreen, DnsDiscovery
from mcplb.proxy.config.schema import (
    AdminConfig,
    Config,
    DiscoveryConfig,
    DnsDiscoveryConfig,
)
from mcplb.proxy.server.worker import ProxyServer
from tests.conftest import session_app
from tests.support.dns_server import DnsServer
from tests.support.eventually import eventually
from tests.support.peers import free_port
from tests.support.rawhttp import request


@pytest.fixture
async def backend_on_2() -> AsyncIterator[int]:
    """A real HTTP server on 127.0.0.2 (answers its address)."""
    runner = web.AppRunner(session_app("127.0.0.2"), handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.2", port).start()
    yield port
    await runner.cleanup()


def serving(proxy: ProxyServer) -> set[str]:
    return {b.name for b in proxy.runtime.cluster.backends.backends}


async def test_srv_naming_the_proxy_itself_or_its_admin_api_is_refused(
    tmp_path: Path, backend_on_2: int, caplog: pytest.LogCaptureFixture
) -> None:
    listen, admin = free_port(), free_port()
    server = DnsServer(
        tmp_path,
        {"self.mcp.test": ["127.0.0.1"], "zero.mcp.test": ["0.0.0.0"], "b.mcp.test": ["127.0.0.2"]},
        srv=(
            f"_mcp._tcp.mcp.test,self.mcp.test,{admin}",
            f"_mcp._tcp.mcp.test,self.mcp.test,{listen}",
            f"_mcp._tcp.mcp.test,zero.mcp.test,{admin}",
            f"_mcp._tcp.mcp.test,b.mcp.test,{backend_on_2}",
        ),
    )
    server.start()
    dns = DnsDiscoveryConfig(
        "_mcp._tcp.mcp.test",
        "SRV",
        interval=0.2,
        resolvers=(("127.0.0.1", server.port),),
        allow_networks=("127.0.0.0/8",),  # loopback allowed: the own endpoints still are not
    )
    config = Config(
        listen_host="127.0.0.1",
        listen_port=listen,
        admin=AdminConfig(listen_host="127.0.0.1", listen_port=admin),
        discovery=DiscoveryConfig(dns),
    )
    proxy = ProxyServer(config)
    caplog.set_level(logging.WARNING, "mcplb.discovery")
    await proxy.start()
    try:
        await eventually(
            lambda: serving(proxy) == {f"127.0.0.2-{backend_on_2}"},
            within=10.0,
            every=0.05,
            what="only the real backend adopted",
        )
        for _ in range(6):  # round robin over what was adopted: always the real one
            response = await request(listen, b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert response.status == 200
        assert not proxy.runtime.cluster.backends.by_name.get(f"127.0.0.1-{admin}")
        text = caplog.text
        assert f"127.0.0.1:{admin} refused: the proxy's admin API" in text
        assert f"127.0.0.1:{listen} refused: the proxy's own listener" in text
        assert f"0.0.0.0:{admin} refused: an unspecified address (this host)" in text
    finally:
        await proxy.shutdown(grace=0)
        server.stop()


async def test_local_and_special_addresses_are_refused_by_default(tmp_path: Path) -> None:
    answers = ["127.0.0.2", "169.254.169.254", "0.0.0.0", "224.0.0.1", "192.0.2.10"]
    server = DnsServer(tmp_path, {"mcp.test": answers})
    server.start()
    try:
        resolvers = (("127.0.0.1", server.port),)
        default = DnsDiscovery(DnsDiscoveryConfig("mcp.test", port=8000, resolvers=resolvers))
        # 192.0.2.10 (documentation range) stands for a remote backend: looked up, never
        # connected to.
        assert await default.refresh() == (("192.0.2.10", 8000),)
        allowed = DnsDiscovery(
            DnsDiscoveryConfig(
                "mcp.test", port=8000, resolvers=resolvers, allow_networks=("127.0.0.2/32",)
            )
        )
        assert await allowed.refresh() == (("127.0.0.2", 8000), ("192.0.2.10", 8000))
        server.set_hosts({"mcp.test": ["127.0.0.2", "169.254.169.254"]})
        nothing = DnsDiscovery(DnsDiscoveryConfig("mcp.test", port=8000, resolvers=resolvers))
        assert await nothing.refresh() is None  # nothing adoptable: the last set stays
        assert nothing.counts == {"empty": 1}
    finally:
        server.stop()


async def test_max_backends_caps_one_answer_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    addresses = [f"127.1.0.{n}" for n in range(1, 101)]
    server = DnsServer(tmp_path, {"many.mcp.test": addresses})
    server.start()
    try:
        settings = DnsDiscoveryConfig(
            "many.mcp.test",
            port=8000,
            resolvers=(("127.0.0.1", server.port),),
            allow_networks=("127.0.0.0/8",),
        )
        assert settings.max_backends == 64  # the default
        caplog.set_level(logging.WARNING, "mcplb.discovery")
        found = await DnsDiscovery(settings).refresh()
        assert found is not None and len(found) == 64
        assert len(await DnsDiscovery(settings).lookup()) == 100  # all were answered
        assert caplog.text.count("over discovery.dns.max_backends") == 36
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("address", "why"),
    [
        (("127.0.0.1", 80), "a loopback address"),
        (("::1", 80), "a loopback address"),
        (("::ffff:127.0.0.1", 80), "a loopback address"),
        (("169.254.169.254", 80), "a link-local address"),
        (("fe80::1", 80), "a link-local address"),
        (("0.0.0.0", 80), "an unspecified address (this host)"),
        (("::", 80), "an unspecified address (this host)"),
        (("239.1.1.1", 80), "a multicast address"),
        (("ff02::1", 80), "a multicast address"),
        (("10.0.0.5", 9901), None),
        (("127.0.0.1", 9901), "the proxy's admin API"),
        (("10.0.0.5", 8080), None),
    ],
)
def test_the_screen(address: tuple[str, int], why: str | None) -> None:
    screen = AddressScreen(
        (), [("127.0.0.1", 8080, "listener"), ("127.0.0.1", 9901, "the proxy's admin API")]
    )
    assert screen.refusal(address) == why


def test_a_listener_on_every_address_refuses_this_hosts_addresses_on_its_port() -> None:
    screen = AddressScreen(("127.0.0.0/8",), [("0.0.0.0", 8080, "the proxy's own listener")])
    assert screen.refusal(("127.0.0.5", 8080)) == "the proxy's own listener"
    assert screen.refusal(("127.0.0.5", 8081)) is None
    assert screen.refusal(("10.9.9.9", 8080)) is None  # another machine's port 8080
