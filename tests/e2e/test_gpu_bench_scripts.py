"""The GPU checks (``bench/learner_gpu.py``, ``bench/serve_gpu.py``, ``bench/serve_speed.py``) run on CPU at tiny size, so they keep working
between the runs on a GPU machine: each prints a summary with every figure, and the figures are consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _summary(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_learner_gpu_check_reports_a_training_step() -> None:
    summary = _summary(["bench/learner_gpu.py", "--tiny", "--steps", "1", "--batch-size", "4", "--micro-batch-size", "2"])
    assert summary["device"] == "cpu" and summary["batch_size"] == 4
    assert 0 < summary["lora_trainable"] < summary["parameters"]
    assert summary["tokens_per_step"] == 4 * (32 + 32)  # four prompts and responses of 32 tokens at --tiny
    assert summary["tokens_per_s"] > 0 and summary["step_seconds"] > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_serve_gpu_check_decodes_to_max_tokens_with_and_without_an_adapter() -> None:
    summary = _summary(["bench/serve_gpu.py", "--size", "tiny", "--max-tokens", "24", "--concurrency", "4"])
    assert summary["load_lora_status"] == 200 and summary["unload_status"] == 200
    assert summary["models"] == ["base", "base@v1"]
    for arm in ("base", "lora"):
        assert summary[f"{arm}_tokens"] == 24  # ignore_eos: every request runs to max_tokens
        assert summary[f"{arm}_ttft_s"] > 0 and summary[f"{arm}_decode_tokens_per_s"] > 0
    assert summary["concurrent_requests"] == 4 and summary["concurrent_tokens_per_s"] > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_serve_speed_compares_the_server_with_the_bare_model(tiny_model_path: Path) -> None:
    summary = _summary(["bench/serve_speed.py", "--model", str(tiny_model_path), "--max-tokens", "16",
                        "--concurrency", "2", "--rounds", "1"])
    assert summary["device"] == "cpu" and summary["max_tokens"] == 16
    for batch in (1, 2):
        assert summary[f"bare_b{batch}_tokens_per_s"] > 0 and summary[f"server_b{batch}_tokens_per_s"] > 0
        ratio = summary[f"server_b{batch}_tokens_per_s"] / summary[f"bare_b{batch}_tokens_per_s"]
        assert summary[f"server_over_bare_b{batch}"] == pytest.approx(ratio, abs=0.02)
