"""The rest of the upstream's API goes through the proxy as it came (unrecorded), and a base URL without
``/v1`` works too: a client changes only its base URL, whichever endpoints it uses."""

from __future__ import annotations

import functools
import gzip
import json
import zlib

import openai
import pytest

from tests.proxy.conftest import read_stream, turns
from tests.proxy.test_chat import USER
from tests.proxy.test_errors import assert_openai_error


def test_embeddings_go_through_with_the_client_s_auth_and_are_not_recorded(client, fake, redis_client) -> None:
    answer = client.embeddings.create(model="embedder", input=["abc", "hello"])
    assert [d.embedding for d in answer.data] == [[3.0, 97.0], [5.0, 104.0]]
    assert answer.model == "embedder"
    [seen] = fake.requests
    assert (seen["body"]["model"], seen["body"]["input"]) == ("embedder", ["abc", "hello"])
    assert seen["headers"]["authorization"] == "Bearer sk-test-key"
    client.chat.completions.create(model="m", messages=USER)  # the proxy records chat turns only
    assert len(turns(redis_client, 1)) == 1
    assert read_stream(redis_client, "nextstate:{rec}:transitions") == []


def test_any_other_path_keeps_its_method_query_body_and_content_type(proxy_url, fake, http) -> None:
    form = http.post(f"{proxy_url}/v1/audio/transcriptions?language=fr",
                     files={"file": ("a.wav", b"RIFF" + bytes(range(256)), "audio/wav")}, data={"model": "w"})
    assert form.status_code == 200
    seen = form.json()
    assert (seen["method"], seen["path"], seen["query"]) == ("POST", "/v1/audio/transcriptions", "language=fr")
    assert seen["content_type"].startswith("multipart/form-data; boundary=")
    assert seen["body_bytes"] == int(fake.requests[-1]["headers"]["content-length"]) > 260
    assert form.headers["x-request-id"] == "req-echo"  # the upstream's end-to-end headers come back
    deleted = http.delete(f"{proxy_url}/v1/files/file-%2F1")
    assert deleted.json()["method"] == "DELETE"
    assert fake.requests[-1]["path"] == "/v1/files/file-/1"  # sent with the client's encoding, decoded there
    assert http.get(f"{proxy_url}/v1/models/fake-model").json()["path"] == "/v1/models/fake-model"
    assert http.head(f"{proxy_url}/v1/files").status_code == 200


