"""``mcplb top``: the pure rendering/arithmetic, the fetch loop, and a real mcplb end to end."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Mapping
from io import StringIO
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mcplb.proxy.admin.top import (
    CLEAR_SCREEN,
    HOME,
    Metrics,
    counter_delta,
    format_duration,
    format_latency,
    histogram_quantile,
    normalize_url,
    parse_metrics,
    render,
    run_once,
    run_top,
)
from tests.conftest import AppFactory
from tests.support.peers import REPO_ROOT, Peers, free_port, wait_for_port

BOUNDS = ["0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0"]
BOUNDS += ["2.5", "5.0", "10.0", "30.0", "60.0", "+Inf"]

STATUS: dict[str, Any] = {
    "version": "0.1.0",
    "uptime_seconds": 3725.4,
    "workers": 2,
    "config": {"path": "/etc/mcplb.yaml", "hmac_sha256": "3f2a9c1d0b7e55aa66bb77cc88dd99ee"},
    "strategy": "round_robin",
    "backends": [
        {
            "name": "mcp-a",
            "url": "http://127.0.0.1:9001",
            "state": "healthy",
            "available": True,
            "draining": False,
            "weight": 1,
            "ramped_weight": 1,
            "in_flight": 3,
            "streams": 1,
            "sessions": 7,
            "requests_total": 164,
            "errors_total": 6,
        },
        {
            "name": "mcp-b",
            "url": "http://127.0.0.1:9002",
            "state": "unhealthy",
            "available": False,
            "draining": False,
            "weight": 2,
            "ramped_weight": 2,
            "in_flight": 0,
            "streams": 0,
            "sessions": 0,
            "requests_total": 50,
            "errors_total": 0,
        },
        {
            "name": "mcp-c",
            "url": "http://127.0.0.1:9003",
            "state": "draining",
            "available": False,
            "draining": True,
            "weight": 1,
            "ramped_weight": 0.4,
            "in_flight": 0,
            "streams": 0,
            "sessions": 2,
            "requests_total": 0,
            "errors_total": 0,
        },
    ],
}


def histogram(name: str, backend: str, cumulative: list[int], total_sum: float) -> str:
    """The exposition of one backend's histogram, as prometheus_client writes it."""
    assert len(cumulative) == len(BOUNDS)
    lines = [
        f'{name}_bucket{{backend="{backend}",le="{le}"}} {float(n)}'
        for le, n in zip(BOUNDS, cumulative, strict=True)
    ]
    lines.append(f'{name}_count{{backend="{backend}"}} {float(cumulative[-1])}')
    lines.append(f'{name}_sum{{backend="{backend}"}} {total_sum}')
    return "\n".join(lines)


def exposition(
    requests: Mapping[tuple[str, str, str], int],
    first_byte: Mapping[str, list[int]],
    proxy_errors: Mapping[str, int],
    *,
    lag: float = 0.0012,
) -> str:
    lines = [
        "# HELP mcplb_requests_total Requests answered, by backend, method and status class.",
        "# TYPE mcplb_requests_total counter",
    ]
    lines += [
        f'mcplb_requests_total{{backend="{b}",method="{m}",code="{c}"}} {float(n)}'
        for (b, m, c), n in requests.items()
    ]
    lines += [
        "# HELP mcplb_response_first_byte_seconds Request start to response head.",
        "# TYPE mcplb_response_first_byte_seconds histogram",
    ]
    lines += [
        histogram("mcplb_response_first_byte_seconds", b, cum, 0.5) for b, cum in first_byte.items()
    ]
    lines += [
        "# HELP mcplb_proxy_errors_total Answers the proxy made itself.",
        "# TYPE mcplb_proxy_errors_total counter",
    ]
    lines += [f'mcplb_proxy_errors_total{{code="{c}"}} {float(n)}' for c, n in proxy_errors.items()]
    lines += [
        "# HELP mcplb_in_flight_requests Requests in flight.",
        "# TYPE mcplb_in_flight_requests gauge",
        'mcplb_in_flight_requests{backend="mcp-a"} 9.0',
        'mcplb_in_flight_requests{backend="mcp-b"} 0.0',
        "# HELP mcplb_event_loop_lag_seconds Event loop lag (max over workers).",
        "# TYPE mcplb_event_loop_lag_seconds gauge",
        f"mcplb_event_loop_lag_seconds {lag}",
        "# HELP mcplb_workers Worker processes.",
        "# TYPE mcplb_workers gauge",
        "mcplb_workers 2.0",
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.",
        "# TYPE process_cpu_seconds_total counter",
        "process_cpu_seconds_total 1.25",
    ]
    return "\n".join(lines) + "\n"


