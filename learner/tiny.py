"""``builtin:tiny-chat``: a byte-level Qwen2-style chat model built locally and deterministically.

``python -m learner build-model`` builds it (tokenizer with a ChatML template, 0.83 M parameters,
a short pretraining on ``learner.tinycorpus``) into a cache directory keyed by a fingerprint of this
builder's code and configuration, so a changed builder rebuilds and an unchanged one is reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from learner import tinycorpus
from learner.modelcache import build_once

NAME = "tiny-chat"
INFO_FILE = "nextstate_tiny.json"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

HISTORY_WINDOW = 3
"""Earlier exchanges the model reads before the newest user message. It is pretrained on conversations of
up to four exchanges and answers garbage past them (measured on PrefBench-like sessions, fact accuracy
after 0..6 earlier exchanges: 0.93, 0.84, 0.82, 0.89, 0.74, 0.27, 0.18; with the window 0.79, 0.81, 0.86 for
4..6), so its chat template keeps the system prompt and the conversation from the fourth-last user message
on: the server, the learner and the gate all render prompts through it, so they see the same tokens."""

# ChatML, as Qwen2 models use it; tools are listed in the system turn as JSON, one per line. Only the
# system prompt and the messages from the (HISTORY_WINDOW + 1)-th last user message on are rendered.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(start=0, users=0) %}"
    "{%- for i in range(messages | length - 1, -1, -1) %}"
    "{%- if messages[i].role == 'user' %}{%- set ns.users = ns.users + 1 %}"
    "{%- if ns.users == " + str(HISTORY_WINDOW + 1) + " %}{%- set ns.start = i %}{%- endif %}{%- endif %}"
    "{%- endfor %}"
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\nYou may call these functions:\\n' }}"
    "{%- for tool in tools %}{{- (tool | tojson) + '\\n' }}{%- endfor %}"
    "{{- 'To call one, reply with <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call>.<|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages[ns.start:] %}"
    "{%- if message.role == 'system' and loop.first and ns.start == 0 %}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' + (message.content or '') }}"
    "{%- for call in (message.tool_calls or []) %}"
    "{{- '\\n<tool_call>' + ({'name': call.function.name, 'arguments': call.function.arguments} | tojson) + '</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + (message.content or '') + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class TinyConfig:
    """Architecture and pretraining recipe; every field enters the cache fingerprint."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    # 1600 steps (1300 before): one-word answers state the right fact 0.89 of the time instead of 0.72, which a
    # user who prefers them otherwise pays for; build 363 s instead of 303 s on 2 cores
    steps: int = 1600
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 30
    seed: int = 1234
    bucket: int = 16  # batches drawn at once and grouped by length (less padding)
    train_on_prompt: bool = True  # also predict prompt tokens (more signal per step, same compute)


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte-to-printable-character map that the ByteLevel pre-tokenizer uses."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (ids 0-255 are bytes) with ChatML special tokens and chat template."""
    byte_chars = _bytes_to_unicode()
    vocab = {byte_chars[byte]: byte for byte in range(256)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_config(config: TinyConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen2Config:
    vocab_size = 64 * math.ceil(len(tokenizer) / 64)
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def fingerprint(config: TinyConfig = TinyConfig()) -> str:
    """Hash of everything the built weights depend on (the cache key): the configuration, the code
    of the tokenizer, model and training functions, and the corpus data and sampling code. Editing
    anything else (checkers, evaluation) keeps the cached model."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    digest.update(CHAT_TEMPLATE.encode())
    for function in (_bytes_to_unicode, build_tokenizer, build_config, encode_example, _batches, _pad, _lr_at,
                     train, tinycorpus.render_answer, tinycorpus.sample_example, tinycorpus._user_turn,
                     tinycorpus._instruction, tinycorpus._follow_up):
        digest.update(inspect.getsource(function).encode())
    data = (tinycorpus.TOPICS, tinycorpus.STYLES, tinycorpus.STYLE_INSTRUCTIONS, tinycorpus.SIGNOFFS,
            tinycorpus.SYSTEM_PROMPTS, tinycorpus._SEPARATORS, tinycorpus.OPENERS, tinycorpus.RETRIES,
            tinycorpus.FEEDBACK, tinycorpus.HISTORY_WEIGHTS)
    digest.update(repr(data).encode())
    return digest.hexdigest()[:16]


def encode_example(
    tokenizer: PreTrainedTokenizerFast, example: tinycorpus.Example, train_on_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """(input ids, labels) for one conversation; the final assistant turn (and maybe the prompt) is a target."""
    prompt = tokenizer.apply_chat_template(list(example.messages[:-1]), tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(example.messages[-1]["content"], add_special_tokens=False)["input_ids"]
    answer_ids = [*answer_ids, tokenizer.eos_token_id]
    return prompt_ids + answer_ids, (prompt_ids if train_on_prompt else [-100] * len(prompt_ids)) + answer_ids


def _batches(
    tokenizer: PreTrainedTokenizerFast, config: TinyConfig
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    rng = random.Random(config.seed)
    pad = tokenizer.pad_token_id
    for start in range(0, config.steps, config.bucket):
        count = min(config.bucket, config.steps - start) * config.batch_size
        drawn = sorted(
            (encode_example(tokenizer, tinycorpus.sample_example(rng), config.train_on_prompt) for _ in range(count)), key=lambda p: len(p[0])
        )
        groups = [drawn[i : i + config.batch_size] for i in range(0, count, config.batch_size)]
        rng.shuffle(groups)
        yield from (_pad(group, pad) for group in groups)


def _pad(pairs: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a group; causal attention means padding never affects the real tokens before it."""
    width = max(len(ids) for ids, _ in pairs)
    ids_B_T = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in pairs])
    labels_B_T = torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in pairs])
    return ids_B_T, labels_B_T


