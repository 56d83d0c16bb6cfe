"""The client side of the proxy, built from one config (HAProxy's frontend): which Host
names the listener serves, the rate limit, and the limits and timeouts a client is held
to. Its other half is ``cluster.Cluster``, the backend side. A reload builds a new one;
the relay reads the current one when it needs it."""

from __future__ import annotations

from mcplb.proxy.config.hosts import default_allowed_hosts
from mcplb.proxy.config.schema import Config, LimitsConfig, RateLimitConfig, TimeoutsConfig
from mcplb.proxy.routing.host_check import HostPolicy
from mcplb.proxy.routing.rate_limit import MemoryRateLimiter, RedisRateLimiter, build_rate_limiter
from mcplb.strategies.forwarded import ForwardedClient, parse_networks

RateLimiter = MemoryRateLimiter | RedisRateLimiter


class Frontend:
    """Host policy, rate limiter, client limits and timeouts of one config."""

    __slots__ = (
        "host_policy",
        "limits",
        "preserve_host",
        "rate_limit",
        "rate_limit_client",
        "rate_limiter",
        "timeouts",
    )

    def __init__(self, config: Config, rate_limiter: RateLimiter | None = None) -> None:
        """``rate_limiter``: the previous frontend's, kept when ``rate_limit`` is unchanged
        (its buckets, or its Redis connection, live on)."""
        self.host_policy = host_policy(config)
        self.limits: LimitsConfig = config.limits
        self.timeouts: TimeoutsConfig = config.timeouts
        self.preserve_host = config.preserve_host
        self.rate_limit: RateLimitConfig | None = config.rate_limit
        self.rate_limiter: RateLimiter | None = (
            rate_limiter if rate_limiter is not None else build_rate_limiter(config.rate_limit)
        )
        self.rate_limit_client = _forwarded_client(config)


def host_policy(config: Config) -> HostPolicy:
    """The Host names the listener serves: configured, or the listener's default."""
    patterns = config.allowed_hosts
    if patterns is None:
        patterns = default_allowed_hosts(config.listen_host)
    return HostPolicy(patterns)


def _forwarded_client(config: Config) -> ForwardedClient | None:
    """Who a rate-limited client is behind ``rate_limit.trusted_proxies`` (None: the peer)."""
    rate_limit = config.rate_limit
    if rate_limit is None or not rate_limit.trusted_proxies:
        return None
    return ForwardedClient(parse_networks(rate_limit.trusted_proxies))
