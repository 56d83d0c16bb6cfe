"""DNS discovery of backends against a real DNS server (dnsmasq on loopback) whose records
change while traffic flows; backends are real HTTP servers on 127.0.0.2-4."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from mcplb.healthcheck.monitor import HealthMonitor
from mcplb.proxy.cluster.backends import WEIGHT_SCALE, Backend
from mcplb.proxy.cluster.discovery import DnsDiscovery, backend_configs, merge
from mcplb.proxy.config.errors import ConfigError
from mcplb.proxy.config.loader import load_config, parse_config
from mcplb.proxy.config.schema import (
    ActiveHealthConfig,
    DiscoveryConfig,
    DnsDiscoveryConfig,
    HealthConfig,
)
from mcplb.proxy.observability.metrics import render
from mcplb.proxy.server.worker import ProxyServer
from tests.conftest import FakeClock, ProxyFactory, backend_config, session_app
from tests.support.dns_server import DnsServer
from tests.support.eventually import eventually
from tests.support.peers import Peers, free_port, wait_for_output
from tests.support.rawhttp import RawClient, Response

NAME = "mcp.test"
ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


@pytest.fixture
def dns_server(tmp_path: Path) -> Iterator[DnsServer]:
    server = DnsServer(tmp_path, {NAME: ["127.0.0.2", "127.0.0.3"]})
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def backends() -> AsyncIterator[int]:
    """One server on each of 127.0.0.2-4, all on the same port (A records carry no port)."""
    runners: list[web.AppRunner] = []
    port = 0
    for _ in range(20):  # the port picked on .2 may be taken on .3 or .4: try another
        port = free_port()
        try:
            for address in ADDRESSES:
                runner = web.AppRunner(session_app(address), handle_signals=False)
                await runner.setup()
                runners.append(runner)
                await web.TCPSite(runner, address, port).start()
        except OSError:
            for runner in runners:
                await runner.cleanup()
            runners = []
            continue
        break
    assert runners, "no port free on 127.0.0.2-4"
    yield port
    for runner in runners:
        await runner.cleanup()


async def send(port: int, head: bytes) -> Response:
    client = await RawClient.connect(port)
    try:
        await client.send(head)
        return await client.response()
    finally:
        await client.close()


def get(session: str | None = None) -> bytes:
    extra = f"Mcp-Session-Id: {session}\r\n" if session else ""
    return f"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


OPEN = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"


def dns_config(dns_server: DnsServer, port: int, **fields: object) -> DiscoveryConfig:
    # The backends are on 127.0.0.2-4: loopback, refused unless allowed.
    settings: dict[str, object] = {
        "name": NAME,
        "port": port,
        "interval": 0.2,
        "allow_networks": ("127.0.0.0/8",),
    }
    settings.update(fields)
    host, _, resolver_port = dns_server.address.rpartition(":")
    return DiscoveryConfig(
        DnsDiscoveryConfig(resolvers=((host, int(resolver_port)),), **settings)  # type: ignore[arg-type]
    )


def serving(proxy: ProxyServer) -> set[str]:
    """Backends taking new traffic (not draining)."""
    return {b.name for b in proxy.runtime.cluster.backends.backends if not b.draining}


async def test_records_change_under_traffic(
    start_proxy: ProxyFactory, dns_server: DnsServer, backends: int
) -> None:
    port = backends
    proxy = await start_proxy([], discovery=dns_config(dns_server, port))
    two, three, four = (f"{address}-{port}" for address in ADDRESSES)
    await eventually(
        lambda: serving(proxy) == {two, three},
        within=10.0,
        every=0.05,
        what="the first answer applied",
    )

    sessions: dict[str, str] = {}  # session id -> backend address that opened it
    for _ in range(6):
        opened = await send(proxy.port, OPEN)
        session = opened.header("mcp-session-id")
        assert opened.status == 200 and session is not None
        sessions[session] = opened.body.decode()
    assert Counter(sessions.values()) == {"127.0.0.2": 3, "127.0.0.3": 3}

    answered: Counter[str] = Counter()  # by backend address
    failures: list[str] = []
    misrouted: list[tuple[str, str]] = []
    in_session = 0  # requests sent with a session id
    stop = asyncio.Event()

    async def traffic() -> None:
        nonlocal in_session
        while not stop.is_set():
            for session, owner in sessions.items():
                response = await send(proxy.port, get(session))
                in_session += 1
                if response.status != 200:
                    failures.append(f"session {session}: {response.status} {response.body!r}")
                elif response.body.decode() != owner:
                    misrouted.append((session, response.body.decode()))
            response = await send(proxy.port, get())
            if response.status != 200:
                failures.append(f"no session: {response.status} {response.body!r}")
            else:
                answered[response.body.decode()] += 1

    flow = asyncio.create_task(traffic())
    try:
        await eventually(
            lambda: sum(answered.values()) >= 20,
            within=10.0,
            every=0.05,
            what="traffic before the change",
        )
        # .2 leaves, .4 joins: .2 drains with its sessions, .3 keeps its state.
        before = answered.copy()
        kept = proxy.runtime.cluster.backends.get(three)
        dns_server.set_hosts({NAME: ["127.0.0.3", "127.0.0.4"]})
        await eventually(
            lambda: serving(proxy) == {three, four},
            within=10.0,
            every=0.05,
            what="the changed answer applied",
        )
        assert proxy.runtime.cluster.backends.get(three) is kept  # the same object: state kept
        removed = proxy.runtime.cluster.backends.get(two)
        assert removed is not None and removed.draining
        await eventually(
            lambda: answered["127.0.0.4"] >= 10,
            within=10.0,
            every=0.05,
            what="traffic to the new backend",
        )
        after_change = answered.copy()
        await eventually(
            lambda: sum(answered.values()) >= sum(after_change.values()) + 20,
            within=10.0,
            every=0.05,
            what="more traffic",
        )
        assert answered["127.0.0.2"] == after_change["127.0.0.2"]  # no new work for .2

        # The DNS server stops answering: lookups fail, the last set stays.
        dns_server.pause()
        failed = proxy.discovery.counts["failed"] if proxy.discovery else 0
        await eventually(
            lambda: proxy.discovery is not None and proxy.discovery.counts["failed"] >= failed + 3,
            within=10.0,
            every=0.05,
            what="failed lookups counted",
        )
        # It answers again, without the name: an empty answer keeps the last set too.
        dns_server.resume()
        dns_server.set_hosts({NAME: []})
        await eventually(
            lambda: proxy.discovery is not None and proxy.discovery.counts["empty"] >= 3,
            within=10.0,
            every=0.05,
            what="empty answers counted",
        )
        assert serving(proxy) == {three, four}
        total = sum(answered.values())
        await eventually(
            lambda: sum(answered.values()) >= total + 20,
            within=10.0,
            every=0.05,
            what="traffic without DNS",
        )
    finally:
        stop.set()
        await flow

    assert failures == []
    assert misrouted == []
    assert proxy.discovery is not None
    counts = proxy.discovery.counts
    assert counts["changed"] == 2
    assert serving(proxy) == {three, four}
    exposed = render([proxy.runtime.snapshot(0)]).decode()
    for result in ("changed", "failed", "empty"):
        assert f'mcplb_discovery_lookups_total{{result="{result}"}} {counts[result]}.0' in exposed
    print(
        f"\ndiscovery: lookups {dict(counts)}; {in_session} requests in {len(sessions)} sessions "
        f"(0 failed, 0 misrouted); {sum(answered.values())} without a session, by backend "
        f"{dict(answered)} (before the change {dict(before)})"
    )


def test_discovery_config_errors_name_the_field_and_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("discovery:\n  dns:\n    name: mcp.test\n    record: A\n")
    assert "discovery.dns: record A needs a port" in str(info.value)
    text = (
        "discovery:\n  dns:\n    name: _mcp._tcp.mcp.test\n    record: SRV\n    port: 80\n"
        "    path: api\n    resolvers: [dns.local:53]\n    interval: 0s\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert [(issue.path, issue.line) for issue in info.value.issues] == [
        ("discovery.dns.port", 5),
        ("discovery.dns.path", 6),
        ("discovery.dns.resolvers[0]", 7),
        ("discovery.dns.interval", 8),
    ]
    # Static backends are optional with discovery, required without.
    config = parse_config("discovery: {dns: {name: mcp.test, port: 8000}}\n")
    assert config.backends == () and config.discovery is not None
    with pytest.raises(ConfigError, match='missing required key "backends"'):
        parse_config("listen: 127.0.0.1:8080\n")


def test_discovered_backends_are_named_from_address_and_port() -> None:
    config = DnsDiscoveryConfig(NAME, port=8000, scheme="https", path_prefix="/api")
    found = backend_configs(config, [("127.0.0.2", 8000), ("::1", 8001)])
    assert [(b.name, b.url, b.host, b.port) for b in found] == [
        ("127.0.0.2-8000", "https://127.0.0.2:8000/api", "127.0.0.2", 8000),
        ("__1-8001", "https://[::1]:8001/api", "::1", 8001),
    ]
    static = (backend_config("a", 8000),)  # 127.0.0.1:8000
    again = backend_configs(config, [("127.0.0.1", 8000), ("127.0.0.2", 8000)])
    assert [b.name for b in merge(static, again)] == ["a", "127.0.0.2-8000"]


async def test_srv_and_aaaa_records(tmp_path: Path) -> None:
    server = DnsServer(
        tmp_path,
        {"a.mcp.test": ["127.0.0.2"], "b.mcp.test": ["127.0.0.3"], "six.mcp.test": ["::1"]},
        srv=("_mcp._tcp.mcp.test,a.mcp.test,9001", "_mcp._tcp.mcp.test,b.mcp.test,9002"),
    )
    server.start()
    try:
        resolvers = (("127.0.0.1", server.port),)
        srv = DnsDiscovery(DnsDiscoveryConfig("_mcp._tcp.mcp.test", "SRV", resolvers=resolvers))
        assert await srv.lookup() == (("127.0.0.2", 9001), ("127.0.0.3", 9002))
        aaaa = DnsDiscovery(DnsDiscoveryConfig("six.mcp.test", "AAAA", 7000, resolvers=resolvers))
        assert await aaaa.lookup() == (("::1", 7000),)
        missing = DnsDiscovery(DnsDiscoveryConfig("none.mcp.test", port=1, resolvers=resolvers))
        assert await missing.refresh() is None
        assert missing.counts == {"empty": 1}
    finally:
        server.stop()


async def test_workers_share_what_worker_0_found(
    dns_server: DnsServer, backends: int, tmp_path: Path
) -> None:
    """Two workers, one lookup: the set worker 0 found reaches the other worker too."""
    port = free_port()
    async with Peers() as peers:
        proxy = await peers.proxy(
            f"""
