"""Which MCP method (and tool) a request calls, for the metrics by method: from the
2026-07-28 routing headers when present, else from its small JSON-RPC body."""

from __future__ import annotations

import json
from typing import Final

from mcplb.proxy.observability.stats import Stats
from mcplb.proxy.relay.request import Request

# JSON-RPC bodies up to this size are read for their method.
SNIFF_LIMIT: Final = 16 * 1024
# A body with more openers than this is not parsed for its method: the JSON parser recurses
# once per level, and a body of nothing but brackets would exhaust the stack.
SNIFF_MAX_NESTING = 64
# One decoder for every body, given text: json.loads of bytes first guesses their encoding
# (UTF-16 and UTF-32 too) in Python code, a third of its time on a small message. MCP
# messages are UTF-8; a body that is not is an error here, and is not counted.
_DECODER: Final = json.JSONDecoder()


def count_head(stats: Stats, request: Request) -> None:
    """Count an MCP POST by its routing headers, or mark its JSON body to be read
    (``request.sniff``) once it is complete."""
    method = tool = None
    json_body = False
    for name, value in request.headers:
        if name == b"mcp-method":
            method = value
        elif name == b"mcp-name":
            tool = value
        elif name == b"content-type":
            json_body = value.startswith(b"application/json")
    if method is not None:
        stats.count_mcp(method.decode("latin-1"), (tool or b"").decode("latin-1"))
    elif json_body:
        request.sniff = []


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
    if body.count(b"[") + body.count(b"{") > SNIFF_MAX_NESTING:
        return "", ""  # nesting is at most the number of openers: bounded, no recursion
    try:
        message = _DECODER.decode(body.decode("utf-8"))
    except ValueError:  # not UTF-8 (UnicodeDecodeError), or not JSON
        return "", ""
    if isinstance(message, list):  # a batch: count its first request
        message = message[0] if message else None
    if not isinstance(message, dict) or not isinstance(message.get("method"), str):
        return "", ""
    method: str = message["method"][:64]
    params = message.get("params")
    tool = ""
    if method == "tools/call" and isinstance(params, dict) and isinstance(params.get("name"), str):
        tool = params["name"][:64]
    return method, tool
