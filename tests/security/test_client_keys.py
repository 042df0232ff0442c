"""Client keys over real HTTP: who gets in, how often, and what a key's settings do to a request."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from proxy.access import CLIENT, ClientAccess, ClientKey, KeyConfigError, RateLimiter, match, parse_keys
from tests.security.conftest import SUITE
from tests.support import figures
from tests.support.fake_upstream import FakeUpstream

KEY_A, KEY_B = "sk-alpha-0123456789", "sk-bravo-9876543210"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
# every kind of path a client can reach: chat (and without /v1), completions, Responses, models, feedback, pass-through
PATHS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/chat/completions", CHAT), ("POST", "/chat/completions", CHAT),
    ("POST", "/v1/chat/completions/", CHAT), ("POST", "/v1/completions", {"model": "m", "prompt": "hi"}),
    ("POST", "/v1/responses", {"model": "m", "input": "hi"}), ("GET", "/v1/models", None),
    ("POST", "/v1/feedback", {"turn_id": "t", "rating": "up"}), ("POST", "/v1/embeddings", {"model": "m", "input": "x"}),
    ("GET", "/v1/files", None), ("POST", "/v1/../v1/chat/completions", CHAT),
]


def _send(url: str, method: str, path: str, body: dict[str, Any] | None, key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}".strip()} if key is not None else {}
    return httpx.request(method, url + path, json=body, headers=headers, timeout=10)


def test_without_a_valid_key_nothing_gets_in(start_proxy: Callable[..., str], fake: FakeUpstream) -> None:
    digest_b = hashlib.sha256(KEY_B.encode()).hexdigest()
    url = start_proxy(api_keys=f"{KEY_A}, sha256:{digest_b}")
    got_in = 0
    for method, path, body in PATHS:
        for key in (None, "", "sk-wrong", KEY_A + "x", KEY_A[:-1], digest_b, f"sha256:{digest_b}"):
            response = _send(url, method, path, body, key)
            got_in += response.status_code != 401
            assert response.status_code == 401, (path, key, response.text)
            assert response.json()["error"]["code"] == "invalid_api_key"
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    for header in ({"authorization": f"Basic {KEY_A}"}, {"authorization": KEY_A}):
        got_in += httpx.post(url + "/v1/chat/completions", json=CHAT, headers=header, timeout=10).status_code != 401
    got_in += len(fake.requests)  # the upstream saw none of them
    figures.add(SUITE, "unauthorised requests that got in", got_in)
    assert got_in == 0

    for key in (KEY_A, KEY_B):  # a plain key and one configured by its hash
        assert _send(url, "POST", "/v1/chat/completions", CHAT, key).status_code == 200
    assert httpx.post(url + "/v1/chat/completions", json=CHAT, headers={"x-api-key": KEY_B}, timeout=10).status_code == 200
    assert _send(url, "GET", "/v1/models", None, KEY_A).status_code == 200
    assert _send(url, "POST", "/v1/embeddings", {"model": "m", "input": "x"}, KEY_A).status_code == 200
    # a key of the proxy's own is never passed on to the upstream (chat, models, pass-through)
    seen = [request["headers"] for request in fake.requests]
    assert len(seen) == 5
    assert not any(name in headers for headers in seen for name in ("authorization", "x-api-key", "api-key"))
    assert httpx.get(url + "/healthz", timeout=10).status_code == 200  # health and metrics stay open
    assert httpx.get(url + "/metrics", timeout=10).status_code == 200


def test_rate_limit_per_key_answers_429_with_retry_after(start_proxy: Callable[..., str]) -> None:
    url = start_proxy(api_keys=f"{KEY_A};rpm=2, {KEY_B}")
    answers = [_send(url, "POST", "/v1/chat/completions", CHAT, KEY_A) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    error = answers[2].json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert 1 <= int(answers[2].headers["retry-after"]) <= 30
    assert _send(url, "POST", "/v1/chat/completions", CHAT, KEY_B).status_code == 200  # another key is not held back


def test_bad_key_configuration_is_refused_at_start() -> None:
    for spec in ("sha256:abc", "sk-a;rpm=-1", "sk-a;record=maybe", "sk-a;scope=../x", "sk-a;colour=red", "sk-a;rpm",
                 " ;rpm=3"):
        with pytest.raises(KeyConfigError):
            parse_keys(spec)
    assert parse_keys("") == [] and parse_keys(" , ") == []
    key = parse_keys("sk-a;rpm=6;burst=2;record=off;scope=team-a", default_rpm=60)[0]
    assert (key.rpm, key.burst, key.record, key.scope) == (6, 2, False, "team-a")
    assert key.key_hash == hashlib.sha256(b"sk-a").hexdigest()[:16]
    assert parse_keys("sk-b", default_rpm=60)[0].rpm == 60


def test_token_bucket_refills_at_the_key_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    key = ClientKey(digest=b"k" * 32, rpm=60, burst=2)
    assert [limiter.take(key) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    now[0] = 0.5
    assert limiter.take(key) == pytest.approx(0.5)
    now[0] = 1.0
    assert limiter.take(key) == 0.0
    assert limiter.take(ClientKey(digest=b"u" * 32)) == 0.0  # no rpm: never limited


def test_match_checks_every_key() -> None:
    keys = parse_keys("sk-a, sk-b, sk-c")
    assert match(keys, "sk-b") is keys[1]
    assert match(keys, None) is None and match(keys, "") is None and match(keys, "sk-d") is None


def test_the_request_carries_its_key_settings() -> None:
    """What the scope work and the recorder read: the key in the request's context, record off enforced."""
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    access = ClientAccess(app, parse_keys(f"{KEY_A};record=off;scope=team-a"))
    headers = [(b"authorization", f"Bearer {KEY_A}".encode()), (b"x-nextstate-record", b"on")]
    asyncio.run(access({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers},
                       receive, send))
    key = seen[0][CLIENT]
    assert key.scope == "team-a" and key.record is False
    assert [v for n, v in seen[0]["headers"] if n == b"x-nextstate-record"] == [b"off"]  # the client cannot turn it on


def test_a_websocket_is_refused_when_keys_are_on(start_proxy: Callable[..., str]) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = start_proxy(api_keys=KEY_A).replace("http://", "ws://")
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{url}/v1/realtime", additional_headers={"authorization": "Bearer sk-wrong"}, open_timeout=5)
    assert refused.value.response.status_code == 403
