"""``nextstate migrate-keys``: rename the keys of a Redis written before keys carried cluster hash tags.

The keys one script or transaction touches share a hash tag now (``{rec}``: the proxy's records and
session state; ``{learn}``: samples and the registry), so that they fit one Redis Cluster slot. A Redis
written by an earlier version holds the same data under the earlier names: this renames each key that
exists under its earlier name and not yet under its new one (``RENAMENX``: a value keeps its TTL, a stream
its consumer groups), and says how many it renamed. Run it once on the single Redis node, with the
nextstate processes stopped, before starting the new version; running it again renames nothing. Moving
the data onto a cluster afterwards is Redis's own ``redis-cli --cluster import``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator

import redis

from labeler.records import SAMPLES_STREAM, sample_key
from proxy.records import (
    FEEDBACK_STREAM,
    TRANSITIONS_STREAM,
    TURNS_STREAM,
    record_seen_key,
    response_context_key,
    session_key,
    turn_key,
)
from proxy.redis_connect import connect, is_cluster
from proxy.store import IDLE_SESSIONS_KEY, chain_key
from registry.records import RETIRED_KEY, SCOPES_KEY, scope_keys

# earlier name -> new name, for the keys with a fixed name
FIXED = {
    "nextstate:turns": TURNS_STREAM,
    "nextstate:transitions": TRANSITIONS_STREAM,
    "nextstate:feedback": FEEDBACK_STREAM,
    "nextstate:sessions:idle": IDLE_SESSIONS_KEY,
    "nextstate:samples": SAMPLES_STREAM,
    "nextstate:registry:retired": RETIRED_KEY,
    "nextstate:registry:scopes": SCOPES_KEY,
    **{f"nextstate:registry:{name}": key for name, key in zip(
        ("versions", "aliases", "counter", "canary", "frozen", "stable-history", "lock", "events"),
        scope_keys("global"), strict=True)},
}

# earlier per-entity names (``nextstate:<kind>:{<id>}``) -> the new name of that id
PER_ID = {
    "seen": record_seen_key,
    "turn": turn_key,
    "session": session_key,
    "chain": chain_key,
    "response": response_context_key,
    "sample": sample_key,
}
_PER_ID = re.compile(r"^nextstate:(seen|turn|session|chain|response|sample):\{(.+)\}$")
_SCOPED = re.compile(r"^nextstate:registry:scope:\{([^}]+)\}:(.+)$")
_SCOPE_FIELDS = dict(zip(("versions", "aliases", "counter", "canary", "frozen", "stable-history", "lock", "events"),
                         range(8), strict=True))


def new_name(old: str) -> str | None:
    """The current name of a key written under an earlier name (None: not an earlier name)."""
    if old in FIXED:
        return FIXED[old]
    per_id = _PER_ID.match(old)
    if per_id:
        return PER_ID[per_id.group(1)](per_id.group(2))
    scoped = _SCOPED.match(old)
    if scoped and scoped.group(2) in _SCOPE_FIELDS:
        return scope_keys(scoped.group(1))[_SCOPE_FIELDS[scoped.group(2)]]
    return None


def _earlier_keys(client: redis.Redis) -> Iterator[str]:
    for raw in client.scan_iter(match="nextstate:*", count=1000):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        if "{rec}" not in key and "{learn}" not in key:
            yield key


def migrate(client: redis.Redis) -> dict[str, int]:
    """Rename every key found under an earlier name; the counts of keys renamed and of conflicts (the new
    name is taken already: both keys are left as they are)."""
    counts = {"renamed": 0, "conflicts": 0}
    for old in list(_earlier_keys(client)):
        new = new_name(old)
        if new is None:
            continue
        if client.renamenx(old, new):
            counts["renamed"] += 1
        elif client.exists(old):
            counts["conflicts"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    from proxy.embedded_redis import resolve_redis_url
    from registry.settings import RegistrySettings

    parser = argparse.ArgumentParser(prog="nextstate migrate-keys", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.parse_args(argv)
    settings = RegistrySettings()
    url, embedded = resolve_redis_url(settings.redis_url, settings.home_dir())
    if is_cluster(url):
        print("nextstate migrate-keys: run it on the single Redis node the data was written to, before moving "
              "the data onto a cluster", file=sys.stderr)
        return 2
    client = connect(url, socket_timeout=60)
    try:
        counts = migrate(client)
    finally:
        client.close()
        if embedded is not None:
            embedded.stop()
    print(json.dumps(counts))
    return 1 if counts["conflicts"] else 0
