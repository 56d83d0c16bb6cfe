"""Tracing on the request path: W3C trace context in, the sampling decision, one span record
per request out. No OpenTelemetry import here (this module is compiled with the relay, and
the ``otel`` extra is optional): ``otlp_export.py`` turns the records into OTLP spans in a
thread of its own.

Per request the relay calls two things, and only when tracing is on (``current()`` is the
tracer this process installed at start, reached through the connection's ``AccessLog``):

- ``Tracer.begin`` where a request starts (``relay/route.py`` ``start``): it reads the
  client's ``traceparent``/``tracestate``, decides whether this request is recorded, and if
  so rewrites those headers in the request's list so that the backend gets the proxy's span
  as its parent (the client's ``traceparent`` is replaced, as Envoy does). A request not
  recorded is left as it came (its context passes through untouched), except that a
  malformed ``traceparent`` (and the ``tracestate`` that goes with it) is never forwarded.
- ``Trace.end`` where its access-log line is written (``relay/client_side.py`` ``Peer.log``):
  the facts of the request (copied and bounded: the record holds no request object) and
  the span goes on a bounded queue. A full queue drops the span and counts it.

Sampling is OpenTelemetry's default, parent-based: a valid client context is followed (its
sampled flag decides), a request without one starts a trace recorded with probability
``tracing.sample_ratio``.

Everything a client sends is untrusted: a ``traceparent`` is taken only if it is exactly the
W3C Trace Context form (lowercase hex, ids not all zero, version ff refused, sent once), a
``tracestate`` only if every list member is well formed (at most 32, no key twice), cut to
512 characters as the W3C allows; neither is ever copied into a span attribute or a log.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

TRACEPARENT: Final = b"traceparent"
TRACESTATE: Final = b"tracestate"
SAMPLED: Final = 1  # the sampled bit of trace-flags

# version "-" trace-id "-" parent-id "-" trace-flags (W3C Trace Context, section 3.2).
_TRACEPARENT: Final = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_PARENT_LENGTH: Final = 55
# tracestate list members (W3C Trace Context, section 3.3.1.3): a key of lowercase letters,
# digits and _-*/@ (not starting with one of those signs), and a value of printable ASCII
# without "," or "=", not ending in a space.
_STATE_MEMBER: Final = re.compile(
    r"[a-z0-9][a-z0-9_\-*/@]{0,255}"  # key
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"  # value
)
MAX_STATE_MEMBERS: Final = 32
MAX_STATE_LENGTH: Final = 512  # what a participant must propagate at least, and here at most
_LONG_MEMBER: Final = 128  # members this long go first when cutting (W3C, section 3.3.1.5)

# Bounds on what a span record copies of a request (all of it client-sent).
MAX_PATH: Final = 1024
MAX_HOST: Final = 256
MAX_USER_AGENT: Final = 256
_VERSION: Final = re.compile(rb"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_USER_AGENT: Final = b"user-agent"
_PROTOCOL_VERSION: Final = b"mcp-protocol-version"


def parse_traceparent(value: bytes) -> tuple[int, int, int] | None:
    """(trace id, parent id, trace flags) of a ``traceparent`` field value, or None when it
    is not one. Version 00 is exactly 55 characters; a later version may carry more after a
    "-", of which the first 55 are read (W3C Trace Context, section 3.2.4)."""
    value = value.strip(b" \t")
    found = _TRACEPARENT.match(value)
    if found is None:
        return None
    version = found.group(1)
    if version == b"ff":
        return None
    if len(value) != _PARENT_LENGTH and (
        version == b"00" or value[_PARENT_LENGTH : _PARENT_LENGTH + 1] != b"-"
    ):
        return None
    trace_id = int(found.group(2), 16)
    parent_id = int(found.group(3), 16)
    if not trace_id or not parent_id:
        return None
    return trace_id, parent_id, int(found.group(4), 16)


def parse_tracestate(values: list[bytes]) -> str | None:
    """The ``tracestate`` of these field values (in order, joined as one list), checked and
    cut to MAX_STATE_LENGTH; "" when there is none; None when it is malformed (a bad member,
    more than MAX_STATE_MEMBERS), and is then dropped. A key given twice keeps its first
    member (the W3C lets a participant discard duplicates)."""
    members: list[str] = []
    keys: set[str] = set()
    for value in values:
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            return None
        for part in text.split(","):
            member = part.strip(" \t")
            if not member:
                continue  # empty list members are allowed
            if _STATE_MEMBER.fullmatch(member) is None:
                return None
            key = member[: member.index("=")]
            if key in keys:
                continue
            keys.add(key)
            members.append(member)
            if len(members) > MAX_STATE_MEMBERS:
                return None
    return _cut_state(members)


def _cut_state(members: list[str]) -> str:
    """The members joined, within MAX_STATE_LENGTH: long members go first, then members
    from the end (the W3C's order)."""
    text = ",".join(members)
    if len(text) <= MAX_STATE_LENGTH:
        return text
    members = [m for m in members if len(m) < _LONG_MEMBER]
    while members and len(",".join(members)) > MAX_STATE_LENGTH:
        members.pop()
    return ",".join(members)


def traceparent(trace_id: int, span_id: int, sampled: bool) -> bytes:
    """The ``traceparent`` value that names span ``span_id`` of trace ``trace_id``."""
    return b"00-%032x-%016x-%s" % (trace_id, span_id, b"01" if sampled else b"00")


class Retried(Protocol):
    @property
    def count(self) -> int: ...


class Attempts(Protocol):
    """What a span reads of its exchange (``relay.exchange.Exchange``) when it ends."""

    @property
    def retry(self) -> Retried | None: ...

    @property
    def bound_backend(self) -> str | None: ...


class TracedRequest(Protocol):
    """What a span copies of its request (``relay.request.Request``) when it ends."""

    @property
    def method(self) -> bytes: ...

    @property
    def target(self) -> bytes: ...

    @property
    def version(self) -> str: ...

    @property
    def host(self) -> bytes | None: ...

    @property
    def headers(self) -> list[tuple[bytes, bytes]]: ...

    @property
    def session_id(self) -> str | None: ...

    @property
    def rpc_id(self) -> object: ...

    @property
    def rpc_method(self) -> str: ...

    @property
    def rpc_name(self) -> str: ...

    @property
    def body_size(self) -> int: ...


class Tracer:
    """This process's tracing: the sampling ratio, the queue of finished spans (read by
    the exporter's thread) and its counters (the worker's ``Stats.tracing``)."""

    __slots__ = ("batch_size", "counts", "max_queue", "queue", "ratio", "wake")

    def __init__(
        self, ratio: float, max_queue: int, batch_size: int, counts: dict[str, int]
    ) -> None:
        self.ratio = ratio
        self.max_queue = max_queue
        self.batch_size = batch_size
        # Finished spans; deque appends and pops are atomic, so the exporter's thread takes
        # from it without a lock.
        self.queue: deque[Trace] = deque()
        # spans exported, failed (the collector refused or was unreachable), dropped (the
        # queue was full, or still held at shutdown); client contexts refused as malformed
        self.counts = counts
        for name in ("exported", "failed", "dropped", "context_refused"):
            counts.setdefault(name, 0)
        self.wake: Callable[[], None] | None = None  # the exporter: a full batch is waiting

    def begin(self, headers: list[tuple[bytes, bytes]], ex: Attempts) -> Trace | None:
        """Where a request starts: its span if it is recorded (its headers then carry the
        proxy's context to the backend), else None (its headers as they came, less a
        malformed ``traceparent``)."""
        parent_value = b""
        parents = 0
        states = 0
        for name, value in headers:
            if name == TRACEPARENT:
                parents += 1
                parent_value = value
            elif name == TRACESTATE:
                states += 1
        parent = None
        if parents:
            parent = parse_traceparent(parent_value) if parents == 1 else None
            if parent is None:
                self.counts["context_refused"] += 1
            elif not parent[2] & SAMPLED:
                return None  # the client's decision: not recorded, its context goes on as is
        if parent is None and not (self.ratio >= 1.0 or random.random() < self.ratio):
            if parents:
                _drop_context(headers)  # malformed: not sent on
            return None
        state = ""
        if parent is not None and states:
            found = parse_tracestate([v for n, v in headers if n == TRACESTATE])
            state = "" if found is None else found
        trace = Trace(self, parent, state, ex)
        if parents or states:
            _drop_context(headers)
        headers.append((TRACEPARENT, traceparent(trace.trace_id, trace.span_id, True)))
        if state:
            headers.append((TRACESTATE, state.encode("ascii")))
        return trace

    def submit(self, trace: Trace) -> None:
        """Queue a finished span for export, or drop it (counted) when the queue is full."""
        queue = self.queue
        if len(queue) >= self.max_queue:
            self.counts["dropped"] += 1
            return
        queue.append(trace)
        if len(queue) >= self.batch_size and self.wake is not None:
            self.wake()


def _drop_context(headers: list[tuple[bytes, bytes]]) -> None:
    headers[:] = [(n, v) for n, v in headers if n != TRACEPARENT and n != TRACESTATE]


class Trace:
    """One recorded request's span: its ids and parent from ``begin``, the facts of the
    request and its answer from ``end`` (copies, bounded), read by the exporter's thread."""

    __slots__ = (
        "backend",
        "bytes_in",
        "bytes_out",
        "client",
        "client_left",
        "end_time",
        "ex",
        "host",
        "method",
        "parent_id",
        "path",
        "proto",
        "protocol_version",
        "retries",
        "routed_by_key",
        "rpc_id",
        "rpc_method",
        "rpc_name",
        "session",
        "span_id",
        "start_time",
        "state",
        "status",
        "trace_id",
        "tracer",
        "user_agent",
        "version",
    )

    def __init__(
        self, tracer: Tracer, parent: tuple[int, int, int] | None, state: str, ex: Attempts
    ) -> None:
        self.tracer = tracer
        self.ex: Attempts | None = ex  # until ``end`` (which breaks the cycle through it)
        trace_id = 0
        if parent is None:
            while not trace_id:
                trace_id = random.getrandbits(128)
            self.parent_id = 0
        else:
            trace_id, self.parent_id = parent[0], parent[1]
        self.trace_id = trace_id
        span_id = 0
        while not span_id:
            span_id = random.getrandbits(64)
        self.span_id = span_id
        self.state = state  # the client's tracestate, as forwarded ("" none)
        self.start_time = time.time_ns()
        self.end_time = 0
        self.method = ""
        self.path = ""
        self.version = ""
        self.host = ""
        self.user_agent = ""
        self.protocol_version = ""
        self.client = ""
        self.proto = ""
        self.status = 0
        self.backend = ""
        self.bytes_in = 0
        self.bytes_out = 0
        self.client_left = False
        self.session = ""
        self.rpc_id = ""
        self.rpc_method = ""
        self.rpc_name = ""
        self.retries = 0
        self.routed_by_key = False

    def end(
        self,
        request: TracedRequest,
        client: str,
        proto: bytes,
        status: int,
        backend: str,
        bytes_out: int,
        client_left: bool,
    ) -> None:
        """The request was answered (or abandoned): copy what the span says of it, and
        queue the span. ``status`` 499: the client left before an answer began."""
        self.end_time = time.time_ns()
        ex = self.ex
        self.ex = None
        if ex is not None:
            retry = ex.retry
            self.retries = 0 if retry is None else retry.count
            self.routed_by_key = ex.bound_backend is not None
        self.method = request.method.decode("latin-1")
        path = request.target[:MAX_PATH]
        query = path.find(b"?")
        self.path = (path if query < 0 else path[:query]).decode("latin-1")
        self.version = request.version
        host = request.host
        self.host = "" if host is None else host[:MAX_HOST].decode("latin-1")
        for name, value in request.headers:
            if name == _USER_AGENT:
                self.user_agent = value[:MAX_USER_AGENT].decode("latin-1")
            elif name == _PROTOCOL_VERSION:
                version = value.strip(b" \t")
                if _VERSION.fullmatch(version):
                    self.protocol_version = version.decode("ascii")
        self.client = client
        self.proto = proto.decode("ascii")
        self.status = status
        self.backend = backend
        self.bytes_in = request.body_size
        self.bytes_out = bytes_out
        self.client_left = client_left
        session = request.session_id
        if session:
            # Never the id itself: it is a bearer credential for the session. The digest
            # is the access log's (its session= field), so the two can be matched.
            self.session = hashlib.sha256(session.encode()).hexdigest()[:12]
        rpc_id = request.rpc_id
        if isinstance(rpc_id, str | int) and not isinstance(rpc_id, bool):
            self.rpc_id = str(rpc_id)[:128]
        self.rpc_method = request.rpc_method
        self.rpc_name = request.rpc_name
        self.tracer.submit(self)


_installed: Tracer | None = None


def install(tracer: Tracer | None) -> None:
    """Make ``tracer`` this process's (None: tracing off). Connections opened afterwards
    see it (``access_log.for_config``)."""
    global _installed
    _installed = tracer


def current() -> Tracer | None:
    """This process's tracer, if tracing is on."""
    return _installed