# mcp-a: 100 + 10 + 2 requests before; then +40 POST 2xx, +4 GET 2xx, +4 POST 5xx.
REQUESTS_BEFORE = {
    ("mcp-a", "POST", "2xx"): 100,
    ("mcp-a", "GET", "2xx"): 10,
    ("mcp-a", "POST", "5xx"): 2,
    ("mcp-b", "POST", "2xx"): 50,
}
REQUESTS_NOW = {
    ("mcp-a", "POST", "2xx"): 140,
    ("mcp-a", "GET", "2xx"): 14,
    ("mcp-a", "POST", "5xx"): 6,
    ("mcp-b", "POST", "2xx"): 50,
}
#                  1ms 2.5 5  10  25  50   100  250  500 1s ... +Inf
FIRST_BYTE_A_BEFORE = [0, 0, 2, 10, 50, 100, 110, 112, 112, 112, 112, 112, 112, 112, 112, 112]
# +48 observations: 40 in (10ms, 25ms], 6 in (25ms, 50ms], 2 in (100ms, 250ms].
FIRST_BYTE_A_NOW = [0, 0, 2, 10, 90, 146, 156, 160, 160, 160, 160, 160, 160, 160, 160, 160]
FIRST_BYTE_B = [0, 0, 0, 5, 40, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50]

BEFORE_TEXT = exposition(
    REQUESTS_BEFORE,
    {"mcp-a": FIRST_BYTE_A_BEFORE, "mcp-b": FIRST_BYTE_B},
    {"502": 1},
)
NOW_TEXT = exposition(
    REQUESTS_NOW,
    {"mcp-a": FIRST_BYTE_A_NOW, "mcp-b": FIRST_BYTE_B},
    {"502": 3, "503": 1},
)


def table(frame: str) -> dict[str, list[str]]:
    """The rows of a rendered frame by backend name, split into cells."""
    lines = frame.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("BACKEND"))
    return {cells[0]: cells for cells in (line.split() for line in lines[start + 1 :]) if cells}


CELLS = ("name", "state", "avail", "weight", "ramped", "rps", "eps", "inflight")
CELLS += ("streams", "sessions", "p99")
COL = {cell: i for i, cell in enumerate(CELLS)}


# --- (a) the pure parts --------------------------------------------------------------------


def test_render_rates_errors_and_p99() -> None:
    frame = render(STATUS, parse_metrics(NOW_TEXT), parse_metrics(BEFORE_TEXT), 2.0)
    rows = table(frame)
    a, b, c = rows["mcp-a"], rows["mcp-b"], rows["mcp-c"]
    # (40 + 4 + 4) requests in 2 s; 4 of them 5xx.
    assert a[COL["rps"]] == "24.00"
    assert a[COL["eps"]] == "2.00"
    # 48 observations: rank 0.99 * 48 = 47.52 lies in (0.1, 0.25] holding 2 of them above
    # 46: 0.1 + 0.15 * (47.52 - 46) / 2 = 0.214 s.
    assert a[COL["p99"]] == "214.0ms"
    assert a[COL["state"]] == "healthy"
    assert a[COL["avail"]] == "yes"
    assert (a[COL["weight"]], a[COL["ramped"]]) == ("1", "1")
    assert (a[COL["inflight"]], a[COL["streams"]], a[COL["sessions"]]) == ("3", "1", "7")
    # mcp-b had no traffic between the scrapes: zero rates, no latency.
    assert b[COL["rps"]] == "0.00"
    assert b[COL["eps"]] == "0.00"
    assert b[COL["p99"]] == "-"
    assert (b[COL["state"]], b[COL["avail"]], b[COL["weight"]]) == ("unhealthy", "no", "2")
    # mcp-c has no series at all yet.
    assert (c[COL["state"]], c[COL["avail"]], c[COL["weight"]]) == ("draining", "draining", "1")
    assert c[COL["ramped"]] == "0.4"  # slow start: the configured weight stays under WEIGHT
    assert (c[COL["rps"]], c[COL["p99"]], c[COL["sessions"]]) == ("0.00", "-", "2")


