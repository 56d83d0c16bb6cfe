"""MCP 2026-07-28 through mcplb, with real servers: the tasks server of
tests/interop/py_tasks_server.py (the Python SDK's MCPServer with a SEP-2663 tasks extension,
dual-era), 3 backends, round robin, 1 and 2 workers, memory/signed and Redis stores.

The client here writes each request as the spec says a 2026-07-28 client must (the
MCP-Protocol-Version, Mcp-Method and Mcp-Name headers, the version in ``_meta``, the tasks
extension declared), so that every header can also be made to lie. Measured:

- task routing: the first ``tasks/get`` of each task reaches the backend holding it (the
  server answers "Unknown task" elsewhere), and every task completes;
- header mismatches: refused by mcplb (400, JSON-RPC -32020, the request's id), counted by
  reason in /metrics, and no backend sees them;
- a stray Mcp-Session-Id on a 2026 request is ignored (never mcplb's 404), and the Python
  SDK's own 2026 client (discover, tools/list, tools/call) works through the proxy.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.peers import (
    LOOPBACK,
    Peers,
    ProxyProcess,
    _logs,
    _ManagedProcess,
    free_port,
    proxy_admin_port,
    wait_for_port_sync,
)
from tests.support.redis_server import start_redis

VERSION = "2026-07-28"
TASKS = "io.modelcontextprotocol/tasks"
KEY = "mcp2026-test-key-" + "k" * 32
TASK_COUNT = 30


class TasksBackend(_ManagedProcess):
    label = "MCP tasks backend"

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.port = port
        argv = [sys.executable, "-m", "tests.interop.py_tasks_server", "--name", name]
        argv += ["--port", str(port)]
        log = _logs() / f"tasks-{name}-{port}.log"
        super().__init__(argv, stdout_path=log, stderr_path=log, own_group=False)


@pytest.fixture(scope="module")
def backends() -> Iterator[list[TasksBackend]]:
    started = [TasksBackend(f"t{i}", free_port()) for i in range(3)]
    try:
        for backend in started:
            wait_for_port_sync(LOOPBACK, backend.port, 20.0, process=backend)
        yield started
    finally:
        for backend in started:
            backend.kill_now()


def config(backends: list[TasksBackend], port: int, *, workers: int, sticky: str) -> str:
    lines = [f"listen: '127.0.0.1:{port}'", f"workers: {workers}", "strategy: round_robin"]
    lines.append("backends:")
    lines += [f"  - {{name: {b.name}, url: 'http://127.0.0.1:{b.port}'}}" for b in backends]
    return "\n".join(lines) + "\n" + sticky


def meta() -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": VERSION,
        "io.modelcontextprotocol/clientInfo": {"name": "mcplb-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {"extensions": {TASKS: {}}},
    }


def request(rid: Any, method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": {**params, "_meta": meta()}}


def headers(method: str, name: str | None = None, **extra: str) -> dict[str, str]:
    out = {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": VERSION,
        "mcp-method": method,
    }
    if name is not None:
        out["mcp-name"] = name
    return out | extra


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, head: dict[str, str]
) -> tuple[int, Any]:
    async with http.post(url, data=json.dumps(body), headers=head) as response:
        text = await response.text()
        if response.content_type == "text/event-stream":
            data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
            return response.status, json.loads(data[-1])
        return response.status, json.loads(text) if text else None


async def create_task(http: aiohttp.ClientSession, url: str, rid: int) -> str:
    status, answer = await post(
        http,
        url,
        request(rid, "tools/call", {"name": "slow_task", "arguments": {"delay": 0.05}}),
        headers("tools/call", "slow_task"),
    )
    assert status == 200 and answer["result"]["resultType"] == "task", answer
    task_id: str = answer["result"]["taskId"]
    return task_id


async def tasks_get(http: aiohttp.ClientSession, url: str, task_id: str, rid: int) -> Any:
    status, answer = await post(
        http, url, request(rid, "tasks/get", {"taskId": task_id}), headers("tasks/get", task_id)
    )
    assert status in (200, 400), answer  # 400: the server's JSON-RPC error (unknown task)
    return answer


async def task_routing(url: str, *, fresh_connections: bool) -> tuple[int, int]:
    """(first tasks/get at the holder, tasks completed) out of TASK_COUNT."""
    at_holder = completed = 0
    connector = aiohttp.TCPConnector(force_close=fresh_connections)
    async with aiohttp.ClientSession(connector=connector) as http:
        for i in range(TASK_COUNT):
            task_id = await create_task(http, url, 2 * i)
            answer = await tasks_get(http, url, task_id, 2 * i + 1)
            if "result" in answer and answer["result"].get("servedBy") == task_id.split("-")[0]:
                at_holder += 1
            for poll in range(100):  # bounded: 100 polls of 20 ms at most
                if "result" in answer and answer["result"]["status"] == "completed":
                    completed += 1
                    break
                if "error" in answer:
                    break
                await asyncio.sleep(0.02)
                answer = await tasks_get(http, url, task_id, 10_000 + poll)
    return at_holder, completed


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    async with Peers() as started:
        yield started


@pytest.mark.parametrize(
    ("workers", "store"),
    [(1, "memory"), (2, "redis"), (2, "signed")],
)
async def test_first_tasks_get_reaches_the_holder(
    backends: list[TasksBackend], peers: Peers, tmp_path: Path, workers: int, store: str
) -> None:
    """Before: the first tasks/get reached the holder 9 times in 30 (chance)."""
    port = free_port()
    redis = None
    if store == "redis":
        redis = await start_redis()
        sticky = f"sticky:\n  store: redis\n  redis: {{url: '{redis.url}'}}\n"
    elif store == "signed":
        sticky = f"sticky:\n  store: signed\n  keys: ['{KEY}']\n"
    else:
        sticky = ""
    try:
        proxy = await peers.proxy(
            config(backends, port, workers=workers, sticky=sticky), tmp_path, port=port
        )
        url = f"{proxy.url}/mcp"
        at_holder, completed = await task_routing(url, fresh_connections=False)
        print(
            f"\nworkers={workers} store={store} keep-alive: {at_holder}/{TASK_COUNT} at "
            f"the holder, {completed}/{TASK_COUNT} completed"
        )
        assert (at_holder, completed) == (TASK_COUNT, TASK_COUNT)
        if workers == 1 or store == "redis":
            # Each request on a new connection (so, with 2 workers, either worker).
            fresh = await task_routing(url, fresh_connections=True)
            print(f"workers={workers} store={store} new connections: {fresh}")
            assert fresh == (TASK_COUNT, TASK_COUNT)
    finally:
        if redis is not None:
            await redis.stop()


async def test_without_task_affinity_tasks_are_lost(
    backends: list[TasksBackend], peers: Peers, tmp_path: Path
) -> None:
    """mcplb as it was (sticky.mcp_tasks: false): round robin sends each task's first
    tasks/get to the next backend, which does not know the task."""
    port = free_port()
    sticky = "sticky:\n  mcp_tasks: false\n"
    proxy = await peers.proxy(config(backends, port, workers=1, sticky=sticky), tmp_path, port=port)
    at_holder, completed = await task_routing(f"{proxy.url}/mcp", fresh_connections=False)
    print(f"\nmcp_tasks: false: {at_holder}/{TASK_COUNT} at the holder, {completed} completed")
    assert at_holder == 0 and completed == 0


async def test_one_backend_is_the_baseline(
    backends: list[TasksBackend], peers: Peers, tmp_path: Path
) -> None:
    port = free_port()
    proxy = await peers.proxy(config(backends[:1], port, workers=1, sticky=""), tmp_path, port=port)
    assert await task_routing(f"{proxy.url}/mcp", fresh_connections=True) == (TASK_COUNT,) * 2


async def test_unknown_task_goes_to_a_backend_which_answers(
    backends: list[TasksBackend], peers: Peers, tmp_path: Path
) -> None:
    port = free_port()
    proxy = await peers.proxy(config(backends, port, workers=1, sticky=""), tmp_path, port=port)
    async with aiohttp.ClientSession() as http:
        status, answer = await post(
            http,
            f"{proxy.url}/mcp",
            request(5, "tasks/get", {"taskId": "t9-no"}),
            headers("tasks/get", "t9-no"),
        )
    # The server's own answer (the Python SDK's status for a JSON-RPC error), not mcplb's.
    assert (status, answer["error"]["message"]) == (400, "Unknown task: t9-no")


MISMATCHES: list[tuple[str, dict[str, Any], dict[str, str], str]] = [
    # (case, body, headers, reason counted)
    (
        "method",
        request(1, "tools/call", {"name": "whoami"}),
        headers("tools/list"),
        "method_mismatch",
    ),
    (
        "method case",
        request(2, "tools/call", {"name": "whoami"}),
        headers("TOOLS/CALL", "whoami"),
        "method_mismatch",
    ),
    (
        "name",
        request(3, "tools/call", {"name": "whoami"}),
        headers("tools/call", "drop_tables"),
        "name_mismatch",
    ),
    (
        "name base64",
        request(4, "tools/call", {"name": "whoami"}),
        headers("tools/call", "=?base64?ZHJvcA==?="),
        "name_mismatch",
    ),
    (
        "bad base64",
        request(5, "tools/call", {"name": "whoami"}),
        headers("tools/call", "=?base64?d2hvYW1p?="[:-3] + "!?="),
        "name_malformed",
    ),
    (
        "name on tools/list",
        request(6, "tools/list", {}),
        headers("tools/list", "whoami"),
        "name_unexpected",
    ),
    (
        "task id",
        request(7, "tasks/get", {"taskId": "t0-a"}),
        headers("tasks/get", "t1-b"),
        "name_mismatch",
    ),
    (
        "task id number",
        request(8, "tasks/get", {"taskId": 8}),
        headers("tasks/get", "8"),
        "name_missing_in_body",
    ),
    (
        "version",
        {
            **request(9, "tools/call", {"name": "whoami"}),
            "params": {
                "name": "whoami",
                "_meta": {**meta(), "io.modelcontextprotocol/protocolVersion": "2025-11-25"},
            },
        },
        headers("tools/call", "whoami"),
        "version_mismatch",
    ),
    (
        "batch",
        [request(10, "tools/call", {"name": "whoami"})],
        headers("tools/call", "whoami"),
        "not_a_request",
    ),
]


async def metric(http: aiohttp.ClientSession, admin: int, name: str) -> dict[str, float]:
    async with http.get(f"http://127.0.0.1:{admin}/metrics") as response:
        text = await response.text()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            found[labels[len(name) :]] = float(value)
    return found


async def test_header_mismatches_are_refused_and_counted(
    backends: list[TasksBackend], peers: Peers, tmp_path: Path
) -> None:
    """Before: mcplb refused 0 of 10 mismatches and counted the headers' values."""
    port = free_port()
    proxy: ProxyProcess = await peers.proxy(
        config(backends, port, workers=1, sticky=""), tmp_path, port=port
    )
    admin = await proxy_admin_port(proxy)
    url = f"{proxy.url}/mcp"
    rows = []
    async with aiohttp.ClientSession() as http:
        before = await metric(http, admin, "mcplb_requests_total")
        for case, body, head, reason in MISMATCHES:
            status, answer = await post(http, url, body, head)
            rid = body["id"] if isinstance(body, dict) else None
            rows.append((case, status, answer["error"]["code"], answer["id"], reason))
            assert status == 400 and answer["error"]["code"] == -32020, (case, answer)
            assert answer["id"] == rid, case
        after = await metric(http, admin, "mcplb_requests_total")
        counted = await metric(http, admin, "mcplb_mcp_header_mismatches_total")
        tools = await metric(http, admin, "mcplb_mcp_requests_total")
    for row in rows:
        print(row)
    assert after == before  # no backend answered any of them
    expected: dict[str, float] = {}
    for *_, reason in MISMATCHES:
        key = f'{{reason="{reason}"}}'
        expected[key] = expected.get(key, 0) + 1
    assert counted == expected
    assert not any("drop" in labels for labels in tools)


