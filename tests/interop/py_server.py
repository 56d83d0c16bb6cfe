"""The Python SDK demo backend with what the interop matrix also exercises.

    python -m tests.interop.py_server --name NAME --port PORT --transport streamable-http|sse

It is ``mcplb.proxy.demo.backend`` (same tools, same ``GET /debug/sessions``) plus:

- a resource ``demo://counter`` that clients can subscribe to, and a ``bump`` tool that
  updates it: the session that bumps it, if subscribed, gets
  ``notifications/resources/updated``, which Streamable HTTP sends on the session's GET
  stream (the legacy transport on its SSE stream);
- an in-memory event store, so a GET with ``Last-Event-ID`` resumes a stream (Streamable HTTP).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import weakref
from collections.abc import Sequence
from typing import Any

import uvicorn
from mcp import types
from mcp.server import MCPServer
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.types import JSONRPCMessage

from mcplb.proxy.demo.backend import _QuietServer, _StreamCloser, add_debug_routes, build_server

COUNTER_URI = "demo://counter"


class MemoryEventStore(EventStore):
    """Every event of every stream, kept for the life of the process (tests are short)."""

    def __init__(self) -> None:
        self._events: list[tuple[str, str, JSONRPCMessage | None]] = []  # id, stream, message
        self._ids = itertools.count()

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        event_id = str(next(self._ids))
        self._events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(
        self, last_event_id: str, send_callback: EventCallback
    ) -> str | None:
        index = next((i for i, e in enumerate(self._events) if e[0] == last_event_id), None)
        if index is None:
            return None
        stream_id = self._events[index][1]
        for event_id, stream, message in self._events[index + 1 :]:
            if stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


def build_interop_server(name: str) -> MCPServer:
    server = build_server(name)
    # The MCP sessions subscribed to the counter, as the connections under them: the SDK
    # hands each request a ServerSession of its own over the session's one connection.
    # Only the session that bumps is notified: an update racing another session's
    # shutdown would only test that client's teardown.
    subscribers: weakref.WeakSet[Any] = weakref.WeakSet()
    counter = 0

    @server.resource(COUNTER_URI)
    def read_counter() -> str:
        """How many times bump was called."""
        return str(counter)

    @server.tool()
    async def bump(ctx: Context[Any, Any]) -> int:
        """Update demo://counter: its subscribers get notifications/resources/updated."""
        nonlocal counter
        counter += 1
        if ctx.session._connection in subscribers:
            # Not tied to this request: Streamable HTTP sends it on the GET stream.
            await ctx.session.send_resource_updated(COUNTER_URI)
        return counter

    async def subscribe(
        ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        subscribers.add(ctx.session._connection)
        return types.EmptyResult()

    server._lowlevel_server.add_request_handler(
        "resources/subscribe", types.SubscribeRequestParams, subscribe
    )
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.interop.py_server")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--transport", choices=("streamable-http", "sse"), default="streamable-http"
    )
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    server = build_interop_server(args.name)
    if args.transport == "sse":
        app = server.sse_app(host="127.0.0.1")
    else:
        app = server.streamable_http_app(host="127.0.0.1", event_store=MemoryEventStore())
    add_debug_routes(app, server)
    closer = _StreamCloser(app)
    config = uvicorn.Config(
        closer, host="127.0.0.1", port=args.port, log_level="warning", access_log=False
    )
    uv_server = _QuietServer(config, closer, args.parent_pid)
    uv_server.run()
    return 0 if uv_server.started else 1


if __name__ == "__main__":
    sys.exit(main())
