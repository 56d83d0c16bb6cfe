"""Edge authentication without sockets: ``EdgeAuth`` with an injected clock and JWKS fetch,
tokens minted here with PyJWT (the real provider is tests/test_auth_interop.py's). Covers
the JWKS schedule (refresh, unknown kid at most once per jwks_min_refresh, an IdP outage
within and past jwks_max_stale), the verified-token cache (bounded, dropped with its key,
expiry checked on every use), the refusals' challenges and what the backend gets."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mcplb.proxy.auth.edge import KEYS_PENDING, EdgeAuth, Metadata, Refusal, metadata_url
from mcplb.proxy.auth.keys import parse_jwks
from mcplb.proxy.auth.tokens import Grant, GrantCache
from mcplb.proxy.config.loader import parse_config
from mcplb.proxy.config.schema import AuthConfig
from mcplb.proxy.relay.request import Request

ISSUER = "https://idp.example.com"
RESOURCE = "https://mcp.example.com/mcp"
T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Key:
    def __init__(self, kid: str, curve: bool = False) -> None:
        self.kid = kid
        self.alg = "ES256" if curve else "RS256"
        if curve:
            self.private: Any = ec.generate_private_key(ec.SECP256R1())
            public = jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk = {**public, "kid": kid, "use": "sig"}

    def sign(self, **changes: Any) -> str:
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": "alice",
            "aud": RESOURCE,
            "exp": int(T0) + 600,
            "scope": "mcp:tools mcp:read",
        }
        claims.update(changes)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.private, algorithm=self.alg, headers={"kid": self.kid})


RSA_A, RSA_B = Key("a"), Key("b")
EC_C = Key("c", curve=True)


class Idp:
    """The JWKS the fetch returns (or raises, when ``down``), and how often it was asked."""

    def __init__(self, *keys: Key) -> None:
        self.keys = list(keys)
        self.down = False
        self.calls = 0

    async def __call__(self, url: str, timeout: float) -> bytes:
        self.calls += 1
        if self.down:
            raise OSError("connection refused")
        return json.dumps({"keys": [k.jwk for k in self.keys]}).encode()


def auth_config(**jwt_changes: Any) -> AuthConfig:
    config = parse_config(
        f"""
backends: [{{name: a, url: "http://127.0.0.1:9001"}}]
auth:
  resource: {RESOURCE}
  jwt: {{issuer: {ISSUER}, jwks_url: {ISSUER}/jwks, jwks_min_refresh: 10s, jwks_refresh: 5m}}
