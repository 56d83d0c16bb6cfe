"""Which MCP method (and tool) a request calls, for the metrics by method: from its small
JSON-RPC body only. The 2026-07-28 routing headers (Mcp-Method, Mcp-Name) are claims a
client makes; they are never counted as such (proxy/routing/mcp_era.py checks them against
the body, and a request whose headers lie is refused and counted as a mismatch)."""

from __future__ import annotations

from typing import Final

from mcplb.proxy.observability.stats import Stats
from mcplb.proxy.relay.request import Request
from mcplb.proxy.routing.mcp_era import parse_message

# JSON-RPC bodies up to this size are read for their method.
SNIFF_LIMIT: Final = 16 * 1024


def count_head(stats: Stats, request: Request) -> None:
    """Mark an MCP POST's JSON body to be read (``request.sniff``) once it is complete."""
    for name, value in request.headers:
        if name == b"content-type":
            if value.startswith(b"application/json"):
                request.sniff = []
            return


def keep_body(request: Request, data: bytes) -> None:
    """Keep a piece of a body marked to be read, while it is small enough to be worth it."""
    sniff = request.sniff
    if sniff is not None:
        if request.body_size > SNIFF_LIMIT:
            request.sniff = None  # too large to be a JSON-RPC message worth reading
        else:
            sniff.append(data)


def count_body(stats: Stats, request: Request) -> None:
    """Count a complete body kept by ``keep_body`` by its method."""
    if request.sniff is not None:
        method, tool = jsonrpc_method(b"".join(request.sniff))
        request.sniff = None
        if method:
            stats.count_mcp(method, tool)


def jsonrpc_method(body: bytes) -> tuple[str, str]:
    """The method of a JSON-RPC request (and the tool of a tools/call), or ("", "")."""
    message = parse_message(body)
    if isinstance(message, list):  # a batch (2025-03-26): count its first request
        message = message[0] if message else None
    if not isinstance(message, dict) or not isinstance(message.get("method"), str):
        return "", ""
    method: str = message["method"][:64]
    params = message.get("params")
    tool = ""
    if method == "tools/call" and isinstance(params, dict) and isinstance(params.get("name"), str):
        tool = params["name"][:64]
    return method, tool
