"""Least connections: the backend with the fewest active requests per unit of weight."""

from __future__ import annotations

from typing import ClassVar

from mypy_extensions import mypyc_attr

from mcplb.strategies.base import BackendView
from mcplb.strategies.least_loaded import LeastLoaded


@mypyc_attr(allow_interpreted_subclasses=True)
class LeastConnections(LeastLoaded):
    """Picks the available backend with the lowest ``active / weight``.

    Active means ``in_flight - streams``: an open event stream (an SSE GET that an MCP
    client keeps open for server notifications) counts in ``in_flight`` but is mostly
    idle, and counting it would make a backend holding many idle streams look busy and
    starve it of real work. Ties go round-robin: the scan starts just after the
    previous pick, so with every backend idle consecutive picks cycle through them
    instead of always landing on the first in list order. Weight 0 gets no traffic.
    """

    name: ClassVar[str] = "least_connections"

    def load(self, backend: BackendView) -> int | None:
        return backend.in_flight - backend.streams
