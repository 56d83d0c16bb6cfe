"""The client side of the proxy, built from one config (HAProxy's frontend): which Host
names the listener serves, edge authentication, the rate limit, the limits and timeouts a
client is held to, the client connection caps and per-client slot counts, and the proxy's
``Via`` entry. Its other half is ``cluster.Cluster``, the backend side. A reload builds a
new one; the relay reads the current one when it needs it."""

from __future__ import annotations

import hashlib
import socket

from mcplb.proxy.auth.edge import EdgeAuth, build_auth
from mcplb.proxy.config.hosts import default_allowed_hosts
from mcplb.proxy.config.schema import (
    AuthConfig,
    Config,
    LimitsConfig,
    RateLimitConfig,
    TimeoutsConfig,
)
from mcplb.proxy.routing.connection_caps import (
    ClientSlots,
    ConnectionCaps,
    default_caps,
    open_files_limit,
)
from mcplb.proxy.routing.host_check import HostPolicy
from mcplb.proxy.routing.rate_limit import (
    MemoryRateLimiter,
    RedisRateLimiter,
    ToolRules,
    build_rate_limiter,
    build_tool_rules,
)
from mcplb.strategies.forwarded import ForwardedClient, parse_networks

RateLimiter = MemoryRateLimiter | RedisRateLimiter


class Frontend:
    """Host policy, auth, rate limiter, client limits, timeouts and caps of one config."""

    __slots__ = (
        "auth",
        "auth_config",
        "client_slots",
        "connection_caps",
        "host_policy",
        "limits",
        "preserve_host",
        "rate_limit",
        "rate_limit_client",
        "rate_limit_tools",
        "rate_limiter",
        "timeouts",
        "via",
    )

    def __init__(self, config: Config, previous: Frontend | None = None) -> None:
        """``previous``: the frontend of the config before a reload. Its rate limiter is
        kept when ``rate_limit`` is unchanged (its buckets, or its Redis connection, live
        on), and its auth step when ``auth`` is unchanged (its keys and verified tokens);
        its connection and slot counts always are (open connections and requests in
        progress outlive a reload), held to the new caps."""
        self.host_policy = host_policy(config)
        self.limits: LimitsConfig = config.limits
        self.timeouts: TimeoutsConfig = config.timeouts
        self.preserve_host = config.preserve_host
        self.rate_limit: RateLimitConfig | None = config.rate_limit
        self.rate_limiter: RateLimiter | None = (
            previous.rate_limiter
            if previous is not None and previous.rate_limit == config.rate_limit
            else build_rate_limiter(config.rate_limit)
        )
        # The per-tool rules (rate_limit.tools): their buckets live in rate_limiter's store.
        self.rate_limit_tools: ToolRules | None = build_tool_rules(config.rate_limit)
        self.rate_limit_client = _forwarded_client(config)
        total, per_client = caps(config)
        per_slots = config.limits.max_in_flight_per_client
        if previous is None:
            self.connection_caps = ConnectionCaps(total, per_client)
            self.client_slots = ClientSlots(per_slots)
        else:
            self.connection_caps = previous.connection_caps
            self.connection_caps.total, self.connection_caps.per_client = total, per_client
            self.client_slots = previous.client_slots
            self.client_slots.cap = per_slots
        self.via = via_entry(config)
        # Edge authentication (``auth:``), checked before the rate limit (route.start).
        self.auth_config: AuthConfig | None = config.auth
        self.auth: EdgeAuth | None = (
            previous.auth
            if previous is not None and previous.auth_config == config.auth
            else build_auth(config.auth)
        )


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


def caps(config: Config) -> tuple[int, int]:
    """The client connection caps: configured, or sized from the descriptor limit."""
    limits = config.limits
    return default_caps(
        limits.max_client_connections, limits.max_connections_per_client, open_files_limit()
    )


def via_entry(config: Config) -> bytes:
    """This proxy's ``Via`` entry (RFC 9110 section 7.6.3): ``1.1 mcplb-`` and a pseudonym
    the same in every worker of one instance (a hash of the host name and the listen
    address), different between instances, that reveals neither. A request that comes
    back carrying it (a backend that is the proxy itself) gets 508."""
    seed = f"{socket.gethostname()} {config.listen_host} {config.listen_port}"
    return b"1.1 mcplb-" + hashlib.sha256(seed.encode()).hexdigest()[:12].encode()
