"""Which MCP method (and tool) a request calls, for the metrics by method: from its small
JSON-RPC body only. The 2026-07-28 routing headers (Mcp-Method, Mcp-Name) are claims a
client makes; they are never counted as such (proxy/routing/mcp_era.py checks them against
the body, and a request whose headers lie is refused and counted as a mismatch).

A 2026-07-28 POST (``request.mcp``) has its body read up to ``mcp_era.MAX_CHECKED`` before
it is routed: ``count_body`` then judges it (``request.verdict``) and counts it by the
verdict's values."""

from __future__ import annotations

from typing import Final

from mcplb.proxy.observability.stats import Stats
from mcplb.proxy.relay.request import Request
from mcplb.proxy.routing.mcp_era import (
    MAX_CHECKED,
    MAX_VALUE,
    VERSION_HEADER,
    parse_message,
    read_head,
    validate,
)
from mcplb.proxy.routing.rate_limit import UNKNOWN_TOOL

# JSON-RPC bodies up to this size are read for their method (a 2026-07-28 request's, to
# check its routing headers before routing, too).
SNIFF_LIMIT: Final = MAX_CHECKED


def count_head(stats: Stats, request: Request) -> None:
    """Read a POST's head: mark its body to be read (``request.sniff``) when it is JSON or
    the request is a 2026-07-28 one, whose routing claims go to ``request.mcp``."""
    json_body = False
    modern = False
    # Perhaps a tool call until its body is read whole (rate_limit.tools): a body never
    # read (too large, not declared JSON: a lenient server may parse it anyway) counts
    # against every per-tool rule.
    request.tool = UNKNOWN_TOOL
    for name, value in request.headers:
        if name == b"content-type":
            # (Media types are case-insensitive: "Application/JSON" is read too.)
            json_body = value[:16].lower() == b"application/json"
        elif name == VERSION_HEADER and value.lstrip(b" \t")[:4] >= b"2026":
            modern = True  # perhaps: read_head decides (a 2025 request pays nothing more)
    if modern:
        head = read_head(request.headers)
        if head.modern or head.repeated is not None:
            request.mcp = head
            if (request.content_length or 0) <= SNIFF_LIMIT:
                request.sniff = []
            return
    if json_body and (request.content_length or 0) <= SNIFF_LIMIT:
        request.sniff = []


def keep_body(request: Request, data: bytes) -> bool:
    """Keep a piece of a body marked to be read, while it is small enough to be worth it;
    False once it is not (what was kept is dropped)."""
    sniff = request.sniff
    if sniff is None:
        return False
    if request.body_size > SNIFF_LIMIT:
        request.sniff = None  # too large to be a JSON-RPC message worth reading
        return False
    sniff.append(data)
    return True


def count_body(stats: Stats, request: Request) -> None:
    """Count a complete body kept by ``keep_body`` by its method; judge a 2026-07-28
    request's (``request.verdict``), counted unless refused."""
    sniff = request.sniff
    if request.mcp is not None:
        request.sniff = None
        verdict = request.verdict = validate(
            request.mcp, b"".join(sniff) if sniff is not None else None
        )
        if verdict.refusal is None and verdict.method:
            stats.count_mcp(verdict.method, verdict.name)
        request.mcp_call = True
        request.rpc_id = verdict.message_id
        request.rpc_method, request.rpc_name = verdict.method, verdict.name
        if verdict.method == "tools/call":
            request.tool = verdict.name if verdict.has_name else UNKNOWN_TOOL
        elif verdict.method:
            request.tool = None  # (no method: not one request, or not JSON: unknown)
    elif sniff is not None:
        request.sniff = None
        message = parse_message(b"".join(sniff))
        request.tool = called_tool(message)
        method, tool = message_method(message)
        if method:
            stats.count_mcp(method, tool)
            request.rpc_method, request.rpc_name = method, tool
            if isinstance(message, dict) and "id" in message:
                request.mcp_call = True
                rpc_id = message["id"]
                request.rpc_id = rpc_id if isinstance(rpc_id, str | int) else None


def judge_unread(request: Request) -> None:
    """A 2026-07-28 request whose body is past what is read before routing: judged without
    it (nothing is taken from its headers)."""
    if request.mcp is not None and request.verdict is None:
        request.sniff = None
        request.verdict = validate(request.mcp, None)


def jsonrpc_method(body: bytes) -> tuple[str, str]:
    """The method of a JSON-RPC request (and the tool of a tools/call), or ("", "")."""
    return message_method(parse_message(body))


def called_tool(message: object) -> str | None:
    """The tool a parsed body calls (``Request.tool``): its name for a tools/call, None for
    anything that is no tool call (another method, a response), UNKNOWN_TOOL when that
    cannot be told (a batch, not JSON, a name that is no string of at most MAX_VALUE)."""
    if not isinstance(message, dict):
        return UNKNOWN_TOOL
    method = message.get("method")
    if method != "tools/call":
        return None
    params = message.get("params")
    name = params.get("name") if isinstance(params, dict) else None
    return name if isinstance(name, str) and len(name) <= MAX_VALUE else UNKNOWN_TOOL


def message_method(message: object) -> tuple[str, str]:
    """``jsonrpc_method`` of a parsed message."""
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
