"""Per-client rate limiting: a token bucket per client key, in this process or in Redis.

Each client key (the client address, or a configured header's value) has a bucket holding at
most ``burst`` tokens that refills at ``rate`` tokens a second; a request takes one token or is
refused. ``take_token`` is the pure bucket step; the stores keep ``(tokens, stamp)`` per key:

- ``MemoryRateLimiter``: a per-process LRU table. With several workers or replicas each
  process has its own buckets, so a client may get up to that many times the limit.
- ``RedisRateLimiter``: one hash per key in a shared Redis, updated atomically by a Lua
  script on Redis's own clock, so every replica shares one bucket per client. Redis never
  blocks or refuses a request: a failure (or a call slower than the timeout) lets the request
  through (fails open), and Redis is left alone for a backoff before it is tried again
  (``proxy/redisconn/health.py``). With Sentinel (``redis.sentinels``) the probe after the
  backoff reaches the master the sentinels name then (``proxy/redisconn/link.py``): during a
  failover requests are not limited, and afterwards the buckets are those the new master
  holds (the replica's copy: at most the few replies it had not received yet are lost,
  which can only give a client back tokens it had spent).
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from mcplb.proxy.config.schema import RateLimitConfig, ToolRateConfig
from mcplb.proxy.redisconn.health import RedisHealth
from mcplb.proxy.redisconn.link import RedisLink

log = logging.getLogger("mcplb.ratelimit")

# Float dust: a client that waits exactly ``retry_after`` must get its token, although
# ``tokens + (1 - tokens) / rate * rate`` may come out a hair below 1.
EPSILON = 1e-9
MAX_PLAIN_KEY = 64  # longer (or non-printable) client keys are stored as their SHA-256
HASHED = "sha256:"
POLICY = '"default"'  # the policy name in the RateLimit-Policy / RateLimit fields


class RateDecision(NamedTuple):
    allowed: bool
    remaining: int  # whole tokens left after this request (0 when refused)
    retry_after: float  # seconds until one token is available (0.0 when allowed)
    reset: float  # seconds until the bucket is full again


def _decide(allowed: bool, tokens: float, rate: float, burst: int) -> RateDecision:
    """The decision once the bucket holds ``tokens`` (after taking one, if ``allowed``)."""
    reset = max(0.0, (burst - tokens) / rate)
    if allowed:
        return RateDecision(True, int(tokens + EPSILON), 0.0, reset)
    return RateDecision(False, 0, max(0.0, (1.0 - tokens) / rate), reset)


def take_token(
    tokens: float, stamp: float, now: float, rate: float, burst: int
) -> tuple[RateDecision, float, float]:
    """Pure token bucket step: refill by elapsed*rate capped at burst, take one if >= 1.
    Returns (decision, new_tokens, new_stamp)."""
    if now > stamp:  # a clock that went backwards neither refills nor drains
        tokens = min(float(burst), tokens + (now - stamp) * rate)
        stamp = now
    if tokens >= 1.0 - EPSILON:
        tokens = max(0.0, tokens - 1.0)
        return _decide(True, tokens, rate, burst), tokens, stamp
    return _decide(False, tokens, rate, burst), tokens, stamp


def bucket_key(key: str) -> str:
    """``key`` itself if short and printable ASCII, else its SHA-256: stored keys stay bounded."""
    plain = len(key) <= MAX_PLAIN_KEY and key.isascii() and key.isprintable()
    if plain and not key.startswith(HASHED):  # else a client could name another's hashed bucket
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return HASHED + digest


class MemoryRateLimiter:
    """Buckets in this process, at most ``max_keys`` of them (least recently used go first).

    An evicted key starts again with a full bucket: eviction can only let a client through
    early, never refuse one that is within its limit.
    """

    def __init__(self, config: RateLimitConfig, max_keys: int = 100_000) -> None:
        self.config = config
        self.errors = 0  # always 0: nothing here can fail (same attribute as Redis's)
        self.fail_open = 0  # always 0
        self._max_keys = max(1, max_keys)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(
        self, key: str, now: float, rate: float | None = None, burst: int | None = None
    ) -> RateDecision:
        """Take a token from ``key``'s bucket (``rate``/``burst``: a per-tool rule's own,
        else the config's)."""
        key = bucket_key(key)
        if rate is None or burst is None:
            rate, burst = self.config.rate, self.config.burst
        tokens, stamp = self._buckets.pop(key, (float(burst), now))
        decision, tokens, stamp = take_token(tokens, stamp, now, rate, burst)
        self._buckets[key] = (tokens, stamp)  # re-inserted: now the most recently used
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return decision


