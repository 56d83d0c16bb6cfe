"""A Python SDK (mcp 2.3) MCP server for the 2026-07-28 flow tests: progress,
``subscriptions/listen``, and multi round-trip requests (MRTR).

    python -m tests.interop.flows_server --name NAME --port PORT --key HEX [--peers P1,P2]

A dual-era ``MCPServer`` on 127.0.0.1:PORT/mcp with the tools

- ``whoami``: the server's name;
- ``countdown(n)``: sends ``n`` progress notifications (1..n of n), then answers "liftoff";
- ``change_tools``: publishes a tools list change to every ``subscriptions/listen`` stream
  of this server and of its ``--peers`` (by POST /bus on each: the fan-out a deployment of
  several instances needs, the SDK's ``SubscriptionBus`` seam "backed by Redis pub/sub for
  multi-replica deployments"; here a plain HTTP hop between the test's instances);
- ``ask(word)``: an MRTR tool. Its first round answers ``input_required`` with an
  elicitation and a ``requestState`` naming the instance that asked; the retry (any
  instance: the spec's "the server processing the retry does not need any information
  beyond what is directly present in the retry request") answers
  ``"<word> <answer> asked-by <name> answered-by <name>"``.

``requestState`` is sealed by the SDK (AES-GCM) under ``--key`` with one audience for all
instances: the shared key the spec expects of servers behind a balancer (a per-process key,
the SDK's default, would refuse a retry that lands on another instance).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

import aiohttp
import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.request_state import RequestStateSecurity
from mcp.server.subscriptions import InMemorySubscriptionBus, ServerEvent, ToolsListChanged
from mcp_types import ElicitRequest, ElicitRequestFormParams, InputRequiredResult
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

AUDIENCE = "mcplb-flows"
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


class PeerBus:
    """The in-process bus, plus a POST /bus to each peer instance on publish."""

    def __init__(self, peers: list[str]) -> None:
        self.local = InMemorySubscriptionBus()
        self.peers = peers

    async def publish(self, event: ServerEvent) -> None:
        await self.local.publish(event)
        if self.peers:
            timeout = aiohttp.ClientTimeout(total=5)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                for peer in self.peers:
                    async with http.post(f"http://{peer}/bus", data=b"tools") as response:
                        response.raise_for_status()

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        return self.local.subscribe(listener)


def build(name: str, key: bytes, bus: PeerBus) -> MCPServer:
    security = RequestStateSecurity(keys=[key], audience=AUDIENCE)
    server: MCPServer = MCPServer(
        name, log_level="WARNING", request_state_security=security, subscriptions=bus
    )

    @server.tool()
    def whoami() -> str:
        """The name of the instance that served this call."""
        return name

    @server.tool()
    async def countdown(n: int, ctx: Context[Any, Any]) -> str:
        """n progress notifications, then liftoff."""
        for i in range(1, n + 1):
            await ctx.report_progress(i, n, f"step {i}")
            await asyncio.sleep(0.01)
        return "liftoff"

    @server.tool()
    async def change_tools(ctx: Context[Any, Any]) -> str:
        """Publish a tools list change to every listen stream, here and at the peers."""
        await ctx.notify_tools_changed()
        return f"changed by {name}"

    @server.tool()
    async def ask(word: str, ctx: Context[Any, Any]) -> str | InputRequiredResult:
        """MRTR: ask the client for an answer, then echo it."""
        responses = ctx.input_responses or {}
        answer = responses.get("answer")
        state = ctx.request_state
        content = getattr(answer, "content", None) if answer is not None else None
        if state is None or not isinstance(content, dict) or "answer" not in content:
            request = ElicitRequest(
                params=ElicitRequestFormParams(
                    message=f"answer for {word}?", requested_schema=SCHEMA
                )
            )
            return InputRequiredResult(
                input_requests={"answer": request}, request_state=json.dumps({"asker": name})
            )
        asker = json.loads(state)["asker"]
        return f"{word} {content['answer']} asked-by {asker} answered-by {name}"

    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.interop.flows_server")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True, help="the requestState key (hex, 32 bytes+)")
    parser.add_argument("--peers", default="", help="host:port of the other instances")
    args = parser.parse_args(argv)
    bus = PeerBus([p for p in args.peers.split(",") if p])
    server = build(args.name, bytes.fromhex(args.key), bus)
    app = server.streamable_http_app(host="127.0.0.1")

    async def from_peer(request: Request) -> Response:
        await request.body()
        await bus.local.publish(ToolsListChanged())
        return Response(status_code=204)

    app.router.routes.append(Route("/bus", from_peer, methods=["POST"]))
    print(f"flows server {args.name} on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