def test_render_header() -> None:
    frame = render(STATUS, parse_metrics(NOW_TEXT), parse_metrics(BEFORE_TEXT), 2.0)
    first, second = frame.splitlines()[:2]
    assert "mcplb 0.1.0" in first
    assert "up 1h02m05s" in first
    assert "workers 2" in first
    assert "config /etc/mcplb.yaml @ 3f2a9c1d0b7e" in first
    assert "strategy round_robin" in first
    assert "total 24.00 req/s" in second
    # 4 backend 5xx + (2 + 1) proxy-made errors in 2 s.
    assert "errors 3.50/s (proxy 1.50/s)" in second
    assert "loop lag 1.2ms" in second
    assert "backends 1/3 available" in second
    assert "\x1b" not in frame


def test_render_without_a_previous_scrape_shows_no_rates() -> None:
    frame = render(STATUS, parse_metrics(NOW_TEXT), None, 0.0)
    a = table(frame)["mcp-a"]
    assert (a[COL["rps"]], a[COL["eps"]], a[COL["p99"]]) == ("-", "-", "-")
    assert a[COL["sessions"]] == "7"  # live values need no rate
    assert "total - req/s" in frame


def test_render_falls_back_to_gauges_and_survives_a_sparse_status() -> None:
    status = {"backends": [{"name": "mcp-a", "state": "healthy"}, {"name": "mcp-x"}]}
    frame = render(status, parse_metrics(NOW_TEXT), parse_metrics(BEFORE_TEXT), 2.0)
    rows = table(frame)
    assert rows["mcp-a"][COL["inflight"]] == "9"  # mcplb_in_flight_requests
    assert rows["mcp-a"][COL["rps"]] == "24.00"
    assert rows["mcp-x"][COL["state"]] == "?"
    assert rows["mcp-x"][COL["inflight"]] == "-"
    assert "workers 2" in frame  # mcplb_workers
    assert render({}, Metrics(), None, 0.0).rstrip().endswith("(no backends)")


def test_counter_reset_counts_from_zero() -> None:
    # A restarted proxy starts its counters over: the new value is the increase.
    restarted = exposition({("mcp-a", "POST", "2xx"): 6}, {"mcp-a": [0] * 4 + [6] * 12}, {"502": 0})
    frame = render(STATUS, parse_metrics(restarted), parse_metrics(NOW_TEXT), 3.0)
    a = table(frame)["mcp-a"]
    assert a[COL["rps"]] == "2.00"
    assert a[COL["eps"]] == "0.00"
    # 6 observations in (10ms, 25ms]: 0.01 + 0.015 * 5.94 / 6 = 0.02485
    assert a[COL["p99"]] == "24.9ms"
    assert counter_delta(5.0, 7.0) == 5.0
    assert counter_delta(9.0, 7.0) == 2.0
    assert counter_delta(3.0, None) == 3.0


def test_histogram_quantile_interpolation() -> None:
    inf = float("inf")
    # Prometheus' own example shape: 100 observations, rank 99 in (0.5, 1].
    buckets = {0.1: 50.0, 0.5: 90.0, 1.0: 98.0, 2.0: 100.0, inf: 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.9, buckets) == pytest.approx(0.5)
    assert histogram_quantile(0.99, buckets) == pytest.approx(1.5)  # 1 + 1 * (99-98)/2
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)  # from 0 in bucket 1
    # The rank in +Inf: the highest finite bound.
    assert histogram_quantile(0.99, {0.1: 10.0, 0.5: 10.0, inf: 20.0}) == pytest.approx(0.5)
    # No observations, or no +Inf bucket: nothing to say.
    assert histogram_quantile(0.99, {0.1: 0.0, inf: 0.0}) is None
    assert histogram_quantile(0.99, {0.1: 5.0, 0.5: 5.0}) is None
    assert histogram_quantile(0.99, {}) is None
    # Non-monotonic input (racy scrape) is clamped, not a negative bucket.
    assert histogram_quantile(0.5, {0.1: 4.0, 0.2: 3.0, inf: 4.0}) == pytest.approx(0.05)