listen: 127.0.0.1:{port}
workers: 2
log: {{access: false}}
sticky: {{store: signed, keys: ["discovery-test-key-0123456789abcdefgh"]}}
discovery:
  dns: {{name: {NAME}, port: {backends}, interval: 0.2s, resolvers: ["{dns_server.address}"],
        allow_networks: [127.0.0.0/8]}}
""",
            tmp_path,
            port=port,
        )
        await wait_for_output(proxy, "discovery applied", count=2)  # both workers
        dns_server.set_hosts({NAME: ["127.0.0.4"]})
        await wait_for_output(proxy, f"backend 127.0.0.4-{backends} added", count=2)
        # Many connections: both workers (SO_REUSEPORT spreads them) send to .4 only now.
        seen = Counter()
        for _ in range(40):
            response = await send(port, get())
            assert response.status == 200
            seen[response.body.decode()] += 1
        assert seen == {"127.0.0.4": 40}
        lookups = proxy.output().count("discovery: A mcp.test resolves to")
        assert lookups == 2  # by worker 0 only: the first answer, then the change


async def test_a_reload_keeps_what_discovery_found(
    dns_server: DnsServer, backends: int, tmp_path: Path
) -> None:
    """A reload of the file merges its static backends with the discovered ones; one that
    changes the discovery settings looks up again (the old set serves until it answers)."""
    path = tmp_path / "mcplb.yaml"
    text = f"""
