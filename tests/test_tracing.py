"""OpenTelemetry tracing through the real relay, exported by the SDK's OTLP/HTTP exporter to
a receiver that decodes the protobuf (tests/support/otlp_receiver.py): the span of each
request (GET, POST, SSE, MCP calls by a real SDK client), the client's trace context
continued and the backend handed the proxy's span as parent (a recording backend), hostile
traceparents, retries, a dead collector, tracing off, and two workers exporting each.

In-process proxies export from the same thread they would in ``mcplb run`` (started by
``worker.start_tracing``); ``flush`` stops it, which exports everything queued: after it,
the receiver holds every span, no polling needed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mcplb.proxy.config.schema import BackendConfig, RetriesConfig, TracingConfig
from mcplb.proxy.observability import metrics, otlp_export, tracing
from mcplb.proxy.server import worker
from mcplb.proxy.server.worker import ProxyServer
from tests.conftest import ProxyFactory, backend_config
from tests.support import rawhttp
from tests.support.eventually import eventually
from tests.support.otlp_receiver import (
    SPAN_KIND_SERVER,
    STATUS_ERROR,
    OtlpReceiver,
    ReceivedSpan,
    start_receiver,
)
from tests.support.peers import Peers, free_port, mcp_session, proxy_admin_port
from tests.support.trace_context import OURS_INVALID, W3C_INVALID

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
CLIENT_CONTEXT = f"00-{TRACE}-{PARENT}-01"
CALL = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{}}}'


class Recorder:
    """A backend that records the headers of every request it gets (as sent, in order) and
    answers JSON-RPC POSTs, event-stream GETs (two events) and anything else (``ok``)."""

    def __init__(self) -> None:
        self.seen: list[list[tuple[str, str]]] = []

    def context(self, index: int = -1) -> list[tuple[str, str]]:
        return [(n, v) for n, v in self.seen[index] if n in ("traceparent", "tracestate")]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append([(n.decode().lower(), v.decode()) for n, v in request.raw_headers])
        if request.method == "GET" and "text/event-stream" in request.headers.get("Accept", ""):
            stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await stream.prepare(request)
            await stream.write(b"data: one\n\n")
            await stream.write(b"data: two\n\n")
            await stream.write_eof()
            return stream
        if request.method == "POST":
            body = json.loads(await request.read())
            return web.json_response({"jsonrpc": "2.0", "id": body.get("id"), "result": {}})
        return web.Response(text="ok")


async def start_recorder(
    serve_app: Callable[[web.Application], Awaitable[int]],
) -> tuple[Recorder, int]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    return recorder, await serve_app(app)


@pytest.fixture
async def receiver(serve_app: Callable[[web.Application], Awaitable[int]]) -> OtlpReceiver:
    return await start_receiver(serve_app)


TracedFactory = Callable[..., Awaitable[ProxyServer]]


@pytest.fixture
async def traced(start_proxy: ProxyFactory, receiver: OtlpReceiver) -> AsyncIterator[TracedFactory]:
    """In-process proxies with tracing on, exporting to ``receiver`` (settings: the
    ``tracing`` keys); stopped (and their spans flushed) on teardown."""

    async def factory(backends: list[BackendConfig], **settings: Any) -> ProxyServer:
        extra = {k: settings.pop(k) for k in ("retries", "sticky") if k in settings}
        settings.setdefault("endpoint", receiver.url)
        settings.setdefault("export_interval", 30.0)  # exported by flush() (or a full batch)
        config = TracingConfig(enabled=True, **settings)
        server = await start_proxy(backends, tracing=config, **extra)
        worker.start_tracing(server)
        return server

    yield factory
    await flush()


async def flush() -> None:
    """Export what is queued and stop tracing (the worker's stop_tracing)."""
    await worker.stop_tracing()


def request(path: str = "/mcp", method: str = "POST", body: bytes = CALL, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "User-Agent: tracing-test/1"]
    lines += headers
    if method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body if method == "POST" else b"")


def only(spans: list[ReceivedSpan]) -> ReceivedSpan:
    assert len(spans) == 1, spans
    return spans[0]


