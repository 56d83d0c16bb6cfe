"""The routing pipeline of one request, in the order it runs: ``start`` checks what the
proxy refuses on its own (400, 421, 413, 405) and the rate limit (429); ``route`` takes a
session id to its backend (through the store, or inside a signed id); ``route_new`` takes
any other request to a sticky cookie's backend or the strategy's pick, else queues it or
answers 503. The decisions are the functions of ``routing.steps``; these functions own
the I/O around them (store and Redis lookups, answers) and end in ``Exchange.dispatch``.

A step that must wait (a Redis lookup, a binding this process does not hold) runs as the
exchange's task and goes on only if the request is still the one being answered; a binding
the process holds routes at once (``SessionStore.known``), as nearly every MCP request's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcplb.proxy.auth.edge import EdgeAuth, KeysPending, Metadata
from mcplb.proxy.relay import answers
from mcplb.proxy.relay.request import Request
from mcplb.proxy.relay.states import CLOSED, ROUTING
from mcplb.proxy.routing import steps as routing
from mcplb.proxy.routing.rate_limit import (
    MemoryRateLimiter,
    RateDecision,
    RedisRateLimiter,
    rate_limit_headers,
)
from mcplb.proxy.sessions import affinity

if TYPE_CHECKING:
    from mcplb.proxy.relay.exchange import Exchange


def start(ex: Exchange, request: Request) -> None:
    """Check the request (400, 421, 413, 405, 401/403, 429), then route it."""
    conn = ex.conn
    conn.state = ROUTING
    ex.started = conn.loop.time()
    conn.runtime.retry_budget.record_request(ex.started)
    max_body = conn.max_body_bytes
    if request.refusal is not None:
        conn.relay.reject(answers.bad_request(request.refusal))
    elif not conn.runtime.host_policy.allows(request.host):
        # DNS-rebinding protection: a name this listener does not serve never reaches a
        # backend (which, sent its own host:port, could not tell).
        conn.relay.answer(answers.HOST_NOT_SERVED)
    elif max_body and request.content_length is not None and request.content_length > max_body:
        conn.relay.reject(answers.BODY_TOO_LARGE)
    elif request.method == b"CONNECT":
        # A reverse proxy tunnels nowhere: only configured backends are ever reached.
        conn.relay.answer(answers.CONNECT_REFUSED)
    elif conn.runtime.auth is None or _authorize(ex, request):
        limit(ex, request)


def limit(ex: Exchange, request: Request) -> None:
    """The rate limit (429), then ``route``."""
    if ex.conn.runtime.rate_limiter is None or _rate_limit(ex, request):
        route(ex, request)


def route(ex: Exchange, request: Request) -> None:
    """A session id (header, or legacy query) routes to its backend; else ``route_new``."""
    conn = ex.conn
    # (find, not "in": bytes.__contains__ first tries its argument as an int, and building
    # that TypeError costs more than the search.)
    has_query = request.target.find(b"?") >= 0
    if has_query and affinity.repeated_session_parameter(request.target):
        # A router reading the first and a backend reading the last would disagree.
        conn.relay.answer(answers.REPEATED_QUERY_SESSION)
        return
    guessed = False
    if conn.sticky and request.session_id is None and has_query:
        # Legacy SSE: the session is in the query, under whatever key the server chose.
        found = affinity.query_session(request.target)
        if found is not None:
            request.session_id, named = found
            request.session_in_query = True
            guessed = not named
    if request.session_id is not None:
        codec = conn.runtime.session_codec
        if codec is None:
            name = conn.runtime.sessions.known(request.session_id)
            if name is None:
                ex.task = conn.spawn(_route_session(ex, request, guessed))
            else:
                _route_bound(ex, request, name, guessed)
            return
        opened = codec.open(request.session_id)
        if opened is not None or not guessed:
            _route_signed_session(ex, request, opened)
            return
        _not_a_session(request)
    route_new(ex, request)


def route_new(ex: Exchange, request: Request) -> None:
    """A request that names no session: cookie pin or strategy, else wait or 503."""
    conn = ex.conn
    runtime = conn.runtime
    backend = routing.pinned(runtime, request, conn.cookie_name) or ex.pick(request)
    if backend is not None:
        ex.dispatch(request, backend)
        return
    cluster = runtime.cluster
    if request.wants_stream and any(b.available for b in cluster.backends.backends):
        ex.too_many_streams()  # the backends that are up are at their cap
    elif not request.wants_stream and cluster.admission.any_full(cluster.backends.backends):
        ex.wait_for_slot(None)
    else:
        conn.relay.answer(answers.NO_BACKEND)


def _route_signed_session(ex: Exchange, request: Request, opened: tuple[str, str] | None) -> None:
    """A signed id names its backend: no lookup. Tampered or foreign ids open to None."""
    backend = routing.session_backend(ex.conn.runtime, opened[0] if opened else None)
    if opened is None or backend is None:
        ex.conn.relay.answer_session_not_found()
        return
    request.upstream_session_id = opened[1]
    ex.bound_backend = backend.name
    ex.dispatch(request, backend)


async def _route_session(ex: Exchange, request: Request, guessed: bool) -> None:
    conn = ex.conn
    session_id = request.session_id
    assert session_id is not None
    name = await conn.runtime.sessions.get(session_id)
    ex.task = None
    if request is not conn.current or conn.state == CLOSED:
        return
    _route_bound(ex, request, name, guessed)


def _route_bound(ex: Exchange, request: Request, name: str | None, guessed: bool) -> None:
    """Route to the backend the session's binding names (``name``; None: no binding)."""
    conn = ex.conn
    if name is None and guessed:
        _not_a_session(request)
        route_new(ex, request)
        return
    backend = routing.session_backend(conn.runtime, name)
    if backend is None:
        # Keep the binding: when the backend comes back, its live sessions route again.
        conn.relay.answer_session_not_found()
        return
    ex.bound_backend = backend.name
    ex.dispatch(request, backend)


