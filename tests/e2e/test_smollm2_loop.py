"""One turn of the loop on a real model: SmolLM2-135M-Instruct served behind the proxy, its turns labeled by
the real labeler, one LoRA round trained on its own architecture's modules, gated, and the candidate served."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis
from rq.serializers import JSONSerializer

from labeler.dispatcher import Dispatcher
from labeler.jobs import Runtime, install
from labeler.records import LABEL_QUEUE, SAMPLES_STREAM, SampleRecord
from labeler.settings import LabelerSettings
from labeler.worker import InlineWorker
from learner import learn
from learner.serve import create_app as create_policy_server
from learner.serving_settings import ServeSettings
from proxy.app import create_app as create_proxy
from proxy.records import TRANSITIONS_STREAM
from proxy.settings import ProxySettings
from registry.store import Registry
from tests.support.servers import serve_in_thread

pytestmark = pytest.mark.slow

LLAMA_PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
CONVERSATIONS = [  # (question, the user's next turn)
    ("What is the capital of Italy?", "Way too long. Answer in at most five words."),
    ("Name a fruit that is yellow.", "No, keep it shorter. Answer in at most five words."),
    ("What color is the sky on a clear day?", "Thanks, that is exactly what I needed."),
]


@pytest.fixture
def home(tmp_path: Path, smollm2_model_path: Path) -> Path:
    """A fresh NEXTSTATE_HOME whose model cache already holds the conversion (made once per test session)."""
    (tmp_path / "home" / "models").mkdir(parents=True)
    (tmp_path / "home" / "models" / smollm2_model_path.name).symlink_to(smollm2_model_path)
    return tmp_path / "home"


@pytest.fixture
def policy_url(home: Path) -> Iterator[str]:
    settings = ServeSettings(home=home, base_model="builtin:smollm2-135m", max_loras=2)
    with serve_in_thread(create_policy_server(settings), start_timeout=180) as url:
        yield url


@pytest.fixture
def proxy_url(policy_url: str, redis_url: str, home: Path) -> Iterator[str]:
    settings = ProxySettings(home=home, redis_url=redis_url, upstream_url=f"{policy_url}/v1",
                             read_timeout_s=120.0, connect_timeout_s=2.0)
    with serve_in_thread(create_proxy(settings), timeout_graceful_shutdown=2) as url:
        yield url


def _wait_for(client: redis.Redis, stream: str, count: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.xlen(stream) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.xlen(stream) >= count


def _label(redis_url: str) -> None:
    """The real labeler (embedded judge): its dispatcher enqueues a job per transition, an RQ worker runs them."""
    rt = install(Runtime(settings=LabelerSettings(redis_url=redis_url, judge="embedded", dispatch_block_ms=1),
                         redis=redis.Redis.from_url(redis_url)))
    dispatcher = Dispatcher(rt, consumer="e2e")
    dispatcher.ensure_groups()
    assert dispatcher.run_once(block_ms=1) == 2 * len(CONVERSATIONS)
    InlineWorker([rt.queue(LABEL_QUEUE)], connection=rt.redis, serializer=JSONSerializer).work(burst=True)
    rt.redis.close()


def test_smollm2_is_served_labeled_trained_gated_and_its_candidate_served(
    proxy_url: str, policy_url: str, redis_url: str, redis_client: redis.Redis, home: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    with openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="sk-e2e", timeout=120, max_retries=0) as sdk:
        for index, (question, reaction) in enumerate(CONVERSATIONS):
            history = [{"role": "user", "content": question}]
            answer = sdk.chat.completions.create(model="smollm2-135m", messages=history, max_tokens=24, seed=index)
            history += [{"role": "assistant", "content": answer.choices[0].message.content},
                        {"role": "user", "content": reaction}]
            sdk.chat.completions.create(model="smollm2-135m", messages=history, max_tokens=4, seed=index,
                                        extra_headers={"X-Session-Done": "1"})
    # each first answer is linked to the user's reaction; each session's last turn is closed as done
    _wait_for(redis_client, TRANSITIONS_STREAM, 2 * len(CONVERSATIONS))

    _label(redis_url)
    samples = [SampleRecord.model_validate_json(fields[b"record"]) for _, fields in redis_client.xrange(SAMPLES_STREAM)]
    first_turns = {s.messages[0]["content"]: s for s in samples if len(s.messages) == 1}
    assert {q: first_turns[q].cls for q, _ in CONVERSATIONS} == {
        CONVERSATIONS[0][0]: "avoid", CONVERSATIONS[1][0]: "avoid", CONVERSATIONS[2][0]: "prefer"}
    assert first_turns[CONVERSATIONS[0][0]].hint  # the correction becomes a hint for the teacher
    assert all(s.tokens.method == "captured" for s in first_turns.values())

    for key, value in {"HOME": str(home), "REDIS_URL": redis_url, "BASE_MODEL": "builtin:smollm2-135m",
                       "DEVICE": "cpu", "GATE_SAMPLES": "1", "GATE_MAX_TOKENS": "16", "GATE_AUTO_CANARY": "false",
                       "LOG_JSON": "true"}.items():
        monkeypatch.setenv(f"NEXTSTATE_{key}", value)
    monkeypatch.setattr(learn, "configure_logging", lambda *args, **kwargs: None)
    code = learn.main(["--once", "--json"])
    outcome = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert outcome["version"] == "v1" and outcome["counts"]["train"] >= 3, outcome
    registry = Registry(redis_client, home / "adapters", base_model="builtin:smollm2-135m")
    info = registry.get("v1")
    assert info.gate is not None and info.state in ("gated_pass", "gated_fail")  # the gate ran and was recorded
    assert code == (learn.EXIT_PUBLISHED if info.gate.passed else learn.EXIT_GATE_FAILED)
    manifest = json.loads((Path(info.path) / "manifest.json").read_text())
    assert manifest["config"]["lr"] == learn.TrainConfig.small().lr  # the real-model preset, chosen by model
    adapter = json.loads((Path(info.path) / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == LLAMA_PROJECTIONS

    # the candidate loads into the running server under its own name and answers
    with httpx.Client(base_url=policy_url, timeout=120) as client:
        loaded = client.post("/v1/load_lora_adapter", json={"lora_name": "smollm2-135m@v1", "lora_path": info.path})
        assert loaded.status_code == 200, loaded.text
        reply = client.post("/v1/chat/completions", json={
            "model": "smollm2-135m@v1", "messages": [{"role": "user", "content": CONVERSATIONS[0][0]}],
            "max_tokens": 8, "logprobs": True, "return_token_ids": True}).json()
    assert reply["model"] == "smollm2-135m@v1" and len(reply["choices"][0]["token_ids"]) >= 1
