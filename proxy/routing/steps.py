"""Where a request goes: the routing steps, in the order the relay takes them.

1. A session id (header, or a legacy SSE query parameter) names its backend: through the
   session store, or inside a signed id (``session_backend``).
2. Else a sticky cookie may pin a backend (``pinned``).
3. Else the strategy picks among the backends that can take the request (``pick``), and
   with ``panic: fail_open`` an all-down pool is used anyway.

Before them, the rate limit counts the request in its client's bucket (``rate_key``).

Each step is a function of the runtime state and the request; the relay owns the I/O (the
store lookup, the answer when a step finds nothing).
"""

from __future__ import annotations

from collections.abc import Set
from typing import TYPE_CHECKING

from mcplb.strategies.base import NO_FACTS, RequestFacts

if TYPE_CHECKING:
    from mcplb.proxy.cluster.backends import Backend
    from mcplb.proxy.cluster.cluster import Cluster
    from mcplb.proxy.relay.request import Request
    from mcplb.proxy.server.runtime import Runtime


def session_backend(cluster: Cluster, name: str | None) -> Backend | None:
    """The backend a session is bound to, if it may serve the session now: known, not
    refusing sessions (down), and not past the end of its drain."""
    backend = cluster.backends.get(name) if name is not None else None
    if backend is None or cluster.health.refuses_sessions(backend) or backend.drain_over():
        return None
    return backend


def preferred_backend(cluster: Cluster, name: str | None) -> Backend | None:
    """The backend a preference (a sticky cookie) names, if it can take the request."""
    backend = cluster.backends.get(name) if name is not None else None
    return backend if backend is not None and backend.available else None


def pick(runtime: Runtime, request: Request, client_ip: str, attempted: Set[str]) -> Backend | None:
    """The strategy's pick among the backends that can take ``request`` and were not
    ``attempted`` already; with panic fail_open, the least busy of all when none is up."""
    cluster = runtime.cluster
    candidates = cluster.candidates
    admission = cluster.admission
    if attempted or admission.per_backend:
        # A stream takes a stream slot, not a request slot: full request slots don't matter.
        full = admission.streams_full if request.wants_stream else admission.backend_full
        candidates = [b for b in candidates if b.name not in attempted and not full(b)]
    strategy = cluster.strategy
    header_hash = runtime.header_hash
    if header_hash is not None and header_hash.applies(request.headers):
        strategy = header_hash.strategy
    elif not strategy.uses_request:
        backend = strategy.pick(candidates, NO_FACTS)
        return backend if backend is not None else panic_pick(runtime, candidates)
    facts = RequestFacts(
        client_ip,
        request.method.decode("ascii", "replace"),
        request.target.decode("latin-1"),
        request.headers,
        request.session_id,
    )
    backend = strategy.pick(candidates, facts)
    return backend if backend is not None else panic_pick(runtime, candidates)


def panic_pick(runtime: Runtime, candidates: list[Backend]) -> Backend | None:
    """With panic: fail_open and every backend down, spread over all of them anyway."""
    if not runtime.cluster.health.panic_open():
        return None
    weighted = [b for b in candidates if b.base_weight > 0]
    return min(weighted, key=lambda b: b.in_flight, default=None)


def rate_key(runtime: Runtime, request: Request, client_ip: str) -> str:
    """The client's rate-limit bucket: the configured header's value, else its address
    (the forwarded client's, behind trusted proxies)."""
    rate_limit = runtime.config.rate_limit
    header = None if rate_limit is None else rate_limit.header
    if header is not None:
        wanted = header.encode("latin-1")
        for name, value in request.headers:
            if name == wanted:
                return "h:" + value.decode("latin-1")
    forwarded = runtime.rate_limit_client
    if forwarded is not None:
        return "a:" + forwarded.client(client_ip, request.headers)
    return "a:" + client_ip
