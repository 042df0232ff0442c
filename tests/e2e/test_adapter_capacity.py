"""The adapter-capacity benchmark (``bench/adapter_capacity.py``) on the tiny model with four adapters and two slots:
memory grows with materialised adapters, a cold adapter answers, more cold adapters than slots wait and none fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.adapter_capacity import checkpoints, measure, table


def test_memory_is_sampled_at_powers_of_four_and_at_the_last_adapter() -> None:
    assert checkpoints(64) == [0, 1, 4, 16, 64]
    assert checkpoints(16) == [0, 1, 4, 16]
    assert checkpoints(10) == [0, 1, 4, 10]
    assert checkpoints(3) == [0, 1, 3]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_capacity_figures_on_the_tiny_model_are_sane(tiny_model_path: Path, tmp_path: Path) -> None:
    s = measure(tiny_model_path, "tiny-chat", "builtin:tiny-chat", adapters=4, max_loras=2, rounds=2, threads=1,
                work=tmp_path)
    json.dumps(s)  # the results file is JSON
    assert "tiny-chat" in table(s)
    assert list(s["rss_mib"]["resident"]) == [0, 1, 4]
    assert s["rss_mib"]["resident"][4] > s["rss_mib"]["resident"][0]  # materialised adapters take memory
    assert s["bytes_per_materialised_adapter"] > 0 and s["lora_parameters"] > 0
    assert s["adapter_file_bytes"] >= 4 * s["lora_parameters"]  # float32 weights, plus the config
    for arm in ("base", "warm", "cold", "resident_base", "resident_switch"):
        assert s["latency"][arm]["n"] == 2 and s["latency"][arm]["p50_ms"] > 0
    assert s["latency_errors"] == []
    assert s["cold_over_warm_p50"] > 0
    burst = s["burst"]
    assert burst["errors"] == [] and all(r["status"] == 200 for r in burst["requests"])
    assert sum(r["arm"] == "cold" for r in burst["requests"]) == 2  # two cold + the warm one: three adapters, two slots
    assert 0 < burst["peak_materialised"] <= 2
    assert s["answers"]["adapter"] and s["answers"]["base"]