def backend_parent(recorder: Recorder, index: int = -1) -> str:
    """The span id the backend was given as its parent (its traceparent's parent-id)."""
    (value,) = [v for n, v in recorder.context(index) if n == "traceparent"]
    version, trace_id, parent_id, flags = value.split("-")
    assert (version, flags) == ("00", "01")
    return f"{trace_id}/{parent_id}"


# --- the span of a request ---------------------------------------------------------------


async def test_mcp_post_continues_the_client_trace(
    traced: TracedFactory,
    receiver: OtlpReceiver,
    serve_app: Callable[[web.Application], Awaitable[int]],
) -> None:
    recorder, port = await start_recorder(serve_app)
    server = await traced([backend_config("rec", port)], service_name="edge-lb")
    sent = request(
        "/mcp?x=secret-query",
        "POST",
        CALL,
        f"traceparent: {CLIENT_CONTEXT}",
        "tracestate: rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
        "MCP-Protocol-Version: 2025-11-25",
    )
    response = await rawhttp.request(server.port, sent)
    assert response.status == 200
    await flush()

    span = only(receiver.spans)
    assert span.name == "tools/call echo"
    assert span.kind == SPAN_KIND_SERVER
    assert (span.trace_id, span.parent_span_id) == (TRACE, PARENT)  # a child, not a new root
    assert span.trace_state == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    # The backend got the proxy's span as its parent, and the client's tracestate.
    assert backend_parent(recorder) == f"{TRACE}/{span.span_id}"
    assert ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE") in recorder.context()
    assert [n for n, _ in recorder.context()].count("traceparent") == 1
    assert span.attributes == {
        "http.request.method": "POST",
        "url.path": "/mcp",  # never the query
        "url.scheme": "http",
        "network.protocol.name": "http",
        "network.protocol.version": "1.1",
        "client.address": "127.0.0.1",
        "network.peer.address": "127.0.0.1",
        "server.address": "127.0.0.1",
        "user_agent.original": "tracing-test/1",
        "http.response.status_code": 200,
        "http.request.body.size": len(CALL),
        "http.response.body.size": len(response.body),
        "mcplb.backend.name": "rec",
        "mcplb.backend.address": "127.0.0.1",
        "mcplb.backend.port": port,
        "mcplb.retries": 0,
        "mcplb.routing": "strategy",
        "mcp.method.name": "tools/call",
        "gen_ai.tool.name": "echo",
        "gen_ai.operation.name": "execute_tool",
        "jsonrpc.request.id": "7",
        "mcp.protocol.version": "2025-11-25",
    }
    assert span.resource["service.name"] == "edge-lb"
    assert span.resource["process.pid"] > 0 and span.resource["mcplb.worker"] == 0
    assert span.scope == "mcplb"
    assert 0 < span.end - span.start < 10 * 10**9


async def test_get_and_event_stream_spans(
    traced: TracedFactory,
    receiver: OtlpReceiver,
    serve_app: Callable[[web.Application], Awaitable[int]],
) -> None:
    recorder, port = await start_recorder(serve_app)
    server = await traced([backend_config("rec", port)])
    plain = await rawhttp.request(server.port, request("/healthz", "GET"))
    stream = await rawhttp.request(
        server.port, request("/mcp", "GET", b"", "Accept: text/event-stream")
    )
    assert plain.status == 200 and stream.status == 200 and b"data: two" in stream.body
    await flush()

    first, second = receiver.spans
    assert (first.name, second.name) == ("GET", "GET")
    assert first.attributes["url.path"] == "/healthz"
    assert second.attributes["http.response.body.size"] > 0
    for index, span in enumerate((first, second)):
        assert span.parent_span_id == ""  # no client context: a root
        assert backend_parent(recorder, index) == f"{span.trace_id}/{span.span_id}"
        assert "mcp.method.name" not in span.attributes
    assert first.trace_id != second.trace_id


