"""Active health probes: one HTTP request, or a short MCP exchange in either era.

Both probes send the backend's own ``Host`` (``backend.host_header``), finish within
``cfg.timeout`` (the MCP probe's closing DELETE gets its own ``cfg.timeout``), and never
raise: they return ``(ok, detail)`` with a short human-readable detail.

The MCP probe speaks both eras (basic/versioning.mdx of 2026-07-28): first the era that
last worked for the backend (cached per backend; legacy at first, so that nothing changes
for the servers probed today), the other if that one got an answer that is not the era's
(a 4xx to initialize; no recognized modern error to server/discover). Modern is
``server/discover`` (a 2026-07-28 server MUST implement it; an
UnsupportedProtocolVersionError, -32022, that lists a revision the server supports is alive
too: a live modern server that speaks another revision), then
``tools/list`` for ``expect_tools``; legacy is ``initialize``, ``ping``, ``tools/list``,
and the DELETE of the probe's session.

It also learns which eras a backend speaks (``spoken``), for routing: a modern request
sent to a 2025-only server fails in a way its client cannot recover from, and so does a
2025 ``initialize`` sent to a 2026-only one (basic/versioning.mdx, "Compatibility Matrix":
Modern client, Legacy server: "Fails"; Legacy client, Modern server: "Fails ... Legacy
clients have no fall-forward mechanism"). A backend whose initialize was refused speaks
modern only; a legacy probe that succeeded sends one ``server/discover`` the first time
(and again after the backend changed era) to learn whether the server is dual-era.
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
MODERN_VERSION: Final = "2026-07-28"
UNSUPPORTED_VERSION: Final = -32022  # UnsupportedProtocolVersionError
# The errors only a modern server gives: HeaderMismatch, MissingRequiredClientCapability,
# UnsupportedProtocolVersion (the spec's "recognized modern JSON-RPC error").
MODERN_ERRORS: Final = frozenset({-32020, -32021, -32022})
USER_AGENT: Final = "mcplb-health"
MAX_BODY: Final = 4 * 1024 * 1024  # largest MCP response the probe reads (tools/list)
MAX_TOOL_PAGES: Final = 20

MCP_ACCEPT: Final = "application/json, text/event-stream"
SESSION_HEADER: Final = "Mcp-Session-Id"
VERSION_HEADER: Final = "MCP-Protocol-Version"


class ProbeFailed(Exception):
    """A probe step failed; the message is the probe's detail."""


class WrongEra(ProbeFailed):
    """The backend answered, but not as a server of the era the probe spoke."""


class Unsupported(ProbeFailed):
    """A modern server refused the revision (-32022); ``supported`` is its list."""

    def __init__(self, message: str, supported: list[str]) -> None:
        super().__init__(message)
        self.supported = supported


# The era that last worked, per backend (by its probe URL): the configured backends only.
_ERAS: dict[str, str] = {}
# The one era a backend speaks, per probe URL ("legacy" or "modern"), when it speaks only
# one; "both" for a dual-era server (see the module's docstring).
_SPOKEN: dict[str, str] = {}
LEGACY: Final = "legacy"
MODERN: Final = "modern"
BOTH: Final = "both"


