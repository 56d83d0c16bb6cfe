"""The mcplb command line: version, check, run with signals and several workers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

from mcplb import __version__
from tests.conftest import AppFactory
from tests.peers import Peers, free_port

MCPLB = [sys.executable, "-m", "mcplb.proxy.cli"]


def mcplb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MCPLB, *args], capture_output=True, text=True, timeout=60)


def test_version() -> None:
    result = mcplb("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"mcplb {__version__}"


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "mcplb"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == f"mcplb {__version__}"


def test_check_accepts_the_example_config() -> None:
    example = Path(__file__).resolve().parent.parent / "config.example.yaml"
    result = mcplb("check", "--config", str(example))
    assert result.returncode == 0, result.stderr
    assert "ok (3 backends" in result.stdout


def test_check_lists_every_error_with_path_and_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "listen: 127.0.0.1:8080\n"
        "workers: 0\n"
        "backends:\n"
        "  - name: a\n"
        "    url: http://127.0.0.1:9001\n"
        "  - name: b\n"
        "    url: ftp://127.0.0.1:9002\n"
        "timeouts:\n"
        "  conect: 2s\n"
    )
    result = mcplb("check", "--config", str(config))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f'{config}: workers: must be an integer >= 1 or "auto" (line 2)',
        f"{config}: backends[1].url: scheme must be http or https (line 7)",
        f'{config}: timeouts.conect: unknown key (did you mean "connect"?) (line 9)',
    ]


def test_check_reports_a_strategy_that_cannot_load(tmp_path: Path) -> None:
    config = tmp_path / "plugin.yaml"
    config.write_text(
        "strategy: no_such_package.module:Picker\n"
        "backends:\n"
        "  - {name: a, url: 'http://127.0.0.1:9001'}\n"
    )
    result = mcplb("check", "--config", str(config))
    assert result.returncode == 1
    assert "strategy: cannot import module 'no_such_package.module'" in result.stderr
    assert result.stderr.rstrip().endswith("(line 1)")


def test_check_missing_file(tmp_path: Path) -> None:
    result = mcplb("check", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 1
    assert "cannot read" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_refuses_a_broken_config(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("backends: []\n")
    result = mcplb("run", "--config", str(config))
    assert result.returncode == 1
    assert "backends: must be a non-empty list of backends (line 1)" in result.stderr
    assert "Traceback" not in result.stderr


async def test_sigterm_lets_in_flight_requests_finish(
    serve_app: AppFactory, tmp_path: Path
) -> None:
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def slow(req: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(text="finished")

    app = web.Application()
    app.router.add_get("/", slow)
    backend_port = await serve_app(app)
    port = free_port()
    async with Peers() as peers, aiohttp.ClientSession() as http:
        proxy = await peers.proxy(
            f"listen: 127.0.0.1:{port}\n"
            f"backends:\n  - {{name: a, url: 'http://127.0.0.1:{backend_port}'}}\n",
            tmp_path,
            port=port,
        )
        in_flight = asyncio.create_task(http.get(f"http://127.0.0.1:{port}/"))
        await asyncio.wait_for(arrived.wait(), 10)
        proxy.send_signal(signal.SIGTERM)
        await until(lambda: accepts_connections(port), lambda accepting: not accepting)
        release.set()
        resp = await asyncio.wait_for(in_flight, 10)
        assert resp.status == 200
        assert await resp.text() == "finished"
        assert await proxy.wait(timeout=10) == 0
        assert "Traceback" not in proxy.output()


def accepts_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command may contain spaces; the fields after ")" are fixed
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


async def test_workers_share_the_port_and_crashed_ones_are_replaced(
    serve_app: AppFactory, tmp_path: Path
) -> None:
    async def hello(req: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    backend_port = await serve_app(app)
    port = free_port()
    async with Peers() as peers, aiohttp.ClientSession() as http:
        proxy = await peers.proxy(
            f"listen: 127.0.0.1:{port}\nworkers: 2\n"
            "sticky: {mcp_sessions: false}\n"
            f"backends:\n  - {{name: a, url: 'http://127.0.0.1:{backend_port}'}}\n",
            tmp_path,
            port=port,
        )
        workers = await until(lambda: children_of(proxy.pid), lambda w: len(w) == 2)
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        replaced = await until(
            lambda: children_of(proxy.pid), lambda w: len(w) == 2 and victim not in w
        )
        assert replaced - workers  # a new pid took the dead worker's place
        for _ in range(20):
            async with http.get(f"http://127.0.0.1:{port}/") as resp:
                assert await resp.text() == "hello"
        proxy.send_signal(signal.SIGTERM)
        assert await proxy.wait(timeout=15) == 0
        assert children_of(proxy.pid) == set()
        assert "restarting" in proxy.output()


async def until(probe, accept, limit: float = 10.0):  # type: ignore[no-untyped-def]
    """Poll ``probe()`` until ``accept(value)``; return the value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        value = probe()
        if accept(value):
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not reached; last value {probe()!r}")


def test_check_refuses_workers_without_a_shared_session_store(tmp_path: Path) -> None:
    config = tmp_path / "workers.yaml"
    config.write_text("workers: 2\nbackends:\n  - {name: a, url: 'http://127.0.0.1:9001'}\n")
    result = mcplb("check", "--config", str(config))
    assert result.returncode == 1
    assert f"{config}: sticky.keys: required by store: signed" in result.stderr
    assert result.stderr.rstrip().endswith("(line 1)")
