"""Registry fixtures: a store on real Redis, PEFT-format adapter files, two fake policy-server replicas."""

from __future__ import annotations

import json
import shutil
import struct
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


def write_safetensors(path: Path, tensors: dict[str, tuple[list[int], list[float]]]) -> None:
    """A float32 safetensors file (8-byte header length, JSON header, raw little-endian data)."""
    header: dict[str, Any] = {}
    data = b""
    for name, (shape, values) in tensors.items():
        raw = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


@pytest.fixture(scope="session")
def adapter_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PEFT-format LoRA files (config + safetensors) written directly: the registry never reads weights,
    so these tests need no torch. The gate tests use adapters trained by peft on the tiny model."""
    out = tmp_path_factory.mktemp("adapter")
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "lora_alpha": 4, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "tiny-chat", "bias": "none",
    }))
    prefix = "base_model.model.model.layers.0.self_attn"
    tensors = {f"{prefix}.{m}.lora_A.weight": ([2, 16], [0.01] * 32) for m in ("q_proj", "v_proj")}
    tensors |= {f"{prefix}.{m}.lora_B.weight": ([16, 2], [0.0] * 32) for m in ("q_proj", "v_proj")}
    write_safetensors(out / "adapter_model.safetensors", tensors)
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
