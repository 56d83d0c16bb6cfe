"""The routing pipeline of one request, in the order it runs:

1. ``start``, as soon as the head is read: every check that needs only the head, before
   any of the body is read or a ``100 Continue`` sent: what the proxy refuses on its own
   (400, 421, 413, 508, 405), edge authentication (401/403) and the rate limit (429). An
   unauthenticated or limited client cannot make the proxy hold a body buffer: it is
   answered at once, and a refused request whose body is still to come closes the
   connection after the answer (lingering, as nginx's discarded body: the client reads
   the answer, and no body byte is ever parsed as a request).
2. ``read_before_routing``: the one place a request waits for its body (up to a bound)
   before it is routed; request_buffer.py decides whether and how much.
3. ``checked``, once that much body is read: the checks that need it (a 2026-07-28 POST's
   routing headers against its body, 400; the per-tool rate rules, 429).
4. ``route``: the request's affinity object (``relay.affinity.Stickiness``) names a
   backend by a key (a session id, through the store or inside a signed id; a sticky
   cookie) and takes the request there; ``route_new`` takes any other request to the
   strategy's pick, else queues it or answers 503.

The decisions are the functions of ``routing.steps``; these functions own the I/O around
them (store and Redis lookups, answers) and end in ``Exchange.dispatch``.

A step that must wait (a Redis lookup, a binding this process does not hold) runs as the
exchange's task and goes on only if the request is still the one being answered; a binding
the process holds routes at once (``SessionStore.known``), as nearly every MCP request's.
While a head check waits, reading from the client pauses (``PAUSE_CHECKING``): no body is
kept for a request not yet let in.
"""

from __future__ import annotations

from mcplb.proxy.auth.edge import EdgeAuth, KeysPending, Metadata
from mcplb.proxy.config.schema import RateLimitConfig
from mcplb.proxy.relay import answers, framing, request_buffer
from mcplb.proxy.relay.affinity import KeyFound, Stickiness
from mcplb.proxy.relay.exchange import Exchange
from mcplb.proxy.relay.request import Request
from mcplb.proxy.relay.states import BUFFERING, PAUSE_BUFFER_FULL, PAUSE_CHECKING, ROUTING
from mcplb.proxy.routing import mcp_era
from mcplb.proxy.routing import steps as routing
from mcplb.proxy.routing.rate_limit import (
    MemoryRateLimiter,
    RateDecision,
    RedisRateLimiter,
    ToolRule,
    rate_limit_headers,
)
from mcplb.proxy.sessions import affinity


def start(ex: Exchange, request: Request) -> None:
    """Check the head (400, 421, 413, 508, 405, 401/403, 429), then read the body the
    request waits for (``read_before_routing``)."""
    ex.request = request
    ex.client.set_state(ROUTING)
    ex.started = ex.loop.time()
    runtime = ex.runtime
    runtime.cluster.retry_budget.record_request(ex.started)
    recorded = ex.peer.access_log
    if recorded is not None and recorded.tracer is not None:  # tracing on (tracing.py)
        request.trace = recorded.tracer.begin(request.headers, ex)
    frontend = runtime.frontend
    max_body = frontend.limits.max_body_bytes
    if request.refusal is not None:
        ex.reject(answers.bad_request(request.refusal))
    elif not frontend.host_policy.allows(request.host):
        # DNS-rebinding protection: a name this listener does not serve never reaches a
        # backend (which, sent its own host:port, could not tell).
        ex.answer(answers.HOST_NOT_SERVED)
    elif max_body and request.content_length is not None and request.content_length > max_body:
        ex.reject(answers.BODY_TOO_LARGE)
    elif framing.loops(request, frontend.via):
        # A backend (configured or discovered) that is this proxy: one round, not a storm.
        ex.answer(answers.LOOP_DETECTED)
    elif request.method == b"CONNECT":
        # A reverse proxy tunnels nowhere: only configured backends are ever reached.
        ex.answer(answers.CONNECT_REFUSED)
    elif frontend.auth is None or _authorize(ex, request, frontend.auth):
        limit(ex, request)


