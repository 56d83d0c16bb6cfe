"""The open-file limit: ``mcplb run`` raises its soft RLIMIT_NOFILE to the hard limit at
start (every relayed connection holds two descriptors), logs the limit it got and how many
concurrent connections that allows; ``mcplb check`` says the same of the limit ``run``
will get. Started here with the soft limit lowered to 1,024, as many systems start
services."""

from __future__ import annotations

import asyncio
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from mcplb.proxy.server.open_files import RESERVED, OpenFiles
from tests.conftest import AppFactory
from tests.support.eventually import eventually
from tests.support.peers import free_port, wait_for_port
from tests.support.rawhttp import request

MCPLB = [sys.executable, "-m", "mcplb.proxy.cli"]
LOW = 1024
HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

pytestmark = pytest.mark.skipif(
    HARD != resource.RLIM_INFINITY and HARD <= LOW, reason="the hard limit is already 1,024"
)


def low_soft_limit() -> Callable[[], None]:
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (LOW, HARD))

    return lower


def soft_limit(pid: int) -> int:
    """The soft 'Max open files' of a running process, from /proc."""
    limits = Path(f"/proc/{pid}/limits").read_text()
    (line,) = [row for row in limits.splitlines() if row.startswith("Max open files")]
    return int(line.split()[3])


def children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in found]


def expected_limit() -> int:
    if HARD != resource.RLIM_INFINITY:
        return HARD
    return int(Path("/proc/sys/fs/nr_open").read_text())


def write_config(tmp_path: Path, port: int, backend: int, workers: int) -> Path:
    path = tmp_path / "mcplb.yaml"
    path.write_text(
        f"listen: 127.0.0.1:{port}\nworkers: {workers}\nlog: {{access: false}}\n"
        "sticky: {mcp_sessions: false}\n"
        f"backends:\n  - {{name: a, url: 'http://127.0.0.1:{backend}'}}\n"
    )
    return path


def hello() -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", answer)
    return app


@pytest.mark.parametrize("workers", [1, 2])
async def test_run_raises_the_soft_limit_and_logs_what_it_allows(
    tmp_path: Path, serve_app: AppFactory, workers: int
) -> None:
    backend = await serve_app(hello())
    port = free_port()
    config = write_config(tmp_path, port, backend, workers)
    log = tmp_path / "mcplb.log"
    with log.open("wb") as out:
        proxy = subprocess.Popen(
            [*MCPLB, "run", "--config", str(config)],
            stdout=out,
            stderr=out,
            preexec_fn=low_soft_limit(),
        )
    try:
        await wait_for_port("127.0.0.1", port)
        limit = expected_limit()
        per_worker = (limit - RESERVED) // 2
        text = log.read_text()
        line = f"open files raised from {LOW} to {limit}: about {per_worker:,} concurrent "
        assert line + "connections per worker (two descriptors each)" in text, text
        if workers > 1:
            assert f", {2 * per_worker:,} for 2 workers" in text
        # The process itself runs with it, and so does every worker it forks.
        assert soft_limit(proxy.pid) == limit
        if workers > 1:
            pids = await eventually(
                lambda: len(found := children(proxy.pid)) == workers and found,
                within=10,
                what="both workers forked",
            )
            assert [soft_limit(pid) for pid in pids] == [limit, limit]
        response = await request(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (response.status, response.body) == (200, b"ok")
    finally:
        proxy.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proxy.wait, 20)


def test_check_says_what_run_will_get(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port(), free_port(), 2)
    out = subprocess.run(
        [*MCPLB, "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=low_soft_limit(),
    )
    assert out.returncode == 0, out.stderr
    limit = expected_limit()
    per_worker = (limit - RESERVED) // 2
    assert re.search(
        rf": open files raised from {LOW} to {limit}: about {per_worker:,} concurrent "
        rf"connections per worker \(two descriptors each\), {2 * per_worker:,} for 2 workers$",
        out.stdout.strip(),
        re.M,
    ), out.stdout


def test_a_limit_not_raised_is_said_as_it_is() -> None:
    limits = OpenFiles(before=4096, limit=4096)
    assert limits.connections == (4096 - RESERVED) // 2
    assert limits.describe(1) == (
        "open files 4096: about 1,998 concurrent connections per worker (two descriptors each)"
    )
    assert OpenFiles(before=50, limit=50).connections == 0