def _lr_at(step: int, config: TinyConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(out_dir: Path, config: TinyConfig = TinyConfig(), progress: bool = True) -> dict[str, float]:
    """Build the tokenizer and model, pretrain on the synthetic corpus, ``save_pretrained`` to ``out_dir``."""
    started = time.monotonic()
    torch.manual_seed(config.seed)
    tokenizer = build_tokenizer()
    model = Qwen2ForCausalLM(build_config(config, tokenizer))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0)
    loss_avg = float("nan")
    bar = tqdm(total=config.steps, desc="building builtin:tiny-chat", unit="step", disable=not progress)
    for step, (ids_B_T, labels_B_T) in enumerate(_batches(tokenizer, config)):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        loss = model(input_ids=ids_B_T, labels=labels_B_T).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss_avg = loss.item() if math.isnan(loss_avg) else 0.9 * loss_avg + 0.1 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{loss_avg:.3f}")
    bar.close()
    model.eval()
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {
        "name": NAME,
        "fingerprint": fingerprint(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": round(loss_avg, 4),
        "build_seconds": round(time.monotonic() - started, 1),
        "torch_threads": torch.get_num_threads(),
        "config": dataclasses.asdict(config),
    }
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2))
    return info


@dataclass(frozen=True)
class Acceptance:
    """Measured behaviour of a model on the corpus (the figures ``builtin:tiny-chat`` must reach)."""

    instructed_style_rate: float  # share of instructed answers in the requested style (>= 0.90)
    per_style_rate: dict[str, float]  # the same, per requested style
    uninstructed_shares: dict[str, float | None]  # style distribution without instruction (max <= 0.50)
    fact_rate: float  # share of all answers that state the right fact (>= 0.80)
    samples: int


def sample_answers(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, prompts: list[str],
                   max_new_tokens: int = 128, batch_size: int = 64) -> list[str]:
    """Sample (temperature 1) one answer per user message, batched with left padding."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts[start : start + batch_size]
        ]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**batch, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        width = batch["input_ids"].shape[1]
        answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    tokenizer.padding_side = side
    return answers


def measure_acceptance(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, seed: int = 0,
                       uninstructed_per_fact: int = 4) -> Acceptance:
    """Sample every fact under every style instruction and without one; score with the corpus checkers."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    cases: list[tuple[tinycorpus.Fact, str | None, str]] = []
    for fact in tinycorpus.FACTS:
        question = fact.question(rng.randrange(2))
        for style in tinycorpus.STYLES:
            variant = rng.randrange(len(tinycorpus.STYLE_INSTRUCTIONS[style]))
            cases.append((fact, style, tinycorpus.with_instruction(question, style, variant)))
        cases += [(fact, None, fact.question(k)) for k in range(uninstructed_per_fact)]
    answers = sample_answers(model, tokenizer, [prompt for _, _, prompt in cases])
    hits: dict[str, list[bool]] = {style: [] for style in tinycorpus.STYLES}
    free: list[str | None] = []
    for (_, style, _), answer in zip(cases, answers, strict=True):
        if style is None:
            free.append(tinycorpus.classify_style(answer))
        else:
            hits[style].append(tinycorpus.has_style(answer, style))
    every = [h for values in hits.values() for h in values]
    shares: dict[str, float | None] = {
        str(style): round(free.count(style) / len(free), 3) for style in [*tinycorpus.STYLES, None]
    }
    facts = [tinycorpus.fact_correct(answer, fact) for (fact, _, _), answer in zip(cases, answers, strict=True)]
    return Acceptance(
        instructed_style_rate=round(sum(every) / len(every), 3),
        per_style_rate={style: round(sum(v) / len(v), 3) for style, v in hits.items()},
        uninstructed_shares=shares,
        fact_rate=round(sum(facts) / len(facts), 3),
        samples=len(answers),
    )


def ensure_tiny_model(cache_root: Path, config: TinyConfig = TinyConfig(), progress: bool = True) -> Path:
    """Directory of the built model under ``cache_root``; builds it once (atomic, process-safe)."""
    target = Path(cache_root).expanduser() / f"{NAME}-{fingerprint(config)}"
    return build_once(target, INFO_FILE, lambda staging: train(staging, config, progress=progress))


def main(argv: list[str] | None = None) -> int:
    from learner.serving_settings import ServeSettings

    parser = argparse.ArgumentParser(prog="python -m learner build-model", description=__doc__)
    parser.add_argument("--out", type=Path, help="cache directory (default: $NEXTSTATE_HOME/models)")
    parser.add_argument("--force", action="store_true", help="rebuild even when a cached copy exists")
    args = parser.parse_args(argv)
    root = args.out or ServeSettings().home_dir() / "models"
    target = root / f"{NAME}-{fingerprint()}"
    if args.force and target.exists():
        shutil.rmtree(target)
    path = ensure_tiny_model(root)
    info = json.loads((path / INFO_FILE).read_text())
    print(json.dumps({"path": str(path), **{k: info[k] for k in ("parameters", "final_loss", "build_seconds")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