def test_parse_metrics_keeps_sample_names_and_labels() -> None:
    metrics = parse_metrics(NOW_TEXT)
    assert metrics.sum_by("mcplb_requests_total", "backend") == {"mcp-a": 160.0, "mcp-b": 50.0}
    assert metrics.sum_by("mcplb_requests_total", "backend", code="5xx") == {"mcp-a": 6.0}
    assert metrics.value("mcplb_event_loop_lag_seconds") == pytest.approx(0.0012)
    assert metrics.total("mcplb_proxy_errors_total") == 4.0
    buckets = metrics.buckets("mcplb_response_first_byte_seconds", "backend")
    assert buckets["mcp-a"][float("inf")] == 160.0
    assert buckets["mcp-b"][0.01] == 5.0
    with pytest.raises(ValueError):
        parse_metrics('mcplb_requests_total{backend="a" 1\n')


def test_formatting() -> None:
    assert format_latency(None) == "-"
    assert format_latency(0.00085) == "850us"
    assert format_latency(0.0123) == "12.3ms"
    assert format_latency(2.5) == "2.50s"
    assert format_duration(45.9) == "45s"
    assert format_duration(723) == "12m03s"
    assert format_duration(2 * 86400 + 3 * 3600 + 4 * 60 + 5) == "2d03h04m"
    assert normalize_url("127.0.0.1:9901/") == "http://127.0.0.1:9901"
    assert normalize_url("https://admin:9901") == "https://admin:9901"


# --- the fetch loop against a scripted admin endpoint ----------------------------------------


def fake_admin() -> tuple[web.Application, list[str]]:
    """/status and /metrics whose counters move by 10 requests per scrape of mcp-a."""
    scrapes: list[str] = []

    async def metrics(request: web.Request) -> web.Response:
        scrapes.append("metrics")
        n = 10 * len([s for s in scrapes if s == "metrics"])
        text = exposition({("mcp-a", "POST", "2xx"): n}, {"mcp-a": [0] * 4 + [n] * 12}, {"502": 0})
        return web.Response(text=text, content_type="text/plain")

    async def status(request: web.Request) -> web.Response:
        scrapes.append("status")
        return web.json_response(STATUS)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    return app, scrapes


async def test_once_fetches_twice_and_prints_one_plain_frame(serve_app: AppFactory) -> None:
    app, scrapes = fake_admin()
    port = await serve_app(app)
    out, err = StringIO(), StringIO()
    started = time.monotonic()
    code = await asyncio.to_thread(run_once, f"http://127.0.0.1:{port}/", 0.3, out, err)
    took = time.monotonic() - started
    assert code == 0, err.getvalue()
    assert scrapes == ["metrics", "status", "metrics", "status"]
    assert 0.3 <= took < 3.0
    frame = out.getvalue()
    assert "\x1b" not in frame
    rate = float(table(frame)["mcp-a"][COL["rps"]])
    assert 10 / 0.6 < rate <= 10 / 0.3 + 0.01  # 10 requests over ~0.3 s
    assert table(frame)["mcp-a"][COL["p99"]].endswith("ms")


async def test_once_reports_an_unreachable_admin_on_stderr() -> None:
    out, err = StringIO(), StringIO()
    port = free_port()  # nothing listens there
    code = await asyncio.to_thread(run_once, f"127.0.0.1:{port}", 0.1, out, err)
    assert code == 1
    assert out.getvalue() == ""
    message = err.getvalue()
    assert message.startswith("mcplb top: cannot reach http://127.0.0.1:")
    assert message.count("\n") == 1


async def test_once_reports_an_http_error(serve_app: AppFactory) -> None:
    port = await serve_app(web.Application())  # 404 everywhere
    out, err = StringIO(), StringIO()
    code = await asyncio.to_thread(run_once, f"http://127.0.0.1:{port}", 0.1, out, err)
    assert code == 1
    assert "/metrics: HTTP 404" in err.getvalue()


