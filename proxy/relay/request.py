"""One parsed request: what the relay read of it, and what it has sent of its body.

A plain record, written by the relay's parser callbacks and read by the routing steps and
the pure functions of ``framing``; it holds no I/O.
"""

from __future__ import annotations

from mcplb.proxy.observability.tracing import Trace
from mcplb.proxy.relay.http11 import Headers
from mcplb.proxy.routing.body_pace import BodyPace
from mcplb.proxy.routing.mcp_era import Head, Verdict


class Request:
    """One parsed request; its body is buffered only until a backend connection takes it."""

    __slots__ = (
        "body",
        "body_size",
        "buffered",
        "buffering",
        "chunked",
        "complete",
        "connection",
        "content_length",
        "duplicate",
        "early_tunnel",
        "head_at",
        "headers",
        "hop_names",
        "host",
        "keep_alive",
        "logged",
        "mcp",
        "mcp_call",
        "method",
        "pace",
        "principal",
        "read_bound",
        "refusal",
        "replay",
        "request_id",
        "rpc_id",
        "rpc_method",
        "rpc_name",
        "session_id",
        "session_in_query",
        "sniff",
        "target",
        "tool",
        "trace",
        "upgrade",
        "upstream_session_id",
        "verdict",
        "version",
        "wants_stream",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.version = "1.1"
        self.headers: Headers = []
        self.host: bytes | None = None
        self.duplicate = b""  # a header that must appear once but came twice (400)
        self.refusal: str | None = None  # why a pipelined request is answered 400
        self.connection = False  # a Connection header was sent (it may name more hop headers)
        self.hop_names: frozenset[bytes] | None = None  # what it names (framing.named_hops)
        self.session_id: str | None = None  # as the client sent it
        self.session_in_query = False  # legacy SSE transport: the session id is in the query
        self.upstream_session_id: str | None = None  # the backend's own id (signed ids)
        self.request_id: bytes | None = None
        # auth: the token's issuer and subject ("iss sub"), once verified; None without auth
        self.principal: str | None = None
        self.sniff: list[bytes] | None = None  # a small JSON-RPC body, read for its method
        # An MCP 2026-07-28 POST (modern MCP-Protocol-Version): its routing claims, held
        # until the body is checked against them (routing/mcp_era.py); then the verdict.
        self.mcp: Head | None = None
        self.verdict: Verdict | None = None
        # A JSON-RPC request (an MCP call, either era): its answer may take long
        # (timeouts.mcp_call), and the proxy's own errors for it are JSON-RPC errors
        # carrying its id (``rpc_id``).
        # A POST's tool (tools/call params.name, from a body read whole and, in 2026-07-28,
        # checked against Mcp-Name): for rate_limit.tools. None: not a tool call;
        # rate_limit.UNKNOWN_TOOL: perhaps one, its name not read (mcp_method.py).
        self.tool: str | None = None
        self.mcp_call = False
        self.rpc_id: object = None
        # Its body's method and name (tools/call: the tool), once read: for its span.
        self.rpc_method = ""
        self.rpc_name = ""
        self.trace: Trace | None = None  # its span, when tracing records it (tracing.py)
        self.logged = False
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.upgrade = False
        self.wants_stream = False  # a GET asking for text/event-stream: a stream slot
        self.complete = False
        self.body: list[bytes] = []  # framed chunks not yet sent upstream
        self.buffered = 0
        # Its head was checked and its body is being read before it is routed
        # (route.read_before_routing; how much: request_buffer.py).
        self.buffering = False
        self.read_bound = 0  # limits.request_buffer's bound for it (request_buffer.py)
        self.head_at = 0.0  # when its head was read, if it was answered next (loop time)
        self.pace: BodyPace | None = None  # its body's recent rate, once judged (Sweep)
        self.body_size = 0
        self.replay: list[bytes] | None = []  # framed bytes sent upstream, for a replay
        # An Upgrade request's: what the client sent after its head, for the protocol it
        # switches to (sent on once the backend agreed: Response.upstream_tunnel).
        self.early_tunnel = b""
