"""Sans-IO pieces of session affinity: where a request names its session, and how the
2024-11-05 SSE transport announces one.

The legacy HTTP+SSE transport opens a stream with ``GET /sse`` whose first event is::

    event: endpoint
    data: /messages/?session_id=<id>

(the Python SDK's; TypeScript SDK servers send ``/message?sessionId=<id>``, others may use
another key) and the client then POSTs to that URL. The proxy must read (and, with signed
ids, rewrite) that event before the client sees it, and find the id again in the POSTs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from urllib.parse import quote

from mcplb.proxy.config.schema import CookieConfig
from mcplb.strategies.ip_hash import IpHash

# The query keys that name a legacy SSE session: the Python SDK's, the TypeScript SDK's.
SESSION_KEYS = frozenset((b"session_id", b"sessionId"))
# Another server's key is recognised when the query has that one parameter and its value
# looks like a session id: at least this long, and only URL-safe characters.
MIN_GUESSED_ID = 16
_ID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# An endpoint event is a few hundred bytes; a stream that has not produced one within
# this much is not the legacy transport and is passed through untouched.
ENDPOINT_SCAN_LIMIT = 8192


def query_session(target: bytes) -> tuple[str, bool] | None:
    """The legacy SSE session a request target (or endpoint URL) names, as (id, named):
    the value of a SESSION_KEYS parameter (named), else the value of the query's only
    parameter when it looks like a session id (not named: a guess the caller confirms)."""
    query_at = target.find(b"?")
    if query_at < 0:
        return None
    parts = target[query_at + 1 :].split(b"&")
    for part in parts:
        key, _, value = part.partition(b"=")
        if key in SESSION_KEYS:
            return (value.decode("latin-1"), True) if value else None
    if len(parts) == 1:
        value = parts[0].partition(b"=")[2]
        if len(value) >= MIN_GUESSED_ID and _ID_CHARS.issuperset(value):
            return value.decode("ascii"), False
    return None


def replace_query_value(target: bytes, old: str, new: str) -> bytes:
    """``target`` with the query parameter whose value is ``old`` set to ``new``."""
    path, _, query = target.partition(b"?")
    old_value = old.encode("latin-1")
    encoded = quote(new, safe="").encode("ascii")
    parts = query.split(b"&")
    for index, part in enumerate(parts):
        key, equals, value = part.partition(b"=")
        if equals and value == old_value:
            parts[index] = key + b"=" + encoded
            break
    return path + b"?" + b"&".join(parts)


class EndpointScanner:
    """Finds the ``endpoint`` event at the start of a legacy SSE stream.

    Feed body bytes; ``feed`` returns the bytes that may go to the client now. Bytes are held
    only until the first event is complete (or ENDPOINT_SCAN_LIMIT is passed). When the first
    event is an endpoint event, ``session_id`` is set and, if ``seal`` is given, the id in its
    URL is replaced by ``seal(id)`` before the event is released.
    """

    def __init__(self, seal: Callable[[str], str] | None = None) -> None:
        self.done = False
        self.session_id: str | None = None
        self._seal = seal
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return data
        self._held += data
        end = _event_end(self._held)
        if end < 0:
            if len(self._held) > ENDPOINT_SCAN_LIMIT:
                return self.flush()
            return b""
        event, rest = self._held[:end], self._held[end:]
        self.session_id = _endpoint_session_id(event)
        if self.session_id is not None and self._seal is not None:
            event = _set_endpoint_session_id(event, self.session_id, self._seal(self.session_id))
        self._held = event + rest
        return self.flush()

    def flush(self) -> bytes:
        """Release whatever is held and stop scanning."""
        self.done = True
        held, self._held = self._held, b""
        return held


def _event_end(buffer: bytes) -> int:
    """Index just past the blank line ending the first SSE event, or -1."""
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n", b"\r\r") if (i := buffer.find(sep)) >= 0]
    return min(ends) if ends else -1


def _event_lines(event: bytes) -> list[bytes]:
    return event.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")


def _endpoint_session_id(event: bytes) -> str | None:
    """The session id in an endpoint event's URL, found by the same rule as in the POSTs
    that follow (query_session), so what is bound here is found again there."""
    lines = _event_lines(event)
    if b"event: endpoint" not in lines and b"event:endpoint" not in lines:
        return None
    for line in lines:
        if line.startswith(b"data:"):
            found = query_session(line[5:].strip())
            return found[0] if found is not None else None
    return None


def _set_endpoint_session_id(event: bytes, old: str, new: str) -> bytes:
    out = []
    for line in event.split(b"\n"):
        stripped = line.rstrip(b"\r")
        if stripped.startswith(b"data:"):
            url = stripped[5:].strip()
            line = b"data: " + replace_query_value(url, old, new) + line[len(stripped) :]
        out.append(line)
    return b"\n".join(out)


def cookie_value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The value of cookie ``name`` in the request's Cookie headers."""
    prefix = name + b"="
    for header, value in headers:
        if header != b"cookie":
            continue
        for part in value.split(b";"):
            part = part.strip()
            if part.startswith(prefix):
                return part[len(prefix) :].decode("latin-1")
    return None


def set_cookie(config: CookieConfig, value: str) -> bytes:
    """The Set-Cookie header value that pins a client to a backend."""
    attributes = [f"{config.name}={value}", "Path=/"]
    if config.ttl is not None:
        attributes.append(f"Max-Age={int(config.ttl)}")
    if config.secure:
        attributes.append("Secure")
    if config.http_only:
        attributes.append("HttpOnly")
    attributes.append(f"SameSite={config.same_site}")
    return "; ".join(attributes).encode("latin-1")


class HeaderAffinity:
    """``sticky.header``: requests carrying the header go where a consistent hash of its
    value says (the ip_hash strategy's Maglev table, keyed on the header)."""

    def __init__(self, name: str) -> None:
        self.name = name.lower().encode("latin-1")
        self.strategy = IpHash(hash_key=f"header:{name}")

    def applies(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        return any(header == self.name for header, _ in headers)


def repeated_session_parameter(target: bytes) -> bool:
    """Whether a request target's query names a session key more than once: the proxy
    and the backend could each read another one (the first, the last)."""
    query_at = target.find(b"?")
    if query_at < 0:
        return False
    keys = [part.partition(b"=")[0] for part in target[query_at + 1 :].split(b"&")]
    return any(keys.count(key) > 1 for key in SESSION_KEYS)
