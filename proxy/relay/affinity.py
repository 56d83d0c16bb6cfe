"""Session affinity as one object per request, in Envoy's stateful-session shape.

``Affinity`` is built once per config (``build_affinity``): the kinds of affinity key the
proxy routes by, each chosen at load time in the variant the config asks for (MCP session
ids bound in a store, memory or Redis, or signed into the ids; the sticky cookie). The relay
takes one ``Stickiness`` per request from it (``Stickiness(affinity, request)``) and asks that
object, and nothing else, about affinity:

- ``route_key``: where the request's key says it must go (a ``KeyFound``);
- ``on_head``, ``on_body``, ``on_complete``: what the response teaches (a minted session
  id, a legacy SSE endpoint event, a DELETE or 404 that ends a session) and how its head
  and body must read toward the client;
- ``on_end``: what the end of the exchange changes (a legacy stream's session ends with it);
- ``backend_lost``: the bound backend could not be reached (its keys died with it).

Store updates are returned as jobs (coroutines), not run: the relay holds the answer until
a job has landed, so that a client never uses a key the store does not know yet.

Adding a key kind
-----------------
Write a subclass of ``KeyKind`` (its methods) and add an instance to the tuple
``build_affinity`` returns; the relay needs no new branch. ``McpTasks`` (MCP 2026-07-28 task
ids, SEP-2663) is one: ``route_key`` reads the task id of the request's verdict (its body's,
checked against ``Mcp-Name`` before routing: route.read_before_routing) and returns a
``guessed`` key (an unknown task, or one whose holder is down, routes as any other request);
``on_head`` returns a ``Learner`` for a tools/call's JSON or SSE answer, whose ``flush``
binds a created task to its backend with the TTL from its ``ttlMs``.

Bound to the principal
----------------------
With edge auth on (``auth:``), every session and task binding belongs to the principal
(``request.principal``, the token's "iss sub") whose request made it: the stores key it by
a digest of the principal (``PrincipalScope``: ``<digest>:<id>``, the spec's
``<user_id>:<session_id>``), signed ids carry the digest in their signed payload. An id
presented with another principal's token is then answered exactly as an unknown one: 404
Session not found for a session; for a task, the JSON-RPC error SEP-2663 gives a
nonexistent task (-32602), which the proxy answers itself for every task id this principal
has not bound (with auth on a task key is strict: a guess could reach the holder, which
knows no principal). Signed ids that open but belong to no one or to another are counted
by reason (``Stats.binding_refused``); a store cannot tell a foreign id from an unknown one,
by design. A request without a principal (a CORS preflight passes auth without a token)
uses no binding: it is routed as any other. With auth off the kinds hold no scope and
nothing changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from functools import partial
from typing import Any, Protocol

from mcplb.proxy.cluster.cluster import Cluster
from mcplb.proxy.config.schema import AuthConfig, CookieConfig, StickyConfig
from mcplb.proxy.observability.stats import Stats
from mcplb.proxy.relay import answers
from mcplb.proxy.relay.framing import SESSION_HEADER, ResponseHead
from mcplb.proxy.relay.request import Request
from mcplb.proxy.routing import mcp_tasks
from mcplb.proxy.sessions import affinity as sans_io
from mcplb.proxy.sessions import principal as principals
from mcplb.proxy.sessions.principal import PrincipalScope
from mcplb.proxy.sessions.store import SessionStore
from mcplb.proxy.sessions.tokens import PURPOSE_COOKIE, PURPOSE_SESSION, TokenCodec

log = logging.getLogger("mcplb.relay")

Job = Coroutine[Any, Any, None]


class KeyFound:
    """Where a request's key says it must go: ``name`` (a backend name), or ``pending``, a
    lookup whose result is the name (None: no binding). ``strict``: the request must go
    there or be answered ``kind.not_found`` (a session, a task); else it is a preference (a
    cookie) and the request is routed as any other when the backend cannot take it.
    ``guessed``: the key may not be one at all (a legacy query parameter of an unknown
    name): a miss routes the request as any other, after ``kind.not_a_key``."""

    __slots__ = ("guessed", "kind", "name", "pending", "strict")

    def __init__(
        self,
        kind: KeyKind,
        name: str | None = None,
        pending: Coroutine[Any, Any, str | None] | None = None,
        *,
        strict: bool = True,
        guessed: bool = False,
    ) -> None:
        self.kind = kind
        self.name = name
        self.pending = pending
        self.strict = strict
        self.guessed = guessed


class Learner(Protocol):
    """What a key kind learns from one response body (a legacy endpoint event; task ids)."""

    done: bool  # nothing more to see in the body: the relay stops feeding it

    def feed(self, data: bytes) -> tuple[bytes, Job | None]:
        """A body chunk: the bytes that may go to the client now (possibly rewritten, or
        none while it holds them) and a store update to hold the answer for."""

    def flush(self) -> tuple[bytes, Job | None]:
        """The body ended: the bytes still held, and a store update."""

    def end(self) -> Job | None:
        """The exchange ended (the body's end, or cut short): what that changes."""


class KeyKind:
    """One kind of affinity key: what the proxy reads of it in requests and learns of it
    from responses. Methods run on every request and response: the common case (no key of
    this kind) must return at once.

    A base class the kinds subclass, not a ``Protocol``: compiled (setup.py), the relay's
    calls on a kind are native calls, where through a protocol each was a method lookup
    by name (issue 27)."""

    def route_key(self, request: Request) -> KeyFound | None:
        """Where ``request``'s key of this kind says it must go; None: it has none."""
        raise NotImplementedError

    def not_a_key(self, request: Request) -> None:
        """A guessed key (``KeyFound.guessed``) turned out to be none: forget it."""
        raise NotImplementedError

    def not_found(self, request: Request, close: bool) -> tuple[int, bytes]:
        """The status and whole answer for a strict key whose backend is unknown or cannot
        serve it."""
        raise NotImplementedError

    def backend_lost(self, request: Request, found: KeyFound) -> Job | None:
        """The backend the key routed to could not be reached: its keys died with it."""
        raise NotImplementedError

    def on_head(
        self,
        request: Request,
        found: KeyFound | None,
        status: int,
        head: ResponseHead,
        backend: str,
        wire: list[bytes] | None,
    ) -> tuple[list[bytes] | None, Job | None, Learner | None]:
        """A final response head from ``backend``: its fields in wire form as the client
        must see them (``wire``: as earlier kinds left them, None: the backend's; return
        None to leave them), a store update to hold the answer for, and a body learner."""
        raise NotImplementedError


class SessionCounts:
    """The MCP sessions each backend holds, as this process knows them (for
    least_sessions and the metrics); one writer, shared by the stores' expiry."""

    def __init__(self, cluster: Cluster, stats: Stats) -> None:
        self.cluster = cluster
        self.stats = stats

    def bound(self, backend_name: str) -> None:
        backend = self.cluster.backends.get(backend_name)
        if backend is not None:
            backend.sessions += 1
            self.stats.backends[backend_name].sessions_created += 1
            if self.cluster.strategy.tracks_load:
                self.cluster.strategy.load_changed(backend)

    def ended(self, backend_name: str) -> None:
        backend = self.cluster.backends.get(backend_name)
        if backend is not None and backend.sessions > 0:
            backend.sessions -= 1
            self.stats.backends[backend_name].sessions_ended += 1
            if self.cluster.strategy.tracks_load:
                self.cluster.strategy.load_changed(backend)

    def expired(self, session_id: str, backend_name: str) -> None:
        """A store's ``on_expire``."""
        self.ended(backend_name)


class Stickiness:
    """The affinity of one request: the key it was routed by, and what its answer taught.
    The relay's one handle on affinity (Envoy's per-request ``SessionState``)."""

    __slots__ = ("affinity", "found", "learner", "request")

    def __init__(self, affinity: Affinity, request: Request) -> None:
        self.affinity = affinity
        self.request = request
        self.found: KeyFound | None = None  # the key the request was routed by
        self.learner: Learner | None = None

    def route_key(self, after: KeyFound | None = None) -> KeyFound | None:
        """The first key the request carries (of the kinds after ``after``'s)."""
        kinds = self.affinity.kinds
        if after is not None:
            kinds = kinds[kinds.index(after.kind) + 1 :]
        request = self.request
        for kind in kinds:
            found = kind.route_key(request)
            if found is not None:
                self.found = found
                return found
        self.found = None
        return None

    def on_head(
        self, status: int, head: ResponseHead, backend: str
    ) -> tuple[list[bytes] | None, Job | None]:
        """The fields the client must see (None: the backend's) and a job to hold for."""
        wire: list[bytes] | None = None
        held: Job | None = None
        for kind in self.affinity.kinds:
            wire, job, learner = kind.on_head(self.request, self.found, status, head, backend, wire)
            if job is not None:
                held = job if held is None else _both(held, job)
            if learner is not None:
                self.learner = learner if self.learner is None else _Learners(self.learner, learner)
        return wire, held

    def on_body(self, data: bytes) -> tuple[bytes, Job | None]:
        learner = self.learner
        if learner is None or learner.done:
            return data, None
        return learner.feed(data)

    def on_complete(self) -> tuple[bytes, Job | None]:
        learner = self.learner
        if learner is None or learner.done:
            return b"", None
        return learner.flush()

    def on_end(self) -> Job | None:
        learner, self.learner = self.learner, None
        return None if learner is None else learner.end()

    def backend_lost(self, request: Request) -> Job | None:
        found = self.found
        return None if found is None else found.kind.backend_lost(request, found)


class Affinity:
    """The key kinds of one config, in the order a request's keys are tried."""

    def __init__(
        self,
        kinds: tuple[KeyKind, ...],
        session_header: bool,
        header_hash: sans_io.HeaderAffinity | None = None,
    ) -> None:
        self.kinds = kinds
        # Whether the parser keeps a request's Mcp-Session-Id (sticky.mcp_sessions).
        self.session_header = session_header
        # sticky.header: the strategy the pick uses for requests carrying the header.
        self.header_hash = header_hash


def build_affinity(
    sticky: StickyConfig,
    store: SessionStore,
    counts: SessionCounts,
    tasks: SessionStore | None = None,
    auth: AuthConfig | None = None,
) -> Affinity:
    """The kinds the config asks for, each in its variant: chosen here, once. ``tasks``:
    where MCP task bindings live (sticky.mcp_tasks); ``auth``: with edge auth on, bindings
    belong to the principal that made them."""
    kinds: list[KeyKind] = []
    # The stores' scope with auth on: a memory store is this process's alone (its own
    # key); Redis, and the task bindings of store: signed (the workers of a host share
    # them), are shared (a key from sticky.keys).
    scope: PrincipalScope | None = None
    if auth is not None:
        shared = sticky.store != "memory"
        scope = PrincipalScope(
            principals.shared_key(sticky.keys) if shared else principals.PROCESS_KEY
        )
    if sticky.mcp_sessions:
        if sticky.store == "signed":
            # Signed ids name their backend: no table to consult.
            codec = TokenCodec(sticky.keys, PURPOSE_SESSION)
            kinds.append(SignedSessions(codec, counts, bound=auth is not None))
        else:
            kinds.append(StoredSessions(store, counts, scope))
    if tasks is not None:
        # Before the cookie (a must, not a preference); a tasks/* request is a 2026-07-28
        # one, which the session kinds pass by.
        kinds.append(McpTasks(tasks, sticky.task_ttl_max, scope, counts.stats))
    if sticky.cookie is not None:
        kinds.append(CookiePin(TokenCodec(sticky.keys, PURPOSE_COOKIE), sticky.cookie))
    header_hash = sans_io.HeaderAffinity(sticky.header) if sticky.header else None
    return Affinity(tuple(kinds), sticky.mcp_sessions, header_hash)


async def _both(first: Job, second: Job) -> None:
    await asyncio.gather(first, second)


class _Learners:
    """Two kinds learning from the same body, one after the other."""

    def __init__(self, first: Learner, second: Learner) -> None:
        self.first = first
        self.second = second
        self.done = False

    def feed(self, data: bytes) -> tuple[bytes, Job | None]:
        data, one = self.first.feed(data) if not self.first.done else (data, None)
        data, two = self.second.feed(data) if not self.second.done else (data, None)
        self.done = self.first.done and self.second.done
        return data, _either(one, two)

    def flush(self) -> tuple[bytes, Job | None]:
        rest, one = self.first.flush() if not self.first.done else (b"", None)
        if rest and not self.second.done:
            rest, two = self.second.feed(rest)
        else:
            two = None
        more, three = self.second.flush() if not self.second.done else (b"", None)
        self.done = True
        return rest + more, _either(_either(one, two), three)

    def end(self) -> Job | None:
        return _either(self.first.end(), self.second.end())


def found_in(store: SessionStore, key: str, kind: KeyKind, *, guessed: bool) -> KeyFound:
    """``key`` looked up in ``store`` (sessions and tasks alike): a binding this process
    holds routes at once, as nearly every MCP request's; else the store's lookup (Redis, a
    host's shared file) is the pending answer."""
    name = store.known(key)
    if name is not None:
        return KeyFound(kind, name, guessed=guessed)
    return KeyFound(kind, pending=store.get(key), guessed=guessed)


def _either(one: Job | None, two: Job | None) -> Job | None:
    if one is None:
        return two
    return one if two is None else _both(one, two)


# -- MCP session ids ----------------------------------------------------------------------


class _Sessions(KeyKind):
    """What both variants of session ids share: where a request names its session (the
    Mcp-Session-Id header, or a legacy SSE query parameter), and when a response ends one."""

    counts: SessionCounts

    def route_key(self, request: Request) -> KeyFound | None:
        if request.mcp is not None:
            # MCP 2026-07-28 has no sessions: a stray Mcp-Session-Id is ignored (the spec:
            # "ignore it, and do not mint or echo session IDs"), never answered 404 here.
            return None
        guessed = False
        if request.session_id is None:
            if request.target.find(b"?") < 0:
                return None
            # Legacy SSE: the session is in the query, under whatever key the server chose.
            found = sans_io.query_session(request.target)
            if found is None:
                return None
            request.session_id, named = found
            request.session_in_query = True
            guessed = not named
        return self._lookup(request, request.session_id, guessed)

    def _lookup(self, request: Request, session_id: str, guessed: bool) -> KeyFound | None:
        raise NotImplementedError

    def _unknown(self, request: Request, guessed: bool, reason: str) -> KeyFound | None:
        """An id this request's principal may not use (auth on), counted by ``reason``:
        answered as an unknown one (a guessed key: none at all). A request without a
        principal (only a CORS preflight passes auth without a token; a browser sends
        the legacy transport's ``?session_id=`` in its URL) uses no key: routed as any
        other, it can neither reach nor learn a binding."""
        self.counts.stats.binding_refused["session " + reason] += 1
        if guessed or reason == "anonymous":
            self.not_a_key(request)
            return None
        return KeyFound(self)

    def not_a_key(self, request: Request) -> None:
        request.session_id = None
        request.session_in_query = False

    def backend_lost(self, request: Request, found: KeyFound) -> Job | None:
        raise NotImplementedError

    def not_found(self, request: Request, close: bool) -> tuple[int, bytes]:
        return 404, answers.session_not_found(close=close)

    def on_head(
        self,
        request: Request,
        found: KeyFound | None,
        status: int,
        head: ResponseHead,
        backend: str,
        wire: list[bytes] | None,
    ) -> tuple[list[bytes] | None, Job | None, Learner | None]:
        if request.mcp is not None:
            return wire, None, None  # a 2026-07-28 request: no session is bound for it
        job = None
        if head.session_id is not None:
            wire, job = self._session_header(
                request, head.session_id.decode("latin-1"), status, backend, wire, head
            )
        if request.session_id is None:
            if (
                head.session_id is None
                and request.method == b"GET"
                and head.content_type.startswith(b"text/event-stream")
            ):
                return wire, job, self._endpoint_learner(request, backend)
        elif status == 404 or (request.method == b"DELETE" and 200 <= status < 300):
            # The backend ended (DELETE) or does not know (404) the session.
            ended = self._ended(request, found)
            job = ended if job is None else _both(job, ended) if ended is not None else job
        return wire, job, None

    def _session_header(
        self,
        request: Request,
        session_id: str,
        status: int,
        backend: str,
        wire: list[bytes] | None,
        head: ResponseHead,
    ) -> tuple[list[bytes] | None, Job | None]:
        raise NotImplementedError

    def _ended(self, request: Request, found: KeyFound | None) -> Job | None:
        raise NotImplementedError

    def _endpoint_learner(self, request: Request, backend: str) -> Learner | None:
        raise NotImplementedError


class StoredSessions(_Sessions):
    """Session ids as the backends mint them, bound in a store (memory or Redis); with
    ``scope`` (edge auth on), under a key of the principal's (``PrincipalScope``)."""

    def __init__(
        self, store: SessionStore, counts: SessionCounts, scope: PrincipalScope | None = None
    ) -> None:
        self.store = store
        self.counts = counts
        self.scope = scope

    def _key(self, request: Request, session_id: str) -> str | None:
        """The store key of ``session_id`` for this request (None: auth on, no principal)."""
        scope = self.scope
        return session_id if scope is None else scope.key(request.principal, session_id)

    def _lookup(self, request: Request, session_id: str, guessed: bool) -> KeyFound | None:
        scope = self.scope
        key = session_id if scope is None else scope.key(request.principal, session_id)
        if key is None:
            return self._unknown(request, guessed, "anonymous")
        return found_in(self.store, key, self, guessed=guessed)

    def backend_lost(self, request: Request, found: KeyFound) -> Job | None:
        # Its sessions died with it; the client must initialize elsewhere.
        key = None if request.session_id is None else self._key(request, request.session_id)
        return None if key is None else self.forget(key)

    def _session_header(
        self,
        request: Request,
        session_id: str,
        status: int,
        backend: str,
        wire: list[bytes] | None,
        head: ResponseHead,
    ) -> tuple[list[bytes] | None, Job | None]:
        """The backend's own id goes to the client; a new one is bound first."""
        if not 200 <= status < 300:
            return wire, None
        if request.session_id is None or (
            session_id != request.session_id and request.method != b"DELETE"
        ):
            # New, or the backend replaced the session with a new one: bind that one too.
            key = self._key(request, session_id)
            return wire, None if key is None else self.bind(key, backend)
        return wire, None

    def _ended(self, request: Request, found: KeyFound | None) -> Job | None:
        assert request.session_id is not None
        key = self._key(request, request.session_id)
        return None if key is None else self.forget(key)

    def _endpoint_learner(self, request: Request, backend: str) -> Learner | None:
        scope = self.scope
        prefix = "" if scope is None else None
        if scope is not None and request.principal is not None:
            prefix = scope.prefix(request.principal)
        if prefix is None:
            return None  # auth on, no principal: nothing is bound for it
        return EndpointLearner(sans_io.EndpointScanner(None), self, backend, prefix)

    def legacy_learned(self, key: str, backend: str) -> Job | None:
        return self.bind(key, backend)

    async def bind(self, key: str, backend: str) -> None:
        previous = await self.store.bind(key, backend)
        if previous is not None:
            self.counts.ended(previous)
        self.counts.bound(backend)

    async def forget(self, key: str) -> None:
        name = await self.store.forget(key)
        if name is not None:
            self.counts.ended(name)


class SignedSessions(_Sessions):
    """Session ids signed with the backend's name in them: no table, the id routes itself.
    ``bound`` (edge auth on): each id is sealed with its principal's digest, and opens only
    for that principal."""

    def __init__(self, codec: TokenCodec, counts: SessionCounts, *, bound: bool = False) -> None:
        self.codec = codec
        self.counts = counts
        self.bound = bound

    def _lookup(self, request: Request, session_id: str, guessed: bool) -> KeyFound | None:
        # Tampered or foreign ids open to None.
        opened = self.codec.open(session_id)
        if opened is None:
            if guessed:
                self.not_a_key(request)
                return None
            return KeyFound(self)
        if self.bound:
            refused = self.codec.belongs(session_id, request.principal)
            if refused is not None:
                return self._unknown(request, guessed, refused)
        request.upstream_session_id = opened[1]
        return KeyFound(self, opened[0])

    def backend_lost(self, request: Request, found: KeyFound) -> Job | None:
        return None

    def _session_header(
        self,
        request: Request,
        session_id: str,
        status: int,
        backend: str,
        wire: list[bytes] | None,
        head: ResponseHead,
    ) -> tuple[list[bytes] | None, Job | None]:
        """Never the backend's raw id, on every response (TypeScript clients adopt the id
        of every response, and TypeScript servers repeat it on every response)."""
        ok = 200 <= status < 300
        principal = request.principal if self.bound else None
        if request.session_id is None:
            if ok:
                try:
                    token = self.codec.seal(backend, session_id, principal)
                except ValueError:  # not visible ASCII, or too long to carry: 404s follow
                    log.warning("backend %s minted a session id that cannot be signed", backend)
                    return wire, None
                self.counts.bound(backend)
            else:
                # The SDK's quirk: a fresh, unused id on a 400. Sealed all the same.
                token = self.seal_or_keep(backend, principal, session_id)
        elif session_id == request.upstream_session_id:
            token = request.session_id  # the same session: the client's own token, no HMAC
        else:
            token = self.seal_or_keep(backend, principal, session_id)  # minted anew: seal it
            if ok:
                self.counts.bound(backend)
        return with_session_id(head.wire if wire is None else wire, token), None

    def _ended(self, request: Request, found: KeyFound | None) -> Job | None:
        if found is not None and found.name is not None:
            self.counts.ended(found.name)
        return None

    def _endpoint_learner(self, request: Request, backend: str) -> Learner | None:
        principal = request.principal if self.bound else None
        seal = partial(self.seal_or_keep, backend, principal)
        return EndpointLearner(sans_io.EndpointScanner(seal), self, backend, "")

    def legacy_learned(self, key: str, backend: str) -> Job | None:
        # Already sealed in the event.
        self.counts.bound(backend)
        return None

    def seal_or_keep(self, backend: str, principal: str | None, session_id: str) -> str:
        """The signed id (bound to ``principal`` when given), or the backend's own when it
        cannot be signed (the client will get 404 for it and start over)."""
        try:
            return self.codec.seal(backend, session_id, principal)
        except ValueError:
            log.warning("backend %s minted a session id that cannot be signed", backend)
            return session_id


class EndpointLearner:
    """A legacy SSE stream's first event: the endpoint URL naming its session (rewritten
    when ids are signed). With a store, the session lives as long as its stream; its key
    there is ``prefix`` (the principal's, with auth on) and the id."""

    __slots__ = ("backend", "done", "key", "kind", "prefix", "scanner")

    def __init__(
        self,
        scanner: sans_io.EndpointScanner,
        kind: StoredSessions | SignedSessions,
        backend: str,
        prefix: str,
    ) -> None:
        self.scanner = scanner
        self.kind = kind
        self.backend = backend
        self.prefix = prefix
        self.done = False
        self.key: str | None = None  # bound in the store for this stream's life

    def feed(self, data: bytes) -> tuple[bytes, Job | None]:
        scanner = self.scanner
        data = scanner.feed(data)
        if not scanner.done:
            return data, None
        self.done = True
        found = scanner.session_id
        if found is None:
            return data, None
        key = self.prefix + found
        job = self.kind.legacy_learned(key, self.backend)
        if job is not None:
            self.key = key
        return data, job

    def flush(self) -> tuple[bytes, Job | None]:
        self.done = True
        return self.scanner.flush(), None

    def end(self) -> Job | None:
        key = self.key
        if key is None or not isinstance(self.kind, StoredSessions):
            return None
        self.key = None
        return self.kind.forget(key)


def with_session_id(wire: list[bytes], token: str) -> list[bytes]:
    """Fields in wire form (``framing.ResponseHead.wire``) with the value of every
    Mcp-Session-Id replaced by ``token``; the others as they are."""
    value = token.encode("latin-1")
    out = wire.copy()
    for at in range(0, len(out), 4):  # name, ": ", value, CRLF for each field
        if out[at] == SESSION_HEADER:
            out[at + 2] = value
    return out


# -- the sticky cookie --------------------------------------------------------------------


class CookiePin(KeyKind):
    """``sticky.cookie``: a signed cookie naming the backend that served the client; a
    preference, not a must (a pinned backend that is down gives way to the strategy)."""

    def __init__(self, codec: TokenCodec, config: CookieConfig) -> None:
        self.codec = codec
        self.config = config
        self.name = config.name.encode("latin-1")

    def _pinned(self, request: Request) -> str | None:
        value = sans_io.cookie_value(request.headers, self.name)
        opened = self.codec.open(value) if value else None
        return None if opened is None else opened[0]

    def route_key(self, request: Request) -> KeyFound | None:
        name = self._pinned(request)
        return None if name is None else KeyFound(self, name, strict=False)

    def not_a_key(self, request: Request) -> None:
        return None

    def not_found(self, request: Request, close: bool) -> tuple[int, bytes]:
        raise AssertionError("a cookie is never strict")

    def backend_lost(self, request: Request, found: KeyFound) -> Job | None:
        return None

    def on_head(
        self,
        request: Request,
        found: KeyFound | None,
        status: int,
        head: ResponseHead,
        backend: str,
        wire: list[bytes] | None,
    ) -> tuple[list[bytes] | None, Job | None, Learner | None]:
        """A Set-Cookie pinning the client to ``backend``, unless its cookie already does."""
        if self._pinned(request) == backend:
            return wire, None, None
        out = head.wire.copy() if wire is None else wire
        out += (
            b"set-cookie",
            b": ",
            sans_io.set_cookie(self.config, self.codec.seal(backend, "")),
            b"\r\n",
        )
        return out, None, None


# -- MCP 2026-07-28 tasks (SEP-2663) ------------------------------------------------------


class McpTasks(KeyKind):
    """Task ids: learned from the answer that creates a task (``resultType: "task"`` in a
    JSON body or in the final event of an SSE answer), bound to the backend that gave it
    for the task's ``ttlMs`` (at most ``sticky.task_ttl_max``), and routed by the task id
    of ``tasks/get``, ``tasks/update``, ``tasks/cancel`` (and the first of a
    ``subscriptions/listen``'s ``taskIds``) as the request's verdict gives it: the body's
    ``params.taskId``, checked against ``Mcp-Name`` (routing/mcp_era.py).

    An unknown or expired task id routes the request as any other (the strategy's pick;
    that server answers): the key is ``guessed``. So does a task whose holder is down or
    past its drain (route.py): never an error made up here, and the binding is kept, so
    that requests go back to the holder when it returns. A draining holder still gets its
    tasks' requests, as a session's.

    With ``scope`` (edge auth on) a task is bound under its principal's key, and the key is
    strict: a task id this principal has not bound (unknown, expired, or another's), or
    whose holder is down, gets the proxy's own answer, the error SEP-2663 gives a
    nonexistent task (``not_found``), identical in every case. A guess could reach the
    holder, which does not know whose task it is."""

    def __init__(
        self,
        store: SessionStore,
        ttl_max: float,
        scope: PrincipalScope | None = None,
        stats: Stats | None = None,
    ) -> None:
        self.store = store
        self.ttl_max = ttl_max
        self.scope = scope
        self.stats = stats

    def route_key(self, request: Request) -> KeyFound | None:
        verdict = request.verdict
        if verdict is None or not verdict.task_ids:
            return None
        task_id = verdict.task_ids[0]
        scope = self.scope
        if scope is None:
            return found_in(self.store, task_id, self, guessed=True)
        key = scope.key(request.principal, task_id)
        if key is None:  # no principal: uses no binding (as _Sessions._unknown says)
            if self.stats is not None:
                self.stats.binding_refused["task anonymous"] += 1
            return None
        return found_in(self.store, key, self, guessed=False)

    def not_a_key(self, request: Request) -> None:
        return None

    def not_found(self, request: Request, close: bool) -> tuple[int, bytes]:
        """Auth on: the error a server gives a nonexistent task (SEP-2663: "Invalid or
        nonexistent ``taskId``: ``-32602`` (Invalid params)"), with the request's id, and
        400 as the SDKs' servers answer it."""
        verdict = request.verdict
        rpc_id = None if verdict is None else verdict.message_id
        return 400, answers.task_not_found(rpc_id, close=close)

    def backend_lost(self, request: Request, found: KeyFound) -> Job | None:
        return None  # the holder may come back with its tasks: the binding stays

    def on_head(
        self,
        request: Request,
        found: KeyFound | None,
        status: int,
        head: ResponseHead,
        backend: str,
        wire: list[bytes] | None,
    ) -> tuple[list[bytes] | None, Job | None, Learner | None]:
        verdict = request.verdict
        if verdict is None or verdict.method != "tools/call" or not 200 <= status < 300:
            return wire, None, None
        prefix = ""
        scope = self.scope
        if scope is not None:
            if request.principal is None:
                return wire, None, None  # auth on, no principal: nothing is bound for it
            prefix = scope.prefix(request.principal)
        content_type = head.content_type
        if content_type.startswith(b"application/json"):
            return wire, None, JsonTaskLearner(self, backend, verdict.message_id, prefix)
        if content_type.startswith(b"text/event-stream"):
            return wire, None, SseTaskLearner(self, backend, verdict.message_id, prefix)
        return wire, None, None

    def learned(
        self, created: mcp_tasks.CreatedTask | None, backend: str, prefix: str
    ) -> Job | None:
        """Bind a created task (under ``prefix``: the principal's with auth on)."""
        if created is None:
            return None
        ttl = self.ttl_max
        if created.ttl_ms is not None:
            ttl = min(ttl, created.ttl_ms / 1000)
        return self._bind(prefix + created.task_id, backend, ttl)

    async def _bind(self, task_id: str, backend: str, ttl: float) -> None:
        await self.store.bind(task_id, backend, ttl)


class JsonTaskLearner:
    """A JSON answer to a tools/call, held (up to ``mcp_tasks.MAX_EVENT``) until it is
    complete: if it creates a task, the binding lands before the client can poll it."""

    __slots__ = ("backend", "done", "held", "kind", "message_id", "prefix", "size")

    def __init__(self, kind: McpTasks, backend: str, message_id: Any, prefix: str) -> None:
        self.kind = kind
        self.backend = backend
        self.message_id = message_id
        self.prefix = prefix
        self.held: list[bytes] = []
        self.size = 0
        self.done = False

    def feed(self, data: bytes) -> tuple[bytes, Job | None]:
        self.size += len(data)
        if self.size > mcp_tasks.MAX_EVENT:  # a real result, not a task handle: let it go
            self.done = True
            held, self.held = self.held, []
            return b"".join(held) + data, None
        self.held.append(data)
        return b"", None

    def flush(self) -> tuple[bytes, Job | None]:
        self.done = True
        body, self.held = b"".join(self.held), []
        found = mcp_tasks.task_from_json(body, self.message_id)
        return body, self.kind.learned(found, self.backend, self.prefix)

    def end(self) -> Job | None:
        return None


class SseTaskLearner:
    """An SSE answer to a tools/call, passed on as it comes; its final event, read at the
    end, may create a task (bound before the end of the answer goes out)."""

    __slots__ = ("backend", "done", "kind", "message_id", "prefix", "reader")

    def __init__(self, kind: McpTasks, backend: str, message_id: Any, prefix: str) -> None:
        self.kind = kind
        self.backend = backend
        self.message_id = message_id
        self.prefix = prefix
        self.reader = mcp_tasks.SseLastEvent()
        self.done = False

    def feed(self, data: bytes) -> tuple[bytes, Job | None]:
        self.reader.feed(data)
        return data, None

    def flush(self) -> tuple[bytes, Job | None]:
        self.done = True
        found = mcp_tasks.task_from_sse(self.reader.last, self.message_id)
        return b"", self.kind.learned(found, self.backend, self.prefix)

    def end(self) -> Job | None:
        return None
