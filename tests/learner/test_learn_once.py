"""``nextstate learn --once`` end to end: real Redis, samples in the stream, the tiny model, the registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from labeler.records import SAMPLES_STREAM, SampleRecord
from learner import learn
from registry.records import GateVerdict
from registry.store import Registry

ROOT = Path(__file__).resolve().parents[2]


def push(client: redis.Redis, turn: str, cls: str, reward: int, hint: str | None = None, revision: int = 0) -> str:
    record = SampleRecord(
        record_id=f"{turn}:r{revision}", sample_id=turn, revision=revision, turn_id=turn, session_id="s1",
        cls=cls, reward=reward, hint=hint,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": f"What is the capital of {turn}?"}],
        response={"role": "assistant", "content": f"The capital of {turn} is somewhere. It is nice."},
    )
    return str(client.xadd(SAMPLES_STREAM, {"record": record.model_dump_json()}))


@pytest.fixture
def env(tmp_path: Path, redis_url: str, tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {"NEXTSTATE_HOME": str(tmp_path / "home"), "NEXTSTATE_REDIS_URL": redis_url,
              "NEXTSTATE_BASE_MODEL": str(tiny_model_path), "NEXTSTATE_LOG_JSON": "true", "NEXTSTATE_DEVICE": "cpu"}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **values}


def registry_for(client: redis.Redis, env: dict[str, str]) -> Registry:
    return Registry(client, Path(env["NEXTSTATE_HOME"]) / "adapters")


@pytest.mark.slow
def test_learn_once_publishes_a_candidate_then_only_trains_new_samples(
    env: dict[str, str], redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    push(redis_client, "France", "prefer", 1)
    push(redis_client, "Peru", "avoid", -1, hint="Answer in lowercase.")
    push(redis_client, "Japan", "observation", 0)
    push(redis_client, "Chile", "avoid", -1)
    push(redis_client, "Chile", "prefer", 1, revision=1)  # a later label of the same turn wins
    proc = subprocess.run(
        [sys.executable, "-m", "nextstate", "learn", "--once", "--json", "--no-gate"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "candidate   v1" in proc.stdout and "result      published -> exit 0" in proc.stdout
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["counts"] == {"train": 3, "observation": 1, "superseded": 1}

    registry = registry_for(redis_client, env)
    assert [v.version for v in registry.versions()] == ["v1"]
    manifest = registry.manifest("v1")
    assert manifest.parent is None and manifest.method == "combined"
    assert manifest.base_model == env["NEXTSTATE_BASE_MODEL"] and (manifest.base_revision or "").startswith("tiny:")
    assert sorted(manifest.sample_ids) == ["Chile", "France", "Peru"]
    assert manifest.config["lr"] == 3e-3 and manifest.config["eps_high"] == 0.28
    for key in ("loss", "reward_mean", "kl_base", "kl_parent", "entropy", "clip_fraction", "tokens", "wall_seconds"):
        assert key in manifest.metrics
    assert manifest.metrics["reward_mean"] == pytest.approx(1 / 3)
    assert manifest.metrics["pi_old"] == {"recomputed": 3} and manifest.metrics["token_methods"] == {"retokenized": 3}
    assert (Path(registry.get("v1").path) / "adapter_model.safetensors").is_file()
    assert [e.kind for e in registry.history()] == ["candidate_created"]
    assert redis_client.xpending(SAMPLES_STREAM, "learner")["pending"] == 0

    # nothing new: exit 3 and no version
    assert learn.main(["--once", "--no-gate"]) == learn.EXIT_NOTHING
    assert "result      nothing -> exit 3" in capsys.readouterr().out

    # v1 becomes stable; a re-sent sample of its lineage is skipped, a new one is trained on top of v1
    registry.set_alias("stable", "v1", actor="operator")
    push(redis_client, "France", "prefer", 1)
    push(redis_client, "Kenya", "avoid", -1)
    assert learn.main(["--once", "--no-gate", "--method", "rl"]) == learn.EXIT_PUBLISHED
    second = registry.manifest("v2")
    assert second.parent == "v1" and second.sample_ids == ["Kenya"] and second.method == "rl"
    assert "already_trained 1" in capsys.readouterr().out

    # v2 passes the gate and waits for its canary: the next candidate extends v2, not stable
    registry.record_gate("v2", GateVerdict(passed=True, reasons=[]))
    push(redis_client, "Ghana", "avoid", -1)
    assert learn.main(["--once", "--no-gate"]) == learn.EXIT_PUBLISHED
    third = registry.manifest("v3")
    assert third.parent == "v2" and third.sample_ids == ["Ghana"]


def test_refused_candidate_is_not_published_and_samples_stay_pending(
    env: dict[str, str], redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    push(redis_client, "Italy", "prefer", 1)
    push(redis_client, "Spain", "avoid", -1)
    monkeypatch.setattr(learn, "build_config", lambda s, d: learn.TrainConfig.tiny(min_entropy=1e9))
    assert learn.main(["--once", "--no-gate"]) == learn.EXIT_REFUSED
    assert "result      refused (entropy" in capsys.readouterr().out
    registry = registry_for(redis_client, env)
    assert registry.versions() == []
    assert not [p for p in registry.root.iterdir() if not p.name.startswith(".")]
    events = registry.history()
    assert [e.kind for e in events] == ["candidate_refused"] and "entropy" in events[0].reason
    assert redis_client.xpending(SAMPLES_STREAM, "learner")["pending"] == 2


@pytest.mark.slow
def test_learn_once_hands_the_candidate_to_the_gate(
    env: dict[str, str], redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXTSTATE_GATE_SAMPLES", "2")  # a smaller sacred run: this checks the hand-off only
    monkeypatch.setenv("NEXTSTATE_GATE_MAX_TOKENS", "24")
    for i, turn in enumerate(["Egypt", "Cuba", "Greece", "Norway"]):
        push(redis_client, turn, "prefer" if i % 2 else "avoid", 1 if i % 2 else -1)
    code = learn.main(["--once"])
    out = capsys.readouterr().out
    info = registry_for(redis_client, env).get("v1")
    assert info.gate is not None and info.state != "candidate"  # the verdict is recorded with the version
    assert code == (learn.EXIT_PUBLISHED if info.gate.passed else learn.EXIT_GATE_FAILED)
    assert ("gate        passed" if info.gate.passed else "gate        failed") in out
    assert "gate_verdict" in [e.kind for e in registry_for(redis_client, env).history()]
