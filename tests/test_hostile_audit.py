"""Findings of the external audit (public smuggling corpora, slow-body tools, differential
cases), each as the request that found it: hop-by-hop framing headers, Upgrade bodies, slow
bodies, label floods, duplicate routing fields, Host rules, early answers and pipelining.

The backend is the byte recorder of test_hostile_input.py: it parses what reaches it with
llhttp and answers each request, so "one request in, one request out, same framing" is
checked on the bytes the backend actually received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcplb.proxy.config.hosts import check_host_pattern, default_allowed_hosts
from mcplb.proxy.observability.stats import KNOWN_MCP_METHODS
from mcplb.proxy.relay import connection as relay
from mcplb.proxy.routing.host_check import HostPolicy
from mcplb.proxy.server.worker import ProxyServer
from tests.conftest import ProxyFactory, backend_config
from tests.support.eventually import eventually
from tests.support.rawhttp import RawClient, request
from tests.test_hostile_input import (
    SMUGGLED,
    RawServe,
    Recorder,
    closed,
    recording_proxy,
    still_serves,
)


async def refused_400(proxy: ProxyServer, raw: bytes) -> bytes:
    """Send ``raw`` on a new connection: the answer must be 400 and a close."""
    client = await RawClient.connect(proxy.port)
    await client.send(raw)
    data = await client.read_until_closed(timeout=3)
    await client.close()
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data
    assert b"\r\nconnection: close\r\n" in data
    return data


# --- 1. Connection naming a framing field ------------------------------------------------

CL_SPELLINGS = {
    "lower": b"Connection: content-length\r\n",
    "mixed-case": b"Connection: Content-Length\r\n",
    "with-close": b"Connection: close, content-length\r\n",
    "with-keep-alive": b"Connection: keep-alive, CONTENT-LENGTH\r\n",
    "after-keep-alive-no-space": b"Connection: content-length,keep-alive\r\n",
}


@pytest.mark.parametrize("warm", [False, True], ids=["cold-pool", "warm-pool"])
@pytest.mark.parametrize("connection", list(CL_SPELLINGS.values()), ids=list(CL_SPELLINGS))
async def test_connection_naming_content_length_never_smuggles(
    start_proxy: ProxyFactory, serve_raw: RawServe, connection: bytes, warm: bool
) -> None:
    """Before: the relay dropped Content-Length (named hop-by-hop) but sent the body, which
    the backend read as a second request, poisoning the pooled connection for others."""
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    if warm:
        await still_serves(proxy, recorder, b"/warm")
    raw = (
        b"POST /mcp HTTP/1.1\r\nHost: x\r\n"
        + connection
        + b"Content-Length: %d\r\n\r\n" % len(SMUGGLED)
        + SMUGGLED
    )
    data = await refused_400(proxy, raw)
    assert b"content-length" in data.lower().split(b"\r\n\r\n", 1)[1]
    await still_serves(proxy, recorder)
    assert b"/smuggled" not in recorder.raw and b"/mcp" not in recorder.raw
    assert recorder.targets == ([b"/warm"] if warm else []) + [b"/after"]


@pytest.mark.parametrize(
    "named",
    [b"transfer-encoding", b"Transfer-Encoding, keep-alive", b"host", b"mcp-session-id"],
)
async def test_connection_naming_other_routing_fields_is_refused(
    start_proxy: ProxyFactory, serve_raw: RawServe, named: bytes
) -> None:
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    raw = (
        b"POST /mcp HTTP/1.1\r\nHost: x\r\nConnection: "
        + named
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        + body
    )
    await refused_400(proxy, raw)
    await still_serves(proxy, recorder)
    assert recorder.targets == [b"/after"]


async def test_response_connection_naming_content_length_keeps_the_framing(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    """The same rule on responses: the client gets the length the body is framed by."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: content-length, x-hop\r\n")
            writer.write(b"X-Hop: 1\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    proxy = await start_proxy([backend_config("a", await serve_raw(handler))])
    client = await RawClient.connect(proxy.port)
    await client.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
    first, second = await client.responses(2, timeout=3)
    for resp in (first, second):
        assert (resp.status, resp.body, resp.header("content-length")) == (200, b"ok", "2")
        assert resp.header("x-hop") is None
    await client.close()


# --- 2. Upgrade requests with a body ------------------------------------------------------

UPGRADE = b"POST /x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\n\r\nhello",
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_upgrade_request_with_a_body_is_refused(
    start_proxy: ProxyFactory, serve_raw: RawServe, framing: bytes
) -> None:
    """Before: the head went with its length, the body never did, and the connection
    returned to the pool, so the next client's first bytes were read as that body."""
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    await refused_400(proxy, UPGRADE + framing)
    await still_serves(proxy, recorder)
    assert recorder.targets == [b"/after"] and b"/x" not in recorder.raw


async def test_connection_of_a_refused_upgrade_is_not_pooled(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    resp = await request(
        proxy.port, b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n"
    )
    assert resp.status == 200  # the recorder does not switch
    await still_serves(proxy, recorder)
    assert recorder.connections == 2  # the next request did not reuse the upgraded one


# --- 3. Slow request bodies ---------------------------------------------------------------


async def test_body_not_received_within_timeouts_body_gets_408(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    recorder = Recorder()
    proxy = await start_proxy(
        [backend_config("a", await serve_raw(recorder.handle))],
        timeouts={"body": 1.0},
        limits={"min_body_rate": 0},
    )
    client = await RawClient.connect(proxy.port)
    started = asyncio.get_running_loop().time()
    await client.send(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    resp = await client.response(timeout=4)
    assert resp.status == 408 and json.loads(resp.body)["error"] == "request_timeout"
    assert b"timeouts.body" in resp.body
    assert 1.0 <= asyncio.get_running_loop().time() - started < 3.0
    assert await closed(client)


async def trickle(client: RawClient, pieces: int, pause: float) -> None:
    for _ in range(pieces):
        await client.send(b"x")
        await asyncio.sleep(pause)  # the pace under test, not a wait for an event


async def rate_limited_proxy(
    start_proxy: ProxyFactory,
    serve_raw: RawServe,
    monkeypatch: pytest.MonkeyPatch,
    grace: float,
    **limits: float,
) -> tuple[ProxyServer, Recorder]:
    """A recording proxy that judges body rates after ``grace`` seconds, not 5."""
    monkeypatch.setattr(relay, "BODY_RATE_GRACE", grace)
    recorder = Recorder()
    proxy = await start_proxy(
        [backend_config("a", await serve_raw(recorder.handle))], limits=limits
    )
    return proxy, recorder


async def test_body_slower_than_min_body_rate_gets_408(
    start_proxy: ProxyFactory, serve_raw: RawServe, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, _ = await rate_limited_proxy(start_proxy, serve_raw, monkeypatch, 0.5, min_body_rate=100)
    client = await RawClient.connect(proxy.port)
    await client.send(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
    dripping = asyncio.create_task(trickle(client, 40, 0.1))  # 10 bytes a second
    resp = await client.response(timeout=4)
    dripping.cancel()
    assert resp.status == 408 and b"min_body_rate" in resp.body


async def test_body_at_a_sufficient_rate_is_not_cut(
    start_proxy: ProxyFactory, serve_raw: RawServe, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, recorder = await rate_limited_proxy(
        start_proxy, serve_raw, monkeypatch, 0.3, min_body_rate=10
    )
    client = await RawClient.connect(proxy.port)
    await client.send(b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n")
    await trickle(client, 30, 0.05)  # 20 bytes a second for 1.5 s
    resp = await client.response(timeout=3)
    assert (resp.status, resp.body) == (200, b"ok")
    assert recorder.requests[-1].body == b"x" * 30


async def test_slow_bodies_cannot_hold_every_request_slot(
    start_proxy: ProxyFactory, serve_raw: RawServe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: 200 slow-body connections held max_in_flight slots for the idle timeout
    (300 s) and every normal request timed out in the queue."""
    # request_buffer 0: each slow body takes its slot at once, as before request bodies
    # were buffered (tests/test_slow_uploads.py has the buffered case).
    proxy, _ = await rate_limited_proxy(
        start_proxy,
        serve_raw,
        monkeypatch,
        0.5,
        max_in_flight=4,
        queue_timeout=4.0,
        request_buffer=0,
    )
    slow = [await RawClient.connect(proxy.port) for _ in range(8)]
    for client in slow:
        await client.send(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nx")
    await eventually(lambda: proxy.runtime.cluster.admission.requests >= 4, what="4 slots held")
    normal = await asyncio.gather(
        *(request(proxy.port, b"GET /n HTTP/1.1\r\nHost: x\r\n\r\n", timeout=6) for _ in range(6))
    )
    assert [resp.status for resp in normal] == [200] * 6
    answers = await asyncio.gather(*(client.response(timeout=6) for client in slow))
    assert {resp.status for resp in answers} == {408}


# --- 4. Low findings ------------------------------------------------------------------------


async def test_deeply_nested_json_body_is_relayed_not_a_500(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    body = b"[" * 5000 + b"]" * 5000
    resp = await request(
        proxy.port,
        b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body),
    )
    assert resp.status == 200
    assert recorder.requests[-1].body == body
    assert proxy.runtime.stats.proxy_errors.get("500", 0) == 0


async def test_client_chosen_mcp_labels_are_bounded(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    """Before: 120 requests with made-up methods and names grew /metrics from 12.7 KB to
    6 MB and filled the series cap, so real methods counted as "other"."""
    proxy, _ = await recording_proxy(start_proxy, serve_raw)
    client = await RawClient.connect(proxy.port)

    async def post(body: bytes, headers: bytes = b"") -> None:
        await client.send(
            b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n%b\r\n%b" % (len(body), headers, body)
        )
        await client.response()

    for i in range(150):  # the labels come from the body: the headers are only claims
        name = b"n%d" % i * 200
        await post(b'{"method":"made/up-%d","params":{"name":"%b"}}' % (i, name))
    for i in range(150):
        await post(b'{"method":"tools/call","params":{"name":"tool-%d"}}' % i)
    await post(b'{"method":"tools/list"}', b"Mcp-Method: made/up\r\nMcp-Name: x\r\n")
    await client.close()
    counts = proxy.runtime.stats.mcp
    assert counts[("tools/list", "")] == 1  # a real method is never crowded out
    assert counts[("other", "")] == 150
    assert all(method in KNOWN_MCP_METHODS or method == "other" for method, _ in counts)
    assert all(len(tool) <= 64 for _, tool in counts)
    assert len(counts) <= 2 + 50 + 1  # methods, the tool cap, and tools/call "other"


async def test_two_session_ids_are_refused(start_proxy: ProxyFactory, serve_raw: RawServe) -> None:
    """Before: the proxy routed by the last id, the backend used the first."""
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    await refused_400(
        proxy,
        b"POST /mcp HTTP/1.1\r\nHost: x\r\nMcp-Session-Id: a\r\nMcp-Session-Id: b\r\n"
        b"Content-Length: 2\r\n\r\n{}",
    )
    await still_serves(proxy, recorder)
    assert recorder.targets == [b"/after"]


@pytest.mark.parametrize("key", [b"session_id", b"sessionId"])
async def test_two_legacy_session_parameters_are_refused(
    start_proxy: ProxyFactory, serve_raw: RawServe, key: bytes
) -> None:
    """Before: the proxy used the first ?session_id=, the backend the last."""
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    raw = b"POST /messages/?%b=a&%b=b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    resp = await request(proxy.port, raw % (key, key))
    assert resp.status == 400 and json.loads(resp.body)["error"] == "bad_request"
    await still_serves(proxy, recorder)
    assert recorder.targets == [b"/after"]


async def test_forwarded_for_chain_keeps_its_order(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    resp = await request(
        proxy.port,
        b"GET /ff HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.1\r\n"
        b"X-Forwarded-For: 198.51.100.2, 203.0.113.3\r\n\r\n",
    )
    assert resp.status == 200
    assert recorder.requests[-1].values(b"x-forwarded-for") == [
        b"192.0.2.1, 198.51.100.2, 203.0.113.3, 127.0.0.1"
    ]


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nhost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
    ],
    ids=["two-hosts", "same-host-twice", "no-host"],
)
async def test_host_rules_of_rfc_9112(
    start_proxy: ProxyFactory, serve_raw: RawServe, raw: bytes
) -> None:
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    await refused_400(proxy, raw)
    await still_serves(proxy, recorder)
    assert recorder.targets == [b"/after"]


async def test_http_1_0_without_host_is_served(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    resp = await request(proxy.port, b"GET /old HTTP/1.0\r\n\r\n")
    assert (resp.status, resp.body) == (200, b"ok")
    assert recorder.targets == [b"/old"]


async def test_early_answer_during_an_upload_reaches_the_client(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    """Before: the proxy closed with the upload's bytes unread, the kernel sent a reset,
    and the client lost the 404 the backend had answered."""

    async def early_404(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")
        await writer.drain()

    proxy = await start_proxy(
        [backend_config("a", await serve_raw(early_404))], limits={"max_body_bytes": 0}
    )
    client = await RawClient.connect(proxy.port)
    size = 64 * 1024 * 1024
    await client.send(b"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)

    async def upload() -> None:
        piece = b"x" * 65536
        for _ in range(size // len(piece)):
            await client.send(piece)

    # Keep uploading for a while before reading, as a client that streams its body does:
    # by then the proxy has closed, and a close with unread input would reset.
    with contextlib.suppress(ConnectionError, TimeoutError):
        await asyncio.wait_for(upload(), 1.0)
    resp = await client.response(timeout=5)
    assert (resp.status, resp.body) == (404, b"not found")


async def test_pipelined_requests_after_connection_close_answer_the_first(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    """Before: three pipelined Connection: close requests in one packet got 400."""
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    one = b"GET /%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    client = await RawClient.connect(proxy.port)
    await client.send(one % 1 + one % 2 + one % 3)
    data = await client.read_until_closed(timeout=3)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.count(b"HTTP/1.1 ") == 1
    assert data.endswith(b"ok")
    await still_serves(proxy, recorder)
    assert recorder.targets == [b"/1", b"/after"]


async def test_a_refused_head_behind_pipelined_requests_is_answered_in_its_turn(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    """Before: the connection closed after the first answer; the second request and the
    refused head's 400 were never answered. The backend's bytes are read by llhttp (the
    recorder) and by h11: the two requests before the refused head, nothing after it."""
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    get = b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n"
    refused = b"GET /3 HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"  # two Host headers
    client = await RawClient.connect(proxy.port)
    await client.send(get % 1 + get % 2 + refused + get % 4)
    data = await client.read_until_closed(timeout=3)
    await client.close()
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]
    assert statuses == [200, 200, 400], data
    assert data.count(b"connection: close") == 1
    assert recorder.targets == [b"/1", b"/2"]
    assert [target for target, _ in h11_requests(bytes(recorder.raw))] == [b"/1", b"/2"]
    await still_serves(proxy, recorder)


# --- DNS-rebinding protection (issue 12, point 3) ------------------------------------------


@pytest.mark.parametrize(
    ("host", "status"),
    [
        (b"localhost", 200),
        (b"localhost:8080", 200),
        (b"127.0.0.1:9", 200),
        (b"[::1]:8080", 200),
        (b"LOCALHOST", 200),
        (b"evil.example.com", 421),
        (b"evil.example.com:8080", 421),
        (b"localhost.evil.example.com", 421),
        (b"127.0.0.1.nip.io", 421),
    ],
)
async def test_loopback_listener_serves_only_loopback_names_by_default(
    start_proxy: ProxyFactory, serve_raw: RawServe, host: bytes, status: int
) -> None:
    proxy, recorder = await recording_proxy(start_proxy, serve_raw, allowed_hosts=None)
    resp = await request(proxy.port, b"POST /mcp HTTP/1.1\r\nHost: %b\r\n\r\n" % host)
    assert resp.status == status
    if status == 421:
        assert json.loads(resp.body)["error"] == "misdirected_request"
        assert recorder.targets == []
    else:
        assert recorder.targets == [b"/mcp"]


async def test_allowed_hosts_setting(start_proxy: ProxyFactory, serve_raw: RawServe) -> None:
    proxy, recorder = await recording_proxy(
        start_proxy, serve_raw, allowed_hosts=("mcp.example.com", "*.internal.example")
    )
    served = {}
    for host in (b"mcp.example.com:443", b"a.b.internal.example", b"internal.example", b"x"):
        resp = await request(proxy.port, b"GET / HTTP/1.1\r\nHost: %b\r\n\r\n" % host)
        served[host] = resp.status
    assert served == {
        b"mcp.example.com:443": 200,
        b"a.b.internal.example": 200,
        b"internal.example": 421,
        b"x": 421,
    }
    assert len(recorder.targets) == 2


def test_host_policy_remembers_only_what_it_allowed() -> None:
    """The one-entry cache of the last allowed Host never lets another value through:
    not an empty Host before any was allowed, nor a refused one after."""
    policy = HostPolicy(("localhost",))
    assert not policy.allows(b"")
    assert policy.allows(b"localhost:8080")
    assert policy.allows(b"localhost:8080")  # from the cache
    for refused in (b"", b"evil.example", b"localhost.evil.example", b"localhost8080"):
        assert not policy.allows(refused), refused
    assert policy.allows(b"LOCALHOST")
    assert policy.allows(b"localhost:8080")


def test_host_policy_defaults_and_patterns() -> None:
    assert default_allowed_hosts("127.0.0.1") == ("localhost", "127.0.0.1", "[::1]")
    assert default_allowed_hosts("::1") == ("localhost", "127.0.0.1", "[::1]")
    assert default_allowed_hosts("0.0.0.0") == ("*",)
    assert default_allowed_hosts("10.1.2.3") == ("*",)
    assert HostPolicy(("*",)).allows(None)
    assert not HostPolicy(("localhost",)).allows(None)
    for bad in ("a b", "host:80", "[zz]", "", "*x"):
        with pytest.raises(ValueError):
            check_host_pattern(bad)
    assert check_host_pattern("MCP.Example.com") == "mcp.example.com"


# --- property: whatever Connection names, the backend sees what the proxy parsed ----------

HEADER_NAMES = [
    "content-length",
    "transfer-encoding",
    "host",
    "content-type",
    "accept",
    "x-request-id",
    "x-forwarded-for",
    "user-agent",
    "x-custom",
    "mcp-protocol-version",
    "cookie",
    "te",
    "keep-alive",
    "close",
    "upgrade",
]


@st.composite
def connection_requests(draw: st.DrawFn) -> tuple[bytes, bytes, list[str], bool]:
    chunked = draw(st.booleans())
    body = draw(st.sampled_from([b"", b"{}", SMUGGLED]))
    named = draw(st.lists(st.sampled_from(HEADER_NAMES), max_size=5))
    spelled = [draw(st.sampled_from([n, n.upper(), n.title()])) for n in named]
    headers = [b"Host: localhost", b"Content-Type: application/json", b"Accept: */*"]
    headers += [b"X-Request-Id: r1", b"X-Forwarded-For: 192.0.2.9", b"X-Custom: c"]
    headers += [b"Mcp-Protocol-Version: 2025-06-18", b"Cookie: k=v", b"User-Agent: t"]
    if chunked:
        headers.append(b"Transfer-Encoding: chunked")
        framed = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    else:
        headers.append(b"Content-Length: %d" % len(body))
        framed = body
    connection = b"Connection: " + ", ".join(spelled).encode()
    position = draw(st.integers(0, len(headers)))
    headers.insert(position, connection)
    raw = b"POST /p HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + framed
    return raw, body, named, chunked


@pytest.fixture
async def framing_target(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> tuple[ProxyServer, Recorder]:
    return await recording_proxy(start_proxy, serve_raw)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=connection_requests())
async def test_backend_sees_exactly_the_framing_the_proxy_parsed(
    framing_target: tuple[ProxyServer, Recorder], case: tuple[bytes, bytes, list[str], bool]
) -> None:
    raw, body, named, chunked = case
    proxy, recorder = framing_target
    before, bytes_before = len(recorder.requests), len(recorder.raw)
    client = await RawClient.connect(proxy.port)
    await client.send(raw)
    resp = await client.response(timeout=3)
    await client.close()
    protected = {"content-length", "transfer-encoding", "host"}
    if protected & set(named):
        assert resp.status == 400
        await still_serves(proxy, recorder, b"/barrier")
        assert recorder.requests[before:] == [recorder.requests[-1]]
        assert recorder.requests[-1].target == b"/barrier"
        return
    assert resp.status == 200
    seen = recorder.requests[before:]
    assert len(seen) == 1, seen  # one request in, one out: nothing smuggled
    assert seen[0].target == b"/p" and seen[0].body == body
    got = bytes(recorder.raw[bytes_before:])
    assert got.count(b" HTTP/1.1\r\n") == 1 + body.count(b" HTTP/1.1\r\n")
    head = got.split(b"\r\n\r\n", 1)[0].lower()
    assert (b"transfer-encoding: chunked" in head) == chunked
    assert (re.search(rb"\r\ncontent-length: \d+", head) is not None) == (not chunked)
    # Named fields are honoured as hop-by-hop, except those the proxy writes itself.
    for name in set(named) - {"close", "keep-alive", "x-forwarded-for", "x-request-id"}:
        assert f"\r\n{name}:".encode() not in head


# --- a smuggling-scanner mutation set, judged by a second parser (h11) ----------------------

TE_NAMES = [
    b"Transfer-Encoding",
    b"transfer-encoding",
    b"TRANSFER-ENCODING",
    b"Transfer-Encoding ",
    b" Transfer-Encoding",
    b"Transfer_Encoding",
    b"Transfer-Encoding\t",
    b"Transfer-Encoding\x00",
    b"Transfer-\x00Encoding",
    b"X-Pad: 1\r\n Transfer-Encoding",
    b"Content-Encoding",
]
TE_SEPARATORS = [b": ", b":", b":\t", b": \t", b":\x0b", b":\x0c", b":\x00", b": \r\n "]
TE_VALUES = [
    b"chunked",
    b"Chunked",
    b"CHUNKED",
    b"chunked ",
    b" chunked",
    b'"chunked"',
    b"'chunked'",
    b"chunked,",
    b",chunked",
    b"chunked, identity",
    b"identity, chunked",
    b"gzip, chunked",
    b"chunk",
    b"chunkedx",
    b"xchunked",
    b"ch\x00unked",
    b"chunked;foo=bar",
    b"chunked\r\nTransfer-Encoding: x",
    *(bytes([c]) + b"chunked" for c in (0x00, 0x01, 0x09, 0x0B, 0x0C, 0x0D, 0x7F, 0xA0, 0xFF)),
    *(b"chunked" + bytes([c]) for c in (0x00, 0x01, 0x09, 0x0B, 0x0C, 0x0D, 0x7F, 0xA0, 0xFF)),
]
SMUGGLE_BODY = b"0\r\n\r\n" + SMUGGLED


def smuggling_mutations() -> list[bytes]:
    """CL.TE and TE.CL requests whose Transfer-Encoding header is mutated as public
    smuggling scanners do (name, separator and value), each carrying a request to smuggle."""
    requests = []
    for name in TE_NAMES:
        for sep in TE_SEPARATORS:
            for value in TE_VALUES[:: 1 if name == TE_NAMES[0] and sep == b": " else 6]:
                te = name + sep + value
                # CL.TE: the length covers the smuggled request; chunked ends before it.
                requests.append(
                    b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%b\r\n\r\n%b"
                    % (len(SMUGGLE_BODY), te, SMUGGLE_BODY)
                )
                # TE.CL: the chunk holds the smuggled request; the length ends before it.
                chunk = b"%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
                requests.append(
                    b"POST /p HTTP/1.1\r\nHost: x\r\n%b\r\nContent-Length: 4\r\n\r\n%b"
                    % (te, chunk)
                )
    return requests


def h11_requests(data: bytes) -> list[tuple[bytes, bytes]]:
    """(target, body) of each request h11 reads in ``data`` (a second, independent parser)."""
    import h11

    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    found: list[tuple[bytes, bytes]] = []
    body = b""
    target = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            break
        if isinstance(event, h11.Request):
            target, body = event.target, b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            found.append((target, body))
            conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
            conn.send(h11.EndOfMessage())
            conn.start_next_cycle()
    return found


async def test_scanner_mutations_never_reach_a_second_parser_as_two_requests(
    start_proxy: ProxyFactory, serve_raw: RawServe
) -> None:
    proxy, recorder = await recording_proxy(start_proxy, serve_raw)
    mutations = smuggling_mutations()
    assert len(mutations) > 300
    outcomes: dict[int, int] = {}
    for raw in mutations:
        start = len(recorder.raw)
        client = await RawClient.connect(proxy.port)
        await client.send(raw)
        try:
            status = (await client.response(timeout=3)).status
        except (ConnectionError, TimeoutError):
            status = 0
        await client.close()
        outcomes[status] = outcomes.get(status, 0) + 1
        assert status in (200, 400), raw
        await still_serves(proxy, recorder, b"/barrier")
        got = bytes(recorder.raw[start:])
        seen = h11_requests(got)
        targets = [target for target, _ in seen]
        if status == 400:
            assert targets == [b"/barrier"], raw
        else:
            assert targets == [b"/p", b"/barrier"], raw  # never /smuggled
    assert outcomes[400] > outcomes.get(200, 0) > 0, outcomes
