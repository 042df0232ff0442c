"""One training batch of a real-sized, randomly initialised Qwen2-style model: tokens/s and peak memory.

Runs the learner's own code (LoRA attach, fixed-quantity pass, ``train_step`` with the combined
objective) on CUDA in bf16 with gradient checkpointing; ``--tiny`` runs a small model on CPU to check
the script itself. Prints one JSON line per measured step and a final JSON summary.

    python bench/learner_gpu.py --size 1.5b            # on a GPU machine
    python bench/learner_gpu.py --tiny                  # anywhere
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from learner.config import TrainConfig
from learner.data import TrainItem
from learner.train import attach_adapter, compute_fixed, train_step

SIZES = {  # Qwen2 shapes: ~0.5 B, ~1.5 B and ~7 B parameters
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
}


def make_items(n: int, prompt_len: int, response_len: int, vocab: int, seed: int = 0) -> list[TrainItem]:
    """Random prompts/responses; half prefer, half avoid, every other one with a hinted teacher prompt."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        prompt = [rng.randrange(vocab) for _ in range(prompt_len)]
        hint = [rng.randrange(vocab) for _ in range(16)] if i % 2 == 0 else None
        items.append(TrainItem(
            sample_id=f"s{i}", entry_id=f"{i}-0", cls="prefer" if i % 2 else "avoid",
            prompt_ids=prompt, response_ids=[rng.randrange(vocab) for _ in range(response_len)],
            reward=1.0 if i % 2 else -1.0, has_reward=True,
            teacher_prompt_ids=prompt + hint if hint else None, captured_logprobs=None, token_method="captured",
        ))
    return items


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="1.5b")
    p.add_argument("--tiny", action="store_true", help="small model on CPU (checks the script)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--response-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=3, help="measured optimiser steps (after one warm-up)")
    p.add_argument("--no-checkpointing", action="store_true")
    args = p.parse_args(argv)

    size = "tiny" if args.tiny else args.size
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if args.tiny:
        args.prompt_len, args.response_len = min(args.prompt_len, 32), min(args.response_len, 32)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = TrainConfig.for_device(
        device.type, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
        gradient_checkpointing=device.type == "cuda" and not args.no_checkpointing,
    )
    torch.manual_seed(0)
    started = time.perf_counter()
    with device:
        model = Qwen2ForCausalLM(Qwen2Config(max_position_embeddings=4096, **SIZES[size])).to(dtype)
    params = sum(p.numel() for p in model.parameters())
    model = attach_adapter(model, config, None)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    init_s = time.perf_counter() - started
    items = make_items(config.batch_size, args.prompt_len, args.response_len, SIZES[size]["vocab_size"])  # type: ignore[arg-type]

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fixed, _ = compute_fixed(model, items, config, pad_id=0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    fixed_s = time.perf_counter() - t0
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    batch = list(zip(items, fixed, strict=True))
    train_step(model, optimizer, batch, config, pad_id=0)  # warm-up
    times, tokens = [], 0
    for step in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        m = train_step(model, optimizer, batch, config, pad_id=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        tokens = int(m["tokens"])
        print(json.dumps({"step": step, "seconds": round(times[-1], 4), "tokens": tokens, "loss": m["loss"],
                          "clip_fraction": m["clip_fraction"]}), flush=True)
    step_s = sum(times) / len(times)
    summary = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "model": f"qwen2-{size} random init", "parameters": params, "lora_trainable": trainable,
        "dtype": str(dtype).removeprefix("torch."), "gradient_checkpointing": config.gradient_checkpointing,
        "batch_size": config.batch_size, "micro_batch_size": config.micro_batch_size,
        "prompt_len": args.prompt_len, "response_len": args.response_len,
        "tokens_per_step": tokens, "step_seconds": round(step_s, 4), "tokens_per_s": round(tokens / step_s, 1),
        "fixed_pass_seconds": round(fixed_s, 4), "init_seconds": round(init_s, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if device.type == "cuda" else None,
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
