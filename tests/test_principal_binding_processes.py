"""Sessions and tasks bound to their principal, on real processes: a real OpenID provider
(oidc-provider, tests/interop/oidc_provider.mjs) issuing tokens to two clients (two
principals: ``mcp-client`` and ``reader``), real MCP servers (two of the demo backend for
2025 sessions; two of tests/interop/py_tasks_server.py, stateless, for 2026 tasks), mcplb
with auth on in each store: memory (1 worker), signed ids and Redis (real redis-server),
1 and 2 workers, each request on a new connection (so that it may land on any worker).

For each: a session created by A and used by B gets 404 Session not found, the very
answer to an id nobody minted, and A's session still works afterwards; a task created by
A and polled by B gets the not-found error SEP-2663 gives a nonexistent task, the very
answer to an unknown task id, and A's task still completes at its holder.

Attacks: a signed id minted by a proxy with auth off presented with auth on; the same
``sub`` from another issuer (two providers, two proxies sharing the signing key or the
Redis store); a signed id's digest stripped, or its payload spliced under another's tag;
a request without a principal (a CORS preflight, which passes auth without a token)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.interop import NODE
from tests.support.eventually import eventually
from tests.support.peers import LOOPBACK, Peers, free_port, proxy_admin_port, wait_for_port
from tests.support.redis_server import RedisServer, start_redis
from tests.test_auth_interop import OidcProvider, SigningKey, start_provider
from tests.test_mcp2026_proxy import TasksBackend, headers, metric, post, request

KEY = "principal-binding-key-" + "p" * 32
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "binding-test", "version": "1"},
    },
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
TOOLS_LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
TASK_NOT_FOUND = {"code": -32602, "message": "Failed to retrieve task: Task not found"}
LEGACY = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def proxy_yaml(
    port: int,
    backends: list[tuple[str, int]],
    *,
    workers: int,
    store: str,
    issuer: str | None,
    redis: RedisServer | None = None,
) -> str:
    lines = [
        f"listen: '{LOOPBACK}:{port}'",
        f"workers: {workers}",
        "strategy: round_robin",
        "backends:",
        *(f"  - {{name: {name}, url: 'http://{LOOPBACK}:{port}'}}" for name, port in backends),
        "sticky:",
        f"  store: {store}",
    ]
    if store == "signed":
        lines.append(f"  keys: ['{KEY}']")
    if store == "redis":
        assert redis is not None
        lines.append(f"  redis: {{url: '{redis.url}'}}")
    if issuer is not None:
        lines += [
            "auth:",
            f"  resource: http://{LOOPBACK}:{port}/mcp",
            "  jwt:",
            f"    issuer: {issuer}",
            f"    jwks_url: {issuer}/jwks",
            "    jwks_min_refresh: 1s",
        ]
    return "\n".join(lines) + "\n"


class Stack:
    """A provider, two MCP servers, Redis when asked, and the proxies of one test."""

    def __init__(self, peers: Peers, tmp_path: Path) -> None:
        self.peers = peers
        self.tmp_path = tmp_path
        self.sessions: list[tuple[str, int]] = []  # stateful 2025-era servers
        self.tasks: list[tuple[str, int]] = []  # 2026-07-28 servers with tasks
        self.redis: RedisServer | None = None

    async def start(self, *, redis: bool, tasks: bool = False) -> None:
        # The session servers first, each waited for, then the task servers: on a loaded
        # machine, four Python processes importing at once can each take longer than the
        # 15 s the demo backend's start waits for its port.
        if redis:
            self.redis = await start_redis()
        for name in ("a", "b"):
            backend = await self.peers.backend(name)
            self.sessions.append((name, backend.port))
        started = [TasksBackend(f"t{i}", free_port()) for i in range(2 if tasks else 0)]
        self.peers.started.extend(started)
        for task_backend in started:
            await wait_for_port(LOOPBACK, task_backend.port, 20.0, process=task_backend)
            self.tasks.append((task_backend.name, task_backend.port))

    async def provider(self, key: SigningKey) -> OidcProvider:
        provider = await start_provider(free_port(), [key], self.tmp_path)
        self.peers.started.append(provider)
        return provider

    async def proxy(
        self,
        *,
        workers: int,
        store: str,
        issuer: str | None,
        name: str = "mcplb",
        tasks: bool = False,
    ) -> tuple[str, int]:
        """(the proxy's MCP URL, its admin port), in front of the session servers (or of
        the task servers)."""
        port = free_port()
        backends = self.tasks if tasks else self.sessions
        text = proxy_yaml(
            port, backends, workers=workers, store=store, issuer=issuer, redis=self.redis
        )
        proxy = await self.peers.proxy(text, self.tmp_path, port=port, name=name)
        return f"{proxy.url}/mcp", await proxy_admin_port(proxy)

    async def stop(self) -> None:
        if self.redis is not None:
            await self.redis.stop()


@pytest.fixture
async def stack(peers: Peers, tmp_path: Path) -> AsyncIterator[Stack]:
    assert NODE.exists()
    started = Stack(peers, tmp_path)
    yield started
    await started.stop()


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"authorization": f"Bearer {token}"}


def fresh() -> aiohttp.ClientSession:
    """A client whose every request opens a new connection (any worker may take it)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def initialize(url: str, token: str | None) -> str:
    """A 2025-06-18 session (initialize, then notifications/initialized): its id."""
    async with (
        fresh() as http,
        http.post(url, data=json.dumps(INITIALIZE), headers=LEGACY | bearer(token)) as response,
    ):
        await response.read()
        assert response.status == 200, response.status
        session_id = response.headers["mcp-session-id"]
    head = LEGACY | bearer(token) | {"mcp-session-id": session_id}
    async with (
        fresh() as http,
        http.post(url, data=json.dumps(INITIALIZED), headers=head) as response,
    ):
        await response.read()
        assert response.status == 202, response.status
    return session_id


