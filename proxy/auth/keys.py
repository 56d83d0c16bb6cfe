"""The issuer's signing keys: a JWKS document parsed into keys by ``kid``, and when to fetch
it again. Pure: the fetch itself is ``jwks_fetch.JwksFetcher``'s; time is passed in.

Why each rule:
- Keys are fetched again every ``jwks_refresh`` (in the background: requests go on with the
  keys held), and when a token names a ``kid`` we do not hold (the IdP rotated), but at most
  once per ``jwks_min_refresh``: a flood of tokens with made-up kids costs the IdP one
  request per interval, not one per token.
- When fetches fail, the keys held keep working until ``jwks_max_stale`` after the last
  successful fetch: an IdP outage does not lock out clients whose tokens are still valid.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import jwt

MAX_JWKS_BYTES = 1 << 20  # a JWKS document larger than this is refused unread
MAX_KEYS = 100  # keys kept from one document (a real JWKS holds a handful)


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str | None
    key: Any  # the cryptography public key PyJWT verifies with
    algorithm: str | None  # the JWK's "alg", when it names one
    key_type: str  # "RSA", "EC", "OKP"


def parse_jwks(text: bytes, allowed: tuple[str, ...]) -> dict[str | None, SigningKey]:
    """The usable signing keys of a JWKS document, by kid. Raises ValueError when the
    document is not a JWKS or holds no usable key. Private or symmetric keys ("kty": "oct")
    are never used: only public keys of the allowed algorithms' families."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"not JSON ({error.__class__.__name__})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('not a JWKS: no "keys" list')
    families = {_family(alg) for alg in allowed}
    found: dict[str | None, SigningKey] = {}
    for item in doc["keys"][:MAX_KEYS]:
        if not isinstance(item, dict) or item.get("kty") not in families:
            continue  # "oct" (a shared secret) never: see check_jwt_algorithm
        if item.get("use", "sig") != "sig" or "d" in item:
            continue  # an encryption key, or a private key published by mistake
        alg = item.get("alg")
        if alg is not None and alg not in allowed:
            continue
        try:
            jwk = jwt.PyJWK(item, algorithm=alg if isinstance(alg, str) else None)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue
        kid = item.get("kid")
        kid = kid if isinstance(kid, str) else None
        found[kid] = SigningKey(kid, jwk.key, alg if isinstance(alg, str) else None, item["kty"])
    if not found:
        raise ValueError("no usable signing key (public RSA, EC or OKP key for the algorithms)")
    return found


def _family(alg: str) -> str:
    if alg.startswith(("RS", "PS")):
        return "RSA"
    if alg.startswith("ES"):
        return "EC"
    return "OKP"  # EdDSA


def key_fits(key: SigningKey, alg: str) -> bool:
    """Whether ``key`` may verify a token signed with ``alg`` (the header's)."""
    if key.algorithm is not None and key.algorithm != alg:
        return False
    return _family(alg) == key.key_type


class KeySchedule:
    """When to fetch the JWKS: pure, time passed in (seconds of a monotonic clock)."""

    def __init__(self, refresh: float, min_refresh: float, max_stale: float) -> None:
        self.refresh = refresh
        self.min_refresh = min_refresh
        self.max_stale = max_stale
        self.fetched_at = -math.inf  # the last successful fetch
        self.tried_at = -math.inf  # the last attempt, successful or not

    def usable(self, now: float) -> bool:
        """Whether the keys held may still verify tokens."""
        return now - self.fetched_at <= self.max_stale

    def due(self, now: float) -> bool:
        """A background refresh is due (the keys are older than ``refresh``)."""
        return now - self.fetched_at >= self.refresh and self.may_try(now)

    def may_try(self, now: float) -> bool:
        """A fetch may start now: none started within ``min_refresh``."""
        return now - self.tried_at >= self.min_refresh

    def started(self, now: float) -> None:
        self.tried_at = now

    def succeeded(self, now: float) -> None:
        self.fetched_at = now
