"""The official MCP conformance suite (npm ``@modelcontextprotocol/conformance``, all server
scenarios) against two ``@modelcontextprotocol/server-everything`` backends: once direct,
then through mcplb in each session mode. Every check of every scenario must end the same
through the proxy as direct, with one deliberate difference: ``dns-rebinding-protection``
passes through the proxy (its loopback listener refuses foreign Host names) even though
server-everything, listening without a Host check, fails it direct.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop import CONFORMANCE, MISSING, NODE, SERVER_EVERYTHING
from tests.support.peers import (
    LOOPBACK,
    Peers,
    _logs,
    _ManagedProcess,
    free_port,
    wait_for_port_sync,
)
from tests.support.redis_server import start_redis

KEY = "interop-conformance-key-" + "c" * 32
MODES = [("memory", 1), ("signed", 1), ("signed", 2), ("redis", 1), ("redis", 2)]
PROXY_ONLY = "dns-rebinding-protection"  # the proxy adds the protection the backend lacks
SCENARIO_DIR = re.compile(r"^server-(.+)-\d{4}-\d\d-\d\dT")
SUMMARY = Path(__file__).resolve().parent.parent / "build" / "interop-conformance.md"

# scenario -> sorted (check id, status) pairs
Verdicts = dict[str, list[tuple[str, str]]]


class ServerEverything(_ManagedProcess):
    label = "server-everything"

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://{LOOPBACK}:{port}"
        log = _logs() / f"server-everything-{port}.log"
        argv = [str(NODE), str(SERVER_EVERYTHING), "streamableHttp"]
        super().__init__(
            argv, stdout_path=log, stderr_path=log, own_group=False, env={"PORT": str(port)}
        )


@pytest.fixture(scope="module")
def everything() -> Iterator[list[ServerEverything]]:
    assert NODE.exists(), MISSING
    servers: list[ServerEverything] = []
    try:
        for _ in range(2):
            servers.append(ServerEverything(free_port()))
            wait_for_port_sync(LOOPBACK, servers[-1].port, 20.0, process=servers[-1])
        yield servers
    finally:
        for server in servers:
            server.stop_sync()


@pytest.fixture(scope="module")
def results() -> Iterator[dict[str, Verdicts]]:
    """Every run's verdicts; written as a table to build/interop-conformance.md."""
    runs: dict[str, Verdicts] = {}
    yield runs
    if "direct" not in runs:
        return
    lines = ["| scenario | " + " | ".join(runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for scenario in sorted(runs["direct"]):
        cells = [_verdict(run.get(scenario, [])) for run in runs.values()]
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    SUMMARY.parent.mkdir(exist_ok=True)
    SUMMARY.write_text("\n".join(lines) + "\n")


def _verdict(checks: list[tuple[str, str]]) -> str:
    if not checks:
        return "missing"
    failed = sum(status == "FAILURE" for _, status in checks)
    return "fail" if failed else "pass"


async def conformance(url: str, out: Path) -> Verdicts:
    """Run every server scenario against ``url``; the checks of each scenario."""
    process = await asyncio.create_subprocess_exec(
        str(NODE),
        str(CONFORMANCE),
        *("server", "--suite", "all", "--url", url, "-o", str(out)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 180)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    verdicts: Verdicts = {}
    for checks in out.glob("*/checks.json"):
        found = SCENARIO_DIR.match(checks.parent.name)
        assert found is not None, checks
        pairs = [(c["id"], c["status"]) for c in json.loads(checks.read_text())]
        verdicts[found.group(1)] = sorted(pairs)
    # Failing scenarios make the CLI exit 1; a crash leaves scenarios without results.
    assert len(verdicts) >= 30, output.decode()
    return verdicts


@pytest.fixture(scope="module")
def direct(
    everything: list[ServerEverything], tmp_path_factory: pytest.TempPathFactory
) -> Verdicts:
    out = tmp_path_factory.mktemp("conformance-direct")
    return asyncio.run(conformance(f"{everything[0].url}/mcp", out))


@pytest.mark.parametrize(("store", "workers"), MODES, ids=[f"{s}-{w}w" for s, w in MODES])
async def test_same_verdicts_through_the_proxy(
    everything: list[ServerEverything],
    direct: Verdicts,
    results: dict[str, Verdicts],
    peers: Peers,
    tmp_path: Path,
    store: str,
    workers: int,
) -> None:
    results["direct"] = direct
    redis = await start_redis() if store == "redis" else None
    try:
        sticky = {
            "memory": "  store: memory\n",
            "signed": f"  store: signed\n  keys: ['{KEY}']\n",
            "redis": f"  store: redis\n  redis: {{url: '{redis.url if redis else ''}'}}\n",
        }[store]
        entries = "".join(
            f"  - {{name: se{i}, url: '{s.url}'}}\n" for i, s in enumerate(everything)
        )
        port = free_port()
        config = (
            f"listen: 127.0.0.1:{port}\nworkers: {workers}\nsticky:\n{sticky}backends:\n{entries}"
        )
        proxy = await peers.proxy(config, tmp_path, port=port)
        proxied = await conformance(f"{proxy.url}/mcp", tmp_path / "conformance")
    finally:
        if redis is not None:
            await redis.stop()
    results[f"{store}, {workers} worker{'s' * (workers > 1)}"] = proxied
    assert _verdict(proxied[PROXY_ONLY]) == "pass", proxied[PROXY_ONLY]
    differ = {
        scenario: {"direct": checks, "proxied": proxied.get(scenario)}
        for scenario, checks in direct.items()
        if scenario != PROXY_ONLY and proxied.get(scenario) != checks
    }
    assert not differ, json.dumps(differ, indent=1)
    assert set(proxied) == set(direct)