def spoken(backend: HealthTarget, cfg: ActiveHealthConfig) -> str | None:
    """The eras the MCP probe found ``backend`` to speak: "legacy", "modern", "both", or
    None when not known (not probed yet, or by HTTP probes only)."""
    return _SPOKEN.get(str(probe_url(backend, cfg.path)))


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

    async def request(
        self, method: str, params: Mapping[str, Any] | None = None, *, modern: str | None = None
    ) -> Any:
        """Send a JSON-RPC request; its result, or ProbeFailed. ``modern``: as a client of
        that 2026-07-28-era revision (version in ``_meta`` and the header, routing headers),
        where an answer that is no modern JSON-RPC error raises WrongEra."""
        self.step = method
        self._next_id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        headers = self.headers
        if modern is not None:
            params = {**(params or {}), "_meta": _modern_meta(modern)}
            headers = {**headers, VERSION_HEADER: modern, "Mcp-Method": method}
        if params is not None:
            message["params"] = params
        async with self.session.post(
            self.url, data=json.dumps(message), headers=headers, ssl=probe_tls(self.backend)
        ) as r:
            if method == "initialize" and 200 <= r.status < 300:
                # Bound only from a successful initialize (a stateful SDK server also sets a
                # fresh, unused id on some 400s).
                self.session_id = r.headers.get(SESSION_HEADER)
            if modern is not None and not 200 <= r.status < 300:
                raise await _modern_refusal(r, method)
            if not 200 <= r.status < 300:
                if method == "initialize" and 400 <= r.status < 500:
                    raise WrongEra(f"{method}: HTTP {r.status}{await _error_suffix(r)}")
                raise ProbeFailed(f"{method}: HTTP {r.status}{await _error_suffix(r)}")
            reply = await _read_reply(r, self._next_id)
        if reply is None:
            raise ProbeFailed(f"{method}: no JSON-RPC response")
        error = reply.get("error")
        if error is not None:
            text = f"{method}: JSON-RPC error{_error_text(error)}"
            if method == "server/discover":
                # Every modern server implements it: an error is a legacy server's answer.
                code = error.get("code") if isinstance(error, dict) else None
                raise ProbeFailed(text) if code in MODERN_ERRORS else WrongEra(text)
            raise ProbeFailed(text)
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