async def test_proxy_answers_and_errors_get_spans(
    traced: TracedFactory, receiver: OtlpReceiver
) -> None:
    """A 503 answered by the proxy itself (no backend reachable) is an error span."""
    server = await traced([backend_config("dead", free_port())], retries=RetriesConfig(attempts=0))
    response = await rawhttp.request(server.port, request("/", "GET"))
    assert response.status == 502 or response.status == 503
    await flush()
    span = only(receiver.spans)
    assert span.status == STATUS_ERROR
    assert span.attributes["http.response.status_code"] == response.status
    assert span.attributes["error.type"] == str(response.status)


async def test_mcp_session_calls_of_a_real_client(
    traced: TracedFactory, receiver: OtlpReceiver, peers: Peers
) -> None:
    """The MCP SDK's client through the proxy to a demo backend: one span per message,
    named by its method; one session digest on every span of the session."""
    backend = await peers.backend("a")
    server = await traced([backend_config("a", backend.port)])
    async with mcp_session(f"http://127.0.0.1:{server.port}/mcp") as session:
        await session.call_tool("whoami", {})
    await flush()

    names = [span.name for span in receiver.spans]
    assert "initialize" in names and "tools/call whoami" in names, names
    call = only(receiver.named("tools/call whoami"))
    assert call.attributes["gen_ai.tool.name"] == "whoami"
    assert call.attributes["mcp.method.name"] == "tools/call"
    assert call.attributes["mcplb.routing"] == "affinity"  # its session's backend
    initialize = only(receiver.named("initialize"))
    assert "mcp.session.id" not in initialize.attributes  # it has none yet
    digests = {s.attributes.get("mcp.session.id") for s in receiver.spans if s is not initialize}
    assert len(digests) == 1 and len(str(next(iter(digests)))) == 12


INITIALIZE = (
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
    b'"capabilities":{},"clientInfo":{"name":"tracing-test","version":"1"}}}'
)
INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
WHOAMI = b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami","arguments":{}}}'
ACCEPT = "Accept: application/json, text/event-stream"


async def test_the_session_id_is_never_exported(
    traced: TracedFactory, receiver: OtlpReceiver, peers: Peers
) -> None:
    """The session id is a bearer credential: spans carry the access log's digest of it."""
    backend = await peers.backend("a", json_response=True)
    server = await traced([backend_config("a", backend.port)])
    answer = await rawhttp.request(server.port, request("/mcp", "POST", INITIALIZE, ACCEPT))
    session_id = answer.header("mcp-session-id")
    assert answer.status == 200 and session_id
    for body in (INITIALIZED, WHOAMI):
        sent = request(
            "/mcp", "POST", body, ACCEPT, f"Mcp-Session-Id: {session_id}",
            "MCP-Protocol-Version: 2025-11-25",
        )  # fmt: skip
        assert (await rawhttp.request(server.port, sent)).status in (200, 202)
    await flush()

    digest = hashlib.sha256(session_id.encode()).hexdigest()[:12]
    assert [s.attributes.get("mcp.session.id") for s in receiver.spans] == [None, digest, digest]
    assert [s.name for s in receiver.spans] == [
        "initialize",
        "notifications/initialized",
        "tools/call whoami",
    ]
    assert session_id not in json.dumps([s.attributes for s in receiver.spans])


# --- hostile trace context -----------------------------------------------------------------

HOSTILE = [
    f"ff-{TRACE}-{PARENT}-01",  # wrong version
    f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
    f"00-{TRACE.upper()}-{PARENT}-01",  # uppercase hex
    f"00-{TRACE}-{PARENT}-01-" + "a" * 4000,  # overlong
    f"00-{TRACE}-{PARENT}-01<script>alert(1)</script>",  # markup
]