async def test_once_sends_the_admin_token_from_the_environment(
    serve_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = fake_admin()
    token = "top-token-" + "t" * 16

    @web.middleware
    async def bearer(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    app.middlewares.append(bearer)
    url = f"http://127.0.0.1:{await serve_app(app)}"
    monkeypatch.delenv("MCPLB_ADMIN_TOKEN", raising=False)
    out, err = StringIO(), StringIO()
    assert await asyncio.to_thread(run_once, url, 0.1, out, err) == 1
    assert "/metrics: HTTP 401 Unauthorized (set MCPLB_ADMIN_TOKEN to the admin.token)" in (
        err.getvalue()
    )
    monkeypatch.setenv("MCPLB_ADMIN_TOKEN", token)
    out, err = StringIO(), StringIO()
    assert await asyncio.to_thread(run_once, url, 0.1, out, err) == 0, err.getvalue()
    assert "mcp-a" in table(out.getvalue())


def test_a_bad_interval_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_top("http://127.0.0.1:1", once=True, interval=0) == 2
    assert "--interval" in capsys.readouterr().err


LIVE = (
    "import sys; from mcplb.proxy.admin.top import run_top; "
    "sys.exit(run_top(sys.argv[1], once=False, interval=0.2))"
)


async def run_live_until(url: str, needle: str, timeout: float = 15.0) -> tuple[int, str]:
    """Run the live view in a child, wait for ``needle`` on its screen, then Ctrl-C it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LIVE,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    assert proc.stdout is not None
    seen = b""
    try:
        async with asyncio.timeout(timeout):
            while needle.encode() not in seen or seen.count(HOME.encode()) < 3:
                chunk = await proc.stdout.read(4096)
                assert chunk, f"live view exited early: {seen!r}"
                seen += chunk
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            rest, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, (seen + rest).decode()


async def test_live_view_redraws_in_place_and_quits_on_ctrl_c(serve_app: AppFactory) -> None:
    app, _ = fake_admin()
    port = await serve_app(app)
    code, screen = await run_live_until(f"http://127.0.0.1:{port}", "mcp-a")
    assert code == 0
    assert screen.startswith(CLEAR_SCREEN + HOME)
    assert screen.count(CLEAR_SCREEN) == 1  # later frames overwrite in place
    assert "Ctrl-C to quit" in screen
    # After the first frame the rates exist: 10 requests per 0.2 s scrape.
    later = [table(frame) for frame in screen.split(HOME)[2:] if "BACKEND" in frame]
    rates = [float(rows["mcp-a"][COL["rps"]]) for rows in later]
    assert rates and all(rate > 10 for rate in rates)


async def test_live_view_keeps_retrying_an_unreachable_admin() -> None:
    port = free_port()
    code, screen = await run_live_until(f"http://127.0.0.1:{port}", "attempt 3")
    assert code == 0
    assert f"ERROR: cannot reach http://127.0.0.1:{port}/metrics" in screen
    assert "retrying every 0.2s" in screen


# --- (b) end to end: a real mcplb, its admin API and the CLI ---------------------------------


async def test_top_once_against_a_real_mcplb(serve_app: AppFactory, tmp_path: Path) -> None:
    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {}})

    backend = web.Application()
    backend.router.add_route("*", "/{tail:.*}", ok)
    backend_port = await serve_app(backend)
    port, admin_port = free_port(), free_port()
    config = f"""
listen: "127.0.0.1:{port}"
admin: {{listen: "127.0.0.1:{admin_port}"}}
backends:
  - {{name: tools-east, url: "http://127.0.0.1:{backend_port}"}}
"""
    async with Peers() as peers:
        proxy = await peers.proxy(config, tmp_path, port=port)
        await wait_for_port("127.0.0.1", admin_port, process=proxy)
        top = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mcplb.proxy.cli",
            "top",
            "--admin",
            f"http://127.0.0.1:{admin_port}",
            "--once",
            "--interval",
            "0.5",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
        sent = 0
        body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        async with aiohttp.ClientSession() as client:

            async def traffic() -> None:
                nonlocal sent
                while True:
                    async with client.post(f"{proxy.url}/mcp", data=body, headers=headers) as r:
                        assert r.status == 200, await r.text()
                        await r.read()
                    sent += 1
                    await asyncio.sleep(0.01)

            load = asyncio.create_task(traffic())
            try:
                async with asyncio.timeout(30):
                    out, err = await top.communicate()
            finally:
                if top.returncode is None:
                    top.kill()
                    await top.wait()
                if load.done():
                    load.result()  # a failed request: its assertion, not a vague rate below
                load.cancel()
        assert top.returncode == 0, err.decode() + proxy.output()
        frame = out.decode()
        assert "\x1b" not in frame
        row = table(frame)["tools-east"]
        assert row[COL["state"]] in {"healthy", "unknown"}, frame
        assert row[COL["avail"]] == "yes", frame
        rate = float(row[COL["rps"]])
        # Every request counted was sent during the >= 0.5 s between the two scrapes.
        assert 5.0 < rate <= sent / 0.45, (sent, frame)
        assert "mcplb " in frame.splitlines()[0]
        assert float(frame.split("total ")[1].split()[0]) == pytest.approx(rate, abs=0.01)