def limit(ex: Exchange, request: Request) -> None:
    """The rate limit (429), then ``read_before_routing``."""
    if ex.runtime.frontend.rate_limiter is None or _rate_limit(ex, request):
        read_before_routing(ex, request)


# -- read before routing ----------------------------------------------------------------
# The one place where a request waits for its body before it is routed, for any of the
# reasons request_buffer.py weighs (limits.request_buffer against slow uploads; a
# 2026-07-28 POST whose routing headers are checked against its body; a tool call the
# per-tool rate rules must name), up to the largest bound among them. Meanwhile the
# request is BUFFERING, its body kept on ``Request.body`` (``Exchange.forward_body``).


def read_before_routing(ex: Exchange, request: Request) -> None:
    """Go on with ``request`` (``checked``) if its body is not to be read first, or is read
    already; else wait for it (the connection calls ``body_read`` for every piece)."""
    frontend = ex.runtime.frontend
    tools = frontend.rate_limit_tools is not None
    bound = request_buffer.buffer_bound(request, frontend.limits)
    if request_buffer.reads_first(request, bound, tools):
        client = ex.client
        request.read_bound = bound
        if not request_buffer.read_enough(request, bound, tools):
            request.buffering = True
            client.set_state(BUFFERING)
            # Kept while queued behind another request (or while a head check waited),
            # its body may have paused reading at Exchange.forward_body's limit: from
            # here the bound above holds it.
            client.resume_reading(PAUSE_BUFFER_FULL)
            _continue(ex, request)
            return
        client.pause_reading(PAUSE_BUFFER_FULL)  # enough came already: as in body_read
    checked(ex, request)


def _continue(ex: Exchange, request: Request) -> None:
    """A client that waits for 100 Continue before it sends the body the proxy waits for:
    the proxy answers it (as nginx does when it reads a body itself) and drops the Expect
    field, so that the backend does not send a second one."""
    headers = request.headers
    for index, (name, value) in enumerate(headers):
        if name == b"expect" and value.lower() == b"100-continue":
            del headers[index]
            if request.version == "1.1" and not request.complete:
                ex.client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return


def body_read(ex: Exchange, request: Request) -> None:
    """More of ``request``'s body was read (or all of it): go on with a request that
    waited for it once enough is read. Reading the rest waits until a backend connection
    takes what was read (``Exchange._attach`` resumes it)."""
    if not request.buffering or not ex.live(request):
        return  # not waiting (or a pipelined request, whose turn has not come)
    tools = ex.runtime.frontend.rate_limit_tools is not None
    if request_buffer.read_enough(request, request.read_bound, tools):
        request.buffering = False
        client = ex.client
        if not request.complete:
            client.pause_reading(PAUSE_BUFFER_FULL)  # resumed when the body is sent on
        client.set_state(ROUTING)
        checked(ex, request)


def checked(ex: Exchange, request: Request) -> None:
    """The checks that need the body: a 2026-07-28 POST whose routing headers lie is
    answered 400 HeaderMismatch (counted; nothing reaches a backend); a tool call past its
    per-tool rate rule 429. Then ``route``."""
    verdict = request.verdict
    if verdict is not None and verdict.refusal is not None:
        ex.runtime.stats.mcp_header_mismatches[verdict.reason] += 1
        ex.answer_json(400, mcp_era.mismatch_body(verdict))
    elif request.tool is None or _limit_tool(ex, request):
        route(ex, request)


def route(ex: Exchange, request: Request) -> None:
    """A request whose affinity key (a session id, a task id, a cookie) names a backend
    goes there; else ``route_new``."""
    # (find, not "in": bytes.__contains__ first tries its argument as an int, and building
    # that TypeError costs more than the search.)
    if request.target.find(b"?") >= 0 and affinity.repeated_session_parameter(request.target):
        # A router reading the first and a backend reading the last would disagree.
        ex.answer(answers.REPEATED_QUERY_SESSION)
        return
    keys = ex.runtime.affinity
    if not keys.kinds:  # no affinity configured: nothing to ask, nothing to learn
        route_new(ex, request)
        return
    sticky = ex.sticky = Stickiness(keys, request)
    found = sticky.route_key()
    if found is None:
        route_new(ex, request)  # (route_key's first case, inline: most requests)
    else:
        route_key(ex, request, found)


