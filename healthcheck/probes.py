"""Active health probes: one HTTP request, or one short MCP client session.

Both probes send the backend's own ``Host`` (``backend.host_header``), finish within
``cfg.timeout`` (the MCP probe's closing DELETE gets its own ``cfg.timeout``), and never
raise: they return ``(ok, detail)`` with a short human-readable detail.
"""

from __future__ import annotations

import asyncio
import errno
import json
import ssl
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
from yarl import URL

from mcplb.healthcheck.config import ActiveHealthConfig
from mcplb.healthcheck.state import seconds
from mcplb.healthcheck.target import HealthTarget, TlsSetupError

PROTOCOL_VERSION: Final = "2025-11-25"
USER_AGENT: Final = "mcplb-health"
MAX_BODY: Final = 4 * 1024 * 1024  # largest MCP response the probe reads (tools/list)
MAX_TOOL_PAGES: Final = 20

MCP_ACCEPT: Final = "application/json, text/event-stream"
SESSION_HEADER: Final = "Mcp-Session-Id"
VERSION_HEADER: Final = "MCP-Protocol-Version"


class ProbeFailed(Exception):
    """A probe step failed; the message is the probe's detail."""


def probe_url(backend: HealthTarget, path: str) -> URL:
    """Where a probe connects: the backend's address, its path prefix, then ``path``."""
    host = f"[{backend.host}]" if ":" in backend.host else backend.host
    prefix = backend.path_prefix.decode("ascii")
    return URL(f"{backend.config.scheme}://{host}:{backend.port}{prefix}{path}", encoded=True)


def probe_tls(backend: HealthTarget) -> ssl.SSLContext | bool:
    """The ``ssl=`` of a probe request: for an https backend, its own client context (the
    same verification settings as the relay's connections); True (aiohttp's default,
    unused for http) otherwise. Raises TlsSetupError if the backend's ``ca`` is bad."""
    context = backend.tls_context()
    return True if context is None else context


def _base_headers(backend: HealthTarget) -> dict[str, str]:
    return {"Host": backend.host_header.decode("ascii"), "User-Agent": USER_AGENT}


def describe_error(exc: BaseException) -> str:
    """A short detail for a transport error."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, ConnectionRefusedError) or os_error.errno == errno.ECONNREFUSED:
            return "connect refused"
        if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
            return f"TLS error: {os_error}"
        return f"connect failed: {os_error.strerror or os_error}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, TlsSetupError):
        return f"TLS setup failed: {exc}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed by the backend"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return f"bad response: {exc}"
    if isinstance(exc, OSError):
        return f"connection error: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _in_ranges(status: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(low <= status <= high for low, high in ranges)


def _ranges_text(ranges: tuple[tuple[int, int], ...]) -> str:
    return ", ".join(str(low) if low == high else f"{low}-{high}" for low, high in ranges)


async def http_probe(
    session: aiohttp.ClientSession, backend: HealthTarget, cfg: ActiveHealthConfig
) -> tuple[bool, str]:
    """``cfg.method`` on ``cfg.path``; healthy when the status is in ``cfg.expect_status``."""
    try:
        async with (
            asyncio.timeout(cfg.timeout),
            session.request(
                cfg.method,
                probe_url(backend, cfg.path),
                headers=_base_headers(backend),
                allow_redirects=False,
                ssl=probe_tls(backend),
            ) as response,
        ):
            status = response.status  # the body is not read: the connection is not reused
    except TimeoutError:
        return False, f"timeout after {seconds(cfg.timeout)}"
    except Exception as exc:  # a probe never raises; cancellation still propagates
        return False, describe_error(exc)
    if _in_ranges(status, cfg.expect_status):
        return True, f"HTTP {status}"
    return False, f"HTTP {status} (expected {_ranges_text(cfg.expect_status)})"


# --- MCP --------------------------------------------------------------------------------


class _McpClient:
    """The few JSON-RPC exchanges of the MCP probe, over one aiohttp session."""

    def __init__(
        self, session: aiohttp.ClientSession, backend: HealthTarget, cfg: ActiveHealthConfig
    ):
        self.session = session
        self.backend = backend
        self.url = probe_url(backend, cfg.path)
        self.headers = {
            **_base_headers(backend),
            "Accept": MCP_ACCEPT,
            "Content-Type": "application/json",
        }
        self.session_id: str | None = None
        self.step = "initialize"
        self._next_id = 0

    async def request(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """Send a JSON-RPC request; its result, or ProbeFailed."""
        self.step = method
        self._next_id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        if params is not None:
            message["params"] = params
        async with self.session.post(
            self.url, data=json.dumps(message), headers=self.headers, ssl=probe_tls(self.backend)
        ) as r:
            if method == "initialize" and 200 <= r.status < 300:
                # Bound only from a successful initialize (a stateful SDK server also sets a
                # fresh, unused id on some 400s).
                self.session_id = r.headers.get(SESSION_HEADER)
            if not 200 <= r.status < 300:
                raise ProbeFailed(f"{method}: HTTP {r.status}{await _error_suffix(r)}")
            reply = await _read_reply(r, self._next_id)
        if reply is None:
            raise ProbeFailed(f"{method}: no JSON-RPC response")
        error = reply.get("error")
        if error is not None:
            raise ProbeFailed(f"{method}: JSON-RPC error{_error_text(error)}")
        if "result" not in reply:
            raise ProbeFailed(f"{method}: JSON-RPC response without a result")
        return reply["result"]

    async def notify(self, method: str) -> None:
        self.step = method
        message = {"jsonrpc": "2.0", "method": method}
        async with self.session.post(
            self.url, data=json.dumps(message), headers=self.headers, ssl=probe_tls(self.backend)
        ) as r:
            if not 200 <= r.status < 300:  # 202 Accepted per the spec
                raise ProbeFailed(f"{method}: HTTP {r.status}{await _error_suffix(r)}")

    def after_initialize(self, result: Any) -> None:
        version = result.get("protocolVersion") if isinstance(result, dict) else None
        self.headers[VERSION_HEADER] = version if isinstance(version, str) else PROTOCOL_VERSION
        if self.session_id is not None:
            self.headers[SESSION_HEADER] = self.session_id

    async def delete_session(self) -> str | None:
        """End the probe's own session; a detail if that failed (405: stateless, fine)."""
        try:
            async with self.session.delete(
                self.url, headers=self.headers, ssl=probe_tls(self.backend)
            ) as r:
                if 200 <= r.status < 300 or r.status in (404, 405):
                    return None
                return f"HTTP {r.status}"
        except Exception as exc:
            return describe_error(exc)