async def test_stray_session_id_on_a_2026_request_is_ignored(
    backends: list[TasksBackend], peers: Peers, tmp_path: Path
) -> None:
    """Before: mcplb answered its own 404 Session not found; the servers answer 200."""
    port = free_port()
    proxy = await peers.proxy(config(backends, port, workers=1, sticky=""), tmp_path, port=port)
    async with aiohttp.ClientSession() as http:
        for i in range(3):
            status, answer = await post(
                http,
                f"{proxy.url}/mcp",
                request(i, "tools/call", {"name": "whoami"}),
                headers("tools/call", "whoami", **{"mcp-session-id": "stale-or-made-up"}),
            )
            assert status == 200 and "result" in answer, answer


async def test_python_sdk_2026_client_through_the_proxy(
    backends: list[TasksBackend], peers: Peers, tmp_path: Path
) -> None:
    from mcp import Client

    port = free_port()
    proxy = await peers.proxy(
        config(backends, port, workers=2, sticky=f"sticky:\n  keys: ['{KEY}']\n"),
        tmp_path,
        port=port,
    )
    served = set()
    async with Client(f"{proxy.url}/mcp") as client:
        tools = await client.list_tools()
        assert {"whoami", "slow_task"} <= {t.name for t in tools.tools}
        for _ in range(6):
            result = await client.call_tool("whoami", {})
            served.add(result.content[0].text)  # type: ignore[union-attr]
    assert served == {"t0", "t1", "t2"}  # sessionless: spread by round robin


