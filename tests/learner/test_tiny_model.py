"""builtin:tiny-chat: tokenizer and template, deterministic cached builds, and the acceptance figures."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from learner import tiny
from learner.modeling import (
    BUILTIN_TINY,
    ModelNotFoundError,
    load_model,
    render_prompt,
    render_prompt_ids,
    resolve_model,
)

SMALL = tiny.TinyConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=1, steps=3, batch_size=4, bucket=2, warmup_steps=1)


def test_tokenizer_is_byte_level_and_round_trips() -> None:
    tokenizer = tiny.build_tokenizer()
    text = "Héllo, 日本! <|im_start|>user\nhi<|im_end|>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert ids[:2] == [ord("H"), 0xC3]  # bytes are their own ids
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 1  # special tokens stay whole
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


def test_chat_template_renders_system_tools_and_tool_calls() -> None:
    tokenizer = tiny.build_tokenizer()
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Capital of Peru?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"Peru\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "Lima"},
    ]
    text = render_prompt(tokenizer, messages, tools)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert '"name": "lookup"' in text and "<tool_call>" in text
    assert "<|im_start|>user\nCapital of Peru?<|im_end|>\n" in text
    assert "<|im_start|>tool\nLima<|im_end|>\n" in text and text.endswith("<|im_start|>assistant\n")
    assert render_prompt_ids(tokenizer, messages, tools) == tokenizer(text, add_special_tokens=False)["input_ids"]
    plain = render_prompt(tokenizer, [{"role": "user", "content": "hi"}])
    assert plain == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_fingerprint_follows_the_recipe() -> None:
    assert tiny.fingerprint() == tiny.fingerprint(tiny.TinyConfig())
    assert tiny.fingerprint(SMALL) != tiny.fingerprint()
    assert tiny.fingerprint(dataclasses.replace(SMALL, seed=1)) != tiny.fingerprint(SMALL)


def test_builds_are_deterministic_and_cached(tmp_path: Path) -> None:
    first = tiny.ensure_tiny_model(tmp_path / "a", SMALL, progress=False)
    second = tiny.ensure_tiny_model(tmp_path / "b", SMALL, progress=False)
    weights_a, weights_b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny.ensure_tiny_model(tmp_path / "a", SMALL, progress=False) == first  # reused, not rebuilt
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    info = json.loads((first / tiny.INFO_FILE).read_text())
    assert info["fingerprint"] == tiny.fingerprint(SMALL) and first.name.endswith(info["fingerprint"])
    model, tokenizer = load_model(first)  # the standard Hugging Face loading path
    assert model.config.model_type == "qwen2" and tokenizer.chat_template


def test_resolve_model(tmp_path: Path, tiny_model_path: Path) -> None:
    assert resolve_model(str(tiny_model_path), tmp_path) == tiny_model_path
    with pytest.raises(ModelNotFoundError):
        resolve_model(str(tmp_path / "missing"), tmp_path)
    assert BUILTIN_TINY == "builtin:tiny-chat"


def test_tiny_model_size(tiny_model_path: Path) -> None:
    info = json.loads((tiny_model_path / tiny.INFO_FILE).read_text())
    assert 500_000 < info["parameters"] < 5_000_000


@pytest.mark.slow
def test_acceptance_figures(tiny_model_path: Path) -> None:
    """Instructions select the style (>= 90%), no style dominates without one (<= 50%), facts >= 80%."""
    model, tokenizer = load_model(tiny_model_path, device="cpu")
    figures = tiny.measure_acceptance(model, tokenizer, seed=0)
    print(json.dumps(dataclasses.asdict(figures)))
    assert figures.instructed_style_rate >= 0.90
    assert all(rate >= 0.75 for rate in figures.per_style_rate.values())
    assert max(share for style, share in figures.uninstructed_shares.items() if style != "None") <= 0.50
    assert figures.fact_rate >= 0.80


def test_build_model_command_reports_the_cached_model(tiny_model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tiny.main(["--out", str(tiny_model_path.parent)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(tiny_model_path) and report["parameters"] > 500_000