def route_key(ex: Exchange, request: Request, found: KeyFound | None) -> None:
    """Route by the key ``found`` (None: the request carries none)."""
    if found is None:
        route_new(ex, request)
    elif found.pending is not None:
        ex.task = ex.spawn(_route_after_lookup(ex, request, found))
    else:
        _route_found(ex, request, found)


def route_new(ex: Exchange, request: Request) -> None:
    """A request that names no backend by a key: the strategy's pick, else wait or 503."""
    backend = ex.pick(request)
    if backend is not None:
        ex.dispatch(request, backend)
        return
    cluster = ex.runtime.cluster
    admission = cluster.admission
    backends = cluster.backends.backends
    if request.wants_stream and any(b.available and admission.streams_full(b) for b in backends):
        ex.too_many_streams()  # the backends that are up are at their stream cap
    elif admission.any_full(backends):
        ex.wait_for_slot(None)
    else:
        ex.answer(answers.NO_BACKEND)


async def _route_after_lookup(ex: Exchange, request: Request, found: KeyFound) -> None:
    """A key this process does not hold: the store's answer (e.g. Redis) names the backend."""
    assert found.pending is not None
    found.name = await found.pending
    found.pending = None
    ex.task = None
    if not ex.live(request):
        return
    _route_found(ex, request, found)


def _route_found(ex: Exchange, request: Request, found: KeyFound) -> None:
    """Route to the backend ``found`` names (``found.name`` None: no binding)."""
    cluster = ex.runtime.cluster
    if found.name is None and found.guessed:
        # A guessed key that is none: route the request as any other.
        found.kind.not_a_key(request)
        assert ex.sticky is not None
        route_key(ex, request, ex.sticky.route_key(after=found))
        return
    if not found.strict:
        backend = routing.preferred_backend(cluster, found.name)
        if backend is None:
            route_key(ex, request, _next_key(ex, found))
        else:
            ex.dispatch(request, backend)
        return
    backend = routing.session_backend(cluster, found.name)
    if backend is None:
        if found.guessed:
            # A key that may have outlived its state (a task whose holder is down): routed
            # as any other request; that server answers (never an error made up here).
            route_key(ex, request, _next_key(ex, found))
            return
        # Keep the binding: when the backend comes back, its live sessions route again.
        ex.answer_key_not_found(found)
        return
    ex.bound_backend = backend.name
    ex.dispatch(request, backend)


def _next_key(ex: Exchange, found: KeyFound) -> KeyFound | None:
    assert ex.sticky is not None
    return ex.sticky.route_key(after=found)


def _hold_body(ex: Exchange, request: Request) -> None:
    """A head check waits (the JWKS, Redis): read none of a body meanwhile (what came in
    the same read as the head is kept, at most one read). Resumed when the check ends."""
    if request.chunked or request.content_length:
        ex.client.pause_reading(PAUSE_CHECKING)


def _authorize(ex: Exchange, request: Request, auth: EdgeAuth) -> bool:
    """Edge authentication (``auth:``): True to go on now; else the request was answered
    (401/403, or the Protected Resource Metadata), or waits for the JWKS."""
    outcome = auth.check(request)
    if outcome is None:
        return True
    if isinstance(outcome, KeysPending):
        _hold_body(ex, request)
        ex.task = ex.spawn(_authorize_after_keys(ex, request, auth))
    elif isinstance(outcome, Metadata):
        ex.answer_json(*answers.resource_metadata(outcome))
    else:
        auth.log_refusal(ex.peer.ip, outcome)
        stats = ex.runtime.stats
        stats.rejected["unauthorized" if outcome.status == 401 else outcome.code] += 1
        ex.answer(*answers.auth_refusal(outcome))
    return False


