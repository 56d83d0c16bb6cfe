"""JWT access tokens: verified once (signature, iss, aud, exp, nbf, scopes) into a ``Grant``,
then found again in a bounded cache, so that a token's signature is checked once and not
per request. Pure: the keys and the time are passed in.

The rules (RFC 9068, RFC 8725, MCP authorization):
- the header's ``alg`` must be in the configured allow-list (never "none", never HS*: the
  config refuses them) and fit the key its ``kid`` names (an RSA key never verifies ES256);
- ``iss`` equal to the configured issuer, ``aud`` holding one of the configured audiences
  (by default ``auth.resource``: the token was issued for us), ``sub`` a string;
- ``exp`` required and ``nbf`` if present, both within ``leeway``; checked against the
  injected wall clock on every use, also of a cached grant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jwt

from mcplb.proxy.config.schema import JwtConfig

from .keys import SigningKey, key_fits

MAX_SUBJECT = 1024  # bytes of "sub"; a longer one is refused (it becomes a header, a key)


class Grant:
    """What a verified token grants: who (``principal``: issuer and subject), its scopes,
    until when (``expires``, wall-clock seconds with the leeway added)."""

    __slots__ = ("expires", "kid", "principal", "raw", "scope_ok", "scopes", "subject")

    def __init__(
        self,
        raw: bytes,
        principal: str,
        subject: str,
        scopes: tuple[str, ...],
        expires: float,
        kid: str | None,
        scope_ok: bool,
    ) -> None:
        # The Authorization field value, to tell it from another with the same cache key
        self.raw = raw
        self.principal = principal
        self.subject = subject
        self.scopes = scopes
        self.expires = expires
        self.kid = kid
        self.scope_ok = scope_ok  # holds every required scope


class Failure(Exception):
    """Why a token is refused: ``reason`` is short, fixed text (never the token's)."""

    def __init__(self, reason: str, unknown_key: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unknown_key = unknown_key  # its kid is not among the keys held: fetch again


class TokenVerifier:
    """Checks tokens against ``JwtConfig`` with the keys given."""

    def __init__(self, config: JwtConfig) -> None:
        self.config = config
        self.issuer = config.issuer
        self.audience = list(config.audience)
        self.algorithms = frozenset(config.algorithms)
        self.required = frozenset(config.required_scopes)
        self.leeway = config.leeway
        # Signature, iss and aud by PyJWT; exp and nbf here, on the injected clock.
        self._options: Any = {
            "verify_signature": True,
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": True,
            "verify_iss": True,
            "require": ["exp", "iss", "aud", "sub"],
        }

    def verify(
        self, token: bytes, raw: bytes, keys: Mapping[str | None, SigningKey], now: float
    ) -> Grant:
        """The grant of ``token`` (its bytes after "Bearer "; ``raw``: the whole
        Authorization value, the grant's cache key), or raises ``Failure``. ``now``:
        wall-clock seconds."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Failure("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise Failure("token algorithm not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Failure("malformed token")
        key = self._key(keys, kid)
        if not key_fits(key, alg):
            raise Failure("token algorithm does not fit its key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                options=self._options,
                audience=self.audience,
                issuer=self.issuer,
            )
        except jwt.InvalidAudienceError:
            raise Failure("token not issued for this resource (aud)") from None
        except jwt.InvalidIssuerError:
            raise Failure("token from another issuer (iss)") from None
        except jwt.MissingRequiredClaimError as error:
            # No quotes: the reason goes into the challenge's error_description (RFC 6750
            # section 3: no %x22 or %x5C in it).
            raise Failure(f"token lacks the {error.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise Failure("token signature invalid") from None
        except jwt.PyJWTError:
            raise Failure("token invalid") from None
        return self._grant(raw, claims, kid, now)

    def _key(self, keys: Mapping[str | None, SigningKey], kid: str | None) -> SigningKey:
        key = keys.get(kid)
        if key is None and kid is None and len(keys) == 1:
            key = next(iter(keys.values()))  # one key and a token naming none: that one
        if key is None:
            raise Failure("token signing key not known", unknown_key=kid is not None)
        return key

    def _grant(self, raw: bytes, claims: dict[str, Any], kid: str | None, now: float) -> Grant:
        exp, nbf, sub = claims["exp"], claims.get("nbf"), claims["sub"]
        if not _number(exp) or (nbf is not None and not _number(nbf)):
            raise Failure("token exp or nbf not a number")
        if now > exp + self.leeway:
            raise Failure("token expired")
        if nbf is not None and now + self.leeway < nbf:
            raise Failure("token not yet valid (nbf)")
        if not isinstance(sub, str) or not sub or not _header_safe(sub, MAX_SUBJECT):
            raise Failure("token subject (sub) unusable")
        scopes = token_scopes(claims)
        scope_ok = self.required.issubset(scopes)
        principal = self.issuer + " " + sub  # the issuer is a URL: no space in it
        return Grant(raw, principal, sub, scopes, float(exp) + self.leeway, kid, scope_ok)


def token_scopes(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """The token's scopes: "scope" (RFC 9068, space-separated) or "scp" (a list, or a
    string, as Entra ID and Okta write it). Scopes that could not be a header's value
    (control characters, quotes) are left out."""
    found = claims.get("scope", claims.get("scp"))
    if isinstance(found, str):
        names = found.split()
    elif isinstance(found, list):
        names = [name for name in found if isinstance(name, str)]
    else:
        return ()
    return tuple(name for name in names if _scope_token(name))


def _scope_token(name: str) -> bool:
    return bool(name) and all("\x21" <= ch <= "\x7e" and ch not in '"\\' for ch in name)


def _header_safe(text: str, limit: int) -> bool:
    """No control characters (a header value must not be split) and at most ``limit`` bytes."""
    data = text.encode("utf-8", "surrogatepass")
    return len(data) <= limit and not any(b < 0x20 or b == 0x7F for b in data)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class GrantCache:
    """Verified tokens, at most ``size`` of them (the oldest go first), found by the end of
    their signature and confirmed by comparing the whole token: hashing a few dozen bytes
    per request instead of the whole token."""

    TAIL = 32  # bytes of the token's end (its signature) the table is keyed by

    def __init__(self, size: int) -> None:
        self.size = size
        self._grants: dict[bytes, Grant] = {}

    def __len__(self) -> int:
        return len(self._grants)

    def get(self, raw: bytes) -> Grant | None:
        """The grant cached for the Authorization field value ``raw``."""
        grant = self._grants.get(raw[-32:])
        if grant is not None and grant.raw == raw:
            return grant
        return None

    def put(self, grant: Grant) -> None:
        grants = self._grants
        grants[grant.raw[-32:]] = grant
        if len(grants) > self.size:
            del grants[next(iter(grants))]

    def drop(self, grant: Grant) -> None:
        self._grants.pop(grant.raw[-32:], None)

    def keep_keys(self, kids: set[str | None]) -> None:
        """Forget grants whose signing key is gone from the JWKS: a rotated-out key's
        tokens fail from the moment we learn it."""
        for tail, grant in list(self._grants.items()):
            if grant.kid not in kids:
                del self._grants[tail]
