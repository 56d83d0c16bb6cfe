"""A real Prometheus scrapes a real mcplb: the /metrics contract end to end.

mcplb runs as a subprocess (``mcplb run``) in front of an aiohttp backend, with its admin
API on a free loopback port; Prometheus (the Debian package, installed by ``make test``)
scrapes that port every second as job ``mcplb`` and loads deploy/prometheus/alerts.yaml.
After a known number of requests the test reads the counters back through Prometheus' HTTP
API, then checks that the alert rules and every dashboard query evaluate without error on
the real series, and that a healthy proxy raises no alert. Everything listens on 127.0.0.1,
every wait is bounded, and every process is stopped on teardown.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import AppFactory
from tests.support.eventually import eventually
from tests.support.peers import Peers, ProxyProcess, free_port, wait_for_port
from tests.support.prometheus_server import (
    ALERTS,
    JOB,
    PrometheusMissing,
    PrometheusServer,
    dashboard_exprs,
    load_contract,
    load_dashboard,
    start_prometheus,
    substitute_variables,
)

BACKEND = "web"
REQUESTS = 7
SCRAPE_WAIT = 30.0  # seconds for a value to show up in Prometheus (scrapes every 1 s)
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10.0)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def backend_port(serve_app: AppFactory) -> int:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello from {BACKEND}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    return await serve_app(app)


@pytest.fixture
async def mcplb(peers: Peers, backend_port: int, tmp_path: Path) -> tuple[ProxyProcess, int]:
    """The proxy and its admin port (once that accepts connections)."""
    port, admin_port = free_port(), free_port()
    config = f"""
listen: "127.0.0.1:{port}"
admin:
  listen: "127.0.0.1:{admin_port}"
backends:
  - name: {BACKEND}
    url: "http://127.0.0.1:{backend_port}"
