"""Traffic that must not be kept (``X-NextState-Record: off``, a key set to ``record=off``) leaves nothing
in Redis or the spool: every key is read back after it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import redis

from proxy.records import UPSTREAM_OUTCOMES_KEY
from tests.security.conftest import SUITE
from tests.security.stored import everything_stored, redis_dump
from tests.support import figures

KEY_OFF, KEY_ON = "sk-private-0123456789", "sk-recorded-0123456789"
MARK = "zebra-quartz-private"
# what the proxy may keep of unrecorded traffic: per-version upstream outcome counts (the canary's error rate)
ALLOWED = {UPSTREAM_OUTCOMES_KEY}


def _converse(url: str, key: str, headers: dict[str, str]) -> None:
    """Two linked turns (plain and streamed), a Responses turn and feedback, all carrying ``MARK``."""
    with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=10,
                       default_headers=headers) as sdk:
        messages = [{"role": "user", "content": f"remember {MARK}"}]
        reply = sdk.chat.completions.create(model="m", messages=messages, user=f"user-{MARK}")  # type: ignore[arg-type]
        messages += [{"role": "assistant", "content": reply.choices[0].message.content},
                     {"role": "user", "content": f"again {MARK}"}]
        stream = sdk.chat.completions.create(model="m", messages=messages, stream=True)  # type: ignore[arg-type]
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        sdk.responses.create(model="m", input=f"and {MARK}")
    response = httpx.post(f"{url}/v1/feedback", json={"turn_id": reply.id, "rating": -1, "comment": MARK},
                          headers={"authorization": f"Bearer {key}", **headers}, timeout=10)
    assert response.status_code in (200, 404), response.text  # 404: an unrecorded turn is unknown


def test_unrecorded_traffic_leaves_nothing(start_proxy: Callable[..., str], redis_client: redis.Redis,
                                           tmp_path: Path) -> None:
    url = start_proxy(api_keys=f"{KEY_OFF};record=off, {KEY_ON}", session_idle_timeout_s=0.2)
    _converse(url, KEY_ON, {"X-NextState-Record": "off"})
    _converse(url, KEY_OFF, {})
    _converse(url, KEY_OFF, {"X-NextState-Record": "on"})  # the key's setting wins
    time.sleep(1.0)  # past the recorder's batching, the outcome flush and an idle sweep
    keys = set(redis_dump(redis_client))
    stored = everything_stored(redis_client, tmp_path / "home" / "spool")
    kept = len(keys - ALLOWED) + stored.count(MARK)
    figures.add(SUITE, "records kept of unrecorded traffic", kept)
    assert keys <= ALLOWED, keys
    assert MARK not in stored

    _converse(url, KEY_ON, {})  # the same traffic recorded: the check above could have seen it
    deadline = time.monotonic() + 5
    while MARK not in everything_stored(redis_client, tmp_path / "home" / "spool") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert MARK in everything_stored(redis_client, tmp_path / "home" / "spool")
