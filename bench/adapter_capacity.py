"""How many personal adapters one embedded policy server holds, and what a request whose adapter must be loaded first costs.

Every personal learning scope adds its stable (and, while one runs, its canary) adapter to the policy
server. This creates ``--adapters`` distinct LoRA adapters for the model (the learner's own preset:
rank, alpha and target modules, with small random ``lora_B`` weights so each one changes the model),
starts two ``python -m learner serve`` processes on it and loads every adapter into both through the
runtime LoRA API the registry's publisher uses (``POST /v1/load_lora_adapter``):

- ``slots``: ``max_loras`` at the product default (4): at most that many adapters are materialised in
  the model, the rest are registered (a name and a path) and loaded from disk on their next request;
- ``resident``: ``max_loras`` = ``--adapters``: every adapter stays materialised.

Measured side by side in one run: each server's resident memory (RSS) after 0, 1, 4, 16, 64, ...
adapters; the latency of a short greedy chat completion to the base model, to a materialised adapter
(warm), to a registered adapter that must be materialised first (cold; it evicts the least recently
used idle one), and on ``resident`` to a different adapter every request; rounds interleave the arms
so a busy machine slows them alike. Then a burst of concurrent requests for more distinct cold
adapters than ``max_loras``, with the engine's queue polled meanwhile: which requests wait, whether
any fails. Prints a table and writes the figures to ``bench/out/adapter_capacity/``.

    python -m bench.adapter_capacity                                  # tiny-chat, 64 adapters
    python -m bench.adapter_capacity --model smollm2-135m --adapters 16
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.serve_gpu import _free_port
from bench.serve_speed import wait_ready
from learner.config import TrainConfig
from learner.learner_settings import auto_preset
from learner.modeling import BUILTINS, load_model, resolve_model
from learner.serving_settings import ServeSettings
from learner.train import attach_adapter

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
OUT = Path(__file__).resolve().parent / "out" / "adapter_capacity"
MiB = 1024 * 1024


def model_dir(name: str, cache: Path) -> Path:
    """A built-in model from the shared model cache (as the tests find it), or a model directory."""
    builtin = f"builtin:{name}"
    return resolve_model(builtin, cache.parent) if builtin in BUILTINS else Path(name).expanduser()


def make_adapters(model_path: Path, base_model: str, count: int, store: Path) -> dict[str, Any]:
    """``count`` distinct adapters in ``store/u000 ...`` with the learner's preset for the model; what one holds."""
    model, _ = load_model(model_path, device="cpu", dtype="float32")
    presets = {"tiny": TrainConfig.tiny, "small": TrainConfig.small, "gpu": TrainConfig.gpu}
    config = presets[auto_preset(base_model, "cpu")]()
    peft_model = attach_adapter(model, config, None)
    generator = torch.Generator().manual_seed(0)
    lora_B = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
    with torch.no_grad():
        for i in range(count):  # lora_B starts at zero (a no-op adapter): a small random one per user
            for p in lora_B:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
            peft_model.save_pretrained(str(store / f"u{i:03d}"))
    files = sum(f.stat().st_size for f in (store / "u000").iterdir())
    parameters = sum(p.numel() for name, p in peft_model.named_parameters() if "lora_" in name)
    del peft_model, model
    gc.collect()
    return {"lora_r": config.lora_r, "lora_alpha": config.lora_alpha, "lora_parameters": parameters,
            "adapter_file_bytes": files}