# KEYS[1]: the bucket hash; ARGV: rate (tokens/s), burst, epsilon. Returns {allowed, tokens}.
# TIME is Redis's clock, so replicas with skewed clocks share one bucket consistently.
# replicate_commands (a no-op from Redis 7) lets a script that read TIME write before 5.0.
TAKE_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local epsilon = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil or stamp == nil then
  tokens = burst
  stamp = now
end
if now > stamp then
  tokens = math.min(burst, tokens + (now - stamp) * rate)
  stamp = now
end
local allowed = 0
if tokens >= 1 - epsilon then
  tokens = math.max(0, tokens - 1)
  allowed = 1
end
local text = string.format('%.17g', tokens)
redis.call('HSET', KEYS[1], 'tokens', text, 'stamp', string.format('%.17g', stamp))
-- Once full again the bucket is the same as no bucket: let Redis drop it then (+1 s).
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, text}
"""


class RedisRateLimiter:
    """Buckets shared by replicas in Redis; fails open (and backs off) when Redis fails."""

    def __init__(
        self, config: RateLimitConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``clock`` paces the backoff after failures and the warnings."""
        self.config = config
        self.fail_open = 0  # requests let through without a Redis answer (failed or backing off)
        self._timeout = config.redis.timeout
        self._prefix = config.redis.prefix
        self._open = RateDecision(True, max(0, config.burst - 1), 0.0, 0.0)
        self._args = (repr(config.rate), str(config.burst), repr(EPSILON))
        self._link = RedisLink(config.redis)
        # EVALSHA, and SCRIPT LOAD + EVALSHA again on NOSCRIPT (a restarted or new Redis).
        self._script = self._link.client.register_script(TAKE_SCRIPT)
        # Down: answer fail-open until its retry_at, then let one call probe.
        self._health = RedisHealth(
            log,
            "rate limit",
            "letting requests through unlimited",
            clock,
            backoff_max=self._link.backoff_max,
        )
        self._probing = False
        self._closed = False

    @property
    def healthy(self) -> bool:
        """Whether requests currently ask Redis (False while backing off after a failure)."""
        return self._health.healthy

    @property
    def errors(self) -> int:
        """Redis failures (connect, timeout, script), for metrics."""
        return self._health.errors

    async def take(
        self, key: str, rate: float | None = None, burst: int | None = None
    ) -> RateDecision:
        """Take a token from ``key``'s bucket (``rate``/``burst``: a per-tool rule's own,
        else the config's); allowed without asking when Redis is down."""
        if rate is None or burst is None:
            rate, burst = self.config.rate, self.config.burst
            args, fail_open = self._args, self._open
        else:
            args = (repr(rate), str(burst), repr(EPSILON))
            fail_open = RateDecision(True, max(0, burst - 1), 0.0, 0.0)
        if self._closed:
            self.fail_open += 1
            return fail_open
        probe = not self._health.healthy
        if probe:
            # One request at a time finds out whether Redis is back; the rest do not wait.
            if self._probing or not self._health.probe_due():
                self.fail_open += 1
                return fail_open
            self._probing = True
        try:
            if probe:
                await self._link.drop_connections()  # the others fail open meanwhile
            reply = await asyncio.wait_for(
                self._script(keys=[self._prefix + bucket_key(key)], args=args),
                self._timeout,
            )
            allowed, tokens = reply
            decision = _decide(bool(int(allowed)), float(tokens), rate, burst)
        except Exception as error:  # any failure: let the request through
            self._health.failed(error, probe=probe)
            self.fail_open += 1
            return fail_open
        finally:
            if probe:
                self._probing = False
        if probe:
            self._health.recovered("limiting requests again")
        return decision

    async def close(self) -> None:
        self._closed = True
        try:
            await asyncio.wait_for(self._link.close(), self._timeout)
        except Exception as error:  # closing must not fail shutdown either
            log.debug("closing the Redis client failed: %r", error)


