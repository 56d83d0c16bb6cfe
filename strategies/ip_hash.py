"""Client affinity by consistent hashing of the client address over a Maglev table."""

from __future__ import annotations

import hashlib
import re
from array import array
from collections.abc import Sequence
from typing import Any, ClassVar

from mypy_extensions import mypyc_attr

from mcplb.strategies.base import B, RequestFacts, Strategy, StrategyOptionError
from mcplb.strategies.forwarded import ForwardedClient, Network, parse_networks
from mcplb.strategies.maglev import build_table, is_prime

DEFAULT_TABLE_SIZE = 65537
MIN_TABLE_SIZE = 101
# A build is pure Python on the event loop: ~35 ms at 65537 slots, ~0.7 s at this size.
MAX_TABLE_SIZE = 1_000_003
TABLE_CACHE = 16  # tables kept per strategy: enough for retry lists and a few flapping backends
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110 token)

_Entries = tuple[tuple[str, int], ...]


@mypyc_attr(allow_interpreted_subclasses=True)
class IpHash(Strategy):
    """Sends each client to the same backend for as long as the backend set is unchanged.

    The key (the client address, or a header with ``hash_key``) is hashed with BLAKE2b,
    stable across processes and restarts, to a slot of a Maglev table (see
    strategies/maglev.py) built over the backends with weight > 0, sorted by name so the
    config order does not matter. When the slot's backend is unavailable the key falls
    back to a second Maglev table built over the available backends only. So a backend
    going down moves exactly the keys it held, spread over the rest by weight, and its
    return restores the original mapping exactly; adding or removing a backend from the
    list rebuilds the first table, which moves about 1/N of the keys (Maglev's
    near-minimal disruption). Tables are cached by their (name, weight) entries and
    built only when a new set of backends is seen. A pick is one hash and one table
    lookup, plus, for a list object other than the previous pick's, one
    allocation-free pass checking it against the cached layout.

    Options:
      table_size: prime, 101 to 1000003 (default 65537); keep it well above 100 x
        backends for an even spread.
      trusted_proxies: list of networks (CIDR). When the socket peer is in one, the
        client is the first untrusted hop of X-Forwarded-For read right to left (the
        leftmost hop if all are trusted).
      hash_key: "address" (default) or "header:NAME" to hash that request header;
        requests without it fall back to the address.
    """

    name: ClassVar[str] = "ip_hash"
    uses_request: ClassVar[bool] = True

    def __init__(
        self,
        *,
        # Typed object, checked below: options come from the config as they are, and the
        # compiled build would refuse a wrong type with a bare TypeError.
        table_size: object = DEFAULT_TABLE_SIZE,  # a prime int
        trusted_proxies: object = None,  # a list of CIDR strings
        hash_key: object = "address",  # "address" or "header:NAME"
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._size = _check_table_size(table_size)
        trusted = _check_networks(trusted_proxies)
        self._forwarded = ForwardedClient(trusted) if trusted else None
        self._header = _check_hash_key(hash_key)
        self._tables: dict[_Entries, array[int]] = {}
        # The layout of the backend list last seen, rebuilt when a name or weight changes.
        self._names: list[str] = []
        self._weights: list[int] = []
        self._positions: list[int] = []  # list index of each table entry
        self._table: array[int] | None = None
        # availability bit mask over the entries -> (table, list index of its entries)
        self._fallbacks: dict[int, tuple[array[int], list[int]]] = {}
        self._checked: object = None  # the list last checked against the layout

    def pick(self, backends: Sequence[B], request: RequestFacts) -> B | None:
        # The length and the picked name are cheap checks against a list that was
        # changed in place after it was checked.
        if backends is not self._checked or len(backends) != len(self._names):
            self._check(backends)
        table = self._table
        if table is None:
            return None
        slot = self._slot(request)
        position = self._positions[table[slot]]
        backend = backends[position]
        if backend.name != self._names[position]:
            self._checked = None  # reordered in place: check it again (names then match)
            return self.pick(backends, request)
        if backend.available:
            return backend
        return self._fallback(backends, slot)

    def _check(self, backends: Sequence[B]) -> None:
        """Lay the table out for ``backends`` unless it already has their names and
        weights; the same list object passed again is not checked (see Strategy.pick)."""
        if len(backends) != len(self._names):
            self._relayout(backends)
        else:
            # An allocation-free check that the list still has the names and weights
            # the current table was built for.
            for backend, name, weight in zip(backends, self._names, self._weights, strict=True):
                if backend.name != name or backend.base_weight != weight:
                    self._relayout(backends)
                    break
        self._checked = backends  # held: its id cannot be reused by another list

    def key(self, request: RequestFacts) -> bytes:
        """What is hashed for ``request``: the ``hash_key`` header if set and present,
        else the client address (from X-Forwarded-For behind trusted proxies)."""
        if self._header is not None:
            value = request.header(self._header)
            if value:
                return value
        address = request.client_address
        if self._forwarded is not None:
            address = self._forwarded.client(address, request.headers)
        return address.encode("utf-8", "surrogatepass")

    def _slot(self, request: RequestFacts) -> int:
        digest = hashlib.blake2b(self.key(request), digest_size=8).digest()
        return int.from_bytes(digest, "little") % self._size

    def _relayout(self, backends: Sequence[B]) -> None:
        names = [backend.name for backend in backends]
        weights = [backend.base_weight for backend in backends]
        # Sorted by name: the table must not depend on the order of the config.
        order = sorted(
            (index for index, weight in enumerate(weights) if weight > 0),
            key=lambda index: (names[index], weights[index]),
        )
        self._names = names
        self._weights = weights
        self._positions = order
        self._fallbacks = {}
        entries = tuple((names[index], weights[index]) for index in order)
        self._table = self._built(entries) if entries else None

    def _fallback(self, backends: Sequence[B], slot: int) -> B | None:
        """The backend for ``slot`` in the table over the available entries."""
        positions = self._positions
        mask = 0
        for bit, position in enumerate(positions):
            if backends[position].available:
                mask |= 1 << bit
        if mask == 0:
            return None
        found = self._fallbacks.get(mask)
        if found is None:
            subset = [position for bit, position in enumerate(positions) if mask >> bit & 1]
            entries = tuple((self._names[index], self._weights[index]) for index in subset)
            found = (self._built(entries), subset)
            if len(self._fallbacks) >= TABLE_CACHE:
                del self._fallbacks[next(iter(self._fallbacks))]
            self._fallbacks[mask] = found
        table, subset = found
        return backends[subset[table[slot]]]

    def _built(self, entries: _Entries) -> array[int]:
        """The table for ``entries``, from the cache (most recently used last) or built."""
        table = self._tables.pop(entries, None)
        if table is None:
            count = len(entries)
            # The narrowest item type that holds an entry index: 64 KiB for <= 256 entries.
            typecode = "B" if count <= 0x100 else "H" if count <= 0x10000 else "L"
            table = array(typecode, build_table(entries, self._size))
            if len(self._tables) >= TABLE_CACHE:
                del self._tables[next(iter(self._tables))]
        self._tables[entries] = table
        return table


def _check_table_size(value: Any) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not MIN_TABLE_SIZE <= value <= MAX_TABLE_SIZE
        or not is_prime(value)
    ):
        raise StrategyOptionError(
            f"table_size must be a prime >= {MIN_TABLE_SIZE} (and <= {MAX_TABLE_SIZE}),"
            f" got {value!r}"
        )
    return value


def _check_networks(value: Any) -> tuple[Network, ...]:
    if value is None:
        return ()
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise StrategyOptionError(
            f"trusted_proxies must be a list of networks (CIDR), got {value!r}"
        )
    try:
        return parse_networks(value)
    except ValueError as exc:
        raise StrategyOptionError(f"trusted_proxies{exc}") from None


def _check_hash_key(value: Any) -> bytes | None:
    """None to hash the address, else the lower-case header name to hash."""
    if value == "address":
        return None
    if isinstance(value, str) and value.startswith("header:"):
        name = value[len("header:") :]
        if _TOKEN.fullmatch(name):
            return name.lower().encode("ascii")
    raise StrategyOptionError(f'hash_key must be "address" or "header:NAME", got {value!r}')
