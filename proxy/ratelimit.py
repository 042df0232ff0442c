"""Per-key rate limits: a token bucket per client key, shared by every proxy replica through Redis.

The bucket lives in one Redis hash per key (``nextstate:ratelimit:<key hash>``), refilled and taken from
by one Lua script on Redis's own clock, so N replicas together allow the key's rate, not N times it.
The hash expires once it would be full again. When Redis cannot be reached the limiter fails open to a
bucket in this process (each replica then allows the key's rate on its own) and tries Redis again after
``retry_s``, so an outage neither stops serving nor makes every request wait for a Redis timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
import structlog

from proxy.redis_connect import CLUSTER_UNREACHABLE

log = structlog.get_logger("proxy.ratelimit")

REDIS_DOWN = (redis.RedisError, OSError, *CLUSTER_UNREACHABLE)

# KEYS[1] the bucket; ARGV capacity (tokens), rate (tokens per second). Returns the wait in ms (0 = go now).
# Time comes from Redis (TIME): the replicas' clocks never disagree about a bucket.
_TAKE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(held[1]) or capacity
local at = tonumber(held[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate / 1000)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) * 1000 / rate) + 1000)
return wait
"""


class Limited(Protocol):
    """What a limiter needs of a client key."""

    @property
    def digest(self) -> bytes: ...
    @property
    def rpm(self) -> float: ...
    @property
    def burst(self) -> float: ...
    @property
    def key_hash(self) -> str: ...


def bucket_key(key_hash: str) -> str:
    """The Redis key of a client key's bucket (a single key: no script shares it with another)."""
    return f"nextstate:ratelimit:{key_hash}"


@dataclass
class Bucket:
    tokens: float
    at: float


@dataclass
class RateLimiter:
    """A token bucket per key, in this process (the fallback while Redis is unreachable)."""

    clock: Callable[[], float] = time.monotonic
    buckets: dict[bytes, Bucket] = field(default_factory=dict)

    def take(self, key: Limited) -> float:
        """0 when the request may go now, else the seconds until it may."""
        if key.rpm <= 0:
            return 0.0
        now = self.clock()
        capacity = key.burst or key.rpm
        rate = key.rpm / 60.0
        bucket = self.buckets.get(key.digest)
        if bucket is None:
            bucket = self.buckets[key.digest] = Bucket(capacity, now)
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / rate


@dataclass
class SharedLimiter:
    """The token bucket of each key in Redis; the in-process ``local`` one while Redis is unreachable."""

    local: RateLimiter = field(default_factory=RateLimiter)
    retry_s: float = 1.0
    """After Redis failed, how long only the local bucket is used before Redis is tried again."""
    clock: Callable[[], float] = time.monotonic
    _down_until: float = 0.0
    _scripts: dict[int, Any] = field(default_factory=dict)

    async def take(self, key: Limited, client: Any | None) -> float:
        """0 when the request may go now, else the seconds until it may (``client``: the async Redis client,
        None before the proxy's lifespan has opened it)."""
        if key.rpm <= 0:
            return 0.0
        if client is None or self.clock() < self._down_until:
            return self.local.take(key)
        script = self._scripts.get(id(client))
        if script is None:  # EVALSHA, loading the script again by itself after a Redis restart
            script = self._scripts[id(client)] = client.register_script(_TAKE)
        try:
            wait_ms = await script(keys=[bucket_key(key.key_hash)], args=[key.burst or key.rpm, key.rpm / 60.0])
        except REDIS_DOWN as exc:
            if not self._down_until:
                log.warning("rate_limit_redis_unavailable_local_fallback", error=repr(exc))
            self._down_until = self.clock() + self.retry_s
            return self.local.take(key)
        if self._down_until:
            log.info("rate_limit_shared_again")
            self._down_until = 0.0
        return int(wait_ms) / 1000.0