async def _authorize_after_keys(ex: Exchange, request: Request, auth: EdgeAuth) -> None:
    try:
        await auth.keys_fetched()
    finally:
        ex.client.resume_reading(PAUSE_CHECKING)
    ex.task = None
    if not ex.live(request):
        return
    # Checked again with the keys fetched (a kid still unknown is refused: the next fetch
    # may start only after jwks_min_refresh).
    if _authorize(ex, request, auth):
        limit(ex, request)


def _rate_limit(ex: Exchange, request: Request) -> bool:
    """Take a token from the client's bucket: True to go on now; else the request was
    answered 429, or waits for Redis's answer."""
    frontend = ex.runtime.frontend
    limiter = frontend.rate_limiter
    assert limiter is not None
    key = routing.rate_key(frontend, request, ex.peer.ip)
    if not isinstance(limiter, MemoryRateLimiter):
        _hold_body(ex, request)
        ex.task = ex.spawn(_after_rate_limit(ex, request, limiter, key))
        return False
    decision = limiter.take(key, ex.started)
    if not decision.allowed:
        _answer_rate_limited(ex, decision)
    return decision.allowed


async def _after_rate_limit(
    ex: Exchange, request: Request, limiter: RedisRateLimiter, key: str
) -> None:
    try:
        decision = await limiter.take(key)
    finally:
        ex.client.resume_reading(PAUSE_CHECKING)
    ex.task = None
    if not ex.live(request):
        return
    if decision.allowed:
        read_before_routing(ex, request)
    else:
        _answer_rate_limited(ex, decision)


def _answer_rate_limited(
    ex: Exchange, decision: RateDecision, rule: ToolRule | None = None
) -> None:
    """429 with the RateLimit fields of the main bucket, or of the per-tool ``rule``."""
    stats = ex.runtime.stats
    stats.rejected["rate_limited"] += 1
    bucket: RateLimitConfig | ToolRule | None = rule
    if rule is None:
        bucket = ex.runtime.frontend.rate_limit
    else:
        stats.tool_rate_limited[rule.name] += 1  # the config's name: a bounded label
    assert bucket is not None
    ex.answer(answers.RATE_LIMITED, rate_limit_headers(bucket, decision))


# -- per-tool rate rules (rate_limit.tools) -------------------------------------------


def _limit_tool(ex: Exchange, request: Request) -> bool:
    """Take a token from the client's bucket of each per-tool rule the call falls under
    (``ToolRules.applying``): True to route on now; else answered 429, or waiting for
    Redis."""
    frontend = ex.runtime.frontend
    tools = frontend.rate_limit_tools
    if tools is None:
        return True  # no rules configured (the tool was noted all the same)
    assert request.tool is not None
    rules = tools.applying(request.tool)
    if not rules:
        return True
    key = routing.rate_key(frontend, request, ex.peer.ip)
    limiter = frontend.rate_limiter
    if not isinstance(limiter, MemoryRateLimiter):
        assert limiter is not None
        ex.task = ex.spawn(_route_after_tool_limit(ex, request, limiter, rules, key))
        return False
    for rule in rules:
        decision = limiter.take(rule.bucket(key), ex.started, rule.rate, rule.burst)
        if not decision.allowed:
            _answer_rate_limited(ex, decision, rule)
            return False
    return True


async def _route_after_tool_limit(
    ex: Exchange,
    request: Request,
    limiter: RedisRateLimiter,
    rules: tuple[ToolRule, ...],
    key: str,
) -> None:
    for rule in rules:
        decision = await limiter.take(rule.bucket(key), rule.rate, rule.burst)
        if not ex.live(request):
            ex.task = None
            return
        if not decision.allowed:
            ex.task = None
            _answer_rate_limited(ex, decision, rule)
            return
    ex.task = None
    route(ex, request)
