"""The embedded policy server on loopback, driven by the ``openai`` SDK as nextstate drives vLLM."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from learner.modeling import load_model, render_prompt_ids
from learner.serve import create_app
from learner.serving_settings import ServeSettings
from tests.support.servers import free_port, serve_in_thread, wait_healthy

MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in lowercase."}]


@pytest.fixture(scope="module")
def serve_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model_path: Path, serve_home: Path) -> list[Path]:
    """Two LoRA adapters made with peft on the tiny model (random B, so they change the outputs)."""
    from peft import LoraConfig, get_peft_model

    dirs = []
    for index in range(2):
        torch.manual_seed(100 + index)
        model, _ = load_model(tiny_model_path, device="cpu")
        config = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
        out = serve_home / "adapters" / f"v{index + 1}"  # the server loads only from its adapter store
        get_peft_model(model, config).save_pretrained(out)
        dirs.append(out)
    return dirs


@pytest.fixture(scope="module")
def server_url(tiny_model_path: Path, serve_home: Path) -> Iterator[str]:
    settings = ServeSettings(home=serve_home, max_loras=2, max_num_seqs=4, max_queue=16)
    with serve_in_thread(create_app(settings, model_path=tiny_model_path)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", timeout=60, max_retries=0) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def reference(tiny_model_path: Path) -> tuple[Any, Any]:
    return load_model(tiny_model_path, device="cpu")


def _teacher_forced_logprobs(model: Any, prompt_ids: list[int], token_ids: list[int]) -> list[float]:
    ids_T = torch.tensor([prompt_ids + token_ids])
    with torch.inference_mode():
        logp_T_V = torch.log_softmax(model(input_ids=ids_T).logits[0].float(), dim=-1)
    return [float(logp_T_V[len(prompt_ids) - 1 + i, t]) for i, t in enumerate(token_ids)]


def test_chat_returns_exact_token_ids_and_logprobs(client: openai.OpenAI, reference: tuple[Any, Any]) -> None:
    model, tokenizer = reference
    resp = client.chat.completions.create(
        model="tiny-chat", messages=MESSAGES, logprobs=True, top_logprobs=3, seed=7, max_tokens=60,
        extra_body={"return_token_ids": True},
    )
    choice = resp.choices[0]
    prompt_ids, token_ids = resp.model_extra["prompt_token_ids"], choice.model_extra["token_ids"]
    assert prompt_ids == render_prompt_ids(tokenizer, MESSAGES)
    assert choice.finish_reason == "stop" and token_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(token_ids, skip_special_tokens=True) == choice.message.content
    assert choice.message.content and resp.model == "tiny-chat"
    assert resp.usage.prompt_tokens == len(prompt_ids) and resp.usage.completion_tokens == len(token_ids)
    content = choice.logprobs.content
    assert [entry.token for entry in content] == [tokenizer.decode([t]) for t in token_ids]
    assert all(len(entry.top_logprobs) == 3 for entry in content)
    assert all(entry.top_logprobs[0].logprob >= entry.logprob - 1e-6 for entry in content)
    expected = _teacher_forced_logprobs(model, prompt_ids, token_ids)
    assert [entry.logprob for entry in content] == pytest.approx(expected, abs=1e-3)


def test_stream_matches_non_stream_and_carries_ids(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": "tiny-chat", "messages": MESSAGES, "seed": 11, "max_tokens": 60, "logprobs": True}
    whole = client.chat.completions.create(**kwargs, extra_body={"return_token_ids": True})
    chunks = list(client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}, extra_body={"return_token_ids": True}
    ))
    assert chunks[0].model_extra["prompt_token_ids"] == whole.model_extra["prompt_token_ids"]
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [c for c in chunks if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    ids = [t for c in with_choices for t in c.choices[0].model_extra["token_ids"]]
    logprobs = [e.logprob for c in with_choices if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert text == whole.choices[0].message.content
    assert ids == whole.choices[0].model_extra["token_ids"]
    assert logprobs == pytest.approx([e.logprob for e in whole.choices[0].logprobs.content], abs=1e-5)
    assert with_choices[-1].choices[0].finish_reason == "stop"
    assert len(with_choices) > 3  # really token by token, not one blob
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ids)


def test_sampling_parameters(client: openai.OpenAI) -> None:
    greedy = [client.chat.completions.create(model="tiny-chat", messages=MESSAGES, temperature=0).choices[0].message.content
              for _ in range(2)]
    assert greedy[0] == greedy[1]
    short = client.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_completion_tokens=3, seed=1)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    stopped = client.chat.completions.create(model="tiny-chat", messages=MESSAGES, temperature=0, stop=[" is"])
    assert stopped.choices[0].finish_reason == "stop"
    assert " is" not in stopped.choices[0].message.content
    assert greedy[0].startswith(stopped.choices[0].message.content)
    nucleus = client.chat.completions.create(model="tiny-chat", messages=MESSAGES, top_p=0.01, seed=3)
    assert nucleus.choices[0].message.content == greedy[0]  # top_p this small keeps only the argmax


def test_tools_are_rendered_into_the_prompt(client: openai.OpenAI, reference: tuple[Any, Any]) -> None:
    _, tokenizer = reference
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
    resp = client.chat.completions.create(
        model="tiny-chat", messages=MESSAGES, tools=tools, max_tokens=5, extra_body={"return_token_ids": True}
    )
    prompt = tokenizer.decode(resp.model_extra["prompt_token_ids"])
    assert "get_weather" in prompt and resp.model_extra["prompt_token_ids"] == render_prompt_ids(tokenizer, MESSAGES, tools)


def test_responses_api_answers_as_chat_does_and_continues_stored_responses(client: openai.OpenAI) -> None:
    question = MESSAGES[0]["content"]
    chat = client.chat.completions.create(model="tiny-chat", messages=[{"role": "system", "content": "Be brief."}, *MESSAGES],
                                          temperature=0)
    first = client.responses.create(model="tiny-chat", instructions="Be brief.", input=question, temperature=0)
    assert first.status == "completed" and first.output_text == chat.choices[0].message.content
    assert first.usage.output_tokens == chat.usage.completion_tokens
    assert first.usage.input_tokens == chat.usage.prompt_tokens

    follow_up = [{"role": "user", "content": "And of Italy?"}]
    whole = client.chat.completions.create(model="tiny-chat", temperature=0, messages=[
        *MESSAGES, {"role": "assistant", "content": first.output_text}, *follow_up])
    with client.responses.stream(model="tiny-chat", previous_response_id=first.id, input=follow_up,  # type: ignore[arg-type]
                                 temperature=0) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        second = stream.get_final_response()
    assert second.output_text == "".join(deltas) == whole.choices[0].message.content  # the instructions do not carry over
    assert len(deltas) > 3  # token by token

    cut = client.responses.create(model="tiny-chat", input=question, max_output_tokens=2, store=False)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    with pytest.raises(openai.NotFoundError):  # not stored
        client.responses.create(model="tiny-chat", previous_response_id=cut.id, input="more")
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="tiny-chat", input=[{"type": "message", "content": "no role"}])  # type: ignore[list-item]


def test_unknown_model_is_404_in_openai_shape(client: openai.OpenAI, server_url: str) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    response = httpx.post(f"{server_url}/v1/chat/completions", json={"model": "no-such-model", "messages": MESSAGES})
    assert response.status_code == 404
    assert response.json() == {"error": {"message": "The model `no-such-model` does not exist.",
                                         "type": "NotFoundError", "param": "model", "code": 404}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_logprobs": 2}, None),
        ({"logit_bias": {"5": 1.0}}, "logit_bias"),
        ({"stream_options": {"include_usage": True}}, None),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, None),
        ({"max_tokens": 100000}, "messages"),
    ],
)
def test_bad_parameters_are_400(server_url: str, body: dict[str, Any], param: str | None) -> None:
    response = httpx.post(f"{server_url}/v1/chat/completions", json={"model": "tiny-chat", "messages": MESSAGES, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"] and error["code"] == 400 and error["param"] == param


def test_invalid_json_is_400(server_url: str) -> None:
    response = httpx.post(f"{server_url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]


def test_completions_endpoint(client: openai.OpenAI, reference: tuple[Any, Any]) -> None:
    _, tokenizer = reference
    prompt = "<|im_start|>user\nWhat color is snow?<|im_end|>\n<|im_start|>assistant\n"
    resp = client.completions.create(model="tiny-chat", prompt=prompt, logprobs=2, max_tokens=40, seed=5,
                                     extra_body={"return_token_ids": True})
    choice = resp.choices[0]
    assert choice.model_extra["prompt_token_ids"] == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert len(choice.logprobs.tokens) == len(choice.model_extra["token_ids"]) == resp.usage.completion_tokens
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny-chat", prompt=prompt, max_tokens=40, seed=5, stream=True) if c.choices)
    assert streamed == choice.text


def _chat(server_url: str, model: str, seed: int = 3) -> dict[str, Any]:
    response = httpx.post(
        f"{server_url}/v1/chat/completions", timeout=60,
        json={"model": model, "messages": MESSAGES, "seed": seed, "max_tokens": 40, "logprobs": True},
    )
    return {"status": response.status_code, **response.json()}


def test_lora_adapters_load_select_unload(server_url: str, adapter_dirs: list[Path]) -> None:
    load = httpx.post(f"{server_url}/v1/load_lora_adapter", json={"lora_name": "tiny-chat@v1", "lora_path": str(adapter_dirs[0])})
    assert load.status_code == 200 and load.text == "Success: LoRA adapter 'tiny-chat@v1' added successfully."
    again = httpx.post(f"{server_url}/v1/load_lora_adapter", json={"lora_name": "tiny-chat@v1", "lora_path": str(adapter_dirs[0])})
    assert again.status_code == 400 and "has already been loaded" in again.json()["error"]["message"]
    missing = httpx.post(f"{server_url}/v1/load_lora_adapter", json={"lora_name": "x"})
    assert missing.status_code == 400
    assert missing.json()["error"]["message"] == "Both 'lora_name' and 'lora_path' must be provided."
    nowhere = httpx.post(f"{server_url}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(adapter_dirs[0].parent / "v9")})
    assert nowhere.status_code == 404
    # nothing outside the adapter store is ever loaded, and names cannot carry a path
    escape = adapter_dirs[0].parent / "escape"
    escape.symlink_to(adapter_dirs[0].parent.parent.parent, target_is_directory=True)
    for name, path in (("x", "/nonexistent"), ("x", str(adapter_dirs[0].parent / ".." / "v1")), ("x", "../../v1"),
                       ("x", str(escape)), ("x", str(adapter_dirs[0].parent)), ("../x", str(adapter_dirs[0])),
                       ("a/b", str(adapter_dirs[0])), ("x\n", str(adapter_dirs[0]))):
        refused = httpx.post(f"{server_url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
        assert refused.status_code == 400, (name, path, refused.text)
        assert refused.json()["error"]["type"] == "InvalidUserInput"

    models = httpx.get(f"{server_url}/v1/models").json()["data"]
    by_id = {card["id"]: card for card in models}
    assert by_id["tiny-chat"]["parent"] is None
    assert by_id["tiny-chat@v1"]["parent"] == "tiny-chat" and by_id["tiny-chat@v1"]["root"] == str(adapter_dirs[0])

    base, tuned = _chat(server_url, "tiny-chat"), _chat(server_url, "tiny-chat@v1")
    assert tuned["status"] == 200 and tuned["model"] == "tiny-chat@v1"
    base_lp = [e["logprob"] for e in base["choices"][0]["logprobs"]["content"]]
    tuned_lp = [e["logprob"] for e in tuned["choices"][0]["logprobs"]["content"]]
    assert base_lp != tuned_lp  # the adapter really changes the policy
    assert _chat(server_url, "tiny-chat")["choices"] == base["choices"]  # and the base is untouched after it

    unload = httpx.post(f"{server_url}/v1/unload_lora_adapter", json={"lora_name": "tiny-chat@v1"})
    assert unload.status_code == 200 and unload.text == "Success: LoRA adapter 'tiny-chat@v1' removed successfully."
    assert _chat(server_url, "tiny-chat@v1")["status"] == 404
    gone = httpx.post(f"{server_url}/v1/unload_lora_adapter", json={"lora_name": "tiny-chat@v1"})
    assert gone.status_code == 404 and gone.json()["error"]["message"] == "The lora adapter 'tiny-chat@v1' cannot be found."
    assert _chat(server_url, "tiny-chat")["choices"] == base["choices"]


def _stream_all(server_url: str, model: str, seed: int) -> tuple[str, str | None]:
    body = {"model": model, "messages": MESSAGES, "seed": seed, "max_tokens": 60, "stream": True}
    text, finish = "", None
    with httpx.stream("POST", f"{server_url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choice = json.loads(line[6:])["choices"][0]
                text += choice["delta"].get("content") or ""
                finish = choice["finish_reason"] or finish
    return text, finish


def test_concurrent_requests_while_adapters_load(server_url: str, adapter_dirs: list[Path]) -> None:
    httpx.post(f"{server_url}/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": str(adapter_dirs[0])}).raise_for_status()
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
            streams = [pool.submit(_stream_all, server_url, ("a", "tiny-chat")[i % 2], i) for i in range(10)]
            load = pool.submit(httpx.post, f"{server_url}/v1/load_lora_adapter",
                               json={"lora_name": "b", "lora_path": str(adapter_dirs[1])}, timeout=60)
            results = [future.result() for future in streams]
        assert load.result().status_code == 200
        assert all(finish in {"stop", "length"} and text for text, finish in results)
        assert _chat(server_url, "b")["status"] == 200
    finally:
        for name in ("a", "b"):
            httpx.post(f"{server_url}/v1/unload_lora_adapter", json={"lora_name": name})
    health = httpx.get(f"{server_url}/healthz").json()
    assert health["status"] == "ok" and health["adapters"] == [] and health["running"] == 0


def test_full_queue_answers_503_with_retry_after(tiny_model_path: Path, tmp_path: Path) -> None:
    settings = ServeSettings(home=tmp_path, max_num_seqs=1, max_queue=0, default_max_tokens=400)
    body = {"model": "tiny-chat", "messages": MESSAGES, "stream": True, "max_tokens": 400}
    with serve_in_thread(create_app(settings, model_path=tiny_model_path)) as url, httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{url}/v1/chat/completions", json={**body, "ignore_eos": True}) as first:
            next(first.iter_lines())  # the first request is being decoded
            second = http.post(f"{url}/v1/chat/completions", json={"model": "tiny-chat", "messages": MESSAGES})
        assert second.status_code == 503 and second.headers["retry-after"] == "1"
        assert second.json()["error"]["code"] == 503
        deadline = time.monotonic() + 30  # closing the stream cancels its decoding: the slot frees up
        while http.get(f"{url}/healthz").json()["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http.post(f"{url}/v1/chat/completions", json={"model": "tiny-chat", "messages": MESSAGES}).status_code == 200


@pytest.mark.slow
def test_serve_command_runs_as_a_process(tiny_model_path: Path, tmp_path: Path) -> None:
    """``nextstate serve`` (→ ``python -m learner serve``) in its own process, configured by env."""
    port = free_port()
    env = {**os.environ, "NEXTSTATE_HOME": str(tmp_path), "NEXTSTATE_BASE_MODEL": str(tiny_model_path),
           "NEXTSTATE_SERVED_MODEL_NAME": "tiny-chat", "NEXTSTATE_LOG_JSON": "true"}
    process = subprocess.Popen([sys.executable, "-m", "nextstate", "serve", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", process, "server", timeout_s=120,
                     output=lambda: process.stderr.read().decode() if process.stderr else "")
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", timeout=60, max_retries=0) as sdk:
            resp = sdk.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=20)
        assert resp.choices[0].message.content
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


def test_unloading_lets_requests_in_flight_finish(server_url: str, adapter_dirs: list[Path]) -> None:
    httpx.post(f"{server_url}/v1/load_lora_adapter", json={"lora_name": "c", "lora_path": str(adapter_dirs[0])}).raise_for_status()
    body = {"model": "c", "messages": MESSAGES, "stream": True, "max_tokens": 150, "ignore_eos": True,
            "return_token_ids": True}
    ids: list[int] = []
    finish = None
    with httpx.Client(timeout=120) as http, http.stream("POST", f"{server_url}/v1/chat/completions", json=body) as stream:
        lines = stream.iter_lines()
        next(lines)  # decoding has started
        unload = http.post(f"{server_url}/v1/unload_lora_adapter", json={"lora_name": "c"})
        assert unload.status_code == 200
        assert http.post(f"{server_url}/v1/chat/completions", json={"model": "c", "messages": MESSAGES}).status_code == 404
        for line in lines:
            if line.startswith("data: {"):
                choice = json.loads(line[6:])["choices"][0]
                ids += choice.get("token_ids", [])
                finish = choice["finish_reason"] or finish
    assert finish == "length" and len(ids) == 150
    deadline = time.monotonic() + 10  # the drained adapter is removed once its last request is done
    while httpx.get(f"{server_url}/healthz").json()["materialised"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(f"{server_url}/healthz").json()["materialised"] == []


def test_more_adapters_than_slots_are_evicted_and_reloaded(server_url: str, adapter_dirs: list[Path]) -> None:
    """The fixture allows 2 materialised adapters; a third registered one evicts the idle LRU one."""
    names = ["e0", "e1", "e2"]
    for name, path in zip(names, [adapter_dirs[0], adapter_dirs[1], adapter_dirs[0]], strict=True):
        httpx.post(f"{server_url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}).raise_for_status()
    try:
        assert len(httpx.get(f"{server_url}/healthz").json()["materialised"]) == 2
        first = [_chat(server_url, name) for name in names]
        again = [_chat(server_url, name) for name in reversed(names)][::-1]
        assert all(r["status"] == 200 for r in first + again)
        assert [r["choices"] for r in first] == [r["choices"] for r in again]  # reloading gives the same policy
        assert first[0]["choices"] == first[2]["choices"]  # same files under two names, same answers
        assert first[0]["choices"] != first[1]["choices"]
    finally:
        for name in names:
            httpx.post(f"{server_url}/v1/unload_lora_adapter", json={"lora_name": name})


def test_batched_decoding_matches_single_decoding(server_url: str, reference: tuple[Any, Any]) -> None:
    """Concurrent requests share batched forwards; tokens and logprobs are those of lone decoding."""
    model, _ = reference
    questions = ["What color is snow?", "What is the capital of Japan? Use bullet points.",
                 "How many legs on a spider are there? The user prefers answers that end with a sign-off.",
                 "What is the opposite of hot?"]

    def ask(question: str) -> dict[str, Any]:
        body = {"model": "tiny-chat", "messages": [{"role": "user", "content": question}], "temperature": 0,
                "logprobs": True, "return_token_ids": True, "max_tokens": 60}
        return httpx.post(f"{server_url}/v1/chat/completions", json=body, timeout=120).json()

    alone = [ask(q) for q in questions]
    before = httpx.get(f"{server_url}/healthz").json()["batched_steps"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(ask, questions))
    assert httpx.get(f"{server_url}/healthz").json()["batched_steps"] > before
    for single, batched in zip(alone, together, strict=True):
        assert batched["choices"][0]["token_ids"] == single["choices"][0]["token_ids"]
        logprobs = [e["logprob"] for e in batched["choices"][0]["logprobs"]["content"]]
        expected = _teacher_forced_logprobs(model, batched["prompt_token_ids"], batched["choices"][0]["token_ids"])
        assert logprobs == pytest.approx(expected, abs=1e-3)