def test_a_streamed_answer_comes_back_as_it_is_sent(start_proxy, http) -> None:
    proxy_url = start_proxy(passthrough_extra_paths="vendor")  # a provider's own path, allowed by setting
    with http.stream("POST", f"{proxy_url}/v1/vendor/events?stream=1", json={"model": "m", "input": "hi"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert [e["index"] for e in events] == [0, 1, 2]
    assert events[0]["content_type"] == "application/json"


def test_the_upstream_s_runtime_lora_endpoints_stay_private(proxy_url, fake, http) -> None:
    for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/load_lora_adapter", "/v1/LoRA/x"):
        assert_openai_error(http.post(f"{proxy_url}{path}", json={"lora_name": "x", "lora_path": "/tmp"}), 404)
    assert fake.requests == []


def test_the_proxy_s_own_paths_keep_their_methods(proxy_url, fake, http) -> None:
    assert_openai_error(http.get(f"{proxy_url}/v1/chat/completions"), 405)
    assert_openai_error(http.delete(f"{proxy_url}/v1/completions"), 405)
    assert_openai_error(http.get(f"{proxy_url}/v1/feedback"), 405)
    assert fake.requests == []


def test_a_base_url_without_v1_reaches_the_same_endpoints(proxy_url, fake, redis_client) -> None:
    with openai.OpenAI(base_url=proxy_url, api_key="k", max_retries=0, timeout=10) as sdk:
        answer = sdk.chat.completions.create(model="m", messages=USER)
        streamed = "".join(c.choices[0].delta.content or "" for c in
                           sdk.chat.completions.create(model="m", messages=USER, stream=True) if c.choices)
        assert [m.id for m in sdk.models.list()] == ["fake-model"]
        assert sdk.completions.create(model="m", prompt="abc").choices[0].text == "echo: abc"
        assert len(sdk.embeddings.create(model="e", input="x").data) == 1
    assert answer.choices[0].message.content == streamed == "echo: hello there"
    assert len(turns(redis_client, 2)) == 2
    assert [r["path"] for r in fake.requests] == ["/v1/chat/completions"] * 2 + [
        "/v1/models", "/v1/completions", "/v1/embeddings"]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
def test_a_compressed_request_body_is_read_and_sent_on_decoded(proxy_url, fake, http, redis_client, encoding) -> None:
    body = json.dumps({"model": "m", "messages": USER}).encode()
    if encoding == "gzip":
        packed = gzip.compress(body)
    else:
        packer = zlib.compressobj(wbits=zlib.MAX_WBITS if encoding == "deflate" else -zlib.MAX_WBITS)
        packed = packer.compress(body) + packer.flush()
    headers = {"content-type": "application/json", "content-encoding": encoding.removeprefix("raw-")}
    response = http.post(f"{proxy_url}/v1/chat/completions", content=packed, headers=headers)
    assert response.json()["choices"][0]["message"]["content"] == "echo: hello there"
    assert "content-encoding" not in fake.requests[-1]["headers"]
    assert turns(redis_client, 1)[0]["request"]["messages"] == USER
    completion = http.post(f"{proxy_url}/v1/completions", content=gzip.compress(b'{"model": "m", "prompt": "z"}'),
                           headers={"content-encoding": "gzip"})
    assert completion.json()["choices"][0]["text"] == "echo: z"


def test_a_body_compressed_in_an_unknown_way_or_badly_or_too_far_is_refused(start_proxy, http) -> None:
    url = start_proxy(max_body_bytes=4096)
    post = functools.partial(http.post, f"{url}/v1/chat/completions")
    body = json.dumps({"model": "m", "messages": USER}).encode()
    assert_openai_error(post(content=body, headers={"content-encoding": "br"}), 415)
    assert_openai_error(post(content=gzip.compress(body)[:-12], headers={"content-encoding": "gzip"}), 400)
    assert_openai_error(post(content=b"not gzip", headers={"content-encoding": "gzip"}), 400)
    bomb = gzip.compress(json.dumps({"model": "m", "messages": USER, "pad": " " * 100_000}).encode())
    assert len(bomb) < 4096
    assert_openai_error(post(content=bomb, headers={"content-encoding": "gzip"}), 413)
    assert post(content=body, headers={"content-encoding": "identity"}).status_code == 200


def test_browser_clients_get_cors_headers_only_from_the_origins_allowed(start_proxy, http) -> None:
    preflight = {"origin": "http://app.example", "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type, x-session-id"}
    closed = start_proxy()
    assert "access-control-allow-origin" not in http.options(f"{closed}/v1/chat/completions", headers=preflight).headers
    url = start_proxy(cors_origins="http://app.example, http://other.example")
    answer = http.options(f"{url}/v1/chat/completions", headers=preflight)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == "http://app.example"
    assert "x-session-id" in answer.headers["access-control-allow-headers"].lower()
    chat = http.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": USER},
                     headers={"origin": "http://app.example"})
    assert chat.headers["access-control-allow-origin"] == "http://app.example"
    assert "x-nextstate-turn-id" in chat.headers["access-control-expose-headers"]
    assert chat.headers["x-nextstate-turn-id"]
    stranger = http.options(f"{url}/v1/chat/completions", headers={**preflight, "origin": "http://evil.example"})
    assert stranger.status_code == 400


def test_the_proxy_s_own_paths_with_a_trailing_slash_are_still_its_own(proxy_url, fake, http, redis_client) -> None:
    chat = http.post(f"{proxy_url}/v1/chat/completions/", json={"model": "m", "messages": USER})
    assert chat.status_code == 200
    assert chat.json()["choices"][0]["message"]["content"] == "echo: hello there"
    assert chat.headers["x-nextstate-turn-id"]
    assert len(turns(redis_client, 1)) == 1
    assert http.get(f"{proxy_url}/models/").json()["data"][0]["id"] == "fake-model"
    assert [r["path"] for r in fake.requests] == ["/v1/chat/completions", "/v1/models"]
