"""Maglev consistent-hashing lookup tables (Eisenbud et al., NSDI 2016, section 3.4).

Pure functions only: the same entries and size always give the same table, in any
process, because the permutations come from a keyed BLAKE2b of each entry's name and
never from Python's per-process salted ``hash()``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence


def is_prime(n: int) -> bool:
    """Whether ``n`` is prime (trial division: table sizes are at most a few million)."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % divisor for divisor in range(3, math.isqrt(n) + 1, 2))


def permutation(name: str, size: int) -> tuple[int, int]:
    """``(offset, skip)`` of ``name``'s preference list: slot j is (offset + j*skip) % size."""
    digest = hashlib.blake2b(
        name.encode("utf-8", "surrogatepass"), digest_size=16, person=b"mcplb-maglev"
    ).digest()
    offset = int.from_bytes(digest[:8], "little") % size
    # skip in [1, size-1] is coprime with a prime size, so the list visits every slot.
    skip = int.from_bytes(digest[8:], "little") % (size - 1) + 1
    return offset, skip


def build_table(entries: Sequence[tuple[str, int]], size: int) -> list[int]:
    """Fill a lookup table of ``size`` slots, each holding an index into ``entries``.

    ``entries`` are ``(name, weight)``. Round by round, each entry with weight w takes w
    turns, each turn claiming the next free slot of its own permutation, until the table
    is full; so each entry owns about size * w / total_weight slots. Entries with weight
    <= 0 get no slot. ``size`` must be prime and there must be a positive weight.
    """
    if not is_prime(size):
        raise ValueError(f"table size must be prime, got {size}")
    turns = [weight for _, weight in entries]
    live = [i for i, weight in enumerate(turns) if weight > 0]
    if not live:
        raise ValueError("no entry has a positive weight")
    positions = [0] * len(entries)
    skips = [0] * len(entries)
    for i in live:
        positions[i], skips[i] = permutation(entries[i][0], size)

    table = [0] * size
    taken = bytearray(size)  # a truth test on a bytearray is the cheapest probe
    left = size
    while True:
        for i in live:
            pos = positions[i]
            skip = skips[i]
            for _ in range(turns[i]):
                # Walk the permutation incrementally (add and wrap) instead of
                # recomputing (offset + j*skip) % size: this loop is the whole build cost.
                while taken[pos]:
                    pos += skip
                    if pos >= size:
                        pos -= size
                table[pos] = i
                taken[pos] = 1
                left -= 1
                if left == 0:
                    return table
                pos += skip
                if pos >= size:
                    pos -= size
            positions[i] = pos