async def test_malformed_traceparents_start_new_traces(
    traced: TracedFactory,
    receiver: OtlpReceiver,
    serve_app: Callable[[web.Application], Awaitable[int]],
) -> None:
    recorder, port = await start_recorder(serve_app)
    server = await traced([backend_config("rec", port)])
    cases = [*HOSTILE, *W3C_INVALID, *OURS_INVALID[:3]]
    for value in cases:
        sent = request("/", "GET", b"", f"traceparent: {value}", "tracestate: evil=1")
        assert (await rawhttp.request(server.port, sent)).status == 200
    # Sent twice: which one would the backend read? Neither.
    duplicated = request(
        "/", "GET", b"", f"traceparent: {CLIENT_CONTEXT}", f"traceparent: {CLIENT_CONTEXT}"
    )
    assert (await rawhttp.request(server.port, duplicated)).status == 200
    counts = dict(server.runtime.stats.tracing)
    await flush()

    assert len(receiver.spans) == len(cases) + 1
    for index, span in enumerate(receiver.spans):
        assert span.parent_span_id == "" and span.trace_id != TRACE
        assert span.trace_state == ""
        assert recorder.context(index) == [
            ("traceparent", f"00-{span.trace_id}-{span.span_id}-01")
        ]  # the client's header replaced, its tracestate dropped
    # Never echoed: no attribute holds any part of what the client sent as its context.
    everything = json.dumps([s.attributes for s in receiver.spans])
    assert TRACE not in everything.lower() and "evil" not in everything
    assert "script" not in everything and "1234567890123456789012" not in everything
    assert counts["context_refused"] == len(cases) + 1


async def test_a_not_sampled_client_is_followed(
    traced: TracedFactory,
    receiver: OtlpReceiver,
    serve_app: Callable[[web.Application], Awaitable[int]],
) -> None:
    """Its decision stands: no span, and its context goes to the backend untouched."""
    recorder, port = await start_recorder(serve_app)
    server = await traced([backend_config("rec", port)])
    unsampled = f"00-{TRACE}-{PARENT}-00"
    sent = request("/", "GET", b"", f"traceparent: {unsampled}", "tracestate: a=1")
    assert (await rawhttp.request(server.port, sent)).status == 200
    await flush()
    assert receiver.spans == []
    assert recorder.context() == [("traceparent", unsampled), ("tracestate", "a=1")]


async def test_sample_ratio_zero_records_only_sampled_clients(
    traced: TracedFactory,
    receiver: OtlpReceiver,
    serve_app: Callable[[web.Application], Awaitable[int]],
) -> None:
    recorder, port = await start_recorder(serve_app)
    server = await traced([backend_config("rec", port)], sample_ratio=0.0)
    for _ in range(5):
        assert (await rawhttp.request(server.port, request("/", "GET"))).status == 200
    sent = request("/", "GET", b"", f"traceparent: {CLIENT_CONTEXT}")
    assert (await rawhttp.request(server.port, sent)).status == 200
    await flush()
    assert only(receiver.spans).parent_span_id == PARENT
    assert [recorder.context(i) for i in range(5)] == [[]] * 5  # nothing added


# --- retries --------------------------------------------------------------------------------


async def test_a_retried_request_says_so(
    traced: TracedFactory,
    receiver: OtlpReceiver,
    serve_app: Callable[[web.Application], Awaitable[int]],
) -> None:
    """A connect failure on the first backend, the request sent to the second: one span,
    the backend that answered, the retry counted; the answering backend's parent is it."""
    recorder, port = await start_recorder(serve_app)
    dead = backend_config("dead", free_port())
    server = await traced([dead, backend_config("rec", port)])
    for _ in range(2):  # round robin: the dead backend is tried first at least once
        assert (await rawhttp.request(server.port, request("/", "GET"))).status == 200
    retried = server.runtime.stats.backends["rec"].retries
    await flush()
    spans = receiver.spans
    assert [s.attributes["mcplb.backend.name"] for s in spans] == ["rec", "rec"]
    assert max(s.attributes["mcplb.retries"] for s in spans) == 1
    assert sum(s.attributes["mcplb.retries"] for s in spans) == retried
    for index, span in enumerate(spans):
        assert backend_parent(recorder, index) == f"{span.trace_id}/{span.span_id}"


# --- the collector down ----------------------------------------------------------------------


async def _black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # reads the export, never answers


