"""Request targets and limits: refused with an OpenAI-shaped 4xx before anything reaches the upstream."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import pytest

from proxy.targets import extra_prefixes, has_dot_segment, passes_through
from tests.proxy.test_errors import assert_openai_error

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


def raw_request(url: str, target: str, method: str = "GET") -> tuple[int, dict]:
    """Send ``target`` byte for byte (an HTTP client would normalise the dot-segments away)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(f"{method} {target} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.parametrize("target", [
    "/v1/../health", "/v1/%2e%2e/health", "/v1/%2E%2E%2Fload_lora_adapter", "/v1/models/./x", "/v1/.%2e/models",
    "/v1/files/..%5cx", "/v1/%252e%252e/health", "/v1/chat/completions/../../load_lora_adapter",
])
def test_dot_segments_are_refused_before_any_decision(proxy_url, fake, target) -> None:
    status, body = raw_request(proxy_url, target, "POST" if "chat" in target else "GET")
    assert status == 400 and body["error"]["code"] == "invalid_path", body
    assert fake.requests == []


def test_dot_segment_and_allow_list_decisions() -> None:
    assert not has_dot_segment("/v1/models/qwen2.5-7b") and not has_dot_segment("/v1/files/file-%2F1")
    assert has_dot_segment("/v1/a/%2e/b") and has_dot_segment("/v1/a\\..\\b")
    assert passes_through("/embeddings") and passes_through("/files/f-1/content") and passes_through("/models/m")
    for private in ("/load_lora_adapter", "/unload_lora_adapter", "/health", "", "/", "/tokenize", "/embeddingsX"):
        assert not passes_through(private), private
    extra = extra_prefixes(" rerank, /score/ ,")
    assert extra == ("/rerank", "/score")
    assert passes_through("/rerank", extra) and passes_through("/score/x", extra) and not passes_through("/rerankx", extra)


def test_only_the_api_s_resource_paths_pass_through(start_proxy, fake, http) -> None:
    url = start_proxy(passthrough_extra_paths="rerank")
    for path in ("/v1/health", "/v1/tokenize", "/v1/load_lora_adapter", "/v1/metrics", "/v1/version"):
        assert_openai_error(http.get(f"{url}{path}"), 404)
    assert fake.requests == []
    assert http.post(f"{url}/v1/rerank", json={"query": "q"}).json()["path"] == "/v1/rerank"
    assert http.get(f"{url}/v1/files/file-1").json()["path"] == "/v1/files/file-1"


def test_json_nested_too_deep_is_a_400_not_a_500(proxy_url, fake, http) -> None:
    for depth in (100, 5000):  # past the proxy's limit; past orjson's and the standard library's own
        nested = "[" * depth + "]" * depth
        body = f'{{"model": "m", "messages": [{{"role": "user", "content": "x"}}], "metadata": {nested}}}'
        for path in ("/v1/chat/completions", "/v1/responses", "/v1/completions", "/v1/feedback"):
            response = http.post(f"{proxy_url}{path}", content=body, headers={"content-type": "application/json"})
            error = assert_openai_error(response, 400)
            assert error["code"] == "json_too_deep", (path, depth, error)
    assert fake.requests == []


def test_messages_message_length_and_tools_are_bounded(start_proxy, fake, http) -> None:
    url = start_proxy(max_messages=3, max_message_chars=20, max_tools=1)
    post = lambda body, path="/v1/chat/completions": http.post(f"{url}{path}", json=body)  # noqa: E731
    user = {"role": "user", "content": "hi"}
    assert assert_openai_error(post({**CHAT, "messages": [user] * 4}), 400)["code"] == "too_many_messages"
    long = {"role": "user", "content": [{"type": "text", "text": "x" * 15}, {"type": "text", "text": "y" * 15}]}
    error = assert_openai_error(post({**CHAT, "messages": [long]}), 400)
    assert (error["code"], error["param"]) == ("message_too_long", "messages.[0].content")
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    assert assert_openai_error(post({**CHAT, "tools": [tool, tool]}), 400)["code"] == "too_many_tools"
    assert assert_openai_error(post({"model": "m", "input": [user] * 4}, "/v1/responses"), 400)["param"] == "input"
    for path in ("/v1/chat/completions", "/v1/responses"):  # what routing reads must have its type
        assert assert_openai_error(post({**CHAT, "model": ["m"]}, path), 400)["param"] == "model"
    assert fake.requests == []
    assert post({**CHAT, "messages": [user] * 3, "tools": [tool]}).status_code == 200


def test_header_size_and_session_ids_are_bounded(start_proxy, fake, http) -> None:
    url = start_proxy(max_header_bytes=4096)
    chat = f"{url}/v1/chat/completions"
    assert assert_openai_error(http.post(chat, json=CHAT, headers={"x-big": "a" * 5000}), 431)["code"] == \
        "request_headers_too_large"
    for bad in ("s" * 201, "a\tb"):
        error = assert_openai_error(http.post(chat, json=CHAT, headers={"x-session-id": bad}), 400)
        assert (error["code"], error["param"]) == ("invalid_session_id", "X-Session-Id")
    for user in ("u" * 201, 7):
        assert assert_openai_error(http.post(chat, json={**CHAT, "user": user}), 400)["param"] == "user"
    assert fake.requests == []
    answer = http.post(chat, json=CHAT, headers={"x-session-id": "s" * 200})
    assert answer.status_code == 200 and answer.headers["x-nextstate-session-id"] == "s" * 200


def test_a_client_that_leaves_before_its_body_is_not_an_error_in_the_proxy(proxy_url, fake, http, capfd) -> None:
    parts = urlsplit(proxy_url)
    for path in ("/v1/responses", "/v1/embeddings", "/v1/chat/completions"):
        with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                         "content-length: 100\r\n\r\n{\"model\":".encode())
        time.sleep(0.3)
    assert http.get(f"{proxy_url}/healthz").status_code == 200
    logged = capfd.readouterr()
    # the log goes to stdout, or to stderr once any component in this process has configured logging
    assert (logged.out + logged.err).count("client_disconnected") == 3 and "Traceback" not in logged.out + logged.err
    assert fake.requests == []