async def _error_suffix(response: aiohttp.ClientResponse) -> str:
    """ ": <JSON-RPC error message>" when an error response carries one, else ""."""
    try:
        body = await response.content.read(64 * 1024)
        error = json.loads(body).get("error")
    except Exception:
        return ""
    return f" ({_error_text(error).removeprefix(' ')})" if isinstance(error, dict) else ""


def _error_text(error: Any) -> str:
    if not isinstance(error, dict):
        return f": {error!r}"
    code, message = error.get("code"), error.get("message")
    return f" {code}: {message}" if message else f" {code}"


async def _read_reply(response: aiohttp.ClientResponse, request_id: int) -> dict[str, Any] | None:
    """The JSON-RPC response to ``request_id`` from a JSON or an SSE (text/event-stream) body."""
    content_type = response.content_type
    if content_type == "application/json":
        body = await response.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise ProbeFailed("response too large")
        try:
            return _match(json.loads(body), request_id)
        except ValueError:
            raise ProbeFailed("invalid JSON in the response") from None
    if content_type == "text/event-stream":
        return await _read_sse_reply(response, request_id)
    raise ProbeFailed(f'unexpected Content-Type "{content_type}"')


async def _read_sse_reply(
    response: aiohttp.ClientResponse, request_id: int
) -> dict[str, Any] | None:
    """Read events until the one carrying our response (the stream may carry other messages
    first: notifications, server requests); None if the stream ends without it."""
    data: list[str] = []
    event = "message"
    size = 0
    async for raw in response.content:
        size += len(raw)
        if size > MAX_BODY:
            raise ProbeFailed("response too large")
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:  # end of an event
            if data and event == "message":
                try:
                    found = _match(json.loads("\n".join(data)), request_id)
                except ValueError:
                    raise ProbeFailed("invalid JSON in an event") from None
                if found is not None:
                    return found
            data, event = [], "message"
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value or "message"
    return None


def _match(message: Any, request_id: int) -> dict[str, Any] | None:
    """The response to ``request_id`` in a message (or a batch of them)."""
    for item in message if isinstance(message, list) else [message]:
        if isinstance(item, dict) and item.get("id") == request_id and "method" not in item:
            return item
    return None


async def mcp_probe(
    session: aiohttp.ClientSession, backend: HealthTarget, cfg: ActiveHealthConfig
) -> tuple[bool, str]:
    """Speak MCP like a client: initialize, notifications/initialized, ping, tools/list (if
    ``cfg.expect_tools``), then DELETE the probe's own session (if one was issued)."""
    client = _McpClient(session, backend, cfg)
    ok, detail = True, ""
    try:
        async with asyncio.timeout(cfg.timeout):
            result = await client.request(
                "initialize",
                {
                    "protocolVersion": PROTOCOL_VERSION,
                    "capabilities": {},
                    "clientInfo": {"name": USER_AGENT, "version": "1"},
                },
            )
            client.after_initialize(result)
            await client.notify("notifications/initialized")
            await client.request("ping")
            detail = "MCP ping ok"
            if cfg.expect_tools:
                names = await _list_tools(client)
                missing = [tool for tool in cfg.expect_tools if tool not in names]
                if missing:
                    raise ProbeFailed(f"tools/list: missing tools: {', '.join(missing)}")
                detail = f"MCP ping ok, {len(cfg.expect_tools)} expected tools listed"
    except ProbeFailed as exc:
        ok, detail = False, str(exc)
    except TimeoutError:
        ok, detail = False, f"timeout after {seconds(cfg.timeout)} (in {client.step})"
    except Exception as exc:  # a probe never raises; cancellation still propagates
        reason = describe_error(exc)
        ok, detail = False, reason if client.step == "initialize" else f"{client.step}: {reason}"
    if client.session_id is not None:
        # Always end the probe's session, also when a later step failed or timed out.
        try:
            async with asyncio.timeout(cfg.timeout):
                problem = await client.delete_session()
        except TimeoutError:
            problem = f"timeout after {seconds(cfg.timeout)}"
        if problem is not None:
            detail += f" (DELETE of the probe session failed: {problem})"
    return ok, detail


async def _list_tools(client: _McpClient) -> set[str]:
    names: set[str] = set()
    cursor: str | None = None
    for _ in range(MAX_TOOL_PAGES):
        result = await client.request("tools/list", {"cursor": cursor} if cursor else None)
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(tools, list):
            raise ProbeFailed("tools/list: malformed result")
        names.update(t["name"] for t in tools if isinstance(t, dict) and "name" in t)
        cursor = result.get("nextCursor")
        if not isinstance(cursor, str) or not cursor:
            break
    return names
