"""Redis clients from a ``NEXTSTATE_REDIS_URL``: one place that reads the URL for every process.

``redis://``, ``rediss://`` and ``unix://`` URLs give a plain client, as ``Redis.from_url`` does.
``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster://`` for TLS) gives a
Redis Cluster client that discovers the cluster from any of the listed nodes. Every multi-key script
and transaction of nextstate keeps its keys in one hash slot (``tests/test_key_slots.py``), so both
clients run the same code. RQ cannot run on a cluster (its keys span slots and it names them itself):
``queue_url`` gives the single-node Redis the labeler's queues live on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterUnreachableError, SlotNotCoveredError

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
# What a cluster client raises, beside redis.RedisError, when no node (or none serving a slot) answers:
# catch it wherever "Redis is down" is caught.
CLUSTER_UNREACHABLE: tuple[type[Exception], ...] = (RedisClusterUnreachableError, SlotNotCoveredError)


@dataclass(frozen=True)
class ClusterURL:
    """What a cluster URL names: the nodes to start from and the credentials."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    ssl: bool = False


def is_cluster(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterURL:
    """``redis+cluster://[user:password@]host:port[,host:port...]`` as its parts (``ValueError`` if malformed)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL (redis+cluster://host:port[,host:port...]): {url!r}")
    auth, _, hosts = rest.rpartition("@")
    hosts = hosts.rstrip("/")
    if "?" in hosts or "/" in hosts:
        raise ValueError(f"a Redis Cluster URL takes no database or options: {url!r}")
    nodes = []
    for part in hosts.split(","):
        parsed = urlsplit(f"//{part.strip()}")
        if not parsed.hostname or parsed.port is None:
            raise ValueError(f"every node of a Redis Cluster URL needs host:port, got {part!r} in {url!r}")
        nodes.append((parsed.hostname, parsed.port))
    username, _, password = auth.partition(":") if auth else ("", "", "")
    if auth and ":" not in auth:  # "redis+cluster://secret@host:port": a password alone
        username, password = "", username
    return ClusterURL(tuple(nodes), unquote(username) or None, unquote(password) or None,
                      ssl=scheme.lower() == "rediss+cluster")


def connect(url: str, **options: Any) -> redis.Redis:
    """A synchronous client for ``url``; ``options`` (timeouts, …) go to the connections either way.

    Typed as ``redis.Redis``: ``RedisCluster`` offers the same commands nextstate uses.
    """
    if not is_cluster(url):
        return redis.Redis.from_url(url, **options)
    parts = parse_cluster_url(url)
    return cast(redis.Redis, RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in parts.nodes],
                                          username=parts.username, password=parts.password, ssl=parts.ssl,
                                          **options))


def connect_async(url: str, **options: Any) -> aioredis.Redis:
    """The asyncio client for ``url`` (the proxy's), cluster or not, as ``connect``."""
    if not is_cluster(url):
        return aioredis.Redis.from_url(url, **options)
    parts = parse_cluster_url(url)
    return cast(aioredis.Redis, AsyncRedisCluster(startup_nodes=[AsyncClusterNode(h, p) for h, p in parts.nodes],
                                                  username=parts.username, password=parts.password, ssl=parts.ssl,
                                                  **options))


def connect_queues(redis_url: str, configured: str | None, **options: Any) -> redis.Redis:
    """A plain client of the Redis the RQ queues live on (see ``queue_url``)."""
    return redis.Redis.from_url(queue_url(redis_url, configured), **options)


def queue_url(redis_url: str, configured: str | None) -> str:
    """The Redis URL of the RQ queues: ``configured`` (``NEXTSTATE_QUEUE_URL``), else the Redis URL itself.

    A cluster holds no RQ queue (RQ's enqueue writes a job hash, a queue list and the set of queues in one
    transaction, under names it chooses), so with a cluster URL the queue URL is required.
    """
    if configured:
        if is_cluster(configured):
            raise ValueError("NEXTSTATE_QUEUE_URL must name a single Redis node: RQ does not run on Redis Cluster")
        return configured
    if is_cluster(redis_url):
        raise ValueError("NEXTSTATE_REDIS_URL names a Redis Cluster: set NEXTSTATE_QUEUE_URL to a single Redis "
                         "node for the labeler's RQ queues (RQ does not run on Redis Cluster)")
    return redis_url


def queue_settings_problem(redis_url: str | None, configured: str | None) -> str | None:
    """Why these settings name no usable Redis for the RQ queues (None: they do); checked at start."""
    try:
        queue_url(redis_url or "redis://embedded", configured)
    except ValueError as exc:
        return str(exc)
    return None
