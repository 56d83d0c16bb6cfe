"""What the relay reads of the state a worker shares (``server.runtime.Runtime``
implements it): a protocol, so that the relay depends on the pieces below it and not on
the process that assembles them. Every attribute is read when it is used: after a reload
the relay sees the new objects at once (docs/architecture.md, "Which config a connection
sees")."""

from __future__ import annotations

from typing import Protocol

from mcplb.proxy.cluster.cluster import Cluster
from mcplb.proxy.config.schema import Config
from mcplb.proxy.observability.stats import Stats
from mcplb.proxy.relay.affinity import Affinity
from mcplb.proxy.routing.frontend import Frontend


class Shared(Protocol):
    """The worker's shared state, as the relay reads it."""

    config: Config
    frontend: Frontend  # host policy, rate limiter, client limits and timeouts
    cluster: Cluster  # backends, pools, admission, health, strategy, retry budget
    affinity: Affinity
    stats: Stats
    stopping: bool  # SIGTERM received: every answer closes its connection

    def next_request_id(self) -> bytes: ...
