"""One exchange: a request and its answer, as the client connection relays it.

A fresh ``Exchange`` per request (as uvicorn's ``RequestResponseCycle``) holds everything
that lives from routing to the last byte of the answer: where it went, the slot it holds,
how the answer is framed, what was sent. Nothing of it is reset by hand: when the answer is
done, the connection starts from a new one. A plain record, with no I/O.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from mcplb.proxy.relay import framing
from mcplb.proxy.sessions import affinity

if TYPE_CHECKING:
    from mcplb.proxy.cluster.backends import Backend
    from mcplb.proxy.cluster.pool import UpstreamConnection


class Exchange:
    """The per-request state of a client connection."""

    __slots__ = (
        "attempted",
        "backend",
        "body_paused",
        "bound_backend",
        "client_keep_alive",
        "complete_pending",
        "framing",
        "holding",
        "legacy_session",
        "queue_timer",
        "queued_at",
        "response_bytes",
        "response_started",
        "retries",
        "scanner",
        "served_by",
        "slot_stream",
        "started",
        "status",
        "task",
        "up_out",
        "upstream",
        "upstream_keep_alive",
        "upstream_until_close",
        "waiting_for",
    )

    def __init__(self) -> None:
        # routing and admission
        self.started = 0.0  # when routing began (loop time)
        self.backend: Backend | None = None  # holds a slot here while set
        self.slot_stream = False  # the slot held on backend is a stream's
        self.bound_backend: str | None = None  # backend a session id routed to
        self.attempted: set[str] = set()  # backends tried (retries go elsewhere)
        self.retries = 0
        self.waiting_for: Backend | None = None  # queued for a slot on this (None: any)
        self.queue_timer: asyncio.TimerHandle | None = None
        self.queued_at = 0.0
        self.task: asyncio.Task[None] | None = None  # a routing step or connect under way
        # upstream
        self.upstream: UpstreamConnection | None = None
        self.up_out: list[bytes] = []  # request bytes not yet written (see _send_up)
        self.body_paused = 0.0  # seconds the body was held back by the proxy itself
        # the answer
        self.response_started = False
        self.status = 0  # for metrics and the access log
        self.response_bytes = 0
        self.served_by = ""  # backend name of the answer
        self.framing = framing.NO_BODY  # how the body is framed toward the client
        self.upstream_keep_alive = False
        self.upstream_until_close = False  # the body ends when the backend closes
        self.client_keep_alive = True
        self.holding = False  # a session store update must land before the answer goes out
        self.complete_pending = False  # the backend finished while holding
        self.scanner: affinity.EndpointScanner | None = None  # legacy SSE: endpoint event
        self.legacy_session: str | None = None  # legacy SSE session bound for this stream
