"""SmolLM2-135M-Instruct behind the recording proxy: its chat template, end-of-turn token, token ids and
logprobs reach the turn records, streamed and not; a LoRA adapter on its Llama modules loads at run time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis
import torch

from learner.modeling import load_model, render_prompt_ids
from learner.serve import create_app as create_policy_server
from learner.serving_settings import ServeSettings
from proxy.app import create_app as create_proxy
from proxy.records import TurnRecord
from proxy.settings import ProxySettings
from tests.e2e.test_proxy_policy_server import _turns
from tests.support.servers import serve_in_thread

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def adapter_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The only directory the policy server loads adapters from (the registry's store in a deployment)."""
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def policy_url(smollm2_model_path: Path, adapter_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = ServeSettings(home=tmp_path_factory.mktemp("policy"), base_model="builtin:smollm2-135m", max_loras=1,
                             adapters_dir=adapter_store)
    with serve_in_thread(create_policy_server(settings, model_path=smollm2_model_path), start_timeout=180) as url:
        yield url


@pytest.fixture
def proxy_url(policy_url: str, redis_url: str, tmp_path: Path) -> Iterator[str]:
    settings = ProxySettings(home=tmp_path / "home", redis_url=redis_url, upstream_url=f"{policy_url}/v1",
                             read_timeout_s=120.0, connect_timeout_s=2.0)
    with serve_in_thread(create_proxy(settings), timeout_graceful_shutdown=2) as url:
        yield url


def test_smollm2_turns_are_recorded_with_the_servers_exact_tokens(
    proxy_url: str, policy_url: str, redis_client: redis.Redis, smollm2_model_path: Path
) -> None:
    _, tokenizer = load_model(smollm2_model_path, device="cpu")
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert [m["id"] for m in httpx.get(f"{policy_url}/v1/models").json()["data"]] == ["smollm2-135m"]
    with openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="sk-e2e", timeout=120, max_retries=0) as sdk:
        plain = sdk.chat.completions.create(model="smollm2-135m", messages=QUESTION, temperature=0, max_tokens=16,
                                            extra_headers={"X-Session-Id": "smol-1"})
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in sdk.chat.completions.create(model="smollm2-135m", messages=QUESTION, seed=3, max_tokens=12,
                                                     stream=True, extra_headers={"X-Session-Id": "smol-2"})
            if chunk.choices
        )
    # greedy, the model answers and ends its turn by itself; the end-of-turn token is not text
    assert "Paris" in plain.choices[0].message.content and plain.choices[0].finish_reason == "stop"
    assert "<|im_end|>" not in plain.choices[0].message.content

    direct = {
        session: httpx.post(f"{policy_url}/v1/chat/completions", timeout=120, json={
            "model": "smollm2-135m", "messages": QUESTION, **sampling, "logprobs": True, "return_token_ids": True}).json()
        for session, sampling in (("smol-1", {"temperature": 0, "max_tokens": 16}),
                                  ("smol-2", {"seed": 3, "max_tokens": 12}))
    }
    assert plain.choices[0].message.content == direct["smol-1"]["choices"][0]["message"]["content"]
    assert streamed == direct["smol-2"]["choices"][0]["message"]["content"]

    records = {r["session_id"]: TurnRecord.model_validate(r) for r in _turns(redis_client, 2)}
    assert set(records) == {"smol-1", "smol-2"}
    for session, answer in direct.items():
        tokens = records[session].tokens
        assert tokens.method == "captured"
        assert tokens.prompt_token_ids == render_prompt_ids(tokenizer, QUESTION) == answer["prompt_token_ids"]
        assert tokens.response_token_ids == answer["choices"][0]["token_ids"]
        expected = [entry["logprob"] for entry in answer["choices"][0]["logprobs"]["content"]]
        assert tokens.response_logprobs == pytest.approx(expected, abs=1e-4)
        assert all(lp <= 0 for lp in tokens.response_logprobs)
    assert records["smol-1"].tokens.response_token_ids[-1] == end_of_turn
    assert records["smol-2"].stream and not records["smol-1"].stream


def test_a_lora_adapter_on_smollm2s_modules_loads_serves_and_unloads(
    policy_url: str, smollm2_model_path: Path, adapter_store: Path
) -> None:
    from peft import LoraConfig, get_peft_model

    from learner.train import lora_target_modules

    model, _ = load_model(smollm2_model_path, device="cpu")
    targets = lora_target_modules(model)
    assert set(targets) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    torch.manual_seed(0)
    get_peft_model(model, LoraConfig(r=4, lora_alpha=32, target_modules=targets, init_lora_weights=False)
                   ).save_pretrained(adapter_store / "v1")
    body = {"messages": QUESTION, "temperature": 0, "max_tokens": 8, "logprobs": True}
    with httpx.Client(base_url=policy_url, timeout=120) as client:
        assert client.post("/v1/load_lora_adapter", json={"lora_name": "smollm2-135m@v1",
                                                          "lora_path": str(adapter_store / "v1")}).status_code == 200
        base = client.post("/v1/chat/completions", json={**body, "model": "smollm2-135m"}).json()
        tuned = client.post("/v1/chat/completions", json={**body, "model": "smollm2-135m@v1"}).json()
        assert tuned["model"] == "smollm2-135m@v1"
        first = (base["choices"][0]["logprobs"]["content"][0], tuned["choices"][0]["logprobs"]["content"][0])
        assert first[0]["logprob"] != pytest.approx(first[1]["logprob"], abs=1e-3)  # the adapter changes the model
        assert client.post("/v1/unload_lora_adapter", json={"lora_name": "smollm2-135m@v1"}).status_code == 200
        gone = client.post("/v1/chat/completions", json={**body, "model": "smollm2-135m@v1"})
        assert gone.status_code == 404 and gone.json()["error"]["param"] == "model"
        again = client.post("/v1/chat/completions", json={**body, "model": "smollm2-135m"}).json()
        assert again["choices"][0]["message"]["content"] == base["choices"][0]["message"]["content"]
