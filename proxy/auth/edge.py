"""The edge's authentication step, run on every request before routing (``relay/route.py``
calls ``EdgeAuth.check``): the Protected Resource Metadata (RFC 9728), the bearer token
(RFC 6750) checked into a ``Grant``, the principal noted on the request, and the headers the
backend gets (the client's Authorization, or identity headers instead).

A cached token costs a header scan, a dict lookup and a clock read; a new one is verified
once (``tokens.TokenVerifier``). A token whose ``kid`` is not among the keys held makes the
request wait for one JWKS fetch (``KEYS_PENDING``; at most one fetch per
``jwks_min_refresh``, shared by every waiting request), then it is checked again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import urlsplit

from mcplb.proxy.config.schema import AuthConfig

from .jwks_fetch import fetch_jwks
from .keys import KeySchedule, SigningKey, parse_jwks
from .tokens import Failure, Grant, GrantCache, TokenVerifier


class Request(Protocol):
    """What the auth step reads and writes of a request (the relay's ``Request`` has it;
    a protocol, so that auth, below the relay, does not import it)."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    principal: str | None


log = logging.getLogger("mcplb.auth")

WELL_KNOWN = "/.well-known/oauth-protected-resource"
REFUSAL_LOG_INTERVAL = 60.0  # a client's refusals are logged once per this many seconds
REFUSAL_LOG_CLIENTS = 10_000  # clients remembered for that; past it, the table starts over


class Refusal:
    """A request refused by the auth step: status, error code, a short message (never
    the token) and the WWW-Authenticate challenge."""

    __slots__ = ("challenge", "code", "message", "status")

    def __init__(self, status: int, code: str, message: str, challenge: bytes) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.challenge = challenge


class Metadata:
    """The Protected Resource Metadata document, answered by the proxy itself."""

    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status  # 200, or 405 for a method other than GET
        self.body = body


class KeysPending:
    """The token names a key not held yet: wait for ``EdgeAuth.keys_fetched``, check again."""


KEYS_PENDING = KeysPending()
Outcome = Refusal | Metadata | KeysPending | None  # None: authorized, go on


def metadata_url(resource: str) -> str:
    """RFC 9728 section 3.1: the well-known path inserted between host and path."""
    parts = urlsplit(resource)
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{WELL_KNOWN}{path}"


def metadata_paths(resource: str) -> frozenset[bytes]:
    """Where the document is served: the root well-known path and the resource's own."""
    path = urlsplit(resource).path.rstrip("/")
    return frozenset({WELL_KNOWN.encode(), (WELL_KNOWN + path).encode("utf-8")})


def metadata_document(config: AuthConfig) -> bytes:
    """RFC 9728 section 2, from config only: never a Host or X-Forwarded-Host a client sent."""
    doc: dict[str, object] = {
        "resource": config.resource,
        "authorization_servers": [config.jwt.issuer],
        "bearer_methods_supported": ["header"],
    }
    if config.scopes_supported:
        doc["scopes_supported"] = list(config.scopes_supported)
    if config.resource_documentation:
        doc["resource_documentation"] = config.resource_documentation
    return json.dumps(doc, separators=(",", ":")).encode()


