"""``NEXTSTATE_REDIS_URL`` and ``NEXTSTATE_QUEUE_URL``: the forms accepted, and what is refused with a reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from proxy.redis_connect import (
    ClusterURL,
    connect,
    is_cluster,
    parse_cluster_url,
    queue_settings_problem,
    queue_url,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("url", "parsed"), [
    ("redis+cluster://10.0.0.1:6379", ClusterURL((("10.0.0.1", 6379),))),
    ("redis+cluster://a:7000,b:7001,c:7002/", ClusterURL((("a", 7000), ("b", 7001), ("c", 7002)))),
    ("rediss+cluster://user:p%40ss@a:7000", ClusterURL((("a", 7000),), "user", "p@ss", ssl=True)),
    ("redis+cluster://secret@a:7000", ClusterURL((("a", 7000),), None, "secret")),
    ("REDIS+CLUSTER://[::1]:7000", ClusterURL((("::1", 7000),))),
])
def test_cluster_urls(url: str, parsed: ClusterURL) -> None:
    assert is_cluster(url)
    assert parse_cluster_url(url) == parsed


@pytest.mark.parametrize(("url", "reason"), [
    ("redis+cluster://a", "host:port"),
    ("redis+cluster://a:7000,", "host:port"),
    ("redis+cluster://a:7000/0", "no database or options"),
    ("redis+cluster://a:7000?ssl_cert_reqs=none", "no database or options"),
    ("redis://a:7000", "not a Redis Cluster URL"),
])
def test_malformed_cluster_urls_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_cluster_url(url)


def test_plain_urls_give_a_plain_client(redis_url: str) -> None:
    assert not is_cluster(redis_url) and not is_cluster("redis://localhost:6379/0")
    with connect(redis_url, socket_timeout=1) as client:
        assert type(client) is redis.Redis and client.ping()


def test_the_queues_live_on_a_single_node() -> None:
    assert queue_url("redis://a:6379/0", None) == "redis://a:6379/0"
    assert queue_url("redis+cluster://a:7000", "redis://q:6379/1") == "redis://q:6379/1"
    with pytest.raises(ValueError, match="set NEXTSTATE_QUEUE_URL"):
        queue_url("redis+cluster://a:7000", None)
    with pytest.raises(ValueError, match="single Redis node"):
        queue_url("redis://a:6379", "redis+cluster://b:7000")
    assert queue_settings_problem(None, None) is None  # the embedded Redis holds everything


def test_a_worker_on_a_cluster_without_a_queue_url_refuses_to_start(tmp_path: Path) -> None:
    env = {**os.environ, "NEXTSTATE_REDIS_URL": "redis+cluster://127.0.0.1:7000", "NEXTSTATE_HOME": str(tmp_path)}
    env.pop("NEXTSTATE_QUEUE_URL", None)
    done = subprocess.run([sys.executable, "-m", "nextstate", "worker"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 2
    assert "set NEXTSTATE_QUEUE_URL" in done.stderr
