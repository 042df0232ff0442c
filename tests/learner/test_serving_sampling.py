"""Sampling a request does not set: the served model's generation config supplies it, as vLLM's ``auto`` does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from learner.serve import create_app
from learner.serving_settings import ServeSettings
from tests.support.servers import serve_in_thread

MESSAGES = [{"role": "user", "content": "qwz blorp fnord vik?"}]


def test_a_request_without_sampling_settings_gets_the_models_generation_config(tiny_model_path: Path, tmp_path: Path) -> None:
    """As vLLM's ``--generation-config auto``: what ``generation_config.json`` sets is the default, a request overrides it."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for item in tiny_model_path.iterdir():
        if item.name != "generation_config.json":
            (model_dir / item.name).symlink_to(item)
    generation = json.loads((tiny_model_path / "generation_config.json").read_text())
    (model_dir / "generation_config.json").write_text(json.dumps({**generation, "do_sample": True, "top_k": 1}))  # greedy unless asked
    settings = ServeSettings(home=tmp_path / "home", max_num_seqs=4, max_queue=16)
    # a question the tiny model never saw: at temperature 1 its answers vary with the seed
    body = {"model": "tiny-chat", "messages": MESSAGES, "max_tokens": 24}
    with serve_in_thread(create_app(settings, model_path=model_dir)) as url, httpx.Client(timeout=60) as http:
        def answer(**extra: Any) -> str:
            response = http.post(f"{url}/v1/chat/completions", json={**body, **extra})
            assert response.status_code == 200, response.text
            return str(response.json()["choices"][0]["message"]["content"])

        greedy = answer(temperature=0)
        assert {answer(seed=seed) for seed in range(4)} == {greedy}
        assert {answer(seed=seed, temperature=1.0, top_k=-1) for seed in range(8)} != {greedy}


def test_sampling_defaults_read_only_what_the_generation_config_sets() -> None:
    from transformers import GenerationConfig

    from learner.serving_sampling import SamplingDefaults

    assert SamplingDefaults.from_generation_config(None) == SamplingDefaults(1.0, 1.0, 0)
    assert SamplingDefaults.from_generation_config(GenerationConfig(eos_token_id=2)) == SamplingDefaults(1.0, 1.0, 0)
    recommended = GenerationConfig(do_sample=True, temperature=0.2, top_p=0.9, top_k=20)
    assert SamplingDefaults.from_generation_config(recommended) == SamplingDefaults(0.2, 0.9, 20)
    out_of_range = GenerationConfig(do_sample=True, temperature=7.0, top_p=0.0)
    assert SamplingDefaults.from_generation_config(out_of_range) == SamplingDefaults(1.0, 1.0, 0)
