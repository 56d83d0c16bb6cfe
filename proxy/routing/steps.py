"""Where a request goes: the routing steps, in the order the relay takes them.

1. A session id (header, or a legacy SSE query parameter) names its backend: through the
   session store, or inside a signed id; it may serve the session if ``session_backend``
   says so.
2. Else a sticky cookie may name a backend (``preferred_backend``: if it is available).
3. Else the strategy picks among the backends that can take the request (``pick``), and
   with ``panic: fail_open`` an all-down pool is used anyway. An MCP request that opens
   no session is kept off the backends the MCP probe found to speak only the other era
   (``era_candidates``).

Before them, the rate limit counts the request in its client's bucket (``rate_key``).

Each step is a function of the pieces it reads (the cluster, the frontend) and the
request; the relay owns the I/O (the store lookup, the answer when a step finds nothing)
and the affinity keys (``relay.affinity``).
"""

from __future__ import annotations

from collections.abc import Set
from typing import Protocol

from mcplb.healthcheck.probes import LEGACY, MODERN
from mcplb.proxy.cluster.backends import Backend
from mcplb.proxy.cluster.cluster import Cluster
from mcplb.proxy.config.checks import RATE_KEY_PRINCIPAL
from mcplb.proxy.routing.frontend import Frontend
from mcplb.proxy.routing.mcp_era import Verdict
from mcplb.proxy.sessions.affinity import HeaderAffinity
from mcplb.strategies.base import NO_FACTS, RequestFacts


class RoutedRequest(Protocol):
    """What the steps read of a request (the relay's ``Request`` has it)."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    session_id: str | None
    wants_stream: bool
    principal: str | None  # auth: the token's "iss sub", once verified
    verdict: Verdict | None  # a 2026-07-28 request's, once its body was judged


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


def pick(
    cluster: Cluster,
    header_hash: HeaderAffinity | None,
    request: RoutedRequest,
    client_ip: str,
    attempted: Set[str],
) -> Backend | None:
    """The strategy's pick among the backends that can take ``request`` and were not
    ``attempted`` already; with panic fail_open, the least busy of all when none is up."""
    candidates = cluster.candidates
    known = cluster.health.mcp_eras
    if known:
        era = request_era(request)
        if era is not None:
            candidates = _ERA_LISTS.of(candidates, known, era)
    admission = cluster.admission
    if attempted or admission.per_backend:
        # A request for a stream takes a request slot until its answer is a stream, and
        # is refused where streams are full.
        streams = request.wants_stream
        candidates = [
            b
            for b in candidates
            if b.name not in attempted
            and not admission.backend_full(b)
            and not (streams and admission.streams_full(b))
        ]
    strategy = cluster.strategy
    if header_hash is not None and header_hash.applies(request.headers):
        strategy = header_hash.strategy
    elif not strategy.uses_request:
        backend = strategy.pick(candidates, NO_FACTS)
        return backend if backend is not None else panic_pick(cluster, candidates)
    facts = RequestFacts(
        client_ip,
        request.method.decode("ascii", "replace"),
        request.target.decode("latin-1"),
        request.headers,
        request.session_id,
    )
    backend = strategy.pick(candidates, facts)
    return backend if backend is not None else panic_pick(cluster, candidates)


def request_era(request: RoutedRequest) -> str | None:
    """The era a request that names no backend speaks, for ``era_candidates``: modern for a
    2026-07-28 request (judged by its body: ``verdict``); legacy for a POST, or a GET for
    a stream, with no session id (a 2025 ``initialize``, a stateless 2025 call, an HTTP+SSE
    stream); None for the rest (a request of a session goes where the session is)."""
    verdict = request.verdict
    if verdict is not None:
        return MODERN if verdict.modern else None
    if request.session_id is None and (request.method == b"POST" or request.wants_stream):
        return LEGACY
    return None


class _EraLists:
    """The candidates fit for each era (``era_candidates``), kept while the candidate list
    and the era map are the objects they were made from: a strategy that keeps an index
    for a list it gets again (round_robin) keeps it, and a pick costs no scan."""

    __slots__ = ("known", "lists", "source")

    def __init__(self) -> None:
        self.source: list[Backend] | None = None
        self.known: dict[str, str] | None = None
        self.lists: dict[str, list[Backend]] = {}

    def of(self, candidates: list[Backend], known: dict[str, str], era: str) -> list[Backend]:
        if candidates is not self.source or known is not self.known:
            self.source, self.known, self.lists = candidates, known, {}
        found = self.lists.get(era)
        if found is None:
            found = self.lists[era] = era_candidates(candidates, known, era)
        return found


_ERA_LISTS = _EraLists()


def era_candidates(candidates: list[Backend], known: dict[str, str], era: str) -> list[Backend]:
    """The candidates that may serve a request of ``era``: all but those ``known`` to speak
    only the other era (a modern request on a 2025-only server, or a 2025 ``initialize``
    on a 2026-only one, fails in a way the client cannot recover from: basic/versioning.mdx,
    "Compatibility Matrix"). When none is left, all of them: the request goes where it
    would have gone, and the client sees the server's own answer (a dual-era client falls
    back to the other era on it)."""
    fit = [b for b in candidates if known.get(b.name, era) == era]
    return fit if fit else candidates


def panic_pick(cluster: Cluster, candidates: list[Backend]) -> Backend | None:
    """With panic: fail_open and every backend down, spread over all of them anyway."""
    if not cluster.health.panic_open():
        return None
    weighted = [b for b in candidates if b.base_weight > 0]
    return min(weighted, key=lambda b: b.in_flight, default=None)


def rate_key(frontend: Frontend, request: RoutedRequest, client_ip: str) -> str:
    """The client's rate-limit bucket: the configured header's value, or the principal
    (``key: principal``), else its address (the forwarded client's, behind trusted
    proxies)."""
    rate_limit = frontend.rate_limit
    header = None if rate_limit is None else rate_limit.header
    if header == RATE_KEY_PRINCIPAL:
        # The token's issuer and subject (auth:); the address for requests without one.
        if request.principal is not None:
            return "p:" + request.principal
    elif header is not None:
        wanted = header.encode("latin-1")
        for name, value in request.headers:
            if name == wanted:
                return "h:" + value.decode("latin-1")
    forwarded = frontend.rate_limit_client
    if forwarded is not None:
        return "a:" + forwarded.client(client_ip, request.headers)
    return "a:" + client_ip
