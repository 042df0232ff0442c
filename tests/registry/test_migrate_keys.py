"""``nextstate migrate-keys``: data written under the keys of earlier versions is found under today's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import redis

from labeler.records import SAMPLES_STREAM, sample_key
from proxy.records import ROUTING_KEY, TURNS_STREAM, record_seen_key, session_key, turn_key
from proxy.store import IDLE_SESSIONS_KEY, chain_key
from registry.migrate_keys import migrate, new_name
from registry.store import Registry

ROOT = Path(__file__).resolve().parents[2]


def write_earlier_keys(client: redis.Redis) -> None:
    """What an earlier version left in Redis: records, session state, samples and two scopes' registries."""
    client.xadd("nextstate:turns", {"record": "{}"})
    client.xgroup_create("nextstate:turns", "audit", id="0")
    client.set("nextstate:seen:{turn-1}", "1", ex=3600)
    client.set("nextstate:turn:{turn-1}", '{"turn_id": "turn-1"}', ex=3600)
    client.set("nextstate:session:{sess-1}", '{"turn_id": "turn-1"}', ex=600)
    client.zadd("nextstate:sessions:idle", {"sess-1": 1.0})
    client.set("nextstate:chain:{abc}", "sess-1", ex=600)
    client.xadd("nextstate:samples", {"record": "{}"})
    client.xgroup_create("nextstate:samples", "learner", id="0")
    client.set("nextstate:sample:{turn-1}", '{"revision": 0}')
    client.hset("nextstate:registry:aliases", "stable", "v1")
    client.set("nextstate:registry:counter", 1)
    client.hset("nextstate:registry:scope:{u-0123456789abcdef}:aliases", "stable", "v2")
    client.sadd("nextstate:registry:scopes", "u-0123456789abcdef")
    client.set(ROUTING_KEY, "{}")  # a key whose name did not change


def test_every_earlier_key_is_renamed_once_keeping_ttls_and_consumer_groups(redis_client: redis.Redis,
                                                                              tmp_path: Path) -> None:
    write_earlier_keys(redis_client)
    assert migrate(redis_client) == {"renamed": 12, "conflicts": 0}
    assert migrate(redis_client) == {"renamed": 0, "conflicts": 0}
    assert redis_client.xinfo_groups(TURNS_STREAM)[0]["name"] == b"audit"
    assert redis_client.xinfo_groups(SAMPLES_STREAM)[0]["name"] == b"learner"
    assert 3500 < redis_client.ttl(record_seen_key("turn-1")) <= 3600
    assert redis_client.get(turn_key("turn-1")) is not None and redis_client.ttl(session_key("sess-1")) > 0
    assert redis_client.zscore(IDLE_SESSIONS_KEY, "sess-1") == 1.0
    assert redis_client.get(chain_key("abc")) == b"sess-1" and redis_client.get(sample_key("turn-1")) is not None
    registry = Registry(redis_client, tmp_path / "adapters")
    assert registry.alias("stable") == "v1" and registry.allocate_version() == "v2"
    assert registry.scopes() == ["global", "u-0123456789abcdef"]
    assert registry.scoped("u-0123456789abcdef").alias("stable") == "v2"
    assert redis_client.get(ROUTING_KEY) == b"{}"
    assert not [k for k in redis_client.scan_iter("nextstate:*") if b"{rec}" not in k and b"{learn}" not in k
                and k != ROUTING_KEY.encode()]


def test_a_key_taken_under_both_names_is_left_alone_and_reported(redis_client: redis.Redis) -> None:
    redis_client.hset("nextstate:registry:aliases", "stable", "v1")
    redis_client.hset(new_name("nextstate:registry:aliases") or "", "stable", "v7")
    assert migrate(redis_client) == {"renamed": 0, "conflicts": 1}
    assert redis_client.hget("nextstate:registry:aliases", "stable") == b"v1"


def test_the_command(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    write_earlier_keys(redis_client)
    env = {**os.environ, "NEXTSTATE_REDIS_URL": redis_url, "NEXTSTATE_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "nextstate", "migrate-keys"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"renamed": 12, "conflicts": 0}
    refused = subprocess.run([sys.executable, "-m", "nextstate", "migrate-keys"], capture_output=True, text=True,
                             env={**env, "NEXTSTATE_REDIS_URL": "redis+cluster://127.0.0.1:7000"}, cwd=ROOT, timeout=60)
    assert refused.returncode == 2 and "single Redis node" in refused.stderr
