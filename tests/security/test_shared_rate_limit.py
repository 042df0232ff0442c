"""A key's rate limit holds across proxy replicas on one Redis, and fails open (per process) without it."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import redis

from proxy.access import digest_of
from proxy.ratelimit import bucket_key
from registry.forget import Who, forget, key_hash_of
from tests.security.conftest import SUITE
from tests.support import figures
from tests.support.redis_server import RedisServer

KEY = "sk-shared-0123456789"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _chat(url: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {KEY}"}, timeout=10)


def test_two_replicas_on_one_redis_allow_the_limit_together(start_proxy: Callable[..., str],
                                                            redis_client: redis.Redis) -> None:
    replicas = [start_proxy(api_keys=f"{KEY};rpm=4"), start_proxy(api_keys=f"{KEY};rpm=4")]
    answers = [_chat(replicas[i % 2]) for i in range(8)]
    allowed = sum(r.status_code == 200 for r in answers)
    figures.add(SUITE, "requests over a key's limit let through by a second replica", max(0, allowed - 4))
    assert [r.status_code for r in answers] == [200] * 4 + [429] * 4
    for refused in answers[4:]:
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 15  # one token back every 15 s at 4 rpm
    # the bucket is one small hash per key, named by the key's hash, and expires once it would be full again
    bucket = bucket_key(digest_of(KEY).hex()[:16])
    assert KEY not in repr(redis_client.keys("*"))
    assert 0 < redis_client.pttl(bucket) <= 61_000


def test_without_redis_each_replica_falls_back_to_its_own_limit(start_proxy: Callable[..., str],
                                                                  private_redis: RedisServer) -> None:
    replicas = [start_proxy(api_keys=f"{KEY};rpm=2", redis=private_redis.url) for _ in range(2)]
    private_redis.stop()
    answers = {url: [_chat(url).status_code for _ in range(3)] for url in replicas}
    assert list(answers.values()) == [[200, 200, 429]] * 2, answers  # served, and still limited per process


def test_forgetting_a_key_removes_its_bucket(start_proxy: Callable[..., str], redis_client: redis.Redis) -> None:
    url = start_proxy(api_keys=f"{KEY};rpm=4")
    assert _chat(url).status_code == 200
    bucket = bucket_key(key_hash_of(KEY))
    assert redis_client.exists(bucket)
    assert forget(redis_client, Who(key_hash=key_hash_of(KEY)))["rate_limit_buckets"] == 1
    assert not redis_client.exists(bucket)
