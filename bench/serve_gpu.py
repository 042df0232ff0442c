"""The embedded policy server on a real-sized model: load, generate, hot-load a LoRA adapter, concurrency.

Builds a randomly initialised Qwen2-style model (weights random, tokenizer the built-in byte-level
one, so nothing is downloaded), saves it in Hugging Face format with a peft LoRA adapter beside it,
starts ``python -m learner serve`` on it and measures decode speed with and without the adapter and
with concurrent requests. Prints one JSON summary.

    python bench/serve_gpu.py --size 0.5b        # on a GPU machine
    python bench/serve_gpu.py --size tiny        # anywhere, checks the script
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from learner.tiny import build_tokenizer

SIZES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _chat(client: httpx.Client, model: str, max_tokens: int) -> tuple[float, float, int]:
    """One streamed request that runs to ``max_tokens`` (``ignore_eos``): (time to first token, seconds, tokens)."""
    t = time.perf_counter()
    first, tokens = None, 0
    body = {
        "model": model, "max_tokens": max_tokens, "temperature": 1.0, "seed": 1, "ignore_eos": True,
        "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    }
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content") is not None:
                first = time.perf_counter() - t
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    seconds = time.perf_counter() - t
    return (first if first is not None else seconds), seconds, tokens


def _rates(prefix: str, ttft: float, seconds: float, tokens: int) -> dict[str, float | int]:
    """Time to first token and the decode rate after it, so start-up costs do not hide the per-token speed."""
    return {f"{prefix}_tokens": tokens, f"{prefix}_ttft_s": round(ttft, 3),
            f"{prefix}_decode_tokens_per_s": round((tokens - 1) / max(seconds - ttft, 1e-9), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="serve-gpu-"))
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=4096,
                                         tie_word_embeddings=True, **SIZES[args.size]))
    model.save_pretrained(work / "base")
    tokenizer.save_pretrained(work / "base")
    lora = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
    lora.save_pretrained(work / "lora")
    del model, lora
    port = _free_port()
    env = dict(os.environ, NEXTSTATE_BASE_MODEL=str(work / "base"), NEXTSTATE_SERVE_PORT=str(port),
               NEXTSTATE_HOME=str(work / "home"), NEXTSTATE_SERVED_MODEL_NAME="base",
               NEXTSTATE_ADAPTERS_DIR=str(work))  # the adapter below is loaded from the server's store
    server = subprocess.Popen([sys.executable, "-m", "learner", "serve"], env=env)
    summary: dict[str, object] = {"size": args.size, "cuda": torch.cuda.is_available()}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            t0 = time.perf_counter()
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.perf_counter() - t0 > 300:
                    raise RuntimeError("policy server did not start")
                time.sleep(0.5)
            summary["startup_s"] = round(time.perf_counter() - t0, 2)
            _chat(client, "base", 8)  # warm-up
            summary.update(_rates("base", *_chat(client, "base", args.max_tokens)))
            t = time.perf_counter()
            r = client.post("/v1/load_lora_adapter", json={"lora_name": "base@v1", "lora_path": str(work / "lora")})
            summary["load_lora_status"], summary["load_lora_s"] = r.status_code, round(time.perf_counter() - t, 2)
            summary.update(_rates("lora", *_chat(client, "base@v1", args.max_tokens)))
            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
                results = list(pool.map(lambda i: _chat(client, "base@v1" if i % 2 else "base", args.max_tokens),
                                        range(args.concurrency)))
            wall = time.perf_counter() - t
            summary["concurrent_requests"] = args.concurrency
            summary["concurrent_tokens_per_s"] = round(sum(n for _, _, n in results) / wall, 1)
            summary["models"] = [m["id"] for m in client.get("/v1/models").json()["data"]]
            summary["unload_status"] = client.post("/v1/unload_lora_adapter", json={"lora_name": "base@v1"}).status_code
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