listen: 127.0.0.1:0
admin: {{enabled: false}}
backends: [{{name: static, url: "http://127.0.0.2:{backends}"}}]
discovery:
  dns: {{name: {NAME}, port: {backends}, interval: 0.2s, resolvers: ["{dns_server.address}"],
        allow_networks: [127.0.0.0/8]}}
"""
    path.write_text(text)
    proxy = ProxyServer(load_config(path))
    await proxy.start()
    try:
        three, four = (f"{address}-{backends}" for address in ADDRESSES[1:])
        # 127.0.0.2 is the static backend already: not a second time.
        await eventually(
            lambda: serving(proxy) == {"static", three},
            within=10.0,
            every=0.05,
            what="the first answer",
        )
        text = text.replace("name: static", "name: renamed")
        path.write_text(text)
        result = await proxy.reload()
        assert result.ok
        assert result.messages == ["backend renamed added", "backend static removed (draining)"]
        assert serving(proxy) == {"renamed", three}
        dns_server.set_hosts({NAME: ["127.0.0.3"], "other.test": ["127.0.0.4"]})
        path.write_text(text.replace(f"name: {NAME}", "name: other.test"))
        assert (await proxy.reload()).ok
        assert serving(proxy) == {"renamed", three}  # until the new name answers
        await eventually(
            lambda: serving(proxy) == {"renamed", four},
            within=10.0,
            every=0.05,
            what="the new name's answer",
        )
        answers = {(await send(proxy.port, get())).body for _ in range(10)}
        assert answers == {b"127.0.0.2", b"127.0.0.4"}
    finally:
        await proxy.shutdown(grace=0)


async def test_added_backends_start_as_health_initial_with_slow_start() -> None:
    """What a reload (and so discovery) adds ramps up; what stays keeps its state."""
    clock = FakeClock()
    old = Backend(backend_config("old", 9001, 2))
    config = HealthConfig(slow_start=10.0)
    monitor = HealthMonitor(config, [old], clock=clock)
    assert old.weight == 2 * WEIGHT_SCALE  # there from the start: no ramp
    new = Backend(backend_config("new", 9002, 2))
    await monitor.reconfigure(config, [old, new])
    assert new.available and new.weight == 2  # 1% of its weight
    assert old.weight == 2 * WEIGHT_SCALE
    clock.advance(5)
    monitor.tick()
    assert new.weight == WEIGHT_SCALE
    clock.advance(5)
    monitor.tick()
    assert new.weight == 2 * WEIGHT_SCALE
    # With health.initial: unhealthy (and active checks), an added one waits for a probe.
    checked = HealthConfig(initial="unhealthy", active=ActiveHealthConfig(enabled=True, rise=1))
    monitor = HealthMonitor(checked, [old], clock=clock)
    late = Backend(backend_config("late", 9003))
    await monitor.reconfigure(checked, [old, late])
    assert not late.available
    monitor.record_probe(late, True, "ok")
    assert late.available