def _ceil(seconds: float) -> int:
    return max(0, math.ceil(seconds - EPSILON))  # float dust must not add a second


def rate_limit_headers(
    config: RateLimitConfig | ToolRule, decision: RateDecision
) -> list[tuple[bytes, bytes]]:
    """RateLimit-Policy and RateLimit (draft-ietf-httpapi-ratelimit-headers) of the main
    bucket or of a per-tool rule's (named after the rule), the legacy
    RateLimit-Limit/-Remaining/-Reset trio, and Retry-After when refused."""
    rate, burst = config.rate, config.burst
    policy = config.policy if isinstance(config, ToolRule) else POLICY
    window = max(1, _ceil(burst / rate))
    reset = _ceil(decision.reset)
    headers = [
        (b"ratelimit-policy", f"{policy};q={burst};w={window}".encode()),
        (b"ratelimit", f"{policy};r={decision.remaining};t={reset}".encode()),
        (b"ratelimit-limit", str(burst).encode()),
        (b"ratelimit-remaining", str(decision.remaining).encode()),
        (b"ratelimit-reset", str(reset).encode()),
    ]
    if not decision.allowed:
        headers.append((b"retry-after", str(max(1, _ceil(decision.retry_after))).encode()))
    return headers


def build_rate_limiter(
    config: RateLimitConfig | None,
) -> MemoryRateLimiter | RedisRateLimiter | None:
    """The limiter ``config`` asks for; None when rate limiting is off."""
    if config is None:
        return None
    if config.store == "redis":
        return RedisRateLimiter(config)
    return MemoryRateLimiter(config)


# -- per-tool rules (rate_limit.tools) ---------------------------------------------------

# ``Request.tool`` of a POST that may be a tool call whose tool is not known: its body was
# not read whole before routing (past the 64 KiB read bound, not JSON), is a batch, or its
# name is no string of at most mcp_era.MAX_VALUE characters. Such a call counts against
# every rule: padding a body past the bound must not slip a call past its tool's limit. (A
# client naming its tool this, NUL included, only limits itself more.)
UNKNOWN_TOOL = "\x00unknown"


class ToolRule:
    """One ``rate_limit.tools`` rule, compiled: which tool names it matches, its bucket."""

    __slots__ = ("burst", "match", "name", "policy", "rate")

    def __init__(self, config: ToolRateConfig) -> None:
        self.name = config.name  # the metrics label and policy name: config's, never a client's
        self.rate = config.rate
        self.burst = config.burst
        self.policy = f'"{config.name}"'  # a quoted string (checks.py: no quote in a name)
        # Python 3.11's fnmatch.translate makes "*" atomic: no backtracking blow-up on a
        # long name (the names matched are at most mcp_era.MAX_VALUE characters anyway).
        self.match = re.compile(fnmatch.translate(config.name)).match

    def bucket(self, client: str) -> str:
        """The bucket of ``client`` (rate_key's key) under this rule: one per rule and
        client, whatever tool names the client sends."""
        return f"t:{self.name}:{client}"


class ToolRules:
    """The per-tool rules of one config: the first rule whose name matches a call's tool
    applies; a call whose tool is unknown (``UNKNOWN_TOOL``) takes a token under each."""

    __slots__ = ("rules",)

    def __init__(self, configs: tuple[ToolRateConfig, ...]) -> None:
        self.rules = tuple(ToolRule(config) for config in configs)

    def applying(self, tool: str) -> tuple[ToolRule, ...]:
        """The rules a call of ``tool`` counts against (none, one, or all when unknown)."""
        if tool == UNKNOWN_TOOL:
            return self.rules
        for rule in self.rules:
            if rule.match(tool) is not None:
                return (rule,)
        return ()


def build_tool_rules(config: RateLimitConfig | None) -> ToolRules | None:
    """The per-tool rules ``config`` has; None when there are none."""
    if config is None or not config.tools:
        return None
    return ToolRules(config.tools)
