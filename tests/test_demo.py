"""``mcplb demo`` as a new user runs it: the commands its banner prints work as printed (from
the directory it ran in), the terminal is not flooded, and a killed backend comes back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from mcplb.proxy.demo import run as demo
from tests.support.peers import REPO_ROOT, free_port, wait_for_port

SCRIPT = Path(sys.executable).parent / "mcplb"  # what `make demo` runs
WAIT = 30.0  # seconds for the banner, and for a health change (probes every 2 s, fall 3)


class Output:
    """The lines a process writes to one pipe, as they come."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            async with self._changed:
                self.lines.append(raw.decode().rstrip("\n"))
                self._changed.notify_all()

    async def wait_for(self, found: Callable[[list[str]], bool], what: str) -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: found(self.lines)), WAIT)
            except TimeoutError:
                raise AssertionError(f"no {what} in:\n" + "\n".join(self.lines)) from None

    async def line(self, pattern: str) -> str:
        await self.wait_for(lambda lines: any(re.search(pattern, x) for x in lines), pattern)
        return next(x for x in self.lines if re.search(pattern, x))

    async def closed(self) -> None:
        await asyncio.wait_for(self._task, WAIT)


def command_after(lines: list[str], heading: str, index: int) -> str:
    """The ``index``-th indented command under the line starting with ``heading``."""
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    return lines[start + 1 + index].strip()


@pytest.fixture
async def started() -> AsyncIterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts by hand; killed at the end whatever happened."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT)


async def test_the_banner_commands_work_as_printed(
    started: list[subprocess.Popen[bytes]],
) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        "demo",
        "--backends",
        "2",
        "--port",
        str(port),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out, err = Output(proc.stdout), Output(proc.stderr)
    try:
        await out.line(r"Press Ctrl-C to stop")
        banner = list(out.lines)
        assert "The access log is off here" in "\n".join(banner)
        top = command_after(banner, "Watch it", 0)
        # Relative from the repository root, as `make demo` prints it; absolute from a copy
        # of the tree elsewhere (make test-compiled runs in build/compiled).
        script = ".venv/bin/mcplb" if (REPO_ROOT / ".venv").exists() else str(SCRIPT)
        assert top.startswith(f"{script} top --admin http://127.0.0.1:")
        kill = command_after(banner, "Fail a backend", 0)
        restart = command_after(banner, "Fail a backend", 1)

        # The banner is printed once the port listens (serve's bound callback: see
        # test_demo_banner_after_bind.py); the wait is a cheap second check.
        await wait_for_port("127.0.0.1", port)
        # Traffic writes no access line to the terminal.
        async with aiohttp.ClientSession() as http:
            for _ in range(20):
                async with http.get(f"http://127.0.0.1:{port}/") as response:
                    await response.read()

        await err.line(r"backend mcp-b: unknown -> healthy")  # its first probe passed
        shown = subprocess.run(
            [*shlex.split(top), "--once", "--interval", "0.3"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert shown.returncode == 0, shown.stderr
        assert re.search(r"^mcp-b +healthy +yes +1 +1 ", shown.stdout, re.MULTILINE)

        assert subprocess.run(shlex.split(kill), timeout=WAIT).returncode == 0
        down = await err.line(r"backend mcp-b: healthy -> unhealthy")
        assert re.search(r"probed http://127\.0\.0\.1:\d+/mcp\)$", down)
        started.append(subprocess.Popen(shlex.split(restart), cwd=REPO_ROOT))
        await err.line(r"backend mcp-b: unhealthy -> healthy")
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), WAIT)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        await out.closed()
        await err.closed()
    assert out.lines == banner  # nothing after it: no access log on the terminal
    assert proc.returncode == 0, "\n".join(err.lines)


def test_run_as_a_module_the_banner_names_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    cli = REPO_ROOT / "proxy" / "cli.py"
    monkeypatch.setattr(sys, "argv", [str(cli), "demo"])
    monkeypatch.chdir(REPO_ROOT)
    command = demo.mcplb_command()
    assert command.endswith(" -m mcplb.proxy.cli")
    result = subprocess.run(
        [*shlex.split(command), "--version"], capture_output=True, text=True, timeout=WAIT
    )
    assert result.stdout.startswith("mcplb ")


def test_paths_are_shown_relative_below_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bin").mkdir()
    assert demo.shown_path(str(tmp_path / "bin" / "mcplb")) == "bin/mcplb"
    assert demo.shown_path(str(tmp_path / "mcplb")) == "./mcplb"
    assert demo.shown_path("/usr/bin/env") == "/usr/bin/env"
