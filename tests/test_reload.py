"""Config reload without loss: SIGHUP, POST /reload and watch_config, each against a real
``mcplb run`` process in front of real aiohttp backends (counting what they serve) or real
MCP SDK servers, with real MCP SDK clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import anyio
import httpx2
import pytest
import yaml
from aiohttp import web
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import AppFactory
from tests.support.eventually import eventually
from tests.support.peers import (
    McpBackend,
    Peers,
    ProxyProcess,
    free_port,
    proxy_admin_port,
    result_text,
    start_mcp_backend_sync,
    wait_for_output,
    wait_for_port_sync,
)

KEY = "reload-test-session-key-" + "k" * 32
TOKEN = "reload-admin-token-" + "t" * 20
OTHER_TOKEN = "other-admin-token-" + "o" * 20
WAIT = 15.0  # bound on every poll and every request
GRACE = 2.0  # timeouts.grace: how long a removed backend drains
BODY = bytes(range(256)) * 1024  # 256 KiB, answered by /slow/KEY once released
EVENT_INTERVAL = 0.05
MAX_EVENTS = 400  # an event stream's bound: 20 s


class Named(Protocol):
    name: str

    @property
    def url(self) -> str: ...


# --- backends -------------------------------------------------------------------------


class CountingBackend:
    """A real aiohttp backend that counts every request it receives.

    ``GET /slow/KEY`` holds its answer until ``release(KEY)``, then sends ``BODY``;
    ``GET /events`` is an event stream of numbered events; anything else answers
    ``{"name": NAME}``. The proxy's X-Request-Id starts with a per-process prefix, so
    ``workers`` collects which proxy worker processes sent requests here.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.requests = 0
        self.workers: set[str] = set()
        self.closing = asyncio.Event()
        self._gates: dict[str, asyncio.Event] = {}
        self._arrived: dict[str, asyncio.Event] = {}
        self.app = web.Application()
        self.app.router.add_get("/slow/{key}", self.slow)
        self.app.router.add_get("/events", self.events)
        self.app.router.add_route("*", "/{tail:.*}", self.plain)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _count(self, request: web.Request) -> None:
        self.requests += 1
        self.workers.add(request.headers.get("X-Request-Id", "")[:6])

    def _event(self, table: dict[str, asyncio.Event], key: str) -> asyncio.Event:
        return table.setdefault(key, asyncio.Event())

    def seen(self, key: str) -> bool:
        """Whether ``GET /slow/KEY`` reached this backend."""
        return self._event(self._arrived, key).is_set()

    async def arrived(self, key: str) -> None:
        """Wait until ``GET /slow/KEY`` reached this backend."""
        await asyncio.wait_for(self._event(self._arrived, key).wait(), WAIT)

    def release(self, key: str) -> None:
        self._event(self._gates, key).set()

    def close(self) -> None:
        """Let every held request and stream end (teardown)."""
        self.closing.set()
        for gate in self._gates.values():
            gate.set()

    async def plain(self, request: web.Request) -> web.Response:
        self._count(request)
        await request.read()
        return web.json_response({"name": self.name})

    async def slow(self, request: web.Request) -> web.Response:
        self._count(request)
        key = request.match_info["key"]
        self._event(self._arrived, key).set()
        await self._event(self._gates, key).wait()
        return web.Response(body=BODY, content_type="application/octet-stream")

    async def events(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for number in range(MAX_EVENTS):
            await response.write(f"data: {number}\n\n".encode())
            # Paces the stream (the test reads it as it flows); ends early on teardown.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), EVENT_INTERVAL)
            if self.closing.is_set():
                break
        return response


BackendsFactory = Callable[..., Awaitable[list[CountingBackend]]]


# ``counting`` first: its backends are set up before ``peers`` and so outlive the proxies
# that relay to them.
pytestmark = pytest.mark.usefixtures("counting")


@pytest.fixture
async def counting(serve_app: AppFactory) -> AsyncIterator[BackendsFactory]:
    """``await counting("a", "b")``: counting backends, listening."""
    started: list[CountingBackend] = []

    async def factory(*names: str) -> list[CountingBackend]:
        backends = [CountingBackend(name) for name in names]
        for backend in backends:
            backend.port = await serve_app(backend.app)
        started.extend(backends)
        return backends

    yield factory
    for backend in started:
        backend.close()


@pytest.fixture(scope="module")
def mcp_backends() -> Iterator[list[McpBackend]]:
    """Three real MCP SDK servers, shared: each test opens its own sessions on them."""
    # Started side by side (each takes a second or so to import the SDK and listen).
    backends = [McpBackend(name, free_port()) for name in ("mcp-a", "mcp-b", "mcp-c")]
    try:
        for index, backend in enumerate(backends):
            try:
                wait_for_port_sync("127.0.0.1", backend.port, process=backend)
            except RuntimeError:  # it exited: its port was taken meanwhile; once more
                backends[index] = start_mcp_backend_sync(backend.name)
        yield backends
    finally:
        for backend in backends:
            backend.stop_sync()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
        yield session


# --- the proxy under test -------------------------------------------------------------


def config_text(
    port: int,
    backends: Sequence[tuple[Named, int]],
    *,
    workers: int = 1,
    strategy: str = "round_robin",
    admin: str = "{listen: '127.0.0.1:0'}",
    sticky: str | None = None,
    extra: str = "",
) -> str:
    """A config: ``backends`` as (backend, weight); ``extra`` lines are appended."""
    if sticky is None:
        sticky = f"{{keys: ['{KEY}']}}" if workers > 1 else "{store: memory}"
    rows = "".join(f'  - {{name: {b.name}, url: "{b.url}", weight: {w}}}\n' for b, w in backends)
    return (
        f'listen: "127.0.0.1:{port}"\n'
        f"workers: {workers}\n"
        f"strategy: {strategy}\n"
        f"sticky: {sticky}\n"
        f"timeouts: {{grace: {GRACE}s}}\n"
        f"admin: {admin}\n"
        f"backends:\n{rows}{extra}"
    )


def line_of(text: str, fragment: str) -> int:
    """The 1-based line of ``text`` where ``fragment`` first occurs."""
    return text[: text.index(fragment)].count("\n") + 1


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


class Lb:
    """A running ``mcplb run``: its config file, its admin API and its listener."""

    def __init__(
        self, proxy: ProxyProcess, admin_port: int, http: aiohttp.ClientSession, workers: int
    ) -> None:
        self.proxy = proxy
        self.url = proxy.url
        self.admin = f"http://127.0.0.1:{admin_port}"
        self.http = http
        self.workers = workers

    def rewrite(self, text: str) -> None:
        """Replace the config file the way config management does (a new file renamed over
        it), its mtime later than before even on a filesystem with coarse timestamps."""
        path = self.proxy.config_path
        before = path.stat().st_mtime
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        mtime = max(path.stat().st_mtime, before + 1.0)
        os.utime(path, (mtime, mtime))

    def sighup(self) -> None:
        self.proxy.send_signal(signal.SIGHUP)  # the worker, or the supervisor of several

    async def reload(self, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.post(f"{self.admin}/reload", headers=headers) as resp:
            return resp.status, await resp.json()

    async def status(self) -> Any:
        # The token is needed where one is set, and ignored where none is.
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with self.http.get(f"{self.admin}/status", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with self.http.get(f"{self.admin}/metrics") as resp:
            assert resp.status == 200
            return samples(await resp.text())

    async def metric(self, name: str, **labels: str) -> float:
        return (await self.metrics()).get((name, tuple(sorted(labels.items()))), 0.0)

    async def wait_generation(self, generation: int) -> None:
        """Until every worker has applied ``generation`` reloads (workers publish it about
        once a second); then /status says so too."""
        wanted = {str(worker): generation for worker in range(self.workers)}

        async def reached() -> bool:
            # /metrics, not /status, while a reload may be under way: see
            # test_admin_api_answers_while_a_reload_is_under_way.
            found = await self.metrics()
            return all(
                found.get(("mcplb_config_generation", (("worker", worker),))) == generation
                for worker in wanted
            )

        await eventually(
            reached, within=WAIT, what=f"every worker at config generation {generation}"
        )
        assert (await self.status())["config"]["worker_generations"] == wanted

    async def get(self, path: str = "/") -> str:
        """One request through the proxy: the name of the backend that answered."""
        async with self.http.get(f"{self.url}{path}") as resp:
            assert resp.status == 200, await resp.text()
            name: str = (await resp.json())["name"]
            return name


async def start_lb(
    peers: Peers, tmp_path: Path, http: aiohttp.ClientSession, text: str, port: int
) -> Lb:
    proxy = await peers.proxy(text, tmp_path, port=port)
    workers = int(yaml.safe_load(text)["workers"])
    return Lb(proxy, await proxy_admin_port(proxy), http, workers)


async def fresh_connection_names(url: str, count: int) -> list[str]:
    """``count`` requests, each on a new connection (they spread over the workers)."""
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=WAIT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        names = []
        for _ in range(count):
            async with http.get(f"{url}/fresh") as resp:
                assert resp.status == 200
                names.append((await resp.json())["name"])
        return names


# --- adding, removing, reweighting ------------------------------------------------------


async def test_sighup_adds_a_backend(
    peers: Peers, counting: BackendsFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    a, b, c = await counting("a", "b", "c")
    port = free_port()
    lb = await start_lb(peers, tmp_path, http, config_text(port, [(a, 1), (b, 1)]), port)
    assert Counter([await lb.get() for _ in range(4)]) == {"a": 2, "b": 2}

    lb.rewrite(config_text(port, [(a, 1), (b, 1), (c, 1)]))
    lb.sighup()
    output = await wait_for_output(lb.proxy, "config reloaded")
    assert "backend c added" in output

    # Round robin over the three, exactly, from the reload on.
    assert Counter([await lb.get() for _ in range(6)]) == {"a": 2, "b": 2, "c": 2}
    assert c.requests == 2
    status = await lb.status()
    assert status["config"]["generation"] == 1
    assert [row["name"] for row in status["backends"]] == ["a", "b", "c"]
    assert await lb.metric("mcplb_config_generation", worker="0") == 1
    assert await lb.metric("mcplb_config_reloads_total", result="success") == 1


async def test_a_reload_logs_the_new_configs_warnings(
    peers: Peers, counting: BackendsFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """`mcplb run` prints a config's warnings at start; a reload logs those of the new
    file too (before, they were only seen by running `mcplb check`)."""
    (a,) = await counting("a")
    port = free_port()
    lb = await start_lb(peers, tmp_path, http, config_text(port, [(a, 1)]), port)
    extra = '  - {name: m, url: "http://127.0.0.1:9/mcp"}\n'
    lb.rewrite(config_text(port, [(a, 1)], extra=extra))
    lb.sighup()
    output = await wait_for_output(lb.proxy, "config reloaded")
    assert "backends[1].url: ends in /mcp" in output


async def read_events(
    http: aiohttp.ClientSession, url: str, events: list[tuple[float, int]]
) -> tuple[float, bool]:
    """Read an event stream into ``events`` as (time, number) until it ends; returns when
    it ended and whether it ended cleanly (False: the connection was cut mid-stream)."""
    async with http.get(url, headers={"Accept": "text/event-stream"}) as resp:
        assert resp.status == 200
        try:
            async for line in resp.content:
                if line.startswith(b"data: "):
                    events.append((time.monotonic(), int(line[6:])))
        except aiohttp.ClientPayloadError:
            return time.monotonic(), False
        return time.monotonic(), True


async def fetch(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes, float]:
    """Status, body and when the response ended."""
    async with http.get(url) as resp:
        body = await resp.read()
        return resp.status, body, time.monotonic()


async def test_removed_backend_drains_then_is_cut(
    peers: Peers, counting: BackendsFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    a, b = await counting("a", "b")
    port = free_port()
    # a takes no new traffic (weight 0): everything below starts on b.
    lb = await start_lb(peers, tmp_path, http, config_text(port, [(a, 0), (b, 1)]), port)
    finished = asyncio.create_task(fetch(http, f"{lb.url}/slow/finished"))
    stuck = asyncio.create_task(fetch(http, f"{lb.url}/slow/stuck"))
    events: list[tuple[float, int]] = []
    stream = asyncio.create_task(read_events(http, f"{lb.url}/events", events))
    await b.arrived("finished")
    await b.arrived("stuck")

    async def streaming() -> bool:
        return len(events) >= 3

    await eventually(streaming, within=WAIT, every=0.05, what="events flowing through the proxy")

    lb.rewrite(config_text(port, [(a, 1)]))
    reload_sent = time.monotonic()
    status, body = await lb.reload()
    reloaded = time.monotonic()
    assert status == 200, body
    assert body["reloaded"] is True and body["generation"] == 1
    assert "backend b removed (draining)" in body["changes"]
    at_reload = len(events)

    # New requests go to a only; b gets none.
    before = b.requests
    assert {await lb.get() for _ in range(10)} == {"a"}
    assert b.requests == before
    assert [row["name"] for row in (await lb.status())["backends"]] == ["a"]

    # The request in flight on b completes, in full, after the reload.
    b.release("finished")
    code, payload, _ = await asyncio.wait_for(finished, WAIT)
    assert (code, payload) == (200, BODY)

    # The stream keeps flowing after the reload, without a gap...
    async def flowed_on() -> bool:
        return len(events) >= at_reload + 5

    await eventually(flowed_on, within=WAIT, every=0.05, what="events after the reload")
    # ...until the drain deadline (GRACE after the reload) cuts it, and the request still
    # held on b (nothing answered yet) gets a 502 then.
    ended, clean = await asyncio.wait_for(stream, WAIT)
    assert not clean
    assert [number for _, number in events] == list(range(len(events)))
    assert reload_sent + GRACE - 0.1 <= ended <= reloaded + GRACE + 2.0
    assert events[-1][0] >= reload_sent + GRACE - 0.5  # it flowed until about the deadline
    code, _, answered = await asyncio.wait_for(stuck, WAIT)
    assert code == 502
    assert reload_sent + GRACE - 0.1 <= answered <= reloaded + GRACE + 2.0
    assert a.requests == 10


async def test_reweight_is_exact_with_round_robin(
    peers: Peers, counting: BackendsFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    a, b = await counting("a", "b")
    port = free_port()
    lb = await start_lb(peers, tmp_path, http, config_text(port, [(a, 1), (b, 1)]), port)
    assert Counter([await lb.get() for _ in range(8)]) == {"a": 4, "b": 4}

    lb.rewrite(config_text(port, [(a, 3), (b, 1)]))
    status, body = await lb.reload()
    assert (status, body["changes"]) == (200, ["backend a reconfigured"])
    # 3:1, exactly, over every multiple of 4 requests.
    names = [await lb.get() for _ in range(200)]
    assert Counter(names) == {"a": 150, "b": 50}
    for start in range(0, 200, 4):
        assert Counter(names[start : start + 4]) == {"a": 3, "b": 1}
    weights = {row["name"]: row["weight"] for row in (await lb.status())["backends"]}
    assert weights == {"a": 3, "b": 1}


async def test_strategy_change_is_applied(
    peers: Peers, counting: BackendsFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    a, b = await counting("a", "b")
    by_name = {"a": a, "b": b}
    port = free_port()
    lb = await start_lb(peers, tmp_path, http, config_text(port, [(a, 1), (b, 1)]), port)

    async def quick_names_while_one_is_held(key: str) -> tuple[str, list[str]]:
        held = asyncio.create_task(fetch(http, f"{lb.url}/slow/{key}"))

        async def landed() -> bool:
            return a.seen(key) or b.seen(key)

        await eventually(landed, within=WAIT, every=0.05, what="the held request at a backend")
        name = "a" if a.seen(key) else "b"
        names = [await lb.get() for _ in range(6)]
        by_name[name].release(key)
        assert (await asyncio.wait_for(held, WAIT))[0] == 200
        return name, names

    # round_robin alternates whatever is in flight.
    held_on, names = await quick_names_while_one_is_held("rr")
    assert Counter(names) == {"a": 3, "b": 3}

    lb.rewrite(config_text(port, [(a, 1), (b, 1)], strategy="least_connections"))
    status, body = await lb.reload()
    assert (status, body["changes"]) == (200, ["strategy changed"])
    assert (await lb.status())["strategy"] == "least_connections"
    # least_connections avoids the backend holding a request.
    held_on, names = await quick_names_while_one_is_held("lc")
    assert set(names) == {"b" if held_on == "a" else "a"}


# --- what a reload must not change ------------------------------------------------------


async def test_invalid_configs_are_rejected_and_the_old_one_stays(
    peers: Peers, counting: BackendsFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    a, b, c = await counting("a", "b", "c")
    port = free_port()
    running = config_text(port, [(a, 1), (b, 1)])
    lb = await start_lb(peers, tmp_path, http, running, port)
    # Each would add c if it were applied.
    with_c = config_text(port, [(a, 1), (b, 1), (c, 1)])
    broken_yaml = with_c + "retries: {attempts: 1\nlimits: {max_queue: 5}\n"
    unknown_key = with_c + "limits:\n  max_queue: 5\n  max_qeue: 6\n"
    missing_tls = with_c + f"listen_tls:\n  cert: {tmp_path}/gone.crt\n  key: {tmp_path}/gone.key\n"
    cases = [
        (broken_yaml, [("invalid YAML", line_of(broken_yaml, "limits: {"))]),
        (unknown_key, [("limits.max_qeue: unknown key", line_of(unknown_key, "max_qeue"))]),
        (
            missing_tls,
            [
                ("listen_tls.cert: no such file", line_of(missing_tls, "cert:")),
                ("listen_tls.key: no such file", line_of(missing_tls, "  key: ")),
            ],
        ),
    ]
    for text, expected in cases:
        lb.rewrite(text)
        status, body = await lb.reload()
        assert status == 400, body
        assert body["error"] == "invalid_config"
        assert len(body["issues"]) == len(expected), body["issues"]
        for issue, (start, line) in zip(body["issues"], expected, strict=True):
            assert issue.startswith(start) and issue.endswith(f"(line {line})"), issue

        rejected = lb.proxy.output().count("reload rejected")
        lb.sighup()
        output = await wait_for_output(lb.proxy, "reload rejected", count=rejected + len(expected))
        logged = [line for line in output.splitlines() if "reload rejected" in line]
        for (start, line), logged_line in zip(expected, logged[-len(expected) :], strict=True):
            assert start in logged_line and f"(line {line})" in logged_line, logged_line

    # Still the old config: generation 0, a and b in round robin, nothing sent to c.
    status = await lb.status()
    assert status["config"]["generation"] == 0
    assert [row["name"] for row in status["backends"]] == ["a", "b"]
    assert Counter([await lb.get() for _ in range(4)]) == {"a": 2, "b": 2}
    assert c.requests == 0
    assert await lb.metric("mcplb_config_reloads_total", result="failure") == 6
    assert await lb.metric("mcplb_config_reloads_total", result="success") == 0
    assert await lb.metric("mcplb_config_generation", worker="0") == 0
    assert "config reloaded" not in lb.proxy.output()
    # ...and a valid file is taken afterwards.
    lb.rewrite(with_c)
    assert (await lb.reload())[0] == 200
    assert (await lb.status())["config"]["generation"] == 1


async def test_moved_backend_takes_its_name_and_sessions_to_the_new_endpoint(
    peers: Peers, mcp_backends: list[McpBackend], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    mcp_a, _, mcp_c = mcp_backends
    port = free_port()
    lb = await start_lb(peers, tmp_path, http, config_text(port, [(mcp_a, 1)]), port)

    class Moved:
        name = "mcp-a"
        url = mcp_c.url

    with anyio.fail_after(30):
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(fresh_connections())
            read, write = await stack.enter_async_context(
                streamable_http_client(lb.proxy.mcp_url, http_client=client)
            )
            old = await stack.enter_async_context(ClientSession(read, write))
            await old.initialize()
            assert result_text(await old.call_tool("whoami", {})) == "mcp-a"

            lb.rewrite(config_text(port, [(Moved, 1)]))
            status, body = await lb.reload()
            assert (status, body["changes"]) == (200, [f"backend mcp-a now at {mcp_c.url}"])
            # New sessions start at the new endpoint...
            async with (
                fresh_connections() as other,
                streamable_http_client(lb.proxy.mcp_url, http_client=other) as (r, w),
                ClientSession(r, w) as new,
            ):
                await new.initialize()
                assert result_text(await new.call_tool("whoami", {})) == "mcp-c"
            # ...and sessions are bound to the backend's name, so they follow it: the
            # new server does not know the old session (404), and its client must
            # initialize again (documented: give a new endpoint a new name to drain).
            with pytest.raises(MCPError) as failed:
                await old.call_tool("whoami", {})
            assert failed.value.error.message == "Session not found"


async def test_restart_only_changes_are_reported_and_kept(
    peers: Peers, counting: BackendsFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    a, b = await counting("a", "b")
    port, other_port = free_port(), free_port()
    admin = f"{{listen: '127.0.0.1:0', token: '{TOKEN}'}}"
    text = config_text(port, [(a, 1), (b, 1)], admin=admin)
    lb = await start_lb(peers, tmp_path, http, text, port)

    other_admin = f"{{listen: '127.0.0.1:0', token: '{OTHER_TOKEN}'}}"
    lb.rewrite(config_text(other_port, [(a, 2), (b, 1)], admin=other_admin))
    for token in (None, "wrong"):
        status, body = await lb.reload(token)
        assert (status, body["error"]) == (401, "unauthorized")
    assert (await lb.status())["config"]["generation"] == 0
    status, body = await lb.reload(TOKEN)
    assert status == 200, body
    changes = body["changes"]
    assert "backend a reconfigured" in changes  # applied...
    # ...while the listener and the admin settings need a restart: kept, and said so.
    kept = [line for line in changes if "needs a restart (kept)" in line]
    assert any(line.startswith("listen_port") for line in kept), changes
    assert any(line.startswith("admin") for line in kept), changes
    assert await lb.get() in {"a", "b"}
    assert not port_open(other_port)
    assert (await lb.reload(OTHER_TOKEN))[0] == 401  # the old token still rules
    assert (await lb.reload(TOKEN))[0] == 200


async def test_health_state_is_kept_across_a_reload(
    peers: Peers, counting: BackendsFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    (alive,) = await counting("alive")
    doomed = await peers.backend("doomed")
    port = free_port()
    health = (
        "health:\n  initial: healthy\n  active:\n    path: /debug/sessions\n"
        "    interval: 300ms\n    timeout: 200ms\n    fall: 1\n    rise: 1\n"
    )
    pair: list[tuple[Named, int]] = [(alive, 1), (doomed, 1)]
    lb = await start_lb(peers, tmp_path, http, config_text(port, pair, extra=health), port)

    async def probed_ok() -> bool:
        return await lb.metric("mcplb_health_checks_total", backend="doomed", result="success") > 0

    await eventually(
        probed_ok, within=WAIT, every=0.05, what="a passing probe of the doomed backend"
    )
    await doomed.kill()

    async def marked_down() -> bool:
        states = {row["name"]: row["state"] for row in (await lb.status())["backends"]}
        return bool(states["doomed"] == "unhealthy")

    await eventually(
        marked_down, within=WAIT, every=0.05, what="the killed backend marked unhealthy"
    )
    came_back = await lb.metric("mcplb_backend_transitions_total", backend="doomed", to="healthy")

    # Something else changes: alive's weight and the retries.
    lb.rewrite(config_text(port, [(alive, 2), pair[1]], extra=health + "retries: {attempts: 1}\n"))
    status, body = await lb.reload()
    assert status == 200, body
    rows = {row["name"]: row for row in (await lb.status())["backends"]}
    assert (rows["doomed"]["state"], rows["doomed"]["available"]) == ("unhealthy", False)
    assert {await lb.get() for _ in range(10)} == {"alive"}
    assert await lb.metric("mcplb_upstream_connect_failures_total", backend="doomed") == 0
    assert await lb.metric("mcplb_retries_total", backend="alive") == 0
    assert (
        await lb.metric("mcplb_backend_transitions_total", backend="doomed", to="healthy")
        == came_back
    )


async def test_admin_api_answers_while_a_reload_is_under_way(
    peers: Peers, counting: BackendsFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    a, b = await counting("a", "b")
    port = free_port()
    # a's health probe hangs (until its timeout): a reload waits for the probe in flight.
    health = (
        "health:\n  active:\n    path: /slow/probe\n"
        "    interval: 3s\n    timeout: 2s\n    fall: 3\n"
    )
    lb = await start_lb(peers, tmp_path, http, config_text(port, [(a, 1)], extra=health), port)
    await a.arrived("probe")

    lb.rewrite(config_text(port, [(a, 1), (b, 1)], extra=health))
    reload = asyncio.create_task(lb.reload())
    answers: list[tuple[str, int]] = []
    deadline = time.monotonic() + WAIT
    while not reload.done() and time.monotonic() < deadline:
        for path in ("/status", "/metrics", "/readyz"):
            async with http.get(f"{lb.admin}{path}") as resp:
                answers.append((path, resp.status))
        async with http.get(f"{lb.url}/traffic") as resp:
            answers.append(("proxy", resp.status))
    status, body = await asyncio.wait_for(reload, WAIT)
    assert (status, body["changes"]) == (200, ["backend b added"])
    failed = Counter(f"{path} {code}" for path, code in answers if code != 200)
    assert failed == {}, f"{len(answers)} answers during the reload"
    assert "Traceback" not in lb.proxy.output()


# --- MCP sessions -------------------------------------------------------------------------


def fresh_connections() -> httpx2.AsyncClient:
    """An HTTP client that opens a new connection for every request (so that one MCP
    session's requests spread over the proxy's workers)."""
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(WAIT), limits=httpx2.Limits(max_keepalive_connections=0)
    )


@pytest.mark.parametrize(("store", "workers"), [("memory", 1), ("signed", 2)])
async def test_mcp_sessions_survive_a_reload(
    peers: Peers,
    mcp_backends: list[McpBackend],
    http: aiohttp.ClientSession,
    tmp_path: Path,
    store: str,
    workers: int,
) -> None:
    mcp_a, mcp_b, mcp_c = mcp_backends
    port = free_port()
    sticky = "{store: memory}" if store == "memory" else f"{{store: signed, keys: ['{KEY}']}}"
    text = config_text(port, [(mcp_a, 1), (mcp_b, 1)], workers=workers, sticky=sticky)
    lb = await start_lb(peers, tmp_path, http, text, port)

    with anyio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            sessions: list[ClientSession] = []
            for _ in range(4):
                client = await stack.enter_async_context(fresh_connections())
                read, write = await stack.enter_async_context(
                    streamable_http_client(lb.proxy.mcp_url, http_client=client)
                )
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                sessions.append(session)
            owners = [result_text(await s.call_tool("whoami", {})) for s in sessions]
            assert set(owners) <= {"mcp-a", "mcp-b"}

            trio = [(mcp_a, 3), (mcp_b, 1), (mcp_c, 1)]
            lb.rewrite(config_text(port, trio, workers=workers, sticky=sticky))
            status, body = await lb.reload()
            if workers == 1:
                assert (status, body["generation"]) == (200, 1), body
                assert set(body["changes"]) == {"backend mcp-a reconfigured", "backend mcp-c added"}
            else:
                assert (status, body) == (
                    202,
                    {"reloaded": False, "changes": ["every worker reloads"]},
                )
            await lb.wait_generation(1)

            # Every session still reaches the backend that holds it: no 404, same owner.
            for session, owner in zip(sessions, owners, strict=True):
                for i in range(3):
                    assert result_text(await session.call_tool("whoami", {})) == owner
                    added = await session.call_tool("add", {"a": i, "b": 40})
                    assert not added.is_error and result_text(added) == str(i + 40)
    rows = {row["name"]: row for row in (await lb.status())["backends"]}
    assert set(rows) == {"mcp-a", "mcp-b", "mcp-c"}
    assert rows["mcp-a"]["weight"] == 3


# --- several workers, watch_config ---------------------------------------------------------


async def test_sighup_reaches_every_worker(
    peers: Peers, counting: BackendsFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    a, b, c = await counting("a", "b", "c")
    port = free_port()
    text = config_text(port, [(a, 1), (b, 1)], workers=2)
    lb = await start_lb(peers, tmp_path, http, text, port)
    await lb.wait_generation(0)  # both workers up and publishing

    lb.rewrite(config_text(port, [(a, 1), (b, 1), (c, 1)], workers=2))
    lb.sighup()
    await lb.wait_generation(1)
    output = await wait_for_output(lb.proxy, "config reloaded", count=2)
    assert "reloading 2 workers" in output

    # New connections land on both workers; each sends some of its share to c.
    for _ in range(10):
        names = await fresh_connection_names(lb.url, 60)
        if len(c.workers) == 2:
            break
    assert len(c.workers) == 2, c.workers
    assert set(names) == {"a", "b", "c"}
    assert a.workers | b.workers | c.workers == c.workers


async def test_rejected_reloads_are_counted_with_several_workers(
    peers: Peers, counting: BackendsFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    a, b = await counting("a", "b")
    port = free_port()
    lb = await start_lb(peers, tmp_path, http, config_text(port, [(a, 1)], workers=2), port)
    await lb.wait_generation(0)
    invalid = config_text(port, [(a, 1), (b, 1)], workers=2) + "limits: {max_qeue: 6}\n"
    lb.rewrite(invalid)
    status, body = await lb.reload()
    assert status == 400 and body["issues"][0].startswith("limits.max_qeue: unknown key")
    lb.sighup()  # the supervisor checks the file and keeps every worker as it is
    await wait_for_output(lb.proxy, "reload rejected")
    # A reload never goes halfway: ask again for a valid one and see only it applied.
    lb.rewrite(config_text(port, [(a, 1)], workers=2, strategy="least_connections"))
    lb.sighup()
    await lb.wait_generation(1)
    status = await lb.status()
    assert [row["name"] for row in status["backends"]] == ["a"]
    assert status["strategy"] == "least_connections"
    assert set(await fresh_connection_names(lb.url, 10)) == {"a"}
    assert b.requests == 0
    # Both rejections are counted, the supervisor's too (alerts watch this counter).
    assert await lb.metric("mcplb_config_reloads_total", result="failure") == 2


@pytest.mark.parametrize("workers", [1, 2])
async def test_watch_config_reloads_on_edit(
    peers: Peers,
    counting: BackendsFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    workers: int,
) -> None:
    a, b, c = await counting("a", "b", "c")
    port = free_port()
    watch = "watch_config: true\n"
    text = config_text(port, [(a, 1), (b, 1)], workers=workers, extra=watch)
    lb = await start_lb(peers, tmp_path, http, text, port)
    await lb.wait_generation(0)

    lb.rewrite(config_text(port, [(a, 1), (b, 1), (c, 1)], workers=workers, extra=watch))
    await lb.wait_generation(1)  # no signal, no admin call
    assert "config file changed: reloading" in lb.proxy.output()
    assert "c" in set(await fresh_connection_names(lb.url, 12))
    assert (await lb.status())["config"]["generation"] == 1


# --- the acceptance test --------------------------------------------------------------------


async def test_reloads_under_steady_load_lose_no_request(
    peers: Peers, counting: BackendsFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    a, b, c, d = await counting("a", "b", "c", "d")
    port = free_port()
    lb = await start_lb(
        peers, tmp_path, http, config_text(port, [(a, 1), (b, 1), (c, 1)], workers=2), port
    )
    await lb.wait_generation(0)
    steps = [
        [(a, 1), (b, 1), (c, 1), (d, 1)],  # add d
        [(b, 1), (c, 1), (d, 1)],  # remove a
        [(b, 3), (c, 1), (d, 1)],  # reweight b
    ]
    clients = 16
    sent = answered = 0
    failures: list[str] = []
    stop = asyncio.Event()

    async def client(index: int) -> None:
        nonlocal sent, answered
        # Half keep their connection alive, half open one per request.
        connector = aiohttp.TCPConnector(limit=1, force_close=index % 2 == 1)
        timeout = aiohttp.ClientTimeout(total=WAIT)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            for number in range(5000):  # bounded; stop ends it long before
                if stop.is_set():
                    return
                sent += 1
                try:
                    async with session.get(f"{lb.url}/load/{index}/{number}") as resp:
                        await resp.read()
                        if resp.status == 200:
                            answered += 1
                        else:
                            failures.append(f"HTTP {resp.status}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    failures.append(repr(exc))

    async def until_sent(count: int) -> None:
        async def reached() -> bool:
            return sent >= count

        await eventually(reached, within=WAIT, every=0.05, what=f"{count} requests sent")

    async def reloads() -> int:
        removed_at = 0
        for generation, step in enumerate(steps, 1):
            await until_sent(sent + 300)  # steady load between reloads
            lb.rewrite(config_text(port, step, workers=2))
            lb.sighup()
            await lb.wait_generation(generation)
            if generation == 2:
                removed_at = a.requests
        await until_sent(sent + 300)
        stop.set()
        return removed_at

    started = time.monotonic()
    load = [asyncio.create_task(client(index)) for index in range(clients)]
    try:
        a_at_removal = await asyncio.wait_for(reloads(), 30)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*load), WAIT)
    elapsed = time.monotonic() - started

    assert failures == []
    assert answered == sent
    assert sum(x.requests for x in (a, b, c, d)) == sent
    assert d.requests > 0
    # Once both workers dropped a, only requests already on their way could still reach it.
    assert a.requests - a_at_removal <= clients
    assert len(c.workers) == 2  # the load did reach both workers
    assert elapsed < 20, elapsed
