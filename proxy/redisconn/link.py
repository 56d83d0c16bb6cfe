"""One Redis client for a store: a server named by ``url``, or the master of a Sentinel
``service`` found through ``sentinels``.

Every command is bounded by the config's ``timeout`` (socket and connect timeouts) and never
retried inside redis-py: a store answers without Redis at once and backs off
(``proxy/redisconn/health.py``).

With Sentinel, redis-py's ``SentinelConnectionPool`` asks the sentinels for the master's
address before each new connection, so a failover needs no restart: the connections to the
old master fail (the store goes local and backs off), ``drop_connections`` closes the
pool, and the next connection goes to the master the sentinels name then. A connection that
finds its server demoted to a replica gets READONLY on its first write, which redis-py turns
into a ``ConnectionError``: nothing is written to a replica. While the sentinels have no
master to name (the old one down, the new one not yet promoted) discovery fails with
``MasterNotFoundError``, a ``ConnectionError``: the same outage as a dead server.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from mcplb.proxy.config.schema import RedisConfig
from mcplb.proxy.redisconn.health import BACKOFF_MAX, BACKOFF_MIN

HEALTH_CHECK_INTERVAL = 15  # PING a pooled connection idle longer than this before reusing it
# With Sentinel a probe asks a sentinel first, which answers at once whether there is a
# master yet: probing every BACKOFF_MIN costs little and ends an outage soon after the
# promotion (doubling to BACKOFF_MAX would add up to seconds to each failover).
SENTINEL_BACKOFF_MAX = BACKOFF_MIN


class RedisLink:
    """A store's client (``client``) and, with Sentinel, the sentinels' clients."""

    def __init__(self, config: RedisConfig, *, decode_responses: bool = False) -> None:
        options: dict[str, Any] = {
            "socket_timeout": config.timeout,
            "socket_connect_timeout": config.timeout,
            "health_check_interval": HEALTH_CHECK_INTERVAL,
            "decode_responses": decode_responses,
            # No retries inside redis-py: a failure goes local at once, and backs off.
            "retry": Retry(NoBackoff(), 0),
        }
        self.sentinel: Sentinel | None = None
        self.backoff_max = SENTINEL_BACKOFF_MAX if config.sentinels else BACKOFF_MAX
        if not config.sentinels:
            self.client: aioredis.Redis = aioredis.Redis.from_url(config.url, **options)
            return
        tls: dict[str, Any] = {}
        if config.tls:
            tls = {"ssl": True, "ssl_ca_certs": config.ca}
        self.sentinel = Sentinel(
            list(config.sentinels),
            sentinel_kwargs={
                "socket_timeout": config.timeout,
                "socket_connect_timeout": config.timeout,
                "password": config.sentinel_password,
                "retry": Retry(NoBackoff(), 0),
                **tls,
            },
        )
        assert config.service is not None, "the config's rule requires service with sentinels"
        self.client = self.sentinel.master_for(
            config.service, password=config.password, **options, **tls
        )

    async def master(self, timeout: float) -> tuple[str, int] | None:
        """With Sentinel: the master's address as the sentinels name it now (if it moved,
        the idle connections to the old one are closed). None without Sentinel, or when the
        sentinels do not answer (the store's own commands find that outage).

        A store that asks this now and then learns when the master changed, and so which of
        its writes to check: in a coordinated failover (``SENTINEL FAILOVER``, or an
        operator's) the old master keeps accepting writes until the sentinels demote it,
        and loses them when it resyncs from the new master; after a master's death, the
        writes it acknowledged but had not yet sent to its replica are lost."""
        if self.sentinel is None:
            return None
        pool = cast(SentinelConnectionPool, self.client.connection_pool)
        try:
            address = await asyncio.wait_for(pool.get_master_address(), timeout)  # type: ignore[no-untyped-call]
        except Exception:
            return None
        host, port = address
        return str(host), int(port)

    async def drop_connections(self) -> None:
        """Close every pooled connection (while no request uses Redis): new ones are opened
        on demand, to the master the sentinels name then."""
        with contextlib.suppress(Exception):
            await self.client.connection_pool.disconnect()

    async def close(self) -> None:
        """Close the client and the sentinels' clients; raises what closing raises."""
        try:
            await self.client.aclose(close_connection_pool=True)
        finally:
            if self.sentinel is not None:
                await self.sentinel.aclose()
