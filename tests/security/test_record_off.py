"""Traffic that must not be kept (``X-NextState-Record: off``, a key set to ``record=off``) leaves nothing
in Redis or the spool: every key is read back after it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import redis

from proxy.records import FEEDBACK_STREAM, UPSTREAM_OUTCOMES_KEY, turn_key
from tests.security.conftest import SUITE
from tests.security.stored import everything_stored, redis_dump
from tests.support import figures

KEY_OFF, KEY_ON = "sk-private-0123456789", "sk-recorded-0123456789"
MARK = "zebra-quartz-private"
FEEDBACK_MARK = "walrus-feldspar-private"
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
    if key == KEY_OFF or headers.get("X-NextState-Record") == "off":  # dropped, whatever turn it names
        assert response.status_code == 200 and response.json()["status"] == "not_recorded", response.text
    else:
        assert response.status_code == 404, response.text  # the completion's id is not a turn id


def _rate_unrecorded(url: str, turn_id: str, key: str, headers: dict[str, str]) -> None:
    """Feedback on a recorded turn, sent with recording off: answered, and dropped."""
    response = httpx.post(f"{url}/v1/feedback", json={"turn_id": turn_id, "rating": 1, "comment": FEEDBACK_MARK},
                          headers={"authorization": f"Bearer {key}", **headers}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "not_recorded" and response.json()["turn_id"] == turn_id


def test_feedback_with_recording_off_is_not_stored(start_proxy: Callable[..., str], redis_client: redis.Redis,
                                                   tmp_path: Path) -> None:
    """The turn was recorded; feedback on it with the header off, or with a key set to record=off, is not."""
    url = start_proxy(api_keys=f"{KEY_OFF};record=off, {KEY_ON}")
    with openai.OpenAI(base_url=f"{url}/v1", api_key=KEY_ON, max_retries=0, timeout=10) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "rate me"}])
        turn_id = raw.headers["x-nextstate-turn-id"]
    deadline = time.monotonic() + 5
    while not redis_client.exists(turn_key(turn_id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert redis_client.exists(turn_key(turn_id))
    _rate_unrecorded(url, turn_id, KEY_ON, {"X-NextState-Record": "off"})
    _rate_unrecorded(url, turn_id, KEY_OFF, {})
    _rate_unrecorded(url, turn_id, KEY_OFF, {"X-NextState-Record": "on"})  # the key's setting wins
    # a bad body is still refused with recording off
    refused = httpx.post(f"{url}/v1/feedback", json={"turn_id": turn_id, "rating": 5},
                         headers={"authorization": f"Bearer {KEY_OFF}"}, timeout=10)
    assert refused.status_code == 400
    time.sleep(0.5)  # past the recorder's batching
    stored = everything_stored(redis_client, tmp_path / "home" / "spool")
    kept = redis_client.xlen(FEEDBACK_STREAM) + stored.count(FEEDBACK_MARK)
    figures.add(SUITE, "feedback kept with recording off", kept)
    assert kept == 0

    # the same feedback with recording on is kept: the check above could have seen it
    response = httpx.post(f"{url}/v1/feedback", json={"turn_id": turn_id, "rating": 1, "comment": FEEDBACK_MARK},
                          headers={"authorization": f"Bearer {KEY_ON}"}, timeout=10)
    assert response.json()["status"] == "accepted"
    deadline = time.monotonic() + 5
    while FEEDBACK_MARK not in everything_stored(redis_client, tmp_path / "home" / "spool") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert redis_client.xlen(FEEDBACK_STREAM) == 1


def test_feedback_is_not_stored_by_a_proxy_that_records_nothing(start_proxy: Callable[..., str],
                                                                redis_client: redis.Redis) -> None:
    url = start_proxy(record=False)
    response = httpx.post(f"{url}/v1/feedback", json={"turn_id": "t-1", "rating": -1, "comment": FEEDBACK_MARK},
                          timeout=10)
    assert response.status_code == 200 and response.json()["status"] == "not_recorded"
    time.sleep(0.3)
    assert set(redis_dump(redis_client)) <= ALLOWED


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
