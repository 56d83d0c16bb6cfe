"""Authenticated tokens that carry a backend name: signed session ids and sticky cookies.

Sans-IO and stdlib only (``hmac``, ``hashlib``, ``binascii`` for base64).

With ``sticky.store: signed`` the proxy does not remember which backend owns a session: it
rewrites the ``Mcp-Session-Id`` a backend mints into a token that names the backend, and
opens the token again on every later request. Every response that carries the header is
rewritten (TypeScript SDK servers repeat it on each one), so a client never holds a raw
id. Any worker process and any replica holding the same keys routes the request without a
shared table. The same codec, with another purpose, seals the value of the sticky cookie
(``sticky.cookie``).

Token format (every character is one of ``A-Z a-z 0-9 - _ .``)::

    v1.<base64url(payload)>.<base64url(tag)>          (base64url without "=" padding)

    payload = len(backend) (1 byte) || backend || len(value) (2 bytes, big-endian) || value
              [ || principal digest (16 bytes) ]
    tag     = HMAC-SHA256(key, 0x01 || len(purpose) (1 byte) || purpose || payload)

The principal digest is there when edge auth is on (``seal(..., principal=...)``): a keyed
digest of the token's "iss sub" (``principal.digest``, HMAC-SHA256 under the same key,
domain-separated from tags, truncated to 16 bytes), never the principal itself. It is inside
the MAC'd payload: no client can add, strip or change it without the key. ``belongs`` says
whether an opened token was sealed for a principal (``proxy/sessions/principal.py``: a
session id used with another principal's token is answered as an unknown one).

Every field is length-prefixed, so no two (purpose, backend, value) triples give the same
MAC input. The version byte is covered by the tag, and so is the purpose, which is not in
the token at all: a token sealed as a session id never opens as a cookie, and the other way
round. Only the canonical encoding opens (no padding, no stray bits, no other separators),
so a token opens iff it is exactly what ``seal`` produced.

The characters are all "unreserved" in URLs (RFC 3986) and valid cookie-octets (RFC 6265):
a token goes into a header, a query value (the 2024-11-05 SSE transport's ``?session_id=``,
``?sessionId=`` or whatever key the server chose) or a cookie without any escaping.

Why HMAC and not an AEAD such as AES-GCM:

- no third-party dependency: the standard library has HMAC-SHA256 but no AES;
- routing needs integrity, not secrecy: what must not happen is a client steering itself
  to a backend of its choice, or into another client's session by editing the token;
  HMAC prevents both (forging a tag without a key is infeasible);
- what a client can read by base64-decoding its token is the backend's *name* and the
  backend's own session id. That id is the client's own session, no secret from it. The
  name is a label from the config (``backends[].name``): choose names that are not secrets
  (not internal host names you want hidden, say). Backend URLs are never in a token.

Tag length: the full 32-byte HMAC-SHA256 output. A 16-byte truncation would be as safe in
practice (RFC 2104 section 5 allows half the hash length; forging needs about 2**127 online
guesses, each one a request), but it would save only 21 characters per token, and the full
tag leaves nothing to argue about.

Keys: the first key seals, every key opens. To rotate, put a new key first and keep the old
one after it until tokens sealed with it no longer matter (the sessions they name have
ended), then drop it. Tokens carry no timestamp: a sealed session id lives as long as the
backend keeps the session (an unknown or expired session gets the backend's 404).

``seal`` and ``open`` are on the request path: an HMAC object per key is built once, with
the version and purpose already fed, and copied per call.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Final

from mcplb.proxy.config.checks import MIN_KEY_LENGTH
from mcplb.proxy.sessions import principal as principals

VERIFIED_CACHE: Final = 4096  # verified tokens remembered per codec
MAX_TOKEN: Final = 1024  # characters; longer strings never open, and seal never makes one
PURPOSE_SESSION: Final = "session"  # rewritten Mcp-Session-Id / legacy session_id values
PURPOSE_COOKIE: Final = "cookie"  # the sticky cookie's value

_VERSION: Final = b"\x01"
_MAX_BACKEND: Final = 255  # bytes: its length is one byte
# Both segments are base64url without padding; a 32-byte tag is always 43 characters.
_TOKEN_RE: Final = re.compile(r"v1\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]{43})", re.ASCII)
_VISIBLE_RE: Final = re.compile(r"[\x21-\x7e]*", re.ASCII)  # visible ASCII, as session ids
_TO_STANDARD: Final = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")
_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# The last character of an unpadded encoding carries spare low bits, which must be zero in
# the canonical form: 4 spare bits when len % 4 == 2, 2 when len % 4 == 3.
_CANONICAL_LAST: Final = {2: frozenset(_ALPHABET[::16]), 3: frozenset(_ALPHABET[::4])}


def _encode(data: bytes) -> str:
    encoded = binascii.b2a_base64(data, newline=False).rstrip(b"=").translate(_TO_URLSAFE)
    return encoded.decode("ascii")


def _decode(text: str) -> bytes | None:
    """The bytes of a canonical unpadded base64url string (its alphabet already checked)."""
    spare = len(text) % 4
    if spare == 1:
        return None  # no byte string encodes to this length
    if spare and text[-1] not in _CANONICAL_LAST[spare]:
        return None  # another string encodes the same bytes; only seal's form opens
    padded = text.encode("ascii").translate(_TO_STANDARD) + b"=" * (4 - spare if spare else 0)
    try:
        return binascii.a2b_base64(padded)
    except binascii.Error:  # pragma: no cover - alphabet, length and padding are checked
        return None


class TokenCodec:
    """Seals (backend name, value) into an authenticated, URL-safe token and opens it back.

    ``keys``: secrets (str, UTF-8 encoded, or bytes), each at least MIN_KEY_LENGTH long; the
    first seals, all open. ``purpose``: what the tokens are for (PURPOSE_SESSION or
    PURPOSE_COOKIE); a token sealed for one purpose never opens for another.
    """

    __slots__ = (
        "_confirmed",
        "_digests",
        "_owners",
        "_principal_macs",
        "_signer",
        "_verified",
        "_verifiers",
    )

    def __init__(self, keys: Sequence[str | bytes], purpose: str) -> None:
        if isinstance(keys, str | bytes):
            raise TypeError("keys must be a sequence of keys, not a single key")
        if not keys:
            raise ValueError("at least one key is required")
        purpose_bytes = purpose.encode("utf-8")
        if not purpose_bytes or len(purpose_bytes) > 255:
            raise ValueError("purpose must be 1 to 255 bytes long")
        prefix = _VERSION + bytes((len(purpose_bytes),)) + purpose_bytes
        verifiers = []
        principal_macs = []
        for index, key in enumerate(keys):
            if isinstance(key, str):
                secret = key.encode("utf-8")
                length = len(key)
            elif isinstance(key, bytes):
                secret = key
                length = len(key)
            else:
                raise TypeError(f"keys[{index}] must be str or bytes")
            if length < MIN_KEY_LENGTH:
                raise ValueError(f"keys[{index}] is shorter than {MIN_KEY_LENGTH}")
            verifiers.append(hmac.new(secret, prefix, hashlib.sha256))
            principal_macs.append(principals.labelled(secret))
        self._verifiers: tuple[hmac.HMAC, ...] = tuple(verifiers)
        self._signer = verifiers[0]
        # Tokens already verified: a session sends the same token on every request, and
        # a verified token stays valid for this codec's lifetime (its keys do not change).
        self._verified: dict[str, tuple[str, str]] = {}
        # The principal digest of each verified token that carries one (evicted with it).
        self._digests: dict[str, bytes] = {}
        # The principal each of those was last confirmed for: a session's next requests
        # cost a dict lookup and a compare (evicted with it too).
        self._confirmed: dict[str, str] = {}
        # Principals' digests under each key (the first seals, all are accepted), cached.
        self._principal_macs: tuple[hmac.HMAC, ...] = tuple(principal_macs)
        self._owners: dict[str, tuple[bytes, ...]] = {}

    def seal(self, backend: str, value: str, principal: str | None = None) -> str:
        """A token for ``backend`` (1-255 visible ASCII characters) and ``value`` (visible
        ASCII, may be empty), bound to ``principal`` when given (its digest sealed in).
        Raises ValueError for other input, or if the token would be longer than MAX_TOKEN
        (backend and value of about 730 characters together)."""
        if not backend or not _VISIBLE_RE.fullmatch(backend) or len(backend) > _MAX_BACKEND:
            raise ValueError("backend must be 1 to 255 visible ASCII characters")
        if not _VISIBLE_RE.fullmatch(value):
            raise ValueError("value must be visible ASCII characters (0x21-0x7E)")
        name, data = backend.encode("ascii"), value.encode("ascii")
        if len(data) > 0xFFFF:
            raise ValueError(f"value too long to seal into {MAX_TOKEN} characters")
        payload = bytes((len(name),)) + name + len(data).to_bytes(2, "big") + data
        if principal is not None:
            payload += self._digests_of(principal)[0]
        mac = self._signer.copy()
        mac.update(payload)
        token = f"v1.{_encode(payload)}.{_encode(mac.digest())}"
        if len(token) > MAX_TOKEN:
            raise ValueError(f"value too long to seal into {MAX_TOKEN} characters")
        return token

    def open(self, token: str) -> tuple[str, str] | None:
        """(backend, value) from a token this codec's keys sealed for its purpose; None for
        anything else: malformed, truncated, tampered, sealed with an unknown key or for
        another purpose, or longer than MAX_TOKEN. Never raises."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN:
            return None
        known = self._verified.get(token)
        if known is not None:
            return known
        match = _TOKEN_RE.fullmatch(token)
        if match is None:
            return None
        payload = _decode(match[1])
        tag = _decode(match[2])
        if payload is None or tag is None:
            return None
        for verifier in self._verifiers:
            mac = verifier.copy()
            mac.update(payload)
            if hmac.compare_digest(mac.digest(), tag):
                unpacked = _unpack(payload)
                if unpacked is None:
                    return None
                opened = unpacked[0], unpacked[1]
                if len(self._verified) >= VERIFIED_CACHE:
                    oldest = next(iter(self._verified))  # oldest first
                    del self._verified[oldest]
                    self._digests.pop(oldest, None)
                    self._confirmed.pop(oldest, None)
                self._verified[token] = opened
                if unpacked[2]:
                    self._digests[token] = unpacked[2]
                return opened
        return None

    def belongs(self, token: str, principal: str | None) -> str | None:
        """None when ``token`` (opened by ``open``) was sealed for ``principal``;
        else why not, a metric's reason: "anonymous" (no principal: a request auth let
        through without a token), "unbound" (sealed without one: auth was off), or
        "principal" (sealed for another)."""
        if principal is None:
            return "anonymous"
        if self._confirmed.get(token) == principal:
            return None
        sealed = self._digests.get(token)
        if sealed is None:
            if token not in self._verified and self.open(token) is not None:
                sealed = self._digests.get(token)  # not opened yet: now it is
            if sealed is None:
                return "unbound"
        for digest in self._digests_of(principal):
            if hmac.compare_digest(digest, sealed):
                if token in self._verified:
                    self._confirmed[token] = principal
                return None
        return "principal"

    def _digests_of(self, principal: str) -> tuple[bytes, ...]:
        """``principal``'s digest under each key, the sealing key's first (cached)."""
        owners = self._owners
        found = owners.get(principal)
        if found is None:
            found = tuple(principals.digest(mac, principal) for mac in self._principal_macs)
            if len(owners) >= principals.CACHED_PRINCIPALS:
                del owners[next(iter(owners))]
            owners[principal] = found
        return found


def _unpack(payload: bytes) -> tuple[str, str, bytes] | None:
    """(backend, value, principal digest or b"") from an authenticated payload; None if its
    layout is off.

    Only seal, which checks its input, makes payloads that authenticate, so this checks the
    layout (a cheap guard) but not the characters again.
    """
    if not payload:
        return None
    name_end = 1 + payload[0]
    value_start = name_end + 2
    if name_end == 1 or len(payload) < value_start:
        return None
    value_end = value_start + int.from_bytes(payload[name_end:value_start], "big")
    if len(payload) - value_end not in (0, principals.DIGEST_BYTES):
        return None
    name, value = payload[1:name_end], payload[value_start:value_end]
    if not (name.isascii() and value.isascii()):
        return None
    return name.decode("ascii"), value.decode("ascii"), payload[value_end:]
