"""The spans of ``tracing.py`` exported over OTLP/HTTP (protobuf) by the OpenTelemetry SDK's
exporter, in a thread of this worker's own: the event loop only appends finished span
records to a bounded queue (``Tracer.submit``); this thread takes them in batches, turns
them into SDK spans and sends them. A dead or slow collector holds this thread (each export
is bounded by ``tracing.export_timeout``, the exporter's retries included), never the loop;
meanwhile the queue fills and further spans are dropped and counted
(``mcplb_trace_spans{outcome="dropped"}``).

Imported only when tracing is on: it needs the ``otel`` extra (``pip install 'mcplb[otel]'``;
``mcplb check`` says so when it is missing, proxy/config/validate.py).

The span of one request, after the OpenTelemetry semantic conventions for HTTP servers
(stable) and for MCP (semantic-conventions-genai v0.1.0, status Development): kind SERVER,
named ``{mcp.method.name} {target}`` for an MCP request (the target: the tool or prompt
name, when it has the spec's name form), else the HTTP method. docs/observability.md lists
the attributes.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Final

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.util.types import AttributeValue

from mcplb import __version__
from mcplb.proxy.config.schema import TracingConfig
from mcplb.proxy.observability.stats import KNOWN_MCP_METHODS, TOOL_NAME
from mcplb.proxy.observability.tracing import Trace, Tracer, install

SCOPE: Final = InstrumentationScope("mcplb", __version__)
_HTTP_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
_NAMED: Final = {"tools/call": "gen_ai.tool.name", "prompts/get": "gen_ai.prompt.name"}
MAX_ATTRIBUTE: Final = 256  # longest MCP method or name kept in an attribute
# Waiting for the last export at shutdown: at most this (a dead collector cannot hold the
# worker's exit for its whole export timeout).
SHUTDOWN_WAIT: Final = 5.0

AddressOf = Callable[[str], tuple[str, int] | None]  # a backend's host and port, by name


def span_name(trace: Trace) -> str:
    """``{mcp.method.name} {target}`` for an MCP request of a method the specification
    defines (a client's own method name would make names without bound), else the HTTP
    method (``HTTP`` for one outside RFC 9110's)."""
    method = trace.rpc_method
    if method in KNOWN_MCP_METHODS:
        if method in _NAMED and TOOL_NAME.fullmatch(trace.rpc_name):
            return f"{method} {trace.rpc_name}"
        return method
    return trace.method if trace.method in _HTTP_METHODS else "HTTP"


def attributes(trace: Trace, address_of: AddressOf) -> dict[str, AttributeValue]:
    """The span's attributes (values bounded; never a session id, a token, or a client's
    trace context)."""
    found: dict[str, AttributeValue] = {
        "http.request.method": trace.method if trace.method in _HTTP_METHODS else "_OTHER",
        "url.path": trace.path,
        "url.scheme": trace.proto,
        "network.protocol.name": "http",
        "network.protocol.version": trace.version,
        "client.address": trace.client,
        "network.peer.address": trace.client,
    }
    if trace.method not in _HTTP_METHODS:
        found["http.request.method_original"] = trace.method
    if trace.host:
        host, port = _host_port(trace.host)
        found["server.address"] = host
        if port:
            found["server.port"] = port
    if trace.user_agent:
        found["user_agent.original"] = trace.user_agent
    if trace.status and trace.status != 499:
        found["http.response.status_code"] = trace.status
    if trace.status >= 500:
        found["error.type"] = str(trace.status)
    found["http.request.body.size"] = trace.bytes_in
    found["http.response.body.size"] = trace.bytes_out
    if trace.client_left:
        found["mcplb.client_left"] = True
    if trace.backend:
        found["mcplb.backend.name"] = trace.backend
        address = address_of(trace.backend)
        if address is not None:
            found["mcplb.backend.address"] = address[0]
            found["mcplb.backend.port"] = address[1]
    found["mcplb.retries"] = trace.retries
    found["mcplb.routing"] = "affinity" if trace.routed_by_key else "strategy"
    if trace.session:
        found["mcp.session.id"] = trace.session
    if trace.rpc_method:
        method = trace.rpc_method[:MAX_ATTRIBUTE]
        found["mcp.method.name"] = method
        name = trace.rpc_name[:MAX_ATTRIBUTE]
        if name and method in _NAMED:
            found[_NAMED[method]] = name
        elif name and method == "resources/read":
            found["mcp.resource.uri"] = name
        if method == "tools/call":
            found["gen_ai.operation.name"] = "execute_tool"
    if trace.rpc_id:
        found["jsonrpc.request.id"] = trace.rpc_id
    if trace.protocol_version:
        found["mcp.protocol.version"] = trace.protocol_version
    return found


def _host_port(host: str) -> tuple[str, int]:
    """A Host header's name and port (0: none given)."""
    name, colon, port = host.rpartition(":")
    if not colon or "]" in port or not port.isdigit() or len(port) > 5:
        return host, 0
    return name, int(port)


def to_span(trace: Trace, resource: Resource, address_of: AddressOf) -> ReadableSpan:
    """The SDK span of one record."""
    state = TraceState.from_header([trace.state]) if trace.state else TraceState()
    context = SpanContext(
        trace.trace_id, trace.span_id, False, TraceFlags(TraceFlags.SAMPLED), state
    )
    parent = None
    if trace.parent_id:
        parent = SpanContext(
            trace.trace_id, trace.parent_id, True, TraceFlags(TraceFlags.SAMPLED), state
        )
    return ReadableSpan(
        name=span_name(trace),
        context=context,
        parent=parent,
        resource=resource,
        attributes=attributes(trace, address_of),
        kind=SpanKind.SERVER,
        status=Status(StatusCode.ERROR) if trace.status >= 500 else Status(StatusCode.UNSET),
        start_time=trace.start_time,
        end_time=trace.end_time,
        instrumentation_scope=SCOPE,
    )


def resource_of(config: TracingConfig, worker: int) -> Resource:
    """``service.name`` from the config, this worker's instance id; OTEL_RESOURCE_ATTRIBUTES
    adds to them (the SDK's ``Resource.create``)."""
    return Resource.create(
        {
            "service.name": config.service_name,
            "service.version": __version__,
            "service.instance.id": str(uuid.uuid4()),
            "host.name": socket.gethostname(),
            "process.pid": os.getpid(),
            "mcplb.worker": worker,
        }
    )


class Exporter:
    """The thread that exports one worker's spans."""

    def __init__(
        self,
        tracer: Tracer,
        config: TracingConfig,
        resource: Resource,
        address_of: AddressOf,
        exporter: SpanExporter | None = None,
    ) -> None:
        self.tracer = tracer
        self.interval = config.export_interval
        self.resource = resource
        self.address_of = address_of
        self.exporter = exporter or OTLPSpanExporter(
            endpoint=config.endpoint,
            headers=dict(config.headers),
            timeout=config.export_timeout,
        )
        self.event = threading.Event()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="mcplb-otlp-export", daemon=True)

    def start(self) -> None:
        event = self.event

        def wake() -> None:  # from the event loop: one lock taken per batch at most
            if not event.is_set():
                event.set()

        self.tracer.wake = wake
        self.thread.start()

    def _run(self) -> None:
        while True:
            self.event.wait(self.interval)
            self.event.clear()
            self.export_queued()
            if self.stopping:
                return

    def export_queued(self) -> None:
        """Export what the queue holds, a batch at a time."""
        tracer = self.tracer
        queue = tracer.queue
        counts = tracer.counts
        while queue:
            batch: list[Trace] = []
            while queue and len(batch) < tracer.batch_size:
                batch.append(queue.popleft())
            spans = [to_span(trace, self.resource, self.address_of) for trace in batch]
            try:
                result = self.exporter.export(spans)
            except Exception:  # the exporter logs its own failures; never end the thread
                result = SpanExportResult.FAILURE
            outcome = "exported" if result is SpanExportResult.SUCCESS else "failed"
            counts[outcome] += len(spans)

    def stop(self, wait: float = SHUTDOWN_WAIT) -> None:
        """Export what is queued (for at most ``wait`` seconds), then stop; spans still
        queued are dropped (counted)."""
        self.stopping = True
        self.event.set()
        self.thread.join(wait)
        self.exporter.shutdown()  # ends an export still retrying a dead collector
        self.thread.join(wait)
        queue = self.tracer.queue
        self.tracer.counts["dropped"] += len(queue)
        queue.clear()


_exporter: Exporter | None = None


def start(
    config: TracingConfig, counts: dict[str, int], address_of: AddressOf, worker: int = 0
) -> Tracer:
    """Tracing on for this process: the tracer installed, its exporter's thread running."""
    global _exporter
    stop()
    tracer = Tracer(config.sample_ratio, config.max_queue, config.batch_size, counts)
    _exporter = Exporter(tracer, config, resource_of(config, worker), address_of)
    _exporter.start()
    install(tracer)
    return tracer


def stop(wait: float = SHUTDOWN_WAIT) -> None:
    """Tracing off: the tracer uninstalled, the queued spans exported (within ``wait``)."""
    global _exporter
    install(None)
    exporter, _exporter = _exporter, None
    if exporter is not None:
        exporter.stop(wait)