@dataclass
class Server:
    """One ``python -m learner serve`` process and a client to it."""

    label: str
    max_loras: int
    process: subprocess.Popen[Any]
    client: httpx.Client

    def rss(self) -> int:
        """Resident memory of the server process in bytes (Linux ``/proc``)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def engine(self) -> dict[str, Any]:
        return self.client.get("/healthz").json()  # type: ignore[no-any-return]

    def load(self, name: str, path: Path) -> float:
        started = time.perf_counter()
        response = self.client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
        response.raise_for_status()
        return time.perf_counter() - started

    def chat(self, model: str) -> tuple[float, int, str]:
        """One greedy 8-token chat completion: (seconds, status, the text or the error)."""
        body = {"model": model, "messages": QUESTION, "max_tokens": 8, "temperature": 0}
        started = time.perf_counter()
        response = self.client.post("/v1/chat/completions", json=body)
        seconds = time.perf_counter() - started
        ok = response.status_code == 200
        return seconds, response.status_code, response.json()["choices"][0]["message"]["content"] if ok else response.text

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_server(label: str, model_path: Path, served: str, work: Path, max_loras: int, threads: int) -> Server:
    port = _free_port()
    env = dict(os.environ, NEXTSTATE_BASE_MODEL=str(model_path), NEXTSTATE_SERVED_MODEL_NAME=served,
               NEXTSTATE_SERVE_PORT=str(port), NEXTSTATE_HOME=str(work / label),
               NEXTSTATE_ADAPTERS_DIR=str(work / "adapters"), NEXTSTATE_MAX_LORAS=str(max_loras),
               NEXTSTATE_TORCH_THREADS=str(threads), NEXTSTATE_LOG_LEVEL="WARNING",
               PYTHONWARNINGS="ignore::UserWarning,ignore::FutureWarning")  # peft warns at every eviction
    process = subprocess.Popen([sys.executable, "-m", "learner", "serve"], env=env)
    return Server(label, max_loras, process, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600))


def checkpoints(count: int) -> list[int]:
    """0, 1, 4, 16, 64, ... up to ``count``, and ``count`` itself."""
    points, n = [0], 1
    while n < count:
        points.append(n)
        n *= 4
    return sorted({*points, count})


def percentiles(seconds: list[float]) -> dict[str, float]:
    return {"n": len(seconds), "p50_ms": round(1000 * statistics.median(seconds), 1), "max_ms": round(1000 * max(seconds), 1)}


def burst(server: Server, served: str, cold: list[str], warm: str | None) -> dict[str, Any]:
    """Requests for every adapter in ``cold`` (more than ``max_loras``), a warm one and the base, all at once."""
    models = [*cold, *([warm] if warm else []), served]
    peaks = {"waiting": 0, "running": 0, "materialised": 0}
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=server.client.base_url, timeout=60) as client:
            while not done.is_set():
                stats = client.get("/healthz").json()
                for key in ("waiting", "running"):
                    peaks[key] = max(peaks[key], stats[key])
                peaks["materialised"] = max(peaks["materialised"], len(stats["materialised"]))
                time.sleep(0.01)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    with concurrent.futures.ThreadPoolExecutor(len(models)) as pool:
        answers = list(pool.map(server.chat, models))
    done.set()
    poller.join()
    kind = {**dict.fromkeys(cold, "cold"), **({warm: "warm"} if warm else {}), served: "base"}
    requests = [{"model": m, "arm": kind[m], "ms": round(1000 * s, 1), "status": status}
                for m, (s, status, _) in zip(models, answers, strict=True)]
    errors = [{"model": m, "status": status, "body": text[:300]}
              for m, (_, status, text) in zip(models, answers, strict=True) if status != 200]
    return {"requests": requests, "errors": errors, "peak_waiting": peaks["waiting"],
            "peak_running": peaks["running"], "peak_materialised": peaks["materialised"],
            "cold_ms": percentiles([s for m, (s, _, _) in zip(models, answers, strict=True) if kind[m] == "cold"])}


def measure(model_path: Path, served: str, base_model: str, adapters: int, max_loras: int, rounds: int,
            threads: int, work: Path) -> dict[str, Any]:
    """The whole measurement (see the module docstring) with its files under ``work``; returns the figures."""
    store = work / "adapters"
    started = time.monotonic()
    summary: dict[str, Any] = {"model": served, "adapters": adapters, "max_loras": max_loras, "torch_threads": threads,
                               "cpu_count": os.cpu_count(), "rounds": rounds}
    summary.update(make_adapters(model_path, base_model, adapters, store))
    names = [f"{served}@u{i:03d}" for i in range(adapters)]
    starting = time.monotonic()
    slots = start_server("slots", model_path, served, work, max_loras, threads)
    resident = start_server("resident", model_path, served, work, adapters, threads)
    servers = (slots, resident)
    try:
        for server in servers:
            wait_ready(server.client, server.process)
            for _ in range(2):  # the first requests allocate the decoding working set: before the baseline
                server.chat(served)
        summary["server_start_s"] = round(time.monotonic() - starting, 1)

        memory: dict[str, dict[int, int]] = {s.label: {} for s in servers}
        load_s: dict[str, list[float]] = {s.label: [] for s in servers}
        marks = checkpoints(adapters)
        for i, name in enumerate([None, *names]):
            if name is not None:
                for server in servers:
                    load_s[server.label].append(server.load(name, store / f"u{i - 1:03d}"))
            if i in marks:
                for server in servers:
                    memory[server.label][i] = server.rss()
        summary["rss_mib"] = {label: {n: round(b / MiB, 1) for n, b in rss.items()} for label, rss in memory.items()}
        summary["load_request_ms"] = {label: percentiles(s) for label, s in load_s.items()}
        # the n-th load's time, at each mark: on `resident` it grows with the adapters already materialised
        summary["load_ms_at"] = {label: {n: round(1000 * s[n - 1], 1) for n in marks if n} for label, s in load_s.items()}
        base_rss = memory["resident"][0]
        summary["bytes_per_materialised_adapter"] = round((memory["resident"][adapters] - base_rss) / adapters)
        full = min((n for n in marks if n >= max_loras), default=adapters)  # every slot taken from here on
        if adapters > full:  # what a further adapter costs while only its name and path are kept
            summary["bytes_per_registered_adapter"] = round((memory["slots"][adapters] - memory["slots"][full]) / (adapters - full))
        summary["resident_adapters_per_gib"] = round(1024 * MiB / max(summary["bytes_per_materialised_adapter"], 1))

        # latency: base, warm, cold on `slots`; base and a different adapter each time on `resident`
        warm = names[-1] if max_loras >= 2 else None  # the last loaded adapter is materialised
        next_cold = 0
        timings: dict[str, list[float]] = {arm: [] for arm in ("base", "warm", "cold", "resident_base", "resident_switch")}
        failures: list[dict[str, Any]] = []

        def cold_name() -> str:
            nonlocal next_cold
            materialised = set(slots.engine()["materialised"])
            for _ in range(adapters):
                name = names[next_cold % adapters]
                next_cold += 1
                if name not in materialised and name != warm:
                    return name
            raise RuntimeError("every adapter is materialised: --adapters must exceed max_loras")

        def timed(arm: str, server: Server, model: str) -> None:
            seconds, status, text = server.chat(model)
            if status != 200:
                failures.append({"arm": arm, "model": model, "status": status, "body": text[:300]})
            timings[arm].append(seconds)

        for cycle in range(rounds):
            # warm is always asked before cold, so cold evicts an idle adapter, never the warm one
            order = ["base", "warm", "cold"] if cycle % 2 == 0 else ["warm", "cold", "base"]
            for arm in order:
                if arm == "base":
                    timed("base", slots, served)
                elif arm == "warm" and warm is not None:
                    assert warm in slots.engine()["materialised"], "the warm adapter was evicted"
                    timed("warm", slots, warm)
                elif arm == "cold":
                    name = cold_name()
                    assert name not in slots.engine()["materialised"]
                    timed("cold", slots, name)
            timed("resident_base", resident, served)
            timed("resident_switch", resident, names[cycle % adapters])  # a different adapter each round
        summary["latency"] = {arm: percentiles(s) for arm, s in timings.items() if s}
        if warm is not None:
            summary["cold_over_warm_p50"] = round(statistics.median(timings["cold"]) / statistics.median(timings["warm"]), 2)
        summary["cold_minus_warm_p50_ms"] = round(
            1000 * (statistics.median(timings["cold"]) - statistics.median(timings["warm" if warm else "base"])), 1)
        summary["latency_errors"] = failures

        # at max_loras: more distinct cold adapters than slots, at once
        materialised = set(slots.engine()["materialised"])
        cold = [n for n in names if n not in materialised and n != warm][: 2 * max_loras]
        summary["burst"] = burst(slots, served, cold, warm)
        summary["max_num_seqs"] = ServeSettings.model_fields["max_num_seqs"].default  # the servers run the default
        summary["rss_after_churn_mib"] = {s.label: round(s.rss() / MiB, 1) for s in servers}
        summary["cold_loads_on_slots"] = rounds + len(cold)
        summary["answers"] = {"base": slots.chat(served)[2], "adapter": slots.chat(names[0])[2]}
    finally:
        for server in servers:
            server.stop()
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary


def table(s: dict[str, Any]) -> str:
    rss = s["rss_mib"]
    per = s.get("bytes_per_registered_adapter")
    registered = "n/a" if per is None else f"{per / 1024:.0f} KiB"
    lines = [f"{s['model']}: {s['adapters']} adapters (LoRA r={s['lora_r']}, {s['lora_parameters']:,} parameters, "
             f"{s['adapter_file_bytes'] / 1024:.0f} KiB on disk each), {s['cpu_count']} CPUs, torch threads {s['torch_threads']}",
             "", f"| adapters loaded | RSS, max_loras={s['max_loras']} (MiB) | RSS, max_loras={s['adapters']} (MiB) "
             f"| that load, max_loras={s['max_loras']} (ms) | that load, max_loras={s['adapters']} (ms) |",
             "| --- | --- | --- | --- | --- |"]
    at = s["load_ms_at"]
    lines += [f"| {n} | {rss['slots'][n]} | {rss['resident'][n]} | {at['slots'].get(n, '')} | {at['resident'].get(n, '')} |"
              for n in rss["slots"]]
    lines += ["", f"per materialised adapter: {s['bytes_per_materialised_adapter'] / 1024:.0f} KiB "
              f"({s['resident_adapters_per_gib']} per GiB); per registered-only adapter: "
              f"{registered}; after "
              f"{s['cold_loads_on_slots']} cold loads: {s['rss_after_churn_mib']['slots']} MiB",
              f"load request: {s['load_request_ms']['slots']['p50_ms']} ms p50 (max_loras={s['max_loras']}), "
              f"{s['load_request_ms']['resident']['p50_ms']} ms (all resident)",
              "", "| request (max_tokens 8, greedy) | p50 ms | max ms | n |", "| --- | --- | --- | --- |"]
    labels = {"base": "base model", "warm": "adapter materialised (warm)", "cold": "adapter registered, not materialised (cold)",
              "resident_base": f"base, {s['adapters']} adapters resident",
              "resident_switch": f"a different adapter each time, {s['adapters']} resident"}
    lines += [f"| {labels[arm]} | {v['p50_ms']} | {v['max_ms']} | {v['n']} |" for arm, v in s["latency"].items()]
    b = s["burst"]
    lines += ["", f"cold / warm p50: {s.get('cold_over_warm_p50')}  (cold - warm: {s['cold_minus_warm_p50_ms']} ms)",
              f"burst of {sum(r['arm'] == 'cold' for r in b['requests'])} cold adapters + warm + base at once: "
              f"errors {len(b['errors'])}, peak waiting {b['peak_waiting']}, peak running {b['peak_running']}, "
              f"peak materialised {b['peak_materialised']} (max_loras {s['max_loras']}), cold p50 {b['cold_ms']['p50_ms']} ms, "
              f"max {b['cold_ms']['max_ms']} ms; " + ", ".join(f"{r['arm']} {r['ms']}" for r in b["requests"] if r["arm"] != "cold"),
              f"errors outside the burst: {len(s['latency_errors'])}; {s['seconds']} s in all"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-chat", help="tiny-chat, smollm2-135m, or a Hugging Face model directory")
    p.add_argument("--adapters", type=int, help="adapters created and loaded (default 64 for tiny-chat, else 16)")
    p.add_argument("--max-loras", type=int, default=4, help="max_loras of the `slots` server (the product default: 4)")
    p.add_argument("--rounds", type=int, default=6, help="requests per latency arm")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each server (1: two servers on shared cores)")
    p.add_argument("--model-cache", type=Path, default=Path(os.environ.get("NEXTSTATE_MODEL_CACHE") or "~/.cache/nextstate/models"),
                   help="where the built-in models are built and cached")
    args = p.parse_args(argv)
    adapters = args.adapters or (64 if args.model == "tiny-chat" else 16)
    if adapters <= args.max_loras:
        p.error("--adapters must exceed --max-loras, so some adapter is cold")
    path = model_dir(args.model, args.model_cache.expanduser())
    served = args.model if f"builtin:{args.model}" in BUILTINS else "bench"
    base_model = f"builtin:{args.model}" if f"builtin:{args.model}" in BUILTINS else str(path)
    with tempfile.TemporaryDirectory(prefix="adapter-capacity-") as work:
        summary = measure(path, served, base_model, adapters, args.max_loras, args.rounds, args.threads, Path(work))
    print(table(summary), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    target = OUT / f"{served}-{adapters}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
