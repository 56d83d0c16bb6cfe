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

import contextlib
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from mcplb.proxy.config.schema import RedisConfig

HEALTH_CHECK_INTERVAL = 15  # PING a pooled connection idle longer than this before reusing it


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