@pytest.mark.parametrize("collector", ["refused", "silent"])
async def test_a_dead_collector_never_slows_requests(
    collector: str,
    traced: TracedFactory,
    serve_app: Callable[[web.Application], Awaitable[int]],
    serve_raw: Callable[..., Awaitable[int]],
) -> None:
    """Exports fail (connection refused, or a collector that never answers and holds the
    exporter's thread for the export timeout); requests go on at full speed meanwhile, and
    the spans past the bounded queue are dropped and counted."""
    _recorder, port = await start_recorder(serve_app)
    collector_port = free_port() if collector == "refused" else await serve_raw(_black_hole)
    server = await traced(
        [backend_config("rec", port)],
        endpoint=f"http://127.0.0.1:{collector_port}/v1/traces",
        max_queue=4,
        batch_size=2,
        export_interval=0.05,
        export_timeout=1.0,
    )
    slowest = 0.0
    for _ in range(40):
        started = time.monotonic()
        assert (await rawhttp.request(server.port, request("/", "GET"))).status == 200
        slowest = max(slowest, time.monotonic() - started)
    assert slowest < 0.5, f"a request took {slowest:.3f} s"
    counts = server.runtime.stats.tracing
    if collector == "silent":  # each export holds the thread its timeout: the queue fills
        assert counts["dropped"] > 0, dict(counts)
    started = time.monotonic()
    await flush()
    assert time.monotonic() - started < 3 * otlp_export.SHUTDOWN_WAIT
    assert counts["exported"] == 0 and counts["failed"] > 0
    assert counts["failed"] + counts["dropped"] == 40
    text = metrics.render([server.runtime.snapshot(0)]).decode()
    assert f'mcplb_trace_spans_total{{outcome="failed"}} {float(counts["failed"])}' in text
    assert f'mcplb_trace_spans_total{{outcome="dropped"}} {float(counts["dropped"])}' in text


# --- tracing off ------------------------------------------------------------------------------


async def test_tracing_off_adds_nothing(
    start_proxy: ProxyFactory,
    receiver: OtlpReceiver,
    serve_app: Callable[[web.Application], Awaitable[int]],
) -> None:
    recorder, port = await start_recorder(serve_app)
    off = TracingConfig(enabled=False, endpoint=receiver.url, export_interval=0.01)
    server = await start_proxy([backend_config("rec", port)], tracing=off)
    worker.start_tracing(server)  # as the worker does: nothing, since it is off
    assert tracing.current() is None
    client_context = ("traceparent", f"00-{TRACE}-{PARENT}-01")
    sent = request("/", "GET", b"", f"traceparent: {client_context[1]}")
    for data in (request("/", "GET"), sent, request("/mcp", "POST", CALL)):
        assert (await rawhttp.request(server.port, data)).status == 200
    await server.shutdown(grace=0)
    await worker.stop_tracing()
    assert recorder.context(0) == [] and recorder.context(2) == []
    assert recorder.context(1) == [client_context]  # the client's, byte for byte
    assert receiver.export_headers == [] and receiver.spans == []
    assert server.runtime.stats.tracing == {}


# --- mcplb run, two workers --------------------------------------------------------------------