def _not_a_session(request: Request) -> None:
    """A guessed query session id that is none: route the request as any other."""
    request.session_id = None
    request.session_in_query = False


def _authorize(ex: Exchange, request: Request) -> bool:
    """Edge authentication (``auth:``): True to go on now; else the request was answered
    (401/403, or the Protected Resource Metadata), or waits for the JWKS."""
    conn = ex.conn
    auth = conn.runtime.auth
    assert auth is not None
    outcome = auth.check(request)
    if outcome is None:
        return True
    if isinstance(outcome, KeysPending):
        ex.task = conn.spawn(_authorize_after_keys(ex, request, auth))
    elif isinstance(outcome, Metadata):
        conn.relay.answer_document(*answers.resource_metadata(outcome))
    else:
        auth.log_refusal(conn.client_ip, outcome)
        conn.stats.rejected["unauthorized" if outcome.status == 401 else outcome.code] += 1
        conn.relay.answer(*answers.auth_refusal(outcome))
    return False


async def _authorize_after_keys(ex: Exchange, request: Request, auth: EdgeAuth) -> None:
    await auth.keys_fetched()
    ex.task = None
    if request is not ex.conn.current or ex.conn.state == CLOSED:
        return
    # Checked again with the keys fetched (a kid still unknown is refused: the next fetch
    # may start only after jwks_min_refresh).
    if _authorize(ex, request):
        limit(ex, request)


def _rate_limit(ex: Exchange, request: Request) -> bool:
    """Take a token from the client's bucket: True to route on now; else the request was
    answered 429, or waits for Redis's answer."""
    conn = ex.conn
    limiter = conn.runtime.rate_limiter
    assert limiter is not None
    key = routing.rate_key(conn.runtime, request, conn.client_ip)
    if not isinstance(limiter, MemoryRateLimiter):
        ex.task = conn.spawn(_route_after_rate_limit(ex, request, limiter, key))
        return False
    decision = limiter.take(key, ex.started)
    if not decision.allowed:
        _answer_rate_limited(ex, decision)
    return decision.allowed


async def _route_after_rate_limit(
    ex: Exchange, request: Request, limiter: RedisRateLimiter, key: str
) -> None:
    decision = await limiter.take(key)
    ex.task = None
    if request is not ex.conn.current or ex.conn.state == CLOSED:
        return
    if decision.allowed:
        route(ex, request)
    else:
        _answer_rate_limited(ex, decision)


def _answer_rate_limited(ex: Exchange, decision: RateDecision) -> None:
    rate_limit = ex.conn.runtime.config.rate_limit
    assert rate_limit is not None
    ex.conn.stats.rejected["rate_limited"] += 1
    ex.conn.relay.answer(answers.RATE_LIMITED, rate_limit_headers(rate_limit, decision))
