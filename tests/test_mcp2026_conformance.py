"""The newest MCP conformance suite (npm ``@modelcontextprotocol/conformance`` 0.2, installed
as ``conformance-next`` beside 0.1.16), every 2026-07-28 server scenario (``--suite all
--spec-version 2026-07-28``: http-header-validation, server-stateless, caching, MRTR ...)
against the TypeScript SDK 2.4 server (tests/interop/ts2026_server.mjs, modern-only): once
direct, then through mcplb (3 backends, round robin, 1 and 2 workers). Every check of every
scenario must end the same through the proxy as direct, but ``dns-rebinding-protection``,
which the proxy's loopback listener adds. (The server has the SDK's tools, not the suite's
fixtures: scenarios needing those fail the same way both times; what is compared is the
proxy's effect, scenario by scenario.) Results: build/interop-conformance-2026.md.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.interop import INTEROP, MISSING, NODE, NODE_MODULES
from tests.support.peers import (
    LOOPBACK,
    Peers,
    _logs,
    _ManagedProcess,
    free_port,
    wait_for_port_sync,
)

CONFORMANCE_NEXT = NODE_MODULES / "conformance-next" / "dist" / "index.js"
PROXY_ONLY = "dns-rebinding-protection"
SCENARIO_DIR = re.compile(r"^server-(.+)-\d{4}-\d\d-\d\dT")
SUMMARY = Path(__file__).resolve().parent.parent / "build" / "interop-conformance-2026.md"
KEY = "conformance-2026-key-" + "c" * 32

Verdicts = dict[str, list[tuple[str, str]]]


class Ts2026Server(_ManagedProcess):
    label = "ts2026 server"

    def __init__(self, name: str, port: int) -> None:
        self.port = port
        argv = [str(NODE), str(INTEROP / "ts2026_server.mjs"), "--name", name]
        argv += ["--port", str(port)]
        log = _logs() / f"ts2026-{name}-{port}.log"
        super().__init__(argv, stdout_path=log, stderr_path=log, own_group=False)


@pytest.fixture(scope="module")
def servers() -> Iterator[list[Ts2026Server]]:
    assert NODE.exists(), MISSING
    started: list[Ts2026Server] = []
    try:
        for i in range(3):
            started.append(Ts2026Server(f"c{i}", free_port()))
            wait_for_port_sync(LOOPBACK, started[-1].port, 20.0, process=started[-1])
        yield started
    finally:
        for server in started:
            server.kill_now()


async def conformance(url: str, out: Path) -> Verdicts:
    process = await asyncio.create_subprocess_exec(
        str(NODE),
        str(CONFORMANCE_NEXT),
        *("server", "--suite", "all", "--spec-version", "2026-07-28", "--url", url),
        *("-o", str(out)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 300)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    verdicts: Verdicts = {}
    for checks in out.glob("*/checks.json"):
        found = SCENARIO_DIR.match(checks.parent.name)
        assert found is not None, checks
        verdicts[found.group(1)] = sorted(
            (c["id"], c["status"]) for c in json.loads(checks.read_text())
        )
    assert "http-header-validation" in verdicts and len(verdicts) >= 30, output.decode()
    return verdicts


@pytest.fixture(scope="module")
def direct(servers: list[Ts2026Server], tmp_path_factory: pytest.TempPathFactory) -> Verdicts:
    out = tmp_path_factory.mktemp("conformance-2026-direct")
    return asyncio.run(conformance(f"http://{LOOPBACK}:{servers[0].port}/mcp", out))


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    async with Peers() as p:
        yield p


@pytest.mark.parametrize("workers", [1, 2])
async def test_conformance_2026_through_the_proxy_equals_direct(
    servers: list[Ts2026Server], direct: Verdicts, peers: Peers, tmp_path: Path, workers: int
) -> None:
    port = free_port()
    text = f"listen: '127.0.0.1:{port}'\nworkers: {workers}\nbackends:\n"
    text += "".join(
        f"  - {{name: c{i}, url: 'http://127.0.0.1:{s.port}'}}\n" for i, s in enumerate(servers)
    )
    text += f"sticky:\n  keys: ['{KEY}']\n"
    proxy = await peers.proxy(text, tmp_path, port=port)
    proxied = await conformance(f"{proxy.url}/mcp", tmp_path / "out")
    lines = ["| scenario | direct | through mcplb |", "|---|---|---|"]
    for scenario in sorted(direct):
        cells = [_verdict(direct[scenario]), _verdict(proxied.get(scenario, []))]
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    SUMMARY.parent.mkdir(exist_ok=True)
    SUMMARY.write_text("\n".join(lines) + "\n")
    assert sorted(proxied) == sorted(direct)
    for scenario, checks in direct.items():
        if scenario == PROXY_ONLY:
            assert all(status != "FAILURE" for _, status in proxied[scenario])
            continue
        assert proxied[scenario] == checks, scenario
    assert all(status == "SUCCESS" for _, status in direct["http-header-validation"])


def _verdict(checks: list[tuple[str, str]]) -> str:
    if not checks:
        return "missing"
    return "fail" if any(status == "FAILURE" for _, status in checks) else "pass"