async def test_two_workers_each_export(
    receiver: OtlpReceiver,
    serve_app: Callable[[web.Application], Awaitable[int]],
    peers: Peers,
    tmp_path: Path,
) -> None:
    _recorder, backend_port = await start_recorder(serve_app)
    port = free_port()
    config = f"""\
listen: 127.0.0.1:{port}
workers: 2
sticky: {{mcp_sessions: false}}
backends:
  - name: rec
    url: http://127.0.0.1:{backend_port}
tracing:
  endpoint: {receiver.url}
  export_interval: 100ms
  headers: {{authorization: "Bearer ${{OTLP_TOKEN}}"}}
"""
    proxy = await peers.proxy(config, tmp_path, port=port, env={"OTLP_TOKEN": "t0ken"})
    admin = await proxy_admin_port(proxy)

    async def both_workers() -> bool:
        # New connections until both workers (SO_REUSEPORT spreads them) have exported.
        assert (await rawhttp.request(port, request("/", "GET"))).status == 200
        return len({span.resource["process.pid"] for span in receiver.spans}) == 2

    await eventually(both_workers, within=20, what="spans from both workers")
    assert {h["authorization"] for h in receiver.export_headers} == {"Bearer t0ken"}
    assert {s.resource["mcplb.worker"] for s in receiver.spans} == {0, 1}
    assert len({s.resource["service.instance.id"] for s in receiver.spans}) == 2

    async def exported() -> float:
        response = await rawhttp.request(admin, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        for line in response.body.decode().splitlines():
            if line.startswith('mcplb_trace_spans_total{outcome="exported"}'):
                return float(line.split()[-1])
        return 0.0

    await eventually(exported, within=10, what="exported spans counted in /metrics")


# --- one tree: an instrumented client, mcplb, an instrumented backend ---------------------------


def sdk_tracer(service: str, endpoint: str) -> tuple[Any, Any]:
    """An OpenTelemetry SDK tracer of its own (not the global one), exporting to the
    receiver in batches from its thread: a client's or a backend's instrumentation."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider, provider.get_tracer(service)


def span_tree(spans: list[ReceivedSpan], keys: tuple[str, ...]) -> str:
    """The spans of one trace as a tree, parents first (as docs/observability.md shows one)."""
    children: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        children.setdefault(span.parent_span_id, []).append(span)
    ids = {span.span_id for span in spans}
    roots = [span for span in spans if span.parent_span_id not in ids]
    kinds = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT"}
    lines = [f"trace {spans[0].trace_id}"]

    def walk(span: ReceivedSpan, depth: int) -> None:
        pad = "   " * depth
        lines.append(
            f"{pad}└─ {span.name}  [{span.resource['service.name']}, {kinds[span.kind]}, "
            f"span {span.span_id}, {(span.end - span.start) / 1e6:.1f} ms]"
        )
        for key in keys:
            if key in span.attributes:
                lines.append(f"{pad}      {key} = {span.attributes[key]!r}")
        for child in children.get(span.span_id, []):
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return "\n".join(lines)


async def test_one_tree_from_client_to_backend(
    traced: TracedFactory,
    receiver: OtlpReceiver,
    serve_app: Callable[[web.Application], Awaitable[int]],
) -> None:
    """A client and a backend instrumented with the OpenTelemetry SDK (W3C propagation):
    the client's span, mcplb's as its child, the backend's as mcplb's child, one trace."""
    from opentelemetry.propagate import extract, inject
    from opentelemetry.trace import SpanKind

    backend_provider, backend_tracer = sdk_tracer("echo-backend", receiver.url)
    client_provider, client_tracer = sdk_tracer("mcp-client", receiver.url)

    async def handle(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        context = extract(dict(request.headers))
        name = f"{body['method']} {body['params']['name']}"
        with backend_tracer.start_as_current_span(name, context, kind=SpanKind.SERVER):
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {}})

    app = web.Application()
    app.router.add_post("/mcp", handle)
    server = await traced([backend_config("a", await serve_app(app))])
    with client_tracer.start_as_current_span("tools/call echo", kind=SpanKind.CLIENT):
        carrier: dict[str, str] = {}
        inject(carrier)
        context_headers = [f"{k}: {v}" for k, v in carrier.items()]
        response = await rawhttp.request(
            server.port, request("/mcp", "POST", CALL, *context_headers)
        )
    assert response.status == 200
    await flush()
    for provider in (backend_provider, client_provider):
        await asyncio.to_thread(provider.shutdown)  # exports what it holds

    assert len(receiver.spans) == 3
    by_service = {span.resource["service.name"]: span for span in receiver.spans}
    client, proxy, backend = (by_service[s] for s in ("mcp-client", "mcplb", "echo-backend"))
    assert client.trace_id == proxy.trace_id == backend.trace_id
    assert client.parent_span_id == ""
    assert proxy.parent_span_id == client.span_id
    assert backend.parent_span_id == proxy.span_id
    assert client.start <= proxy.start <= backend.start <= backend.end <= proxy.end <= client.end
    picture = span_tree(
        [client, proxy, backend],
        (
            "mcp.method.name",
            "gen_ai.tool.name",
            "jsonrpc.request.id",
            "http.request.method",
            "url.path",
            "http.response.status_code",
            "mcplb.backend.name",
            "mcplb.backend.address",
            "mcplb.retries",
            "mcplb.routing",
        ),
    )
    assert picture.count("└─") == 3
    print(picture)  # docs/observability.md shows one (pytest -s)
