"""The recording proxy in front of the embedded policy server: turn records hold the exact token ids."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from learner.modeling import load_model, render_prompt_ids
from learner.serve import create_app as create_policy_server
from learner.serving_settings import ServeSettings
from proxy.app import create_app as create_proxy
from proxy.records import TRANSITIONS_STREAM, TURNS_STREAM, TurnRecord
from proxy.settings import ProxySettings
from tests.support.servers import serve_in_thread

QUESTION = [{"role": "user", "content": "What sound does a cow make? Answer in one word."}]


@pytest.fixture(scope="module")
def policy_url(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = ServeSettings(home=tmp_path_factory.mktemp("policy"))
    with serve_in_thread(create_policy_server(settings, model_path=tiny_model_path)) as url:
        yield url


@pytest.fixture
def proxy_url(policy_url: str, redis_url: str, tmp_path: Path) -> Iterator[str]:
    settings = ProxySettings(home=tmp_path / "home", redis_url=redis_url, upstream_url=f"{policy_url}/v1",
                             read_timeout_s=60.0, connect_timeout_s=2.0)
    with serve_in_thread(create_proxy(settings), timeout_graceful_shutdown=2) as url:
        yield url


def _turns(client: redis.Redis, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        records = [json.loads(fields[b"record"]) for _, fields in client.xrange(TURNS_STREAM)]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def test_turn_records_hold_the_policy_servers_exact_tokens(
    proxy_url: str, policy_url: str, redis_client: redis.Redis, tiny_model_path: Path
) -> None:
    _, tokenizer = load_model(tiny_model_path, device="cpu")
    with openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="sk-e2e", timeout=60, max_retries=0) as sdk:
        plain = sdk.chat.completions.create(model="tiny-chat", messages=QUESTION, seed=21, max_tokens=40,
                                            extra_headers={"X-Session-Id": "e2e-1"})
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in sdk.chat.completions.create(model="tiny-chat", messages=QUESTION, seed=22, max_tokens=40,
                                                     stream=True, extra_headers={"X-Session-Id": "e2e-2"})
            if chunk.choices
        )
    # the client asked for neither logprobs nor token ids, and sees none
    assert plain.choices[0].logprobs is None and "token_ids" not in (plain.choices[0].model_extra or {})

    # what the policy server itself answers for the same requests
    direct = {
        seed: httpx.post(f"{policy_url}/v1/chat/completions", timeout=60, json={
            "model": "tiny-chat", "messages": QUESTION, "seed": seed, "max_tokens": 40,
            "logprobs": True, "return_token_ids": True}).json()
        for seed in (21, 22)
    }
    assert plain.choices[0].message.content == direct[21]["choices"][0]["message"]["content"]
    assert streamed == direct[22]["choices"][0]["message"]["content"]

    records = {r["session_id"]: TurnRecord.model_validate(r) for r in _turns(redis_client, 2)}
    assert set(records) == {"e2e-1", "e2e-2"}
    for session, seed in (("e2e-1", 21), ("e2e-2", 22)):
        tokens = records[session].tokens
        answer = direct[seed]
        assert tokens.method == "captured"
        assert tokens.prompt_token_ids == render_prompt_ids(tokenizer, QUESTION) == answer["prompt_token_ids"]
        assert tokens.response_token_ids == answer["choices"][0]["token_ids"]
        expected = [entry["logprob"] for entry in answer["choices"][0]["logprobs"]["content"]]
        assert tokens.response_logprobs == pytest.approx(expected, abs=1e-5)
    assert records["e2e-2"].stream and not records["e2e-1"].stream


def test_a_responses_api_client_is_served_and_recorded_for_learning(
    proxy_url: str, redis_client: redis.Redis, tiny_model_path: Path
) -> None:
    _, tokenizer = load_model(tiny_model_path, device="cpu")
    with openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="sk-e2e", timeout=60, max_retries=0) as sdk:
        first = sdk.responses.create(model="tiny-chat", instructions="Be brief.", input=QUESTION[0]["content"],
                                     max_output_tokens=40)
        with sdk.responses.stream(model="tiny-chat", previous_response_id=first.id, max_output_tokens=40,
                                  instructions="Be brief.", input="Way too wordy.") as stream:
            second = stream.get_final_response()
    one, two = (TurnRecord.model_validate(r) for r in _turns(redis_client, 2))
    assert one.api == two.api == "responses" and two.stream
    assert one.response.message["content"] == first.output_text
    assert two.request.messages == [{"role": "system", "content": "Be brief."}, *QUESTION,
                                    {"role": "assistant", "content": first.output_text},
                                    {"role": "user", "content": "Way too wordy."}]
    assert two.response.message["content"] == second.output_text
    assert two.session_id == one.session_id
    [(_, link)] = redis_client.xrange(TRANSITIONS_STREAM)
    assert json.loads(link[b"record"])["next_state"] == [{"role": "user", "content": "Way too wordy."}]
    # what the learner renders from the record is the prompt the policy server answered
    assert len(render_prompt_ids(tokenizer, two.request.messages)) == second.usage.input_tokens
    assert one.tokens.method == "none"  # the learner tokenizes these turns itself
