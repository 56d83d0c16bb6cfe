"""The mixed-era soak's MCP backend (bench/soak.py --mixed): one process that serves every
traffic shape the soak sends, on one port.

    python -m tests.support.soak_backend --name NAME --port PORT [--host 127.0.0.1]
        [--parent-pid PID]

- ``/mcp``: Streamable HTTP, dual-era (the Python SDK's ``MCPServer``): 2025 sessions (the
  demo tools ``whoami``, ``add``, ``countdown`` of proxy/demo/backend.py) and sessionless
  2026-07-28 requests, with the tasks extension of tests/interop/py_tasks_server.py
  (``slow_task`` answers a client that declares it with a task) and ``subscriptions/listen``;
- ``/sse`` and ``/messages/``: the 2024-11-05 HTTP+SSE transport (legacy SSE);
- ``GET /debug/sessions``: ``{"sessions": N}``, live Streamable HTTP sessions.

Listen streams: a ticker publishes ``notifications/resources/updated`` for
``soak://NAME/tick/K`` every TICK seconds, K = sequence number modulo TICK_MOD; a client
that subscribes to all TICK_MOD URIs of a backend sees K go up by one per event, so a lost
event is a gap (a gap of a whole multiple of TICK_MOD shows as a silence of TICK_MOD * TICK
seconds, which the soak also checks).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated
from starlette.applications import Starlette

from mcplb.proxy.demo.backend import (
    COUNTDOWN_MAX_DELAY,
    COUNTDOWN_MAX_N,
    _QuietServer,
    _StreamCloser,
    add_debug_routes,
)
from tests.interop.py_tasks_server import TasksExtension

TICK = 0.25  # seconds between listen events
TICK_MOD = 16  # URIs per backend: soak://NAME/tick/0 .. /15


def tick_uri(name: str, k: int) -> str:
    return f"soak://{name}/tick/{k % TICK_MOD}"


def build(name: str, bus: InMemorySubscriptionBus) -> MCPServer:
    server: MCPServer = MCPServer(
        name, log_level="WARNING", extensions=[TasksExtension(name)], subscriptions=bus
    )

    @server.tool()
    def whoami() -> str:
        """The name of the backend that served this call."""
        return name

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    async def countdown(ctx: Context[Any, Any], n: int = 5, delay: float = 0.2) -> str:
        """n progress notifications, one every ``delay`` seconds, then "liftoff"."""
        n = max(1, min(n, COUNTDOWN_MAX_N))
        delay = max(0.0, min(delay, COUNTDOWN_MAX_DELAY))
        for i in range(1, n + 1):
            await ctx.report_progress(i, n, f"{n - i} left")
            await asyncio.sleep(delay)
        return "liftoff"

    @server.tool()
    async def slow_task(delay: float = 0.05) -> str:
        """Finishes after ``delay`` seconds (as a task for clients that declare tasks)."""
        await asyncio.sleep(min(delay, 5.0))
        return f"done by {name}"

    return server


async def ticker(name: str, bus: InMemorySubscriptionBus) -> None:
    k = 0
    while True:
        await bus.publish(ResourceUpdated(tick_uri(name, k)))
        k += 1
        await asyncio.sleep(TICK)


def make_app(name: str, host: str) -> Starlette:
    bus = InMemorySubscriptionBus()
    server = build(name, bus)
    app = server.streamable_http_app(host=host)
    app.router.routes.extend(server.sse_app(host=host).routes)
    add_debug_routes(app, server)
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: Starlette) -> AsyncIterator[None]:
        async with inner(app_):
            task = asyncio.create_task(ticker(name, bus))
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app.router.lifespan_context = lifespan
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    closer = _StreamCloser(make_app(args.name, args.host))
    config = uvicorn.Config(
        closer,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=3,
    )
    uv_server = _QuietServer(config, closer, args.parent_pid)
    try:
        uv_server.run()
    except KeyboardInterrupt:
        return 130
    return 0 if uv_server.started else 1


if __name__ == "__main__":
    sys.exit(main())
