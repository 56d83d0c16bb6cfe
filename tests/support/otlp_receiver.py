"""An OTLP/HTTP trace receiver for the tests: what a collector's ``otlphttp`` receiver does,
on loopback. It decodes each export with the official message definitions
(``opentelemetry-proto``: ``ExportTraceServiceRequest``), gzip bodies included, keeps every
span with its resource, and answers as a collector does (200, an
``ExportTraceServiceResponse``).

No collector binary can be installed here (only package registries are reachable); the
proxy's exporter is the OpenTelemetry SDK's own, so the bytes on the wire are the real ones.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

PROTOBUF = "application/x-protobuf"
SPAN_KIND_SERVER = 2  # opentelemetry.proto.trace.v1.Span.SpanKind
STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.StatusCode


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str  # hex, as in a traceparent
    span_id: str
    parent_span_id: str  # "" for a root span
    kind: int
    trace_state: str
    start: int  # ns since the epoch
    end: int
    status: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str


@dataclass
class OtlpReceiver:
    """Spans received (in order), the exports' headers; ``url``: the traces endpoint."""

    url: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    export_headers: list[dict[str, str]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def named(self, name: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.name == name]

    def where(self, check: Callable[[ReceivedSpan], bool]) -> list[ReceivedSpan]:
        return [span for span in self.spans if check(span)]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if request.content_type != PROTOBUF:
            return web.Response(status=415)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        self.export_headers.append({k.lower(): v for k, v in request.headers.items()})
        for resource_spans in message.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            trace_state=span.trace_state,
                            start=span.start_time_unix_nano,
                            end=span.end_time_unix_nano,
                            status=span.status.code,
                            attributes=attributes(span.attributes),
                            resource=resource,
                            scope=scope_spans.scope.name,
                        )
                    )
        self.changed.set()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type=PROTOBUF
        )


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    return None if kind is None else getattr(any_value, kind)


async def start_receiver(serve_app: Callable[[web.Application], Any]) -> OtlpReceiver:
    """A receiver on a loopback port (through the ``serve_app`` fixture, which stops it)."""
    receiver = OtlpReceiver()
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.handle)
    port = await serve_app(app)
    receiver.url = f"http://127.0.0.1:{port}/v1/traces"
    return receiver