"""
    )
    assert config.auth is not None
    jwt_config = dataclasses.replace(config.auth.jwt, **jwt_changes)
    return dataclasses.replace(config.auth, jwt=jwt_config)


def request(token: str | None, *headers: tuple[bytes, bytes], target: bytes = b"/mcp") -> Request:
    r = Request()
    r.method = b"POST"
    r.target = target
    if token is not None:
        r.headers.append((b"authorization", b"Bearer " + token.encode()))
    r.headers.extend(headers)
    return r


async def checked(auth: EdgeAuth, r: Request) -> Any:
    """``auth.check``, waiting for the JWKS when it asks to, as the relay does."""
    outcome = auth.check(r)
    if outcome is KEYS_PENDING:
        await auth.keys_fetched()
        outcome = auth.check(r)
    return outcome


def make(idp: Idp, clock: Clock, config: AuthConfig | None = None) -> EdgeAuth:
    return EdgeAuth(config or auth_config(), clock=clock, fetch=idp)


async def test_a_valid_token_passes_and_its_signature_is_checked_once() -> None:
    idp, clock = Idp(RSA_A), Clock()
    auth = make(idp, clock)
    token = RSA_A.sign()
    r = request(token)
    assert await checked(auth, r) is None
    assert r.principal == f"{ISSUER} alice"
    for _ in range(3):
        assert auth.check(request(token)) is None
    assert auth.verified == 1 and idp.calls == 1 and len(auth.cache) == 1
    assert auth.check(request(RSA_A.sign(sub="bob"))) is None
    assert auth.verified == 2 and len(auth.cache) == 2
    # A fetch for an unknown kid fails at T0+11; past jwks_min_refresh after it, before
    # jwks_refresh: the next background fetch is due at the later of the two, not at
    # every request.
    idp.down = True
    clock.now = T0 + 11
    unknown = jwt.encode({"iss": ISSUER}, RSA_A.private, algorithm="RS256", headers={"kid": "z"})
    assert isinstance(await checked(auth, request(unknown)), Refusal)
    clock.now = T0 + 22
    assert auth.check(request(token)) is None
    assert auth.refresh_at == T0 + 300 and idp.calls == 2


async def test_expiry_is_checked_on_every_use_of_a_cached_token() -> None:
    idp, clock = Idp(RSA_A), Clock()
    auth = make(idp, clock, auth_config(leeway=5.0))
    token = RSA_A.sign(exp=int(T0) + 60)
    assert await checked(auth, request(token)) is None
    clock.now = T0 + 64  # within the leeway
    assert auth.check(request(token)) is None
    clock.now = T0 + 66
    outcome = auth.check(request(token))
    assert isinstance(outcome, Refusal) and outcome.message == "token expired"
    assert len(auth.cache) == 0


async def test_nbf_in_the_future_is_refused() -> None:
    auth = make(Idp(RSA_A), Clock(), auth_config(leeway=0.0))
    outcome = await checked(auth, request(RSA_A.sign(nbf=int(T0) + 30)))
    assert isinstance(outcome, Refusal) and outcome.message == "token not yet valid (nbf)"


async def test_unknown_kid_fetches_at_most_once_per_min_refresh() -> None:
    idp, clock = Idp(RSA_A), Clock()
    auth = make(idp, clock)
    assert await checked(auth, request(RSA_A.sign())) is None
    idp.keys = [RSA_A, RSA_B]  # the IdP adds key b
    clock.now += 1
    flood = [RSA_A.sign(sub=f"s{i}") for i in range(3)]
    for i, token in enumerate(flood):
        forged = jwt.encode(
            jwt.decode(token, options={"verify_signature": False}),
            RSA_A.private,
            algorithm="RS256",
            headers={"kid": f"made-up-{i}"},
        )
        outcome = await checked(auth, request(forged))
        assert isinstance(outcome, Refusal) and outcome.status == 401
    assert idp.calls == 1  # within 10 s of the first fetch: no fetch at all
    outcome = await checked(auth, request(RSA_B.sign()))
    assert isinstance(outcome, Refusal)  # b still unknown: no fetch allowed yet
    clock.now += 10
    assert await checked(auth, request(RSA_B.sign())) is None
    assert idp.calls == 2


async def test_a_key_gone_from_the_jwks_drops_its_cached_tokens() -> None:
    idp, clock = Idp(RSA_A), Clock()
    auth = make(idp, clock)
    old = RSA_A.sign()
    assert await checked(auth, request(old)) is None
    idp.keys = [RSA_B]
    clock.now += 11
    assert await checked(auth, request(RSA_B.sign())) is None
    outcome = await checked(auth, request(old))
    assert isinstance(outcome, Refusal) and outcome.message == "token signing key not known"


async def test_the_idp_down_keeps_the_keys_until_max_stale() -> None:
    idp, clock = Idp(RSA_A), Clock()
    auth = make(idp, clock, auth_config(jwks_max_stale=3600.0))
    assert await checked(auth, request(RSA_A.sign(sub="x"))) is None
    idp.down = True
    clock.now += 400  # past jwks_refresh: a background fetch is tried, and fails
    assert await checked(auth, request(RSA_A.sign(sub="y"))) is None
    await auth.keys_fetched()
    assert idp.calls == 2 and auth.fetch_failures == 1
    assert await checked(auth, request(RSA_A.sign(sub="z"))) is None  # verified with held keys
    clock.now = T0 + 3601  # past max_stale: keys no longer trusted
    outcome = await checked(auth, request(RSA_A.sign(sub="w", exp=int(T0) + 7200)))
    assert isinstance(outcome, Refusal) and outcome.status == 503


async def test_first_fetch_failing_answers_503_not_401() -> None:
    idp, clock = Idp(RSA_A), Clock()
    idp.down = True
    outcome = await checked(make(idp, clock), request(RSA_A.sign()))
    assert isinstance(outcome, Refusal) and outcome.status == 503
    assert b"error=" not in outcome.challenge  # the token may be fine


async def test_algorithm_must_be_allowed_and_fit_the_key() -> None:
    idp, clock = Idp(RSA_A, EC_C), Clock()
    auth = make(idp, clock, auth_config(algorithms=("RS256",)))
    outcome = await checked(auth, request(EC_C.sign()))
    assert isinstance(outcome, Refusal) and outcome.message == "token algorithm not accepted"
    # An RSA key named by an ES256 token never verifies it.
    auth = make(Idp(RSA_A, EC_C), clock)
    forged = jwt.encode({"iss": ISSUER}, EC_C.private, algorithm="ES256", headers={"kid": "a"})
    outcome = await checked(auth, request(forged))
    assert isinstance(outcome, Refusal)
    assert outcome.message == "token algorithm does not fit its key"


def test_parse_jwks_skips_secret_private_and_encryption_keys() -> None:
    doc = {
        "keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {**RSA_A.jwk, "use": "enc", "kid": "enc"},
            {**jwt.algorithms.RSAAlgorithm.to_jwk(RSA_B.private, as_dict=True), "kid": "priv"},
            RSA_B.jwk,
        ]
    }
    assert set(parse_jwks(json.dumps(doc).encode(), ("RS256",))) == {"b"}
    with pytest.raises(ValueError, match="no usable signing key"):
        parse_jwks(b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', ("RS256",))
    with pytest.raises(ValueError, match="not JSON"):
        parse_jwks(b"<html>", ("RS256",))


async def test_challenges_follow_rfc_6750() -> None:
    auth = make(Idp(RSA_A), Clock(), auth_config(required_scopes=("mcp:admin",)))
    metadata = metadata_url(RESOURCE)
    assert metadata == "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
    missing = auth.check(request(None))
    assert isinstance(missing, Refusal) and missing.status == 401
    assert missing.challenge == f'Bearer resource_metadata="{metadata}", scope="mcp:admin"'.encode()
    scope = await checked(auth, request(RSA_A.sign()))
    assert isinstance(scope, Refusal) and scope.status == 403
    assert scope.challenge.startswith(b'Bearer error="insufficient_scope", scope="mcp:admin"')
    basic = auth.check(request(None, (b"authorization", b"Basic dTpw")))
    assert basic is auth.missing
    twice = request(RSA_A.sign(), (b"authorization", b"Bearer x"))
    outcome = auth.check(twice)
    assert isinstance(outcome, Refusal) and outcome.status == 400
    assert outcome.challenge.startswith(b'Bearer error="invalid_request"')


async def test_identity_headers_replace_authorization_and_forged_copies() -> None:
    config = dataclasses.replace(auth_config(), forward_token=False)
    auth = make(Idp(RSA_A), Clock(), config)
    r = request(RSA_A.sign(sub="bob"), (b"x-auth-subject", b"root"), (b"x-auth-scopes", b"*"))
    assert await checked(auth, r) is None
    assert r.headers == [(b"x-auth-subject", b"bob"), (b"x-auth-scopes", b"mcp:tools mcp:read")]


async def test_subject_with_control_characters_is_refused() -> None:
    auth = make(Idp(RSA_A), Clock())
    outcome = await checked(auth, request(RSA_A.sign(sub="bob\r\nx-admin: 1")))
    assert isinstance(outcome, Refusal) and outcome.message == "token subject (sub) unusable"


async def test_required_claims() -> None:
    auth = make(Idp(RSA_A), Clock())
    for claim in ("exp", "sub", "aud", "iss"):
        outcome = await checked(auth, request(RSA_A.sign(**{claim: None})))
        assert isinstance(outcome, Refusal), claim
        assert outcome.message == f"token lacks the {claim} claim", claim
        challenge = outcome.challenge.decode()
        assert f'error_description="token lacks the {claim} claim", ' in challenge


def test_cors_preflight_passes_without_a_token() -> None:
    auth = make(Idp(RSA_A), Clock())
    preflight = request(
        None, (b"origin", b"https://app.example"), (b"access-control-request-method", b"POST")
    )
    preflight.method = b"OPTIONS"
    assert auth.check(preflight) is None and preflight.principal is None
    bare = request(None)
    bare.method = b"OPTIONS"  # no preflight headers: an OPTIONS like any other request
    assert auth.check(bare) is auth.missing


def test_metadata_paths_and_methods() -> None:
    auth = make(Idp(RSA_A), Clock())
    for target in (
        b"/.well-known/oauth-protected-resource",
        b"/.well-known/oauth-protected-resource/mcp?x=1",
    ):
        get = request(None, target=target)
        get.method = b"GET"
        outcome = auth.check(get)
        assert isinstance(outcome, Metadata) and outcome.status == 200
        assert json.loads(outcome.body)["resource"] == RESOURCE
        post = auth.check(request(None, target=target))
        assert isinstance(post, Metadata) and post.status == 405
    other = request(None, target=b"/.well-known/oauth-protected-resource/other")
    assert isinstance(auth.check(other), Refusal)


def test_grant_cache_is_bounded() -> None:
    cache = GrantCache(3)
    grants = [Grant(f"token-{i:040d}".encode(), "p", "s", (), 0.0, "a", True) for i in range(5)]
    for grant in grants:
        cache.put(grant)
    assert len(cache) == 3
    assert cache.get(grants[0].raw) is None and cache.get(grants[4].raw) is grants[4]
    # Same tail, another token: not the cached grant.
    assert cache.get(b"X" + grants[4].raw[1:]) is None
