"""Option validation shared by the built-in strategies."""

from __future__ import annotations

import random
from typing import Any

from mcplb.strategies.base import StrategyOptionError


def seeded_rng(seed: Any) -> random.Random:
    """A private generator; ``seed`` None draws from the OS, an int makes picks reproducible."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise StrategyOptionError(f"seed must be an integer, got {seed!r}")
    return random.Random(seed)
