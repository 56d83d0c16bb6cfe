"""Weighted random choice."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from mcplb.strategies._options import seeded_rng
from mcplb.strategies.base import B, RequestFacts, Strategy


class RandomChoice(Strategy):
    """Picks an available backend at random, with probability weight / total weight.

    Option ``seed`` (int) makes the sequence of picks reproducible.
    """

    name: ClassVar[str] = "random"
    uses_request: ClassVar[bool] = False

    def __init__(self, *, seed: int | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._random = seeded_rng(seed).random

    def pick(self, backends: Sequence[B], request: RequestFacts) -> B | None:
        total = eligible_weight(backends)
        return weighted_draw(backends, total, None, self._random) if total else None


def eligible_weight(backends: Sequence[B]) -> int:
    """The summed weight of the backends that may take new work."""
    total = 0
    for backend in backends:
        if backend.weight > 0 and backend.available:
            total += backend.weight
    return total


def weighted_draw(
    backends: Sequence[B], total: int, skip: B | None, random: Callable[[], float]
) -> B | None:
    """A weighted draw among the eligible backends other than ``skip``, whose weights sum
    to ``total``; None if there is no such backend. Two passes over the list rather than
    building a cumulative-weight list per pick."""
    point = random() * total
    last: B | None = None
    for backend in backends:
        weight = backend.weight
        if weight > 0 and backend.available and backend is not skip:
            point -= weight
            if point < 0:
                return backend
            last = backend
    return last  # only reached through float rounding at the very top of the range