async def refused_counts(admin: int, expected: dict[str, float]) -> None:
    """mcplb_binding_refused_total reaches ``expected`` (several workers' counters reach
    the admin API with the next snapshot)."""

    async def current() -> dict[str, float]:
        async with aiohttp.ClientSession() as http:
            return await metric(http, admin, "mcplb_binding_refused_total")

    async def reached() -> bool:
        return await current() == expected

    await eventually(reached, within=10.0, what=f"binding_refused == {expected}", every=0.2)


async def use_session(url: str, token: str, session_id: str) -> tuple[int, bytes]:
    head = LEGACY | bearer(token) | {"mcp-session-id": session_id}
    async with (
        fresh() as http,
        http.post(url, data=json.dumps(TOOLS_LIST), headers=head) as response,
    ):
        return response.status, await response.read()


async def task_call(url: str, token: str, method: str, params: dict[str, Any], rid: int) -> Any:
    name = params.get("taskId", params.get("name"))
    async with fresh() as http:
        status, answer = await post(
            http, url, request(rid, method, params), headers(method, name) | bearer(token)
        )
    return status, answer


async def sessions_bound(url: str, alice: str, bob: str) -> None:
    session_id = await initialize(url, alice)
    for _ in range(4):  # over the workers
        assert (await use_session(url, alice, session_id))[0] == 200
    theirs = await use_session(url, bob, session_id)
    assert theirs[0] == 404, theirs
    never = await use_session(url, bob, session_id[:-4] + "zzzz")  # an id nobody minted
    assert theirs == never  # the same status, the same body: no oracle
    for _ in range(4):  # A's session is untouched
        assert (await use_session(url, alice, session_id))[0] == 200


