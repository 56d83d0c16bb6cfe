"""The conformance suite's tasks scenarios (SEP-2663: ``tasks-*``, which ``conformance
list`` tags ``[extension]``: outside the 2026-07-28 run of
tests/test_mcp2026_conformance.py, selected here by name) against the tasks fixture server
(tests/interop/tasks_fixture_server.py: the fixture tools the scenarios call, task state in
the process that created the task): once direct, then through mcplb in front of three of
them (round robin, 1 worker, and 2 workers with the bindings in a real Redis), where every
``tasks/get``, ``tasks/update`` and ``tasks/cancel`` must reach the instance holding its
task. Every check of every scenario must end the same through the proxy as direct.
Results: build/interop-conformance-tasks.md.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.interop import MISSING, NODE, NODE_MODULES
from tests.support.peers import (
    LOOPBACK,
    Peers,
    _logs,
    _ManagedProcess,
    free_port,
    wait_for_port_sync,
)
from tests.support.redis_server import RedisServer

CONFORMANCE_NEXT = NODE_MODULES / "conformance-next" / "dist" / "index.js"
SCENARIO_DIR = re.compile(r"^server-(.+)-\d{4}-\d\d-\d\dT")
SUMMARY = Path(__file__).resolve().parent.parent / "build" / "interop-conformance-tasks.md"

# What the proxy adds: mcplb checks a 2026-07-28 request's Mcp-Name against the body
# itself (SEP-2243, tasks/* included) and refuses a mismatch with 400 -32020; the Python SDK
# fixture does not check it on tasks/get. Failed direct, passed through mcplb.
PROXY_ADDS = {("tasks-request-headers", "sep-2663-server-rejects-mismatched-mcp-name-on-tasks-get")}

Verdicts = dict[str, list[tuple[str, str]]]


class FixtureServer(_ManagedProcess):
    label = "tasks fixture server"

    def __init__(self, name: str, port: int) -> None:
        self.port = port
        argv = [sys.executable, "-m", "tests.interop.tasks_fixture_server", "--name", name]
        argv += ["--port", str(port)]
        log = _logs() / f"tasks-fixture-{name}-{port}.log"
        super().__init__(argv, stdout_path=log, stderr_path=log, own_group=False)


@pytest.fixture(scope="module")
def servers() -> Iterator[list[FixtureServer]]:
    assert NODE.exists(), MISSING
    started: list[FixtureServer] = []
    try:
        for i in range(3):
            started.append(FixtureServer(f"t{i}", free_port()))
        for server in started:
            wait_for_port_sync(LOOPBACK, server.port, 30.0, process=server)
        yield started
    finally:
        for server in started:
            server.kill_now()


async def _node(*args: str, timeout: float = 120) -> str:
    process = await asyncio.create_subprocess_exec(
        str(NODE),
        str(CONFORMANCE_NEXT),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return output.decode()


async def tasks_scenarios() -> list[str]:
    """The suite's tasks scenarios, as its own list names them (tagged ``[extension]``)."""
    listed = await _node("list")
    names = re.findall(r"^\s*- (tasks-[a-z0-9-]+) \[extension\]", listed, re.MULTILINE)
    assert len(names) >= 10, listed
    return names


async def conformance(url: str, out: Path) -> Verdicts:
    """Every tasks scenario against ``url``, one at a time (the server CLI selects an
    extension's scenarios only by name)."""
    outputs = []
    for scenario in await tasks_scenarios():
        outputs.append(await _node("server", "--scenario", scenario, "--url", url, "-o", str(out)))
    verdicts: Verdicts = {}
    for checks in out.glob("*/checks.json"):
        found = SCENARIO_DIR.match(checks.parent.name)
        assert found is not None, checks
        verdicts[found.group(1)] = sorted(
            (c["id"], c["status"]) for c in json.loads(checks.read_text())
        )
    assert "tasks-lifecycle" in verdicts, "\n".join(outputs)
    return verdicts


@pytest.fixture(scope="module")
def direct(servers: list[FixtureServer], tmp_path_factory: pytest.TempPathFactory) -> Verdicts:
    out = tmp_path_factory.mktemp("conformance-tasks-direct")
    return asyncio.run(conformance(f"http://{LOOPBACK}:{servers[0].port}/mcp", out))


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    async with Peers() as p:
        yield p


@pytest.mark.parametrize("workers", [1, 2])
async def test_tasks_conformance_through_the_proxy_equals_direct(
    servers: list[FixtureServer],
    direct: Verdicts,
    peers: Peers,
    tmp_path: Path,
    redis_server: RedisServer,
    workers: int,
) -> None:
    """One worker: task bindings in its memory. Two: in Redis (store: redis; the signed
    store cannot carry task ids across workers, and ``mcplb check`` says so)."""
    port = free_port()
    text = f"listen: '127.0.0.1:{port}'\nworkers: {workers}\nbackends:\n"
    text += "".join(
        f"  - {{name: t{i}, url: 'http://127.0.0.1:{s.port}'}}\n" for i, s in enumerate(servers)
    )
    if workers > 1:
        text += f"sticky:\n  store: redis\n  redis: {{url: '{redis_server.url}'}}\n"
    proxy = await peers.proxy(text, tmp_path, port=port)
    proxied = await conformance(f"{proxy.url}/mcp", tmp_path / "out")
    lines = [
        f"Tasks scenarios, {workers} worker(s), 3 backends:",
        "",
        "| scenario | checks | passed direct | passed through mcplb | same |",
        "|---|---|---|---|---|",
    ]
    for scenario in sorted(direct):
        mine, theirs = direct[scenario], proxied.get(scenario, [])
        passed = [sum(s == "SUCCESS" for _, s in checks) for checks in (mine, theirs)]
        added = sum((scenario, check) in PROXY_ADDS for check, _ in mine)
        same = "yes" if mine == theirs else f"+{added} by mcplb" if added else "NO"
        lines.append(f"| {scenario} | {len(mine)} | {passed[0]} | {passed[1]} | {same} |")
    SUMMARY.parent.mkdir(exist_ok=True)
    with SUMMARY.open("a" if workers > 1 else "w") as summary:
        summary.write("\n".join(lines) + "\n\n")
    assert sorted(proxied) == sorted(direct)
    for scenario, checks in direct.items():
        expected = [
            (check, "SUCCESS" if (scenario, check) in PROXY_ADDS else status)
            for check, status in checks
        ]
        assert proxied[scenario] == expected, scenario
    for scenario, check in PROXY_ADDS:
        assert (check, "FAILURE") in direct[scenario]  # else: the fixture checks it now
