"""bench.replay_rounds on a run directory laid out as PrefBench leaves it: its Redis (an append-only file) and a
version's manifest; the round is trained again in batches and as one batch, gated and measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from bench import replay_rounds
from learner.config import TrainConfig
from proxy.embedded_redis import EmbeddedRedis
from tests.learner.test_learn_once import push


def test_a_recorded_round_is_trained_again_both_ways_and_gated(
    tmp_path: Path, tiny_model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "runs" / "combined-terse-s0"
    server = EmbeddedRedis(run / "redis").start()
    try:
        client = redis.Redis.from_url(server.url)
        for turn in ("Cuba", "Peru", "Chile"):
            push(client, turn, "avoid", -1, hint="Answer in one word.")
        push(client, "Kenya", "prefer", 1)
        push(client, "Peru", "prefer", 1, revision=1)  # a later label of the same turn: the newest is trained
    finally:
        server.stop()
    version = run / "adapters" / "scopes" / "local" / "v1"
    version.mkdir(parents=True)
    config = TrainConfig.tiny(batch_size=2, retain_samples=2, hint_demos=1)
    manifest = {"parent": None, "scope": "local", "config": config.to_dict(),
                "sample_ids": ["Cuba", "Peru", "Chile", "Kenya"]}
    (version / "manifest.json").write_text(json.dumps(manifest))

    assert replay_rounds.recorded_samples(run)["Peru"].cls == "prefer"
    assert replay_rounds.main([str(run), "--versions", "v1", "--seeds", "1", "--model", str(tiny_model_path)]) == 0
    out = capsys.readouterr().out
    assert "v1: 4 samples on the base model (word " in out
    assert "batches   seed 0: 6 steps" in out  # two batches of two, three steps each (the tiny preset)
    assert "one-batch seed 0: 3 steps" in out  # the round as one batch
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("passed the gate: in batches ") and summary.endswith(" of 1")
    assert (run / "redis" / "appendonly.aof").exists() and not list(run.glob("redis/*.sock"))  # the run is untouched


def test_a_directory_that_is_no_tiny_model_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        replay_rounds.main([str(tmp_path / "runs" / "combined-skimmer-s0"), "--versions", "v1"])
    assert exited.value.code == 2 and "not a tiny-model PrefBench run directory" in capsys.readouterr().err
