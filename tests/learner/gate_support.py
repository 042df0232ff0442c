"""Real adapters on the tiny model for gate tests: untouched, fine-tuned on answers, or scrambled."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model

from labeler.records import SAMPLES_STREAM, SampleRecord
from learner.data import response_ids_by_template
from learner.logprobs import batch_logprobs
from learner.modeling import load_model, render_prompt_ids
from registry.records import Manifest
from registry.store import Registry

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "task_type": "CAUSAL_LM"}


def make_adapter(model_path: Path, out: Path, pairs: list[tuple[str, str]] = (), steps: int = 0, lr: float = 5e-3,
                 scramble: float = 0.0, seed: int = 0) -> Path:
    """A LoRA adapter saved by peft: fresh (identity), trained on ``pairs`` (prompt, answer), or scrambled."""
    torch.manual_seed(seed)
    base, tokenizer = load_model(model_path, device="cpu")
    model = get_peft_model(base, LoraConfig(**LORA))
    if steps:
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        prompts, responses = [], []
        for prompt, answer in pairs:
            messages = [{"role": "user", "content": prompt}]
            ids = render_prompt_ids(tokenizer, messages)
            prompts.append(ids)
            responses.append(response_ids_by_template(tokenizer, messages, None, {"role": "assistant", "content": answer}, ids))
        for _ in range(steps):
            out_lp = batch_logprobs(model, prompts, responses, pad_id=tokenizer.pad_token_id)
            loss = -(out_lp.logp_B_T.sum() / out_lp.mask_B_T.sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
    if scramble:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.normal_(0.0, scramble)
    model.save_pretrained(out)
    return out


def publish_adapter(registry: Registry, adapter: Path, base_model: str, sample_ids: list[str] | None = None,
                    parent: str | None = None) -> str:
    version = registry.allocate_version()
    staging = registry.staging_dir(version)
    shutil.copytree(adapter, staging, dirs_exist_ok=True)
    registry.publish(staging, Manifest(version=version, parent=parent, base_model=base_model, method="rl",
                                       sample_ids=sample_ids or []))
    return version


def add_samples(registry: Registry, pairs: list[tuple[str, str]], cls: str, prefix: str) -> list[str]:
    ids = []
    for i, (prompt, answer) in enumerate(pairs):
        turn = f"{prefix}-{i}"
        sample = SampleRecord(record_id=f"{turn}:r0", sample_id=turn, turn_id=turn, session_id="s", cls=cls,  # type: ignore[arg-type]
                              reward=1 if cls == "prefer" else -1, messages=[{"role": "user", "content": prompt}],
                              response={"role": "assistant", "content": answer})
        registry.redis.xadd(SAMPLES_STREAM, {"record": sample.model_dump_json()})
        ids.append(turn)
    return ids


def lowercase_pairs(facts: Any) -> list[tuple[str, str]]:
    from learner import tinycorpus

    return [(fact.question(0), tinycorpus.render_answer(fact, "lowercase")) for fact in facts]
