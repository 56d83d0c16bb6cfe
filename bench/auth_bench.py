"""What edge authentication costs per request once a token is cached: ``EdgeAuth.check``
on a request carrying a verified token (the header scan, the cache lookup, the clock and
expiry check), against the same request with auth off (no call at all).

Usage (from the repository root)::

    .venv/bin/python bench/auth_bench.py [--rounds 7] [--requests 200000]
    # the compiled build (make compiled): PYTHONPATH=build/compiled .venv/bin/python ...

Prints the median over the rounds of the nanoseconds per check, with the request's
headers as an MCP client sends them (8 headers and a 900-byte RS256 token).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import jwt  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from mcplb.proxy.auth.edge import KEYS_PENDING, EdgeAuth  # noqa: E402
from mcplb.proxy.config.loader import parse_config  # noqa: E402
from mcplb.proxy.relay.request import Request  # noqa: E402

CONFIG = """
backends: [{name: a, url: "http://127.0.0.1:9001"}]
auth:
  resource: https://mcp.example.com/mcp
  jwt: {issuer: https://idp.example.com, jwks_url: https://idp.example.com/jwks}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=200_000)
    args = parser.parse_args()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwks = json.dumps({"keys": [{**public, "kid": "k1", "use": "sig"}]}).encode()
    claims = {
        "iss": "https://idp.example.com",
        "sub": "client-123",
        "aud": "https://mcp.example.com/mcp",
        "exp": int(time.time()) + 3600,
        "scope": "mcp:tools mcp:read",
        "client_id": "client-123",
        "jti": "x" * 40,
    }
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1", "typ": "at+jwt"})

    async def fetch(url: str, timeout: float) -> bytes:
        return jwks

    config = parse_config(CONFIG)
    assert config.auth is not None
    auth = EdgeAuth(config.auth, fetch=fetch)
    headers = [
        (b"host", b"mcp.example.com"),
        (b"user-agent", b"node"),
        (b"accept", b"application/json, text/event-stream"),
        (b"content-type", b"application/json"),
        (b"content-length", b"120"),
        (b"mcp-protocol-version", b"2025-06-18"),
        (b"mcp-session-id", b"0123456789abcdef0123456789abcdef"),
        (b"authorization", b"Bearer " + token.encode()),
    ]

    def request() -> Request:
        r = Request()
        r.method = b"POST"
        r.target = b"/mcp"
        r.headers = list(headers)
        return r

    async def first() -> None:
        r = request()
        if auth.check(r) is KEYS_PENDING:
            await auth.keys_fetched()
        assert auth.check(r) is None, "the token must pass"

    asyncio.run(first())
    requests = [request() for _ in range(1000)]
    check = auth.check
    per_check = []
    for _ in range(args.rounds):
        start = time.perf_counter_ns()
        for _ in range(args.requests // 1000):
            for r in requests:
                check(r)
        with_auth = time.perf_counter_ns() - start
        start = time.perf_counter_ns()
        for _ in range(args.requests // 1000):
            for _r in requests:
                pass
        loop_only = time.perf_counter_ns() - start
        per_check.append((with_auth - loop_only) / args.requests)
    module = sys.modules[type(auth).__module__].__file__ or ""
    build = "pure" if module.endswith(".py") else "compiled"
    print(
        json.dumps(
            {
                "ns_per_check_median": round(statistics.median(per_check), 1),
                "rounds": [round(x, 1) for x in per_check],
                "build": build,
                "module": module,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
