"""Decode speed of the embedded policy server beside the bare model, single and batched, in one run.

Loads the model (default ``builtin:smollm2-135m``) in this process and times a bare decoding loop
(one forward per token on the model's own KV cache, nothing else), then starts ``python -m learner
serve`` on the same model and times streamed requests that decode the same number of tokens, one
alone and ``--concurrency`` at once. The ratio server / bare is the share of the model's speed the
server keeps; what is missing is the server's per-token overhead. Rounds alternate bare and server
so a busy machine slows both alike; the median round is reported. Prints one JSON summary.

    python bench/serve_speed.py                                  # SmolLM2-135M on this machine
    python bench/serve_speed.py --model builtin:tiny-chat --max-tokens 32 --rounds 1   # a quick check
"""

from __future__ import annotations

import argparse
import concurrent.futures
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.serve_gpu import _free_port
from learner.modeling import load_model, render_prompt_ids, resolve_model
from learner.serving_settings import ServeSettings

QUESTION = [{"role": "user", "content": "Tell me about the history of the bicycle."}]


def bare_decode(model: Any, prompt_ids: list[int], batch: int, tokens: int) -> float:
    """Tokens per second of ``batch`` copies of the prompt decoded ``tokens`` steps on one shared KV cache.

    Sampling at temperature 1 from the raw logits, as the server does; prefill not counted.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(0)
    # the key-value cache keyword: ``cache`` in newer transformers, ``past_key_values`` before
    kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt_ids] * batch, device=device), use_cache=True, logits_to_keep=1)
        cache = getattr(out, kw)
        next_B = torch.multinomial(torch.softmax(out.logits[:, -1].float(), -1), 1, generator=generator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(tokens - 1):
            out = model(input_ids=next_B, use_cache=True, logits_to_keep=1, **{kw: cache})
            cache = getattr(out, kw)
            next_B = torch.multinomial(torch.softmax(out.logits[:, -1].float(), -1), 1, generator=generator)
            _ = next_B.tolist()  # the host needs every token (to stream it), as in the server
        seconds = time.perf_counter() - started
    return batch * (tokens - 1) / seconds


def served_request(client: httpx.Client, model: str, tokens: int, seed: int) -> tuple[float, float, int]:
    """One streamed chat request decoded to ``tokens`` (``ignore_eos``): (time to first token, seconds, tokens)."""
    started, first, produced = time.perf_counter(), None, 0
    body = {"model": model, "messages": QUESTION, "max_tokens": tokens, "temperature": 1.0, "seed": seed,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[len("data: "):])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                produced = int(chunk["usage"]["completion_tokens"])
    seconds = time.perf_counter() - started
    return (first if first is not None else seconds), seconds, produced


def served_decode(client: httpx.Client, model: str, batch: int, tokens: int) -> float:
    """Decode tokens per second over ``batch`` concurrent requests, time to first token excluded."""
    with concurrent.futures.ThreadPoolExecutor(batch) as pool:
        results = list(pool.map(lambda i: served_request(client, model, tokens, seed=i), range(batch)))
    assert all(n == tokens for _, _, n in results), results
    # every request decodes its tokens after its first one: the slowest request's decode span bounds them all
    span = max(seconds for _, seconds, _ in results) - min(first for first, _, _ in results)
    return batch * (tokens - 1) / span


def wait_ready(client: httpx.Client, server: subprocess.Popen[Any], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the policy server exited with {server.returncode}")
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the policy server did not start in time")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:smollm2-135m", help="builtin:..., or a Hugging Face directory")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens decoded per request")
    p.add_argument("--concurrency", type=int, default=4, help="requests decoded at once in the batched case")
    p.add_argument("--rounds", type=int, default=3, help="alternating bare/server rounds (the median is reported)")
    p.add_argument("--threads", type=int, help="torch CPU threads of both the bare loop and the server (default: the "
                   "server's default); on a machine whose cores are busy with other work fewer threads avoid stalls")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = ServeSettings()  # the product defaults: device, dtype, threads as `serve` picks them
    path = resolve_model(args.model, settings.home_dir())
    model, tokenizer = load_model(path, settings.device, settings.dtype)
    device = next(model.parameters()).device
    prompt_ids = render_prompt_ids(tokenizer, QUESTION)
    port = _free_port()
    env = dict(os.environ, NEXTSTATE_BASE_MODEL=str(path), NEXTSTATE_SERVE_PORT=str(port),
               NEXTSTATE_SERVED_MODEL_NAME="bench", NEXTSTATE_HOME=tempfile.mkdtemp(prefix="serve-speed-"))
    if args.threads:
        env["NEXTSTATE_TORCH_THREADS"] = str(args.threads)
    elif args.model == "builtin:tiny-chat":  # the server's default thread count is chosen by the model's name
        env["NEXTSTATE_TORCH_THREADS"] = "1"
        torch.set_num_threads(1)
    summary: dict[str, Any] = {
        "model": args.model, "device": str(device), "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(), "threads_set": args.threads, "cpu_count": os.cpu_count(), "prompt_tokens": len(prompt_ids),
        "max_tokens": args.max_tokens, "concurrency": args.concurrency, "rounds": args.rounds,
    }
    if device.type == "cuda":
        summary["gpu"] = torch.cuda.get_device_name(device)
    server = subprocess.Popen([sys.executable, "-m", "learner", "serve"], env=env)
    rates: dict[str, list[float]] = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            wait_ready(client, server)
            served_request(client, "bench", 4, seed=0)  # warm-up of both
            bare_decode(model, prompt_ids, 1, 4)
            for _ in range(args.rounds):
                for batch in (1, args.concurrency):
                    rates.setdefault(f"bare_b{batch}", []).append(bare_decode(model, prompt_ids, batch, args.max_tokens))
                    rates.setdefault(f"server_b{batch}", []).append(served_decode(client, "bench", batch, args.max_tokens))
    finally:
        server.terminate()
        server.wait(timeout=30)
    for key, values in rates.items():
        summary[f"{key}_tokens_per_s"] = round(statistics.median(values), 1)
    for batch in (1, args.concurrency):
        summary[f"server_over_bare_b{batch}"] = round(
            statistics.median(rates[f"server_b{batch}"]) / statistics.median(rates[f"bare_b{batch}"]), 2)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
