"""``nextstate gate vN`` through the composition root, configured by the environment (real Redis, model)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from nextstate.cli import main as nextstate
from registry.store import Registry
from tests.learner.gate_support import make_adapter, publish_adapter


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_gate_command_records_the_verdict(monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis, redis_url: str,
                                          tiny_model_path: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    for key, value in {"REDIS_URL": redis_url, "HOME": str(tmp_path / "home"), "ADAPTERS_DIR": str(store),
                       "BASE_MODEL": str(tiny_model_path), "GATE_SAMPLES": "2", "GATE_MAX_TOKENS": "48"}.items():
        monkeypatch.setenv(f"NEXTSTATE_{key}", value)
    # logging is configured once per real process; a test must not bind it to pytest's capture streams
    monkeypatch.setattr("learner.gate.configure_logging", lambda *args, **kwargs: None)
    registry = Registry(redis_client, store, base_model="tiny-chat")
    bad = publish_adapter(registry, make_adapter(tiny_model_path, tmp_path / "bad", scramble=0.5), str(tiny_model_path))

    assert nextstate(["gate", bad, "--no-canary"]) == 5
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{\n"):])  # logging is left unconfigured here, so log lines share stdout
    assert report["passed"] is False and report["kl"] > 0.5 and report["reasons"]
    info = registry.get(bad)
    assert info.state == "gated_fail" and info.gate is not None and info.gate.metrics["kl"] == report["kl"]

    good = publish_adapter(registry, make_adapter(tiny_model_path, tmp_path / "good"), str(tiny_model_path))
    assert nextstate(["gate", good, "--no-canary"]) == 0
    assert registry.get(good).state == "gated_pass" and registry.alias("canary") is None
    capsys.readouterr()
    assert nextstate(["gate", good]) == 1  # a version is gated once: the state machine refuses a second run
    assert "gated_pass; it cannot become gated_pass" in capsys.readouterr().err
    assert nextstate(["gate", "v99"]) == 1
