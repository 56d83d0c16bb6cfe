"""Bindings scoped to the principal that made them (edge auth on): a session id or a task
id minted for one principal is, for another, an id nobody bound.

MCP's security best practices (2025-11-25, "Session Hijacking"): servers "SHOULD bind
session IDs to user-specific information ... Use a key format like
``<user_id>:<session_id>``. This ensures that even if an attacker guesses a session ID, they
cannot impersonate another user as the user ID is derived from the user token and not
provided by the client." The 2026-07-28 page says the same of state handles
(``<user_id>:<handle>``, "reject a handle presented by any other principal"), and SEP-2663
asks that tasks be bound to an "authorization context".

The stores (memory, Redis) do exactly that: with auth on, a binding's key is
``digest(principal) + ":" + id`` (``PrincipalScope.key``). Another principal's lookup is a
lookup of another key: the same code path, the same store commands, the same answer as an
id never seen (no oracle, by construction, and nothing to compare). The principal itself
("iss sub", ``request.principal``) is never stored or sent: only a keyed digest of it,
HMAC-SHA256 truncated to 16 bytes (128 bits: collisions between principals are out of
reach), base64url.

The digest's key: the memory store's is this process's own random key (its table dies with
the process); a Redis store's must be the same in every worker and replica, and so must
the task bindings of ``store: signed`` (the workers of a host share them: host_share.py),
so it derives from the first of ``sticky.keys`` when there are keys (signed mode always
has them), and is a fixed label otherwise (then the digest is a plain hash: anyone reading
Redis could test a guessed principal against it; set ``sticky.keys`` to key it). Signed
ids carry their digest inside the signed payload (``tokens.TokenCodec``), keyed by the
signing key.

Per request: one dict lookup (the principal's digest, cached, bounded) and one string
concatenation; with auth off the kinds hold no scope and compute nothing.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
from collections.abc import Sequence
from typing import Final

DIGEST_BYTES: Final = 16  # of HMAC-SHA256: 128 bits
CACHED_PRINCIPALS: Final = 4096  # digests remembered per scope (the oldest go first)
# Domain separation: a digest is never equal to any other MAC the proxy computes with the
# same key (token tags start with the version byte 0x01).
_LABEL: Final = b"\x02mcplb principal binding"
_UNKEYED: Final = b"mcplb principal binding: no sticky.keys"

# The memory store's key: this process's alone, drawn once (a reload keeps it, so that the
# bindings made before it are still found).
PROCESS_KEY: Final = os.urandom(32)


def shared_key(keys: Sequence[str]) -> bytes:
    """The scope key of a store shared by workers and replicas (Redis): derived from the
    first of ``sticky.keys``, else a fixed label (an unkeyed digest)."""
    if not keys:
        return _UNKEYED
    return hmac.new(keys[0].encode("utf-8"), _UNKEYED, hashlib.sha256).digest()


def digest(mac: hmac.HMAC, principal: str) -> bytes:
    """The principal's digest under ``mac`` (an HMAC already fed ``_LABEL``)."""
    copy = mac.copy()
    copy.update(principal.encode("utf-8", "surrogatepass"))
    return copy.digest()[:DIGEST_BYTES]


def labelled(key: bytes) -> hmac.HMAC:
    """An HMAC-SHA256 with ``key``, fed the label: ``digest`` copies it per principal."""
    return hmac.new(key, _LABEL, hashlib.sha256)


class PrincipalScope:
    """Store keys bound to a principal: ``key(principal, id)``."""

    __slots__ = ("_mac", "_prefixes")

    def __init__(self, key: bytes) -> None:
        self._mac = labelled(key)
        self._prefixes: dict[str, str] = {}

    def prefix(self, principal: str) -> str:
        """What goes before the ids this principal's requests bind and look up."""
        prefix = self._prefixes.get(principal)
        if prefix is None:
            raw = binascii.b2a_base64(digest(self._mac, principal), newline=False)
            prefix = raw.rstrip(b"=").decode("ascii").replace("+", "-").replace("/", "_") + ":"
            prefixes = self._prefixes
            if len(prefixes) >= CACHED_PRINCIPALS:
                del prefixes[next(iter(prefixes))]
            prefixes[principal] = prefix
        return prefix

    def key(self, principal: str | None, item_id: str) -> str | None:
        """The store key of ``item_id`` for ``principal``; None without a principal (a
        request auth let through without a token, a CORS preflight: it binds nothing and
        finds nothing)."""
        if principal is None:
            return None
        return self.prefix(principal) + item_id