"""
    proxy = await peers.proxy(config, tmp_path, port=port)
    await wait_for_port("127.0.0.1", admin_port, process=proxy)
    return proxy, admin_port


@pytest.fixture
async def prometheus(mcplb: tuple[ProxyProcess, int]) -> AsyncIterator[PrometheusServer]:
    _, admin_port = mcplb
    try:
        server = await start_prometheus([f"127.0.0.1:{admin_port}"], rule_files=[ALERTS])
    except PrometheusMissing as error:
        pytest.fail(str(error), pytrace=False)
    yield server
    await server.stop()


async def scraped(
    what: str,
    probe: Callable[[], Awaitable[Any]],
    done: Callable[[Any], bool],
    *,
    diagnostics: Callable[[], str] = lambda: "",
) -> Any:
    """The first answer of ``probe`` (a Prometheus API call) that ``done`` accepts."""

    async def accepted() -> Any:
        result = await probe()
        return result if done(result) else None

    return await eventually(accepted, within=SCRAPE_WAIT, every=0.5, what=what, detail=diagnostics)


def scalar(result: list[dict[str, Any]]) -> float | None:
    """The value of a one-sample instant vector; None when empty."""
    if not result:
        return None
    assert len(result) == 1, result
    return float(result[0]["value"][1])


async def test_prometheus_scrapes_mcplb(
    mcplb: tuple[ProxyProcess, int], prometheus: PrometheusServer
) -> None:
    proxy, admin_port = mcplb

    def diagnostics() -> str:
        return (
            f"--- mcplb output:\n{proxy.output()[-3000:]}\n--- prometheus log:\n{prometheus.log()}"
        )

    # The target is scraped successfully.
    targets = await scraped(
        "the mcplb scrape target's health",
        lambda: prometheus.api("targets", state="active"),
        lambda data: [t["health"] for t in data["activeTargets"]] == ["up"],
        diagnostics=diagnostics,
    )
    (target,) = targets["activeTargets"]
    assert target["labels"] == {"instance": f"127.0.0.1:{admin_port}", "job": JOB}
    assert scalar(await prometheus.query(f'up{{job="{JOB}"}}')) == 1

    # A known number of requests through the proxy...
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        for index in range(REQUESTS):
            async with http.get(f"{proxy.url}/hello/{index}") as response:
                assert response.status == 200, await response.text()
                assert await response.text() == f"hello from {BACKEND}"

    # ...are counted, and Prometheus reads exactly that many.
    query = f'sum(mcplb_requests_total{{backend="{BACKEND}"}})'
    await scraped(
        query,
        lambda: prometheus.query(query),
        lambda result: scalar(result) == REQUESTS,
        diagnostics=diagnostics,
    )
    query = f'sum(mcplb_requests_total{{backend="{BACKEND}", code="2xx", method="GET"}})'
    assert scalar(await prometheus.query(query)) == REQUESTS
    query = f'mcplb_response_first_byte_seconds_count{{backend="{BACKEND}"}}'
    assert scalar(await prometheus.query(query)) == REQUESTS

    backend_up = await prometheus.query(f'mcplb_backend_up{{backend="{BACKEND}"}}')
    assert [sample["metric"] for sample in backend_up] == [
        {
            "__name__": "mcplb_backend_up",
            "backend": BACKEND,
            "instance": f"127.0.0.1:{admin_port}",
            "job": JOB,
        }
    ]
    assert scalar(backend_up) == 1
    assert scalar(await prometheus.query(f'mcplb_backend_up{{backend="{BACKEND}"}} == 1')) == 1


async def test_exposed_names_are_in_the_contract(
    mcplb: tuple[ProxyProcess, int], prometheus: PrometheusServer
) -> None:
    """Every mcplb_ series Prometheus ingests is documented, with documented labels only."""
    contract = load_contract()
    names = await scraped(
        "mcplb_ metric names in Prometheus",
        lambda: prometheus.api("label/__name__/values", **{"match[]": f'{{job="{JOB}"}}'}),
        lambda found: any(name.startswith("mcplb_") for name in found),
    )
    ours = [name for name in names if name.startswith("mcplb_")]
    undocumented = [
        name
        for name in ours
        if not contract.known(name) and not contract.known(name.removesuffix("_created"))
    ]
    assert undocumented == [], "exposed but not in docs/observability.md"
    for name in ours:
        allowed = contract.labels_of(name) or contract.labels_of(name.removesuffix("_created"))
        assert allowed is not None
        for sample in await prometheus.query(name):
            labels = set(sample["metric"]) - {"__name__"}
            assert labels <= allowed, f"{name} has undocumented labels {labels - allowed}"


async def test_alert_rules_and_dashboard_queries_run_on_real_series(
    mcplb: tuple[ProxyProcess, int], prometheus: PrometheusServer
) -> None:
    proxy, _ = mcplb
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        for _ in range(3):
            async with http.get(f"{proxy.url}/") as response:
                assert response.status == 200
    await scraped(
        "requests in Prometheus",
        lambda: prometheus.query("sum(mcplb_requests_total)"),
        lambda result: scalar(result) == 3,
    )

    # Every rule was evaluated on the scraped series, without error.
    def rule_health(data: dict[str, Any]) -> dict[str, str]:
        return {
            rule["name"]: rule["health"]
            + (f": {rule['lastError']}" if rule.get("lastError") else "")
            for group in data["groups"]
            for rule in group["rules"]
        }

    health = await scraped(
        "alert rule evaluations",
        lambda: prometheus.api("rules"),
        lambda data: "unknown" not in rule_health(data).values() and rule_health(data) != {},
    )
    assert set(rule_health(health).values()) == {"ok"}, rule_health(health)

    # Nothing is wrong, so nothing is firing or pending (once the rules were evaluated on
    # scraped data: before the first scrape MCPLBMetricsAbsent is rightly pending), and it
    # stays that way over a few more evaluations.
    await scraped(
        "alerts",
        lambda: prometheus.api("alerts"),
        lambda data: data["alerts"] == [],
    )
    await asyncio.sleep(3.0)  # evaluation_interval is 1 s
    assert (await prometheus.api("alerts"))["alerts"] == []

    # Each dashboard query (Grafana's variables filled in) runs on the real series.
    failures = {}
    for where, expr in dashboard_exprs(load_dashboard()):
        try:
            await prometheus.query(substitute_variables(expr))
        except RuntimeError as error:
            failures[where] = str(error)
    assert failures == {}