class RefusalLog:
    """One log line per client per interval, the refusals left out counted into the next.
    Bounded: past ``REFUSAL_LOG_CLIENTS`` clients the table starts over."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._clients: dict[str, tuple[float, int]] = {}  # client -> (last logged, left out)

    def refused(self, client: str, refusal: Refusal) -> None:
        now = self._clock()
        last, left_out = self._clients.get(client, (-REFUSAL_LOG_INTERVAL, 0))
        if now - last < REFUSAL_LOG_INTERVAL:
            self._clients[client] = (last, left_out + 1)
            return
        if len(self._clients) >= REFUSAL_LOG_CLIENTS:
            self._clients.clear()
        self._clients[client] = (now, 0)
        more = f" ({left_out} more since the last report)" if left_out else ""
        log.warning(
            "auth: %d %s from %s: %s%s", refusal.status, refusal.code, client, refusal.message, more
        )


Fetch = Callable[[str, float], Awaitable[bytes]]


def _preflight(request: Request) -> bool:
    """A CORS preflight: OPTIONS with Origin and Access-Control-Request-Method. It carries
    no credentials by definition; the backend answers it (and the real request that
    follows needs its token)."""
    names = {name for name, _ in request.headers}
    return b"origin" in names and b"access-control-request-method" in names


def build_auth(config: AuthConfig | None) -> EdgeAuth | None:
    """The auth step ``config`` asks for; None when edge authentication is off."""
    return None if config is None else EdgeAuth(config)


class EdgeAuth:
    """Built by the runtime from ``auth:``; one per process."""

    def __init__(
        self,
        config: AuthConfig,
        *,
        clock: Callable[[], float] = time.time,
        fetch: Fetch = fetch_jwks,
    ) -> None:
        """``clock``: wall-clock seconds (tokens' exp/nbf, the JWKS schedule, the log);
        ``fetch``: how the JWKS document is read (tests may pass their own)."""
        jwt = config.jwt
        self.config = config
        self.clock = clock
        self._fetch = fetch
        self.verifier = TokenVerifier(jwt)
        self.cache = GrantCache(jwt.token_cache)
        self.schedule = KeySchedule(jwt.jwks_refresh, jwt.jwks_min_refresh, jwt.jwks_max_stale)
        self.keys: dict[str | None, SigningKey] = {}
        self.refresh_at = 0.0  # wall clock: a background JWKS fetch is due from then
        self.fetches = 0  # JWKS fetches started, and failed (for tests and metrics)
        self.fetch_failures = 0
        self.verified = 0  # tokens whose signature was checked (once each, while cached)
        self._inflight: asyncio.Task[None] | None = None
        self.forward_token = config.forward_token
        self.subject_header = config.identity_headers.subject.encode()
        self.scopes_header = config.identity_headers.scopes.encode()
        self.max_token = jwt.max_token_bytes
        self.paths = metadata_paths(config.resource)
        self.document = metadata_document(config)
        self.refusals = RefusalLog(clock)
        url = metadata_url(config.resource)
        scope = " ".join(jwt.required_scopes)
        self._scope = f', scope="{scope}"' if scope else ""
        self._metadata_param = f'resource_metadata="{url}"'
        self.missing = Refusal(
            401,
            "unauthorized",
            "a bearer token is required",
            f"Bearer {self._metadata_param}{self._scope}".encode(),
        )
        self.insufficient = Refusal(
            403,
            "insufficient_scope",
            f"the token lacks a required scope ({scope})",
            f'Bearer error="insufficient_scope"{self._scope}, {self._metadata_param}'.encode(),
        )

    # --- the request path ---------------------------------------------------------------

    def check(self, request: Request) -> Outcome:
        """None when ``request`` may go on (``request.principal`` set, its headers those the
        backend gets); else the refusal, the metadata document, or KEYS_PENDING."""
        target = request.target
        if target.startswith(b"/.well-known/oauth-protected-resource"):
            path = target.split(b"?", 1)[0]
            if path in self.paths:
                return Metadata(200 if request.method == b"GET" else 405, self.document)
        value: bytes | None = None
        count = 0
        identity = False
        subject_header = self.subject_header
        scopes_header = self.scopes_header
        for name, field_value in request.headers:
            if name == b"authorization":
                value = field_value
                count += 1
            elif name == subject_header or name == scopes_header:  # noqa: SIM109
                identity = True  # (two compiled compares: no tuple built per header)
        if value is None:
            if request.method == b"OPTIONS" and _preflight(request):
                return None  # browsers send CORS preflights without credentials (Fetch spec)
            return self.missing
        if count > 1:
            return self._invalid(400, "invalid_request", "more than one Authorization header")
        now = self.clock()
        # Cached by the whole field value: a hit needs no parsing (it was a bearer token).
        grant = self.cache.get(value)
        if grant is None:
            found = self._new_token(value, now)
            if not isinstance(found, Grant):
                return found
            grant = found
        elif now > grant.expires:
            self.cache.drop(grant)
            return self._invalid(401, "invalid_token", "token expired")
        if now >= self.refresh_at:
            self.refresh(now)  # in the background: this request goes on with the keys held
        if not grant.scope_ok:
            return self.insufficient
        request.principal = grant.principal
        if identity or not self.forward_token:
            self._rewrite(request, grant)
        return None

    def _new_token(self, value: bytes, now: float) -> Grant | Refusal | KeysPending:
        """A token not in the cache: its Authorization field ``value`` checked, verified,
        cached."""
        if len(value) > self.max_token + 7:
            return self._invalid(401, "invalid_token", "token larger than max_token_bytes")
        if value[:7].lower() != b"bearer ":
            return self.missing  # another scheme: challenge for a bearer token (RFC 6750 3.1)
        token = value[7:].strip(b" \t")
        keys = self.keys if self.schedule.usable(now) else {}
        try:
            grant = self.verifier.verify(token, value, keys, now)
        except Failure as failure:
            if (failure.unknown_key or not keys) and self._start_fetch(now):
                return KEYS_PENDING
            if not keys:
                return self._invalid(503, "auth_unavailable", "signing keys unavailable")
            return self._invalid(401, "invalid_token", failure.reason)
        self.verified += 1
        self.cache.put(grant)
        return grant

    def _rewrite(self, request: Request, grant: Grant) -> None:
        """Incoming identity headers removed always; Authorization too when the backend gets
        identity headers instead (``forward_token: false``)."""
        drop = {self.subject_header, self.scopes_header}
        if not self.forward_token:
            drop.add(b"authorization")
        headers = [pair for pair in request.headers if pair[0] not in drop]
        if not self.forward_token:
            headers.append((self.subject_header, grant.subject.encode("utf-8")))
            headers.append((self.scopes_header, " ".join(grant.scopes).encode()))
        request.headers = headers

    def _invalid(self, status: int, code: str, message: str) -> Refusal:
        if status == 503:  # the token may be fine: no signing key to tell
            return Refusal(status, code, message, f"Bearer {self._metadata_param}".encode())
        error = "invalid_request" if status == 400 else "invalid_token"
        challenge = f'Bearer error="{error}", error_description="{message}", {self._metadata_param}'
        return Refusal(status, code, message, challenge.encode())

    def log_refusal(self, client: str, refusal: Refusal) -> None:
        self.refusals.refused(client, refusal)

    # --- the keys -------------------------------------------------------------------------

    def refresh(self, now: float) -> None:
        """Fetch the JWKS in the background if one is due and may start."""
        if self.schedule.due(now):
            self._start_fetch(now)
        else:  # due once both hold: keys older than refresh, no try within min_refresh
            self.refresh_at = max(
                self.schedule.fetched_at + self.schedule.refresh,
                self.schedule.tried_at + self.schedule.min_refresh,
            )

    def _start_fetch(self, now: float) -> bool:
        """True when a fetch is running (just started or already): await keys_fetched."""
        if self._inflight is not None:
            return True
        if not self.schedule.may_try(now):
            return False
        self.schedule.started(now)
        self.refresh_at = now + self.schedule.min_refresh
        self.fetches += 1
        self._inflight = asyncio.get_running_loop().create_task(self._fetch_keys())
        return True

    async def keys_fetched(self) -> None:
        """Wait for the fetch in flight, if any (failures are logged, never raised)."""
        task = self._inflight
        if task is not None:
            await asyncio.shield(task)

    async def _fetch_keys(self) -> None:
        url = self.config.jwt.jwks_url
        try:
            body = await self._fetch(url, self.config.jwt.jwks_timeout)
            keys = parse_jwks(body, self.config.jwt.algorithms)
        except Exception as error:  # the IdP down or wrong: keep the keys held
            self.fetch_failures += 1
            log.warning(
                "auth: fetching the JWKS from %s failed: %s; %s",
                url,
                str(error) or type(error).__name__,
                "keeping the keys held" if self.keys else "no signing keys yet",
            )
        else:
            now = self.clock()
            self.schedule.succeeded(now)
            self.refresh_at = now + self.schedule.refresh
            if set(keys) != set(self.keys):
                self.cache.keep_keys(set(keys))
            self.keys = keys
        finally:
            self._inflight = None
