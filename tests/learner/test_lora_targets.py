"""LoRA targets come from the architecture: every linear layer of the decoder by its own name, never the head."""

from __future__ import annotations

from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from learner.train import lora_target_modules

SMALL = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 1}


def test_llama_and_qwen2_get_their_seven_projections() -> None:
    projections = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert lora_target_modules(LlamaForCausalLM(LlamaConfig(**SMALL))) == projections
    assert lora_target_modules(Qwen2ForCausalLM(Qwen2Config(**SMALL))) == projections


def test_an_architecture_with_other_names_gets_its_own() -> None:
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2))
    assert lora_target_modules(model) == ["c_attn", "c_fc", "c_proj"]  # and not lm_head