def _modern_meta(version: str) -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": version,
        "io.modelcontextprotocol/clientInfo": {"name": USER_AGENT, "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }


async def _modern_refusal(response: aiohttp.ClientResponse, method: str) -> ProbeFailed:
    """What a modern request's error status means: -32022 with the server's revisions
    (Unsupported), another JSON-RPC error (a modern server's refusal: ProbeFailed), or no
    JSON-RPC error at all (a legacy server, per the spec's fallback rule: WrongEra)."""
    detail = f"{method}: HTTP {response.status}"
    try:
        body = await response.content.read(64 * 1024)
        error = json.loads(body).get("error")
    except Exception:
        return WrongEra(detail)
    if not isinstance(error, dict) or not isinstance(error.get("code"), int):
        return WrongEra(detail)
    detail += f" ({_error_text(error).removeprefix(' ')})"
    data = error.get("data")
    supported = data.get("supported") if isinstance(data, dict) else None
    if error["code"] == UNSUPPORTED_VERSION and isinstance(supported, list):
        return Unsupported(detail, [v for v in supported if isinstance(v, str)])
    if error["code"] in MODERN_ERRORS:
        return ProbeFailed(detail)  # a modern server refusing the probe
    return WrongEra(detail)  # "not a recognized modern JSON-RPC error": a legacy server


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
            # (An event with empty data is a priming event, as the TypeScript SDK sends
            # first on a resumable stream: no message.)
            if data and event == "message" and any(data):
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
    """Speak MCP like a client of the era that last worked for this backend (legacy
    first: unchanged for every server that speaks 2025, dual-era ones included), then of
    the other era if the backend answered as a server of that one (a modern-only server
    refuses initialize with 400)."""
    key = str(probe_url(backend, cfg.path))
    first = _ERAS.get(key, "legacy")
    era = first
    ok, detail, wrong_era = await _probe_era(session, backend, cfg, first)
    if wrong_era:
        other = "legacy" if first == "modern" else "modern"
        _SPOKEN.pop(key, None)  # not what it was: learn again what it speaks
        ok, other_detail, other_wrong = await _probe_era(session, backend, cfg, other)
        if ok or not other_wrong:
            _ERAS[key] = era = other
            detail = other_detail
        # else: neither era's answer (a wrong path, a Host refused): the first one's detail
    if ok:
        await _learn_spoken(session, backend, cfg, key, era)
    return ok, detail


async def _learn_spoken(
    session: aiohttp.ClientSession,
    backend: HealthTarget,
    cfg: ActiveHealthConfig,
    key: str,
    era: str,
) -> None:
    """After a successful probe in ``era``: what the backend speaks (``_SPOKEN``). A modern
    probe has learned it already (``_modern_probe``); a legacy one asks ``server/discover``
    once: a modern answer makes the server dual-era, an answer that is not a modern
    server's (a 2025 server's 4xx or JSON-RPC error) makes it legacy only. A failure that
    says neither (a timeout, a refused connection) leaves it unknown, asked again next time."""
    if era != "legacy" or key in _SPOKEN:
        return
    client = _McpClient(session, backend, cfg)
    try:
        async with asyncio.timeout(cfg.timeout):
            await client.request("server/discover", modern=MODERN_VERSION)
        _SPOKEN[key] = BOTH
    except Unsupported:
        _SPOKEN[key] = BOTH  # a modern server that prefers another modern revision
    except WrongEra:
        _SPOKEN[key] = LEGACY
    except Exception:  # unknown for now; cancellation still propagates
        return


async def _probe_era(
    session: aiohttp.ClientSession, backend: HealthTarget, cfg: ActiveHealthConfig, era: str
) -> tuple[bool, str, bool]:
    """(ok, detail, the backend answered as a server of the other era)."""
    if era == "modern":
        return await _modern_probe(session, backend, cfg)
    return await _legacy_probe(session, backend, cfg)


async def _modern_probe(
    session: aiohttp.ClientSession, backend: HealthTarget, cfg: ActiveHealthConfig
) -> tuple[bool, str, bool]:
    """server/discover, then tools/list (expect_tools) at a revision the server supports."""
    client = _McpClient(session, backend, cfg)
    version = MODERN_VERSION
    try:
        async with asyncio.timeout(cfg.timeout):
            try:
                result = await client.request("server/discover", modern=version)
                supported = result.get("supportedVersions") if isinstance(result, dict) else None
                detail = "MCP server/discover ok"
            except Unsupported as exc:
                supported, detail = exc.supported, f"MCP alive ({exc})"
                if not supported:
                    raise ProbeFailed(str(exc)) from None
            if isinstance(supported, list) and version not in supported:
                modern = sorted(v for v in supported if isinstance(v, str) and v >= version)
                if not modern:
                    raise WrongEra(f"server/discover: no 2026-era revision in {supported}")
                version = modern[-1]
            # Modern only: this probe runs first once initialize was refused (the era
            # cached), whatever revisions the server lists.
            _SPOKEN[str(client.url)] = MODERN
            if cfg.expect_tools:
                names = await _list_tools(client, version)
                missing = [tool for tool in cfg.expect_tools if tool not in names]
                if missing:
                    raise ProbeFailed(f"tools/list: missing tools: {', '.join(missing)}")
                detail = f"{detail}, {len(cfg.expect_tools)} expected tools listed"
    except WrongEra as exc:
        return False, str(exc), True
    except ProbeFailed as exc:
        return False, str(exc), False
    except TimeoutError:
        return False, f"timeout after {seconds(cfg.timeout)} (in {client.step})", False
    except Exception as exc:  # a probe never raises; cancellation still propagates
        reason = describe_error(exc)
        return (
            False,
            reason if client.step == "server/discover" else f"{client.step}: {reason}",
            False,
        )
    return True, detail, False


async def _legacy_probe(
    session: aiohttp.ClientSession, backend: HealthTarget, cfg: ActiveHealthConfig
) -> tuple[bool, str, bool]:
    """initialize, notifications/initialized, ping, tools/list (if ``cfg.expect_tools``),
    then DELETE the probe's own session (if one was issued)."""
    client = _McpClient(session, backend, cfg)
    ok, detail, wrong_era = True, "", False
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
    except WrongEra as exc:
        ok, detail, wrong_era = False, str(exc), True
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
    return ok, detail, wrong_era


async def _list_tools(client: _McpClient, modern: str | None = None) -> set[str]:
    names: set[str] = set()
    cursor: str | None = None
    for _ in range(MAX_TOOL_PAGES):
        params = {"cursor": cursor} if cursor else None
        result = await client.request("tools/list", params, modern=modern)
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(tools, list):
            raise ProbeFailed("tools/list: malformed result")
        names.update(t["name"] for t in tools if isinstance(t, dict) and "name" in t)
        cursor = result.get("nextCursor")
        if not isinstance(cursor, str) or not cursor:
            break
    return names