async def test_two_replicas_share_tasks_through_redis(
    backends: list[TasksBackend], peers: Peers, tmp_path: Path
) -> None:
    """Each task created through one replica and polled through the other."""
    redis = await start_redis()
    try:
        sticky = f"sticky:\n  store: redis\n  redis: {{url: '{redis.url}'}}\n"
        urls = []
        for name in ("a", "b"):
            port = free_port()
            text = config(backends, port, workers=2, sticky=sticky)
            proxy = await peers.proxy(text, tmp_path, port=port, name=name)
            urls.append(f"{proxy.url}/mcp")
        at_holder = completed = 0
        async with aiohttp.ClientSession() as http:
            for i in range(TASK_COUNT):
                task_id = await create_task(http, urls[i % 2], i)
                answer = await tasks_get(http, urls[(i + 1) % 2], task_id, 1000 + i)
                if answer.get("result", {}).get("servedBy") == task_id.split("-")[0]:
                    at_holder += 1
                for poll in range(100):
                    if answer.get("result", {}).get("status") == "completed":
                        completed += 1
                        break
                    await asyncio.sleep(0.02)
                    answer = await tasks_get(http, urls[(i + poll) % 2], task_id, 2000 + poll)
        print(f"\ntwo replicas, redis: {at_holder}/{TASK_COUNT} at the holder, {completed} done")
        assert (at_holder, completed) == (TASK_COUNT, TASK_COUNT)
    finally:
        await redis.stop()
