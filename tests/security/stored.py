"""Everything a test's Redis and spool hold, as one text to search (every key, whatever its type)."""

from __future__ import annotations

from pathlib import Path

import redis


def redis_dump(client: redis.Redis) -> dict[str, str]:
    """Every key with its whole value as text: strings, hashes, lists, sets, sorted sets and streams."""
    out = {}
    for raw in client.scan_iter(count=1000):
        key = raw.decode()
        kind = client.type(raw).decode()
        if kind == "string":
            value: object = client.get(raw)
        elif kind == "hash":
            value = client.hgetall(raw)
        elif kind == "list":
            value = client.lrange(raw, 0, -1)
        elif kind == "set":
            value = client.smembers(raw)
        elif kind == "zset":
            value = client.zrange(raw, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(raw)
        else:
            value = kind
        out[key] = repr(value)
    return out


def spool_dump(spool_dir: Path) -> str:
    if not spool_dir.exists():
        return ""
    return "".join(p.read_text(errors="replace") for p in sorted(spool_dir.rglob("*")) if p.is_file())


def everything_stored(client: redis.Redis, spool_dir: Path) -> str:
    return "\n".join(f"{k} {v}" for k, v in sorted(redis_dump(client).items())) + "\n" + spool_dump(spool_dir)
