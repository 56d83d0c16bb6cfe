"""Admin API, metrics after known traffic, drain, and the access log."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from mcplb.proxy.config.schema import AdminConfig, StickyConfig
from mcplb.proxy.server.worker import ProxyServer
from tests.conftest import AppFactory, ProxyFactory, backend_config
from tests.support import rawhttp
from tests.support.peers import INITIALIZE, MCP_HEADERS, Peers, free_port, mcp_session, result_text

TOKEN = "admin-token-" + "x" * 20
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, keyed by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def get_metrics(http: aiohttp.ClientSession, admin_port: int) -> Any:
    async with http.get(f"http://127.0.0.1:{admin_port}/metrics") as resp:
        assert resp.status == 200
        return samples(await resp.text())


def minting_app(name: str) -> web.Application:
    """Answers its name; mints a session id on JSON-RPC initialize; 404s unknown sessions."""
    known: set[str] = set()

    async def handle(request: web.Request) -> web.Response:
        session = request.headers.get("Mcp-Session-Id")
        if request.method == "POST" and session is None:
            body = await request.json()
            if body.get("method") == "initialize":
                known.add(f"{name}-{len(known)}")
                return web.json_response(
                    {"name": name}, headers={"Mcp-Session-Id": f"{name}-{len(known) - 1}"}
                )
        if session is not None and session not in known:
            return web.json_response({"error": "unknown"}, status=404)
        await request.read()
        return web.json_response({"name": name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.fixture
async def admin_proxy(
    start_proxy: ProxyFactory, serve_app: AppFactory
) -> AsyncIterator[ProxyServer]:
    configs = [backend_config(n, await serve_app(minting_app(n))) for n in ("a", "b")]
    proxy = await start_proxy(
        configs,
        admin=AdminConfig(listen_port=0, token=TOKEN),
        sticky=StickyConfig(store="memory"),
        strategy="round_robin",
    )
    yield proxy


async def test_metrics_count_known_traffic_exactly(admin_proxy: ProxyServer) -> None:
    port, admin = admin_proxy.port, admin_proxy.admin_port
    assert admin is not None
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(4):
            async with http.get(f"{base}/page") as resp:
                assert resp.status == 200
        async with http.post(f"{base}/mcp", json=INITIALIZE, headers=MCP_HEADERS) as resp:
            session = resp.headers["Mcp-Session-Id"]
            owner = (await resp.json())["name"]
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "add"}}
        headers = {**MCP_HEADERS, "Mcp-Session-Id": session}
        async with http.post(f"{base}/mcp", json=call, headers=headers) as resp:
            assert resp.status == 200
        headers = {**MCP_HEADERS, "Mcp-Session-Id": "never-issued"}
        async with http.post(f"{base}/mcp", json=call, headers=headers) as resp:
            assert resp.status == 404
        metrics = await get_metrics(http, admin)
    gets = sum(
        value(metrics, "mcplb_requests_total", backend=b, method="GET", code="2xx") for b in "ab"
    )
    assert gets == 4
    posts = value(metrics, "mcplb_requests_total", backend=owner, method="POST", code="2xx")
    assert posts == 2
    assert (
        value(metrics, "mcplb_response_first_byte_seconds_count", backend="a")
        + value(metrics, "mcplb_response_first_byte_seconds_count", backend="b")
        == 6
    )
    assert value(metrics, "mcplb_sessions_created_total", backend=owner) == 1
    assert value(metrics, "mcplb_sessions_active", backend=owner) == 1
    assert value(metrics, "mcplb_session_not_found_total") == 1
    assert value(metrics, "mcplb_mcp_requests_total", method="initialize", tool="") == 1
    assert value(metrics, "mcplb_mcp_requests_total", method="tools/call", tool="add") == 2
    assert value(metrics, "mcplb_in_flight_requests", backend="a") == 0
    assert value(metrics, "mcplb_backend_up", backend="a") == 1
    assert value(metrics, "mcplb_backend_weight", backend="a") == 100
    assert value(metrics, "mcplb_workers") == 1
    assert ("process_resident_memory_bytes", ()) in metrics


async def test_status_health_and_readiness(admin_proxy: ProxyServer) -> None:
    admin = f"http://127.0.0.1:{admin_proxy.admin_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{admin}/healthz") as resp:
            assert (resp.status, await resp.json()) == (200, {"status": "alive"})
        async with http.get(f"{admin}/readyz") as resp:
            assert resp.status == 200
            assert (await resp.json())["available_backends"] == 2
        async with http.get(f"{admin}/status", headers=AUTH) as resp:
            status = await resp.json()
        assert set(status) == {
            "version",
            "uptime_seconds",
            "workers",
            "config",
            "strategy",
            "backends",
        }
        assert [b["name"] for b in status["backends"]] == ["a", "b"]
        assert set(status["backends"][0]) == {
            "name",
            "url",
            "state",
            "available",
            "draining",
            "weight",
            "ramped_weight",
            "in_flight",
            "streams",
            "sessions",
            "requests_total",
            "errors_total",
        }
        assert status["backends"][0]["state"] == "healthy"
        for name in ("a", "b"):
            async with http.post(
                f"{admin}/backends/{name}/drain", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as resp:
                assert resp.status == 200
        async with http.get(f"{admin}/readyz") as resp:
            assert resp.status == 503
        async with http.get(f"{admin}/status", headers=AUTH) as resp:
            assert {b["state"] for b in (await resp.json())["backends"]} == {"draining"}


async def test_mutating_calls_need_the_token(admin_proxy: ProxyServer) -> None:
    url = f"http://127.0.0.1:{admin_proxy.admin_port}/backends/a/drain"
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            async with http.post(url, headers=headers) as resp:
                assert resp.status == 401
        assert admin_proxy.runtime.cluster.backends.by_name["a"].draining is False
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with http.post(url.replace("/a/", "/zz/"), headers=auth) as resp:
            assert resp.status == 404
        async with http.post(url, headers=auth) as resp:
            assert (resp.status, await resp.json()) == (
                200,
                {"name": "a", "draining": True, "deadline": None},
            )
        assert admin_proxy.runtime.cluster.backends.by_name["a"].available is False


async def test_drain_keeps_existing_sessions_and_sends_new_ones_elsewhere(
    peers: Peers, start_proxy: ProxyFactory
) -> None:
    backends = [await peers.backend(n) for n in ("mcp-a", "mcp-b")]
    proxy = await start_proxy(
        [backend_config(b.name, b.port) for b in backends], admin=AdminConfig(listen_port=0)
    )
    url = f"http://127.0.0.1:{proxy.port}/mcp"
    admin = f"http://127.0.0.1:{proxy.admin_port}"
    async with mcp_session(url) as session, aiohttp.ClientSession() as http:
        owner = result_text(await session.call_tool("whoami", {}))
        async with http.post(f"{admin}/backends/{owner}/drain") as resp:
            assert resp.status == 200
        for _ in range(3):  # the existing session keeps working where it lives
            assert result_text(await session.call_tool("whoami", {})) == owner
        for _ in range(3):  # new sessions go to the other backend
            async with mcp_session(url) as fresh:
                assert result_text(await fresh.call_tool("whoami", {})) != owner
        async with http.post(f"{admin}/backends/{owner}/undrain") as resp:
            assert resp.status == 200
        owners = set()
        for _ in range(4):
            async with mcp_session(url) as fresh:
                owners.add(result_text(await fresh.call_tool("whoami", {})))
        assert owner in owners


async def test_two_workers_aggregate_metrics_and_log_access(
    serve_app: AppFactory, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    backend = await serve_app(minting_app("a"))
    async with Peers() as peers, aiohttp.ClientSession() as http:
        proxy = await peers.proxy(
            f"listen: 127.0.0.1:{port}\nworkers: 2\nsticky: {{mcp_sessions: false}}\n"
            f"admin: {{listen: '127.0.0.1:{admin}'}}\nlog: {{format: json}}\n"
            f"backends:\n  - {{name: a, url: 'http://127.0.0.1:{backend}'}}\n",
            tmp_path,
            port=port,
        )
        for _ in range(30):
            async with (
                aiohttp.ClientSession() as fresh,
                fresh.get(f"http://127.0.0.1:{port}/x") as r,
            ):
                assert r.status == 200
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:  # workers publish their counters every second
            try:
                metrics = await get_metrics(http, admin)
            except aiohttp.ClientError:
                metrics = {}
            total = value(metrics, "mcplb_requests_total", backend="a", method="GET", code="2xx")
            if (total, value(metrics, "mcplb_workers")) == (30, 2) or loop.time() > deadline:
                break
            await asyncio.sleep(0.2)
        assert total == 30
        assert value(metrics, "mcplb_workers") == 2
        while True:  # access lines are written in batches, at least every 100 ms
            lines = [json.loads(x) for x in proxy.stdout().splitlines() if x.startswith("{")]
            if len(lines) >= 30 or loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        assert len(lines) == 30
        assert {line["status"] for line in lines} == {200}
        assert {line["backend"] for line in lines} == {"a"}
        assert all(line["path"] == "/x" and len(line["request_id"]) == 16 for line in lines)


async def test_access_log_hashes_session_ids(
    admin_proxy: ProxyServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mcplb.access")
    base = f"http://127.0.0.1:{admin_proxy.port}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/mcp", json=INITIALIZE, headers=MCP_HEADERS) as resp:
            session = resp.headers["Mcp-Session-Id"]
        headers = {**MCP_HEADERS, "Mcp-Session-Id": session, "X-Request-Id": "req-42"}
        async with http.get(f"{base}/page?q=1", headers=headers) as resp:
            assert resp.status == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "mcplb.access"]
    assert len(lines) == 2
    last = lines[-1]
    assert '"GET /page?q=1 HTTP/1.1" 200' in last
    assert f"session={hashlib.sha256(session.encode()).hexdigest()[:12]}" in last
    assert session not in last
    assert "request_id=req-42" in last


async def test_drain_deadline_ends_remaining_sessions(admin_proxy: ProxyServer) -> None:
    base = f"http://127.0.0.1:{admin_proxy.port}"
    admin = f"http://127.0.0.1:{admin_proxy.admin_port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/mcp", json=INITIALIZE, headers=MCP_HEADERS) as resp:
            session = resp.headers["Mcp-Session-Id"]
            owner = (await resp.json())["name"]
        headers = {**MCP_HEADERS, "Mcp-Session-Id": session}
        async with http.post(f"{admin}/backends/{owner}/drain?deadline=0.5s", headers=auth) as resp:
            assert resp.status == 200
        async with http.post(f"{base}/mcp", json={}, headers=headers) as resp:
            assert resp.status == 200  # before the deadline the session still works
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        status = 200
        while status == 200 and loop.time() < deadline:
            await asyncio.sleep(0.1)
            async with http.post(f"{base}/mcp", json={}, headers=headers) as resp:
                status = resp.status
        assert status == 404  # after it, the client is told to start over elsewhere
        async with http.post(f"{admin}/backends/{owner}/drain?deadline=soon", headers=auth) as resp:
            assert resp.status == 400
        async with http.post(f"{admin}/backends/{owner}/undrain", headers=auth) as resp:
            assert resp.status == 200
        async with http.post(f"{base}/mcp", json={}, headers=headers) as resp:
            assert resp.status == 200  # the binding was kept; undrained, it routes again


async def test_large_chunked_json_bodies_are_not_kept_for_method_counting(
    start_proxy: ProxyFactory, serve_raw: Any
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # takes the request, never answers

    proxy = await start_proxy([backend_config("a", await serve_raw(silent))])
    _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    piece = b'{"pad": "' + b"x" * 60000 + b'"}'
    writer.write(
        b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    for _ in range(4):
        writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
    await writer.drain()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    request = None
    while loop.time() < deadline:
        connection = next(iter(proxy.connections), None)
        request = connection.current if connection is not None else None
        if request is not None and request.body_size >= 4 * len(piece):
            break
        await asyncio.sleep(0.01)
    assert request is not None and request.body_size >= 4 * len(piece)
    assert request.sniff is None  # dropped once past the limit, not grown with the body
    writer.close()


# --- who may read what (issue 11, point 4) --------------------------------------------


async def test_a_non_utf8_authorization_header_is_a_wrong_token(admin_proxy: ProxyServer) -> None:
    port = admin_proxy.admin_port
    assert port is not None
    for path in (b"GET /status", b"POST /backends/a/drain"):
        head = path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\xfe\xc3("
        response = await rawhttp.request(port, head + b"\r\nContent-Length: 0\r\n\r\n")
        assert response.status == 401, response.body
        assert json.loads(response.body)["error"] == "unauthorized"
    assert admin_proxy.runtime.cluster.backends.by_name["a"].draining is False


async def test_status_needs_the_token_when_one_is_set(admin_proxy: ProxyServer) -> None:
    url = f"http://127.0.0.1:{admin_proxy.admin_port}/status"
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            async with http.get(url, headers=headers) as resp:
                body = await resp.text()
                assert resp.status == 401
                assert resp.headers["WWW-Authenticate"] == "Bearer"
                assert json.loads(body)["error"] == "unauthorized"
                assert "127.0.0.1" not in body and '"backends"' not in body
        async with http.get(url, headers=AUTH) as resp:
            assert resp.status == 200
            status = await resp.json()
    urls = {b["name"]: b["url"] for b in status["backends"]}
    backends = admin_proxy.runtime.cluster.backends
    assert urls == {name: b.config.url for name, b in backends.by_name.items()}


async def test_status_without_a_token_hides_urls_and_the_config_file(
    start_proxy: ProxyFactory, serve_app: AppFactory, tmp_path: Path
) -> None:
    backend = await serve_app(minting_app("a"))
    source = tmp_path / "mcplb.yaml"
    source.write_text("backends: []  # stands for the file the config came from\n")
    proxy = await start_proxy(
        [backend_config("a", backend)], admin=AdminConfig(listen_port=0), source=str(source)
    )
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{proxy.admin_port}/status") as resp,
    ):
        assert resp.status == 200
        body = await resp.text()
    status = json.loads(body)
    assert [b["name"] for b in status["backends"]] == ["a"]
    assert "url" not in status["backends"][0]
    assert f"127.0.0.1:{backend}" not in body
    assert str(source) not in body and "mcplb.yaml" not in body
    assert set(status["config"]) == {"generation", "worker_generations"}
    plain = hashlib.sha256(source.read_bytes()).hexdigest()
    assert plain not in body


async def test_status_shows_a_digest_keyed_with_the_token_only_to_its_holders(
    start_proxy: ProxyFactory, serve_app: AppFactory, tmp_path: Path
) -> None:
    backend = await serve_app(minting_app("a"))
    source = tmp_path / "mcplb.yaml"
    source.write_text(f"admin: {{token: {TOKEN}}}\n")
    proxy = await start_proxy(
        [backend_config("a", backend)],
        admin=AdminConfig(listen_port=0, token=TOKEN),
        source=str(source),
    )
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{proxy.admin_port}/status", headers=AUTH) as resp,
    ):
        body = await resp.text()
    config = json.loads(body)["config"]
    assert config["path"] == str(source)
    keyed = hmac.new(TOKEN.encode(), source.read_bytes(), hashlib.sha256).hexdigest()
    assert config["hmac_sha256"] == keyed
    # A plain hash of a file holding the token would let anyone test token guesses offline.
    assert hashlib.sha256(source.read_bytes()).hexdigest() not in body


async def test_metrics_can_need_the_token(start_proxy: ProxyFactory, serve_app: AppFactory) -> None:
    backend = await serve_app(minting_app("a"))
    proxy = await start_proxy(
        [backend_config("a", backend)],
        admin=AdminConfig(listen_port=0, token=TOKEN, protect_metrics=True),
    )
    url = f"http://127.0.0.1:{proxy.admin_port}"
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with http.get(f"{url}/metrics", headers=headers) as resp:
                assert resp.status == 401
                assert "mcplb_" not in await resp.text()
        async with http.get(f"{url}/metrics", headers=AUTH) as resp:
            assert resp.status == 200
            assert "mcplb_requests_total" in await resp.text()
        for path in ("/healthz", "/readyz"):  # orchestrator probes send no token
            async with http.get(f"{url}{path}") as resp:
                assert resp.status == 200


async def test_metrics_stay_open_by_default_with_a_token(admin_proxy: ProxyServer) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{admin_proxy.admin_port}/metrics") as resp,
    ):
        assert resp.status == 200
