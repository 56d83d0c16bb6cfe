"""A small, real MCP server used by ``mcplb demo`` and by the integration tests.

Run one with::

    python -m mcplb.proxy.demo.backend --name mcp-a --port 9001

Tools:

- ``whoami() -> str``: the backend's name (shows which backend served a call);
- ``add(a, b) -> int``;
- ``countdown(n=5, delay=0.2) -> "liftoff"``: sends ``n`` progress notifications,
  one every ``delay`` seconds, then returns (exercises SSE streaming through a proxy).

Streamable HTTP is served at ``/mcp`` (stateful sessions unless ``--stateless``);
``--transport sse`` serves the 2024-11-05 HTTP+SSE transport at ``/sse`` instead.

For tests: ``--without-tool NAME`` (repeatable) leaves a tool out, and with Streamable HTTP
``GET /debug/sessions`` answers ``{"sessions": N}``, the number of live MCP sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Generator, Sequence
from types import FrameType
from typing import Any, Literal

import anyio
import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Transport = Literal["streamable-http", "sse"]

COUNTDOWN_MAX_N = 100
COUNTDOWN_MAX_DELAY = 5.0


def build_server(name: str) -> MCPServer:
    """An MCP server named ``name`` with the demo tools registered."""
    server: MCPServer = MCPServer(name, log_level="WARNING")

    @server.tool()
    def whoami() -> str:
        """Return the name of the backend that served this call."""
        return name

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    async def countdown(ctx: Context[Any, Any], n: int = 5, delay: float = 0.2) -> str:
        """Send n progress notifications, one every `delay` seconds, then return "liftoff"."""
        if not 1 <= n <= COUNTDOWN_MAX_N:
            raise ToolError(f"n must be between 1 and {COUNTDOWN_MAX_N}, got {n}")
        if not 0 <= delay <= COUNTDOWN_MAX_DELAY:
            raise ToolError(f"delay must be between 0 and {COUNTDOWN_MAX_DELAY}, got {delay}")
        for i in range(1, n + 1):
            await ctx.report_progress(i, n, f"{n - i} left")
            await asyncio.sleep(delay)
        return "liftoff"

    return server


class _StreamCloser:
    """ASGI wrapper that can end every open GET stream (MCP GET stream, legacy /sse).

    Those streams never finish on their own, so a graceful shutdown would otherwise
    wait for its timeout and then cancel them with an error traceback. POSTs in
    flight (a running ``countdown``) are left to finish.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._streams: set[anyio.CancelScope] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        with anyio.CancelScope() as cancel_scope:
            self._streams.add(cancel_scope)
            try:
                await self.app(scope, receive, tracking_send)
            finally:
                self._streams.discard(cancel_scope)
        if cancel_scope.cancelled_caught and started:
            # End the chunked body cleanly so the client sees EOF, not a reset.
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    def close_streams(self) -> None:
        for cancel_scope in list(self._streams):
            cancel_scope.cancel()


class _QuietServer(uvicorn.Server):
    """A uvicorn server that shuts down gracefully on SIGINT/SIGTERM and then exits 0.

    Stock uvicorn re-raises the captured signal after shutting down, which turns a
    SIGINT into a KeyboardInterrupt traceback and a SIGTERM into exit status -15.
    """

    def __init__(
        self, config: uvicorn.Config, closer: _StreamCloser, parent_pid: int | None
    ) -> None:
        super().__init__(config)
        self._closer = closer
        self._parent_pid = parent_pid

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._closer.close_streams()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        def handle(sig: int, frame: FrameType | None) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

        sigs = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, handle) for sig in sigs}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    async def on_tick(self, counter: int) -> bool:
        # Exit when the process that started us is gone (it crashed or was SIGKILLed),
        # so a demo or test run never leaves orphans holding ports.
        if self._parent_pid is not None and counter % 10 == 0 and os.getppid() != self._parent_pid:
            self.should_exit = True
        return await super().on_tick(counter)


def add_debug_routes(app: Starlette, server: MCPServer) -> None:
    """Add ``GET /debug/sessions`` -> ``{"sessions": N}``: live Streamable HTTP sessions."""

    async def debug_sessions(request: Request) -> Response:
        try:
            manager = server.session_manager
        except RuntimeError:  # no Streamable HTTP app (the SSE transport)
            return JSONResponse({"sessions": None})
        # The SDK keeps no public count; its session table is the source of truth.
        sessions: dict[str, Any] = getattr(manager, "_server_instances", {})
        return JSONResponse({"sessions": len(sessions)})

    app.router.routes.append(Route("/debug/sessions", debug_sessions, methods=["GET"]))


def make_app(
    server: MCPServer,
    *,
    host: str = "127.0.0.1",
    transport: Transport = "streamable-http",
    stateless: bool = False,
    json_response: bool = False,
) -> Starlette:
    """The ASGI app for ``server`` (Streamable HTTP at /mcp, or HTTP+SSE at /sse)."""
    if transport == "sse":
        return server.sse_app(host=host)
    return server.streamable_http_app(
        host=host, stateless_http=stateless, json_response=json_response
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mcplb.proxy.demo.backend", description="Run a demo MCP server."
    )
    parser.add_argument("--name", required=True, help="backend name, returned by whoami")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--stateless", action="store_true", help="no MCP sessions")
    parser.add_argument(
        "--json-response", action="store_true", help="answer POSTs with JSON instead of SSE"
    )
    parser.add_argument(
        "--transport", choices=("streamable-http", "sse"), default="streamable-http"
    )
    parser.add_argument(
        "--without-tool",
        action="append",
        default=[],
        metavar="NAME",
        help="leave this demo tool out (repeatable; e.g. to fail a health check's expect_tools)",
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="exit when this process is no longer our parent (used by mcplb demo and tests)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    server = build_server(args.name)
    for tool in args.without_tool:
        try:
            server.remove_tool(tool)
        except ToolError:
            print(f"--without-tool: no tool named {tool!r}", file=sys.stderr)
            return 2
    app = make_app(
        server,
        host=args.host,
        transport=args.transport,
        stateless=args.stateless,
        json_response=args.json_response,
    )
    add_debug_routes(app, server)
    closer = _StreamCloser(app)
    config = uvicorn.Config(
        closer,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        # In-flight POSTs get this long to finish on SIGTERM (GET streams are ended at once).
        timeout_graceful_shutdown=3,
    )
    uv_server = _QuietServer(config, closer, args.parent_pid)
    try:
        uv_server.run()  # uvloop when installed, like `uvicorn` itself
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down
        return 130
    return 0 if uv_server.started else 1


if __name__ == "__main__":
    sys.exit(main())