async def tasks_bound(url: str, alice: str, bob: str) -> None:
    call = {"name": "slow_task", "arguments": {"delay": 0.2}}
    status, created = await task_call(url, alice, "tools/call", call, 3)
    assert status == 200 and created["result"]["resultType"] == "task", created
    task_id = created["result"]["taskId"]
    theirs = await task_call(url, bob, "tasks/get", {"taskId": task_id}, 4)
    unknown = await task_call(url, bob, "tasks/get", {"taskId": "t0-never-created"}, 4)
    assert theirs == unknown == (400, {"jsonrpc": "2.0", "id": 4, "error": TASK_NOT_FOUND})
    cancel = await task_call(url, bob, "tasks/cancel", {"taskId": task_id}, 5)
    assert cancel == (400, {"jsonrpc": "2.0", "id": 5, "error": TASK_NOT_FOUND})
    deadline = time.monotonic() + 15
    while True:  # A's task still runs and completes at its holder
        status, answer = await task_call(url, alice, "tasks/get", {"taskId": task_id}, 6)
        assert status == 200, answer
        assert answer["result"]["servedBy"] == task_id.split("-")[0]
        if answer["result"]["status"] == "completed":
            break
        assert time.monotonic() < deadline, answer
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("store", "workers"),
    [("memory", 1), ("signed", 1), ("signed", 2), ("redis", 1), ("redis", 2)],
)
async def test_sessions_and_tasks_are_bound_to_their_principal(
    stack: Stack, store: str, workers: int
) -> None:
    await stack.start(redis=store == "redis", tasks=True)
    provider = await stack.provider(SigningKey("key-a"))
    url, admin = await stack.proxy(workers=workers, store=store, issuer=provider.issuer)
    alice = await provider.token(url, "mcp-client")
    bob = await provider.token(url, "reader")
    await sessions_bound(url, alice, bob)
    tasks_url, _ = await stack.proxy(
        workers=workers, store=store, issuer=provider.issuer, name="tasks", tasks=True
    )
    alice = await provider.token(tasks_url, "mcp-client")
    bob = await provider.token(tasks_url, "reader")
    await tasks_bound(tasks_url, alice, bob)
    if store == "signed":  # the signed id says whose it is: counted
        await refused_counts(admin, {'{kind="session",reason="principal"}': 1.0})
    else:  # a store's foreign id is an unknown key there: nothing to tell, nothing counted
        await refused_counts(admin, {})


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_signed_ids_of_auth_off_forged_and_spliced_are_unknown(stack: Stack) -> None:
    await stack.start(redis=False)
    provider = await stack.provider(SigningKey("key-a"))
    open_url, _ = await stack.proxy(workers=1, store="signed", issuer=None, name="open")
    url, admin = await stack.proxy(workers=2, store="signed", issuer=provider.issuer)
    alice = await provider.token(url, "mcp-client")
    bob = await provider.token(url, "reader")
    # Minted with auth off (the same signing key): no principal in it, refused with auth on.
    unbound = await initialize(open_url, None)
    assert (await use_session(open_url, alice, unbound))[0] == 200  # auth off: as before
    assert (await use_session(url, alice, unbound))[0] == 404
    # Alice's id with its digest stripped, changed, or Bob's payload under Alice's tag.
    mine, theirs = await initialize(url, alice), await initialize(url, bob)
    version, payload, tag = mine.split(".")
    raw = _b64decode(payload)
    forged = [
        f"{version}.{_b64encode(raw[:-16])}.{tag}",
        f"{version}.{_b64encode(raw[:-1] + bytes([raw[-1] ^ 1]))}.{tag}",
        f"{version}.{theirs.split('.')[1]}.{tag}",
    ]
    for token in forged:
        assert (await use_session(url, bob, token))[0] == 404
        assert (await use_session(url, alice, token))[0] == 404
    assert (await use_session(url, alice, mine))[0] == 200
    # A request auth lets through without a token (a CORS preflight) uses no binding:
    # routed as any other (the backend answers it), counted.
    preflight = {
        "origin": "http://app.example",
        "access-control-request-method": "POST",
        "mcp-session-id": mine,
    }
    async with fresh() as http, http.options(url, headers=preflight) as response:
        await response.read()
    await refused_counts(
        admin,
        {
            '{kind="session",reason="unbound"}': 1.0,
            '{kind="session",reason="anonymous"}': 1.0,
        },
    )


def minted(key: SigningKey, issuer: str, audience: str, sub: str) -> str:
    now = int(time.time())
    claims = {"iss": issuer, "sub": sub, "aud": audience, "exp": now + 300, "iat": now}
    return key.sign(claims)


@pytest.mark.parametrize("store", ["signed", "redis"])
async def test_the_same_sub_from_another_issuer_is_another_principal(
    stack: Stack, store: str
) -> None:
    """Two proxies sharing the signing key (or the Redis store), each trusting its own
    provider: a session of ``alice`` of one issuer is unknown to ``alice`` of the other."""
    await stack.start(redis=store == "redis")
    key = SigningKey("key-a")  # both providers serve it: only the issuer differs
    first, second = await stack.provider(key), await stack.provider(key)
    url_x, _ = await stack.proxy(workers=1, store=store, issuer=first.issuer, name="x")
    url_y, _ = await stack.proxy(workers=1, store=store, issuer=second.issuer, name="y")
    alice_x = minted(key, first.issuer, url_x, "alice")
    alice_y = minted(key, second.issuer, url_y, "alice")
    session_id = await initialize(url_x, alice_x)
    assert (await use_session(url_x, alice_x, session_id))[0] == 200
    assert (await use_session(url_y, alice_y, session_id))[0] == 404
    assert (await use_session(url_x, alice_x, session_id))[0] == 200
