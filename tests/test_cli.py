"""The mcplb command line: version, check, run with signals and several workers."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

from mcplb import __version__
from tests.conftest import AppFactory
from tests.support.eventually import eventually
from tests.support.peers import Peers, free_port

MCPLB = [sys.executable, "-m", "mcplb.proxy.cli"]


def mcplb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MCPLB, *args], capture_output=True, text=True, timeout=60)


# `make test-compiled` runs the suite again on the mypyc build and says so here.
def compiled_modules() -> str:
    """setup.py's COMPILED list ("proxy/relay/http11" ...) as --version names it."""
    text = (Path(__file__).resolve().parent.parent / "setup.py").read_text()
    names = re.findall(r'^\s+"(\w+(?:/\w+)+)",$', text, re.M)
    return ", ".join(sorted(name.replace("/", ".") for name in names))


BUILD = (
    "compiled: " + compiled_modules()
    if os.environ.get("MCPLB_BUILD") == "compiled"
    else "pure Python"
)


def test_version() -> None:
    result = mcplb("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"mcplb {__version__} ({BUILD})"


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "mcplb"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == f"mcplb {__version__} ({BUILD})"


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
        await eventually(lambda: not accepts_connections(port), within=10, what="listener closed")
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

        def two_workers(without: int = 0) -> set[int] | None:
            workers = children_of(proxy.pid)
            return workers if len(workers) == 2 and without not in workers else None

        workers = await eventually(two_workers, within=10, what="two workers")
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        replaced = await eventually(
            lambda: two_workers(without=victim), within=10, what="the killed worker replaced"
        )
        assert replaced - workers  # a new pid took the dead worker's place
        for _ in range(20):
            async with http.get(f"http://127.0.0.1:{port}/") as resp:
                assert await resp.text() == "hello"
        proxy.send_signal(signal.SIGTERM)
        assert await proxy.wait(timeout=15) == 0
        assert children_of(proxy.pid) == set()
        assert "restarting" in proxy.output()


def test_check_refuses_workers_without_a_shared_session_store(tmp_path: Path) -> None:
    config = tmp_path / "workers.yaml"
    config.write_text("workers: 2\nbackends:\n  - {name: a, url: 'http://127.0.0.1:9001'}\n")
    result = mcplb("check", "--config", str(config))
    assert result.returncode == 1
    assert f"{config}: sticky.keys: required by store: signed" in result.stderr
    assert result.stderr.rstrip().endswith("(line 1)")


def test_check_lists_strategy_errors_with_the_others_and_warnings(tmp_path: Path) -> None:
    config = tmp_path / "five.yaml"
    config.write_text(
        "strategy: round_robbin\n"
        "backends:\n"
        "  - name: mcp-a\n"
        "    url: http://127.0.0.1:9001/mcp\n"
        "  - name: mcp-b\n"
        "    url: 127.0.0.1:9002\n"
        "timeouts:\n"
        "  conect: 2s\n"
        "admin:\n"
        "  protect_metrics: true\n"
    )
    result = mcplb("check", "--config", str(config))
    assert result.returncode == 1
    names = "ip_hash, least_connections, least_sessions, power_of_two, random, round_robin"
    assert result.stderr.splitlines() == [
        f"{config}: strategy: unknown strategy 'round_robbin' (did you mean 'round_robin'? "
        f"built-in: {names}) (line 1)",
        f"{config}: warning: backends[0].url: ends in /mcp, but a backend URL's path is put "
        "before every request path: a client's POST /mcp is sent to "
        "http://127.0.0.1:9001/mcp/mcp. Write http://127.0.0.1:9001 to reach the server's /mcp "
        "(line 4)",
        f'{config}: backends[1].url: needs a scheme: write "http://127.0.0.1:9002" '
        "(or https://) (line 6)",
        f'{config}: timeouts.conect: unknown key (did you mean "connect"?) (line 8)',
        f"{config}: admin.protect_metrics: needs admin.token (line 10)",
    ]


def test_check_passes_a_config_with_only_warnings(tmp_path: Path) -> None:
    config = tmp_path / "warn.yaml"
    config.write_text("backends:\n  - {name: a, url: 'http://127.0.0.1:9001/mcp'}\n")
    result = mcplb("check", "--config", str(config))
    assert result.returncode == 0
    assert "ok (1 backends" in result.stdout
    assert result.stderr.startswith(f"{config}: warning: backends[0].url: ends in /mcp")


def test_the_readme_quick_start_config_passes_check(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Your own backends", 1)[1]
    yaml_block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert len(yaml_block.splitlines()) <= 10
    config = tmp_path / "mcplb.yaml"
    config.write_text(yaml_block)
    result = mcplb("check", "--config", str(config))
    assert (result.returncode, result.stderr) == (0, "")
    assert "ok (2 backends" in result.stdout


def test_the_readme_strategy_plugin_example_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Writing a strategy", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "strategies.py").write_text(code)
    config = tmp_path / "mcplb.yaml"
    config.write_text(
        "strategy: mypkg.strategies:FirstAvailable\n"
        "backends:\n  - {name: a, url: 'http://127.0.0.1:9001'}\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    result = subprocess.run(
        [*MCPLB, "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "strategy mypkg.strategies:FirstAvailable" in result.stdout
