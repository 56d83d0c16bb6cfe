"""What the relay reads of the state a worker shares (``server.runtime.Runtime`` is it): a
base class here, so that the relay depends on the pieces below it and not on the process
that assembles them. Every attribute is read when it is used: after a reload the relay
sees the new objects at once (docs/architecture.md, "Which config a connection sees").

A class and not a ``Protocol``: compiled (setup.py), the relay's reads of it are field
reads, where through a protocol each was a generic attribute lookup (issues 23 and 27);
``Runtime`` (proxy/server, a layer above) subclasses it."""

from __future__ import annotations

from mcplb.proxy.cluster.cluster import Cluster
from mcplb.proxy.config.schema import Config
from mcplb.proxy.observability.stats import Stats
from mcplb.proxy.relay.affinity import Affinity
from mcplb.proxy.routing.frontend import Frontend


class Shared:
    """The worker's shared state, as the relay reads it (set by ``Runtime``)."""

    config: Config
    frontend: Frontend  # host policy, rate limiter, client limits and timeouts
    cluster: Cluster  # backends, pools, admission, health, strategy, retry budget
    affinity: Affinity
    stats: Stats
    stopping: bool  # SIGTERM received: every answer closes its connection

    def next_request_id(self) -> bytes:
        raise NotImplementedError
