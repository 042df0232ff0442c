"""Model and tokenizer loading shared by every learner component, and the one way to render a prompt.

``resolve_model`` turns a model setting (``builtin:tiny-chat``, ``builtin:smollm2-135m``, a local Hugging
Face directory, or a hub id already in the local cache) into a directory; ``load_model`` loads it on CPU (float32) or CUDA
(bfloat16); ``render_prompt_ids`` applies the chat template exactly as the policy server does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from packaging.version import Version
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

BUILTIN_TINY = "builtin:tiny-chat"
BUILTIN_SMOLLM2 = "builtin:smollm2-135m"
BUILTINS = (BUILTIN_TINY, BUILTIN_SMOLLM2)


class ModelNotFoundError(FileNotFoundError):
    """The model setting names nothing that can be loaded without a download."""


def resolve_model(name_or_path: str, home: Path) -> Path:
    """Directory of the model named by ``name_or_path``; builds (or converts) and caches a built-in model.

    The built-in models live under ``<home>/models``; nothing is ever downloaded.
    """
    if name_or_path == BUILTIN_TINY:
        from learner.tiny import ensure_tiny_model

        return ensure_tiny_model(Path(home).expanduser() / "models")
    if name_or_path == BUILTIN_SMOLLM2:
        from learner.smollm2 import ensure_smollm2

        return ensure_smollm2(Path(home).expanduser() / "models")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception as exc:  # any hub error means "not available locally"
        raise ModelNotFoundError(
            f"model {name_or_path!r} is neither a built-in model {BUILTINS}, a local directory, nor in the local hub cache"
        ) from exc


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """``dtype`` if given, else bfloat16 on CUDA and float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype and dtype != "auto":
        return getattr(torch, dtype)
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_model(
    path: Path | str, device: str | None = None, dtype: str | torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local directory, in eval mode on ``device``."""
    target = pick_device(device)
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(str(path), **dtype_argument(pick_dtype(target, dtype)))
    model.to(target)
    model.eval()
    return model, tokenizer


def dtype_argument(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``from_pretrained``'s dtype keyword: ``dtype`` replaced ``torch_dtype`` in transformers 4.56."""
    return {"dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype": dtype}


def load_tokenizer(path: Path | str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with OpenAI content parts flattened to text and ``None`` content made empty."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(
                part.get("text", "") if isinstance(part, dict) else str(part) for part in content
            )
        out.append({**message, "content": content if content is not None else ""})
    return out


def render_prompt(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> str:
    """The chat-template text of ``messages`` (and ``tools``) followed by the generation prompt."""
    return str(
        tokenizer.apply_chat_template(
            normalize_messages(messages), tools=tools or None, tokenize=False, add_generation_prompt=True
        )
    )


def render_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> list[int]:
    """Token ids of the rendered prompt, as the policy server feeds them to the model.

    The template already contains any special tokens, so none are added on top.
    """
    text = render_prompt(tokenizer, messages, tools)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def sample_answers(model: Any, tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict[str, Any]]], n: int,
                   temperature: float, max_tokens: int, seed: int) -> list[list[int]]:
    """``n`` sampled answers (token ids, end-of-turn token kept) per conversation, in one left-padded batch.

    Seeded, so two policies sampled with the same seed draw from the same random stream.
    """
    prompts = [render_prompt_ids(tokenizer, messages) for messages in conversations]
    width = max(len(p) for p in prompts)
    pad = int(tokenizer.pad_token_id or 0)
    device = next(model.parameters()).device
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature, top_p=1.0,
                             top_k=0, max_new_tokens=max_tokens, num_return_sequences=n, pad_token_id=pad)
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = set(configured if isinstance(configured, list) else [configured]) | {tokenizer.eos_token_id, pad}
    answers = []
    for row in out[:, width:].tolist():  # keep the end-of-turn token, drop the padding after it
        answers.append(row[: next((i + 1 for i, t in enumerate(row) if t in eos), len(row))])
    return answers
