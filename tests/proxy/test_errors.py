"""Every error status, OpenAI-shaped, and a client disconnect closing the upstream request."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.proxy.conftest import read_stream
from tests.support.fake_upstream import Reply
from tests.support.servers import free_port

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return error


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"model": "m"}', "messages"),
        (b'{"model": "m", "messages": []}', "messages"),
        (b'{"model": "m", "messages": "hi"}', "messages"),
        (b'{"model": "m", "messages": [{"content": "no role"}]}', "messages.[0]"),
    ],
)
def test_bad_requests_are_400(proxy_url, content, param, http) -> None:
    response = http.post(f"{proxy_url}/v1/chat/completions", content=content,
                          headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_body_over_the_limit_is_413(start_proxy, http) -> None:
    url = start_proxy(max_body_bytes=1000)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
    assert_openai_error(http.post(f"{url}/v1/chat/completions", json=big), 413)

    def chunked():  # no content-length: the limit holds while reading
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        yield b"x" * 2000
        yield b'"}]}'

    assert_openai_error(http.post(f"{url}/v1/chat/completions", content=chunked()), 413)


def test_unreachable_upstream_is_502(start_proxy, http) -> None:
    url = start_proxy(upstream=f"http://127.0.0.1:{free_port()}/v1")
    error = assert_openai_error(http.post(f"{url}/v1/chat/completions", json=CHAT), 502)
    assert error["code"] == "upstream_unreachable"
    assert_openai_error(http.get(f"{url}/v1/models"), 502)


def test_upstream_timeout_is_504(start_proxy, fake, http) -> None:
    url = start_proxy(read_timeout_s=0.3)
    fake.push(Reply(delay_s=1.0))
    error = assert_openai_error(http.post(f"{url}/v1/chat/completions", json=CHAT, timeout=5), 504)
    assert error["code"] == "upstream_timeout"


@pytest.mark.parametrize("status", [400, 401, 429, 500, 503])
def test_upstream_errors_are_relayed_with_their_status(proxy_url, fake, redis_client, status, http) -> None:
    body = {"error": {"message": f"upstream says {status}", "type": "x", "param": None, "code": "c"}}
    fake.push(Reply(status=status, error=body), Reply(status=status, error=body))  # (a 400 is retried once)
    response = http.post(f"{proxy_url}/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == status
    assert response.json() == body
    time.sleep(0.2)
    assert read_stream(redis_client, "nextstate:{rec}:turns") == []


def test_unknown_pinned_version_is_404(proxy_url, http) -> None:
    response = http.post(f"{proxy_url}/v1/chat/completions", json=CHAT, headers={"X-NextState-Policy": "v7"})
    assert assert_openai_error(response, 404)["code"] == "model_not_found"
    response = http.post(f"{proxy_url}/v1/chat/completions", json={**CHAT, "model": "tiny@v7"})
    assert_openai_error(response, 404)


def test_client_disconnect_mid_stream_closes_the_upstream_request(proxy_url, fake, redis_client) -> None:
    fake.push(Reply(content="x" * 200, chunk_chars=1, chunk_delay_s=0.05))
    with httpx.Client(timeout=10) as http, http.stream(
        "POST", f"{proxy_url}/v1/chat/completions", json={**CHAT, "stream": True}
    ) as response:
        assert response.status_code == 200
        for _ in zip(range(3), response.iter_raw(), strict=False):
            pass
    assert fake.disconnected.wait(5), "the upstream request stayed open after the client left"
    assert fake.disconnects == 1
    time.sleep(0.2)
    assert read_stream(redis_client, "nextstate:{rec}:turns") == []  # an abandoned turn is not recorded


def test_upstream_stalling_mid_stream_ends_with_an_error_event(start_proxy, fake, redis_client) -> None:
    url = start_proxy(read_timeout_s=0.3)
    fake.push(Reply(content="abcdef", chunk_chars=2, chunk_delay_s=1.0))
    with httpx.Client(timeout=10) as http:
        response = http.post(f"{url}/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 200
    events = [line for line in response.text.split("\n\n") if line.strip()]
    assert json.loads(events[0][6:])["choices"][0]["delta"]["role"] == "assistant"
    assert json.loads(events[-1][6:])["error"]["code"] == "upstream_stream_broken"
    time.sleep(0.2)
    assert read_stream(redis_client, "nextstate:{rec}:turns") == []


def test_unknown_routes_and_methods_are_openai_shaped(proxy_url, http) -> None:
    assert_openai_error(http.post(f"{proxy_url}/v1/load_lora_adapter", json={"lora_name": "x"}), 404)
    assert_openai_error(http.get(f"{proxy_url}/v1/chat/completions"), 405)


def test_an_unexpected_error_in_the_proxy_is_an_openai_shaped_500(proxy_url, http, monkeypatch) -> None:
    import proxy.chat

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(proxy.chat, "session_identity", broken)
    response = http.post(f"{proxy_url}/v1/chat/completions", json=CHAT)
    error = assert_openai_error(response, 500)
    assert (error["type"], error["code"]) == ("server_error", "internal_error") and "RuntimeError" in error["message"]
    monkeypatch.undo()
    assert http.post(f"{proxy_url}/v1/chat/completions", json=CHAT).status_code == 200  # and it goes on serving
