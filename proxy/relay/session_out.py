"""Session ids on the way back to the client: what a response's ``Mcp-Session-Id``
becomes (signed, or bound in the store), the sticky cookie, and the store updates a
response asks for.

Functions of the runtime state and the values of one response. A store update is
returned as a job, not run: the response relay holds the answer until it has landed, so
that the client cannot use a session id the store does not know yet.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any

from mcplb.proxy.relay.framing import SESSION_HEADER, ResponseHead
from mcplb.proxy.relay.request import Request
from mcplb.proxy.sessions import affinity
from mcplb.proxy.sessions.tokens import TokenCodec

if TYPE_CHECKING:
    from mcplb.proxy.cluster.backends import Backend
    from mcplb.proxy.server.runtime import Runtime

log = logging.getLogger("mcplb.relay")

Job = Coroutine[Any, Any, None]


def session_header(
    runtime: Runtime,
    request: Request,
    head: ResponseHead,
    session_id: str,
    status: int,
    backend: Backend,
) -> tuple[list[bytes] | None, Job | None]:
    """The response's fields in wire form with its Mcp-Session-Id as the client must see
    it (None: as the backend sent them), on every response: with signed ids, never the
    backend's raw id (TypeScript clients adopt the id of every response, and TypeScript
    servers repeat it on every response); with a store, the backend's id, bound there
    when it is new."""
    codec = runtime.session_codec
    ok = 200 <= status < 300
    if request.session_id is None:
        if ok:
            return learned(runtime, head, session_id, backend)
        if codec is None:
            return None, None
        # The SDK's quirk: a fresh, unused id on a 400. Sealed all the same.
        token = seal_or_keep(codec, backend.name, session_id)
    elif codec is None:
        if ok and session_id != request.session_id and request.method != b"DELETE":
            # The backend replaced the session with a new one: bind that one too.
            return None, bind(runtime, session_id, backend)
        return None, None
    elif session_id == request.upstream_session_id:
        token = request.session_id  # the same session: the client's own token, no HMAC
    else:
        token = seal_or_keep(codec, backend.name, session_id)  # minted anew: seal it
        if ok:
            runtime.session_bound(backend.name)
    return with_session_id(head.wire, token), None


def learned(
    runtime: Runtime, head: ResponseHead, session_id: str, backend: Backend
) -> tuple[list[bytes] | None, Job | None]:
    """A backend minted a session: sign it into the id the client sees, or store it."""
    codec = runtime.session_codec
    if codec is None:
        return None, bind(runtime, session_id, backend)
    try:
        token = codec.seal(backend.name, session_id)
    except ValueError:  # not visible ASCII, or too long to carry: the client gets 404s
        log.warning("backend %s minted a session id that cannot be signed", backend.name)
        return None, None
    runtime.session_bound(backend.name)
    return with_session_id(head.wire, token), None


def legacy_learned(runtime: Runtime, session_id: str, backend: Backend) -> Job | None:
    """A legacy SSE stream's endpoint event named its session (already sealed in the
    event when ids are signed)."""
    if runtime.session_codec is None:
        return bind(runtime, session_id, backend)
    runtime.session_bound(backend.name)
    return None


def ended(runtime: Runtime, session_id: str, bound_backend: str | None) -> Job | None:
    """The backend ended (DELETE) or does not know (404) a session."""
    if runtime.session_codec is None:
        return forget(runtime, session_id)
    if bound_backend is not None:
        runtime.session_ended(bound_backend)
    return None


def endpoint_scanner(runtime: Runtime, backend: Backend) -> affinity.EndpointScanner:
    """The scanner of a legacy SSE stream's endpoint event (sealing its id if signed)."""
    codec = runtime.session_codec
    if codec is None:
        return affinity.EndpointScanner(None)
    return affinity.EndpointScanner(partial(seal_or_keep, codec, backend.name))


def cookie_for(
    runtime: Runtime, request: Request, backend: Backend, cookie_name: bytes
) -> bytes | None:
    """A Set-Cookie pinning the client to ``backend``, unless its cookie already does."""
    codec = runtime.cookie_codec
    cookie = runtime.config.sticky.cookie
    assert codec is not None and cookie is not None
    value = affinity.cookie_value(request.headers, cookie_name)
    opened = codec.open(value) if value else None
    if opened is not None and opened[0] == backend.name:
        return None
    return affinity.set_cookie(cookie, codec.seal(backend.name, ""))


def seal_or_keep(codec: TokenCodec, backend: str, session_id: str) -> str:
    """The signed id, or the backend's own when it cannot be signed (the client will get
    404 for it and start over)."""
    try:
        return codec.seal(backend, session_id)
    except ValueError:
        log.warning("backend %s minted a session id that cannot be signed", backend)
        return session_id


def with_session_id(wire: list[bytes], token: str) -> list[bytes]:
    """Fields in wire form (``framing.ResponseHead.wire``) with the value of every
    Mcp-Session-Id replaced by ``token``; the others as they are."""
    value = token.encode("latin-1")
    out = wire.copy()
    for at in range(0, len(out), 4):  # name, ": ", value, CRLF for each field
        if out[at] == SESSION_HEADER:
            out[at + 2] = value
    return out


async def bind(runtime: Runtime, session_id: str, backend: Backend) -> None:
    previous = await runtime.sessions.bind(session_id, backend.name)
    if previous is not None:
        runtime.session_ended(previous)
    runtime.session_bound(backend.name)


async def forget(runtime: Runtime, session_id: str) -> None:
    name = await runtime.sessions.forget(session_id)
    if name is not None:
        runtime.session_ended(name)
