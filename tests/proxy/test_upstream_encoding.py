"""What the upstream says besides its body: compression it may apply, headers a client acts on."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.proxy.conftest import turns
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.servers import serve_in_thread


def _gzip_whatever_was_asked(app: ASGIApp) -> ASGIApp:
    """An upstream that compresses even when asked for an unencoded body."""
    gzip = GZipMiddleware(app, minimum_size=1)

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = [(k, v) for k, v in scope["headers"] if k != b"accept-encoding"]
            scope = {**scope, "headers": [*headers, (b"accept-encoding", b"gzip")]}
        await gzip(scope, receive, send)

    return asgi


@pytest.fixture(params=["when-asked", "always"])
def gzip_upstream_url(request: pytest.FixtureRequest, fake: FakeUpstream) -> Iterator[str]:
    """The scripted upstream behind gzip, as a provider behind a CDN or nginx answers."""
    app = GZipMiddleware(fake.app, minimum_size=1) if request.param == "when-asked" else _gzip_whatever_was_asked(fake.app)
    with serve_in_thread(app, timeout_graceful_shutdown=2) as url:
        yield f"{url}/v1"


def test_a_compressing_upstream_is_relayed_readable_and_recorded(start_proxy, gzip_upstream_url, fake,
                                                                  redis_client) -> None:
    base = start_proxy(upstream=gzip_upstream_url)
    fake.push(Reply(content="plain words"), Reply(content="streamed words"))
    with openai.OpenAI(base_url=f"{base}/v1", api_key="k", max_retries=0) as client:
        answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "again"}],
                                                stream=True)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        listed = client.models.list()
    assert answer.choices[0].message.content == "plain words"
    assert streamed == "streamed words"
    assert [model.id for model in listed.data] == ["fake-model"]
    records = turns(redis_client, 2)
    assert sorted(r["response"]["message"]["content"] for r in records) == ["plain words", "streamed words"]
    # what was captured for training came through decoded too
    assert all(r["tokens"]["method"] == "captured" and r["tokens"]["response_token_ids"] for r in records)


@pytest.mark.parametrize("stream", [False, True])
def test_end_to_end_upstream_headers_reach_the_client(proxy_url, fake, http: httpx.Client, stream: bool) -> None:
    fake.push(Reply(content="ok", headers={"x-request-id": "req-42", "x-ratelimit-remaining-requests": "99",
                                           "x-nextstate-turn-id": "from-a-proxy-behind", "connection": "close"}))
    response = http.post(f"{proxy_url}/v1/chat/completions",
                         json={"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-42"
    assert response.headers["x-ratelimit-remaining-requests"] == "99"
    assert response.headers["x-nextstate-turn-id"] != "from-a-proxy-behind"  # the proxy's own id wins
    assert response.headers.get_list("x-nextstate-turn-id") == [response.headers["x-nextstate-turn-id"]]


def test_a_rate_limited_client_gets_the_upstreams_retry_after(proxy_url, fake) -> None:
    """The SDK waits as long as the upstream asks before it retries."""
    fake.push(Reply(status=429, headers={"retry-after": "0"},
                    error={"error": {"message": "slow down", "type": "rate_limit_error", "param": None,
                                     "code": "rate_limit_exceeded"}}),
              Reply(content="after the wait"))
    with openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="k", max_retries=1) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content == "after the wait"
    assert raw.retries_taken == 1
    with openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="k", max_retries=0) as client:
        fake.push(Reply(status=429, headers={"retry-after": "7"}))
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.response.headers["retry-after"] == "7"
