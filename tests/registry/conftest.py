"""Registry fixtures: a store on real Redis, real PEFT adapter files, two fake policy-server replicas."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from registry.actions import Control
from registry.publisher import Publisher
from registry.records import GateVerdict, Manifest
from registry.store import Registry
from tests.registry.fake_policy import create_fake_policy
from tests.support.servers import serve_in_thread


@pytest.fixture(scope="session")
def adapter_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real LoRA adapter saved by peft from a tiny randomly initialised Qwen2 model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    model = get_peft_model(Qwen2ForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out


@pytest.fixture
def registry(redis_client: redis.Redis, tmp_path: Path) -> Registry:
    return Registry(redis_client, tmp_path / "adapters", base_model="tiny-chat")


PublishFn = Callable[..., str]


@pytest.fixture
def publish(registry: Registry, adapter_files: Path) -> PublishFn:
    """Publish a new candidate made of the real adapter files; returns its version."""

    def _publish(parent: str | None = None, gate: bool | None = None, **metrics: Any) -> str:
        version = registry.allocate_version()
        staging = registry.staging_dir(version)
        shutil.copytree(adapter_files, staging, dirs_exist_ok=True)
        registry.publish(staging, Manifest(version=version, parent=parent, base_model="builtin:tiny-chat",
                                           method="combined", metrics=metrics))
        if gate is not None:
            registry.record_gate(version, GateVerdict(passed=gate, reasons=[] if gate else ["sacred: case 1"]))
        return version

    return _publish


@pytest.fixture
def replicas() -> Iterator[list[Any]]:
    """Two fake policy-server replicas on loopback; yields their apps (state) and URLs."""
    apps = [create_fake_policy(), create_fake_policy()]
    with serve_in_thread(apps[0]) as url0, serve_in_thread(apps[1]) as url1:
        yield [(apps[0], url0 + "/v1"), (apps[1], url1)]


@pytest.fixture
def control(registry: Registry, replicas: list[Any]) -> Iterator[Control]:
    publisher = Publisher(urls=[url for _, url in replicas], drain_seconds=0.0)
    yield Control(registry, publisher)
    publisher.close()
