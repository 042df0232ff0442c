"""What the proxy adds: the same fast local upstream hit directly and through the proxy, interleaved.

Starts the fake upstream, the proxy and a bare forwarder (``bench.forwarder``: the proxy's server and
upstream client with no features, the floor under any proxy on this stack) as separate uvicorn
processes (uvloop + httptools) and a private Redis, then measures from this process (its own loop):
added p50/p99 latency at a fixed request rate per target (in rounds; the median over rounds is
reported, since one run's figures move with where the scheduler puts the processes), added streaming
time-to-first-token, and peak throughput of each path against direct. Then the peak once more in front
of an upstream that takes ``--slow-upstream-ms`` per answer with ``--slow-concurrency`` requests in
flight (an upstream with a capacity of its own, as an LLM server has; the first upstream answers at
once, so there the ratio measures the proxy's CPU against the upstream's and the client's on shared cores).
Run: ``.venv/bin/python -m bench.proxy_overhead [--rate 200] [--seconds 4] [--latency-rounds 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import uvloop

ROOT = Path(__file__).resolve().parent.parent
BODY = json.dumps({"model": "bench", "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say something short about latency budgets."},
]}).encode()
# Direct requests ask the upstream for what the proxy asks it for (token ids and logprobs), so both
# paths cost the upstream the same and the difference is the proxy's alone.
CAPTURE = {"logprobs": True, "return_token_ids": True}
CAPTURED = json.dumps({**json.loads(BODY), **CAPTURE}).encode()
BODIES = {"direct": CAPTURED, "forwarder": CAPTURED, "proxied": BODY}  # the forwarder adds nothing to the body
STREAM_BODIES = {name: json.dumps({**json.loads(body), "stream": True}).encode() for name, body in BODIES.items()}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, timeout: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _uvicorn(stack: ExitStack, app: list[str], env: dict[str, str]) -> str:
    """``uvicorn <app>`` as a process (uvloop, httptools, ``env`` added); returns its ``/v1`` base URL."""
    port = _free_port()
    full = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", *app, "--port", str(port), "--loop", "uvloop", "--http", "httptools",
         "--log-level", "warning", "--no-access-log"], cwd=ROOT, env=full,
    )
    stack.callback(lambda: (process.terminate(), process.wait(10)))
    url = f"http://127.0.0.1:{port}/v1"
    _wait_http(f"{url}/models")
    return url


def start_upstream(stack: ExitStack, delay_s: float = 0.0) -> str:
    """A fake upstream process (answers at once, or after ``delay_s``); returns its base URL."""
    return _uvicorn(stack, ["--factory", "tests.support.fake_upstream:create_app"], {"FAKE_UPSTREAM_DELAY_S": str(delay_s)})


def start_forwarder(stack: ExitStack, upstream: str, client: str = "http1") -> str:
    """The bare forwarder (bench.forwarder) in front of ``upstream`` with ``client`` as its upstream client;
    returns its base URL."""
    return _uvicorn(stack, ["bench.forwarder:app"], {"FORWARD_TO": upstream, "FORWARD_CLIENT": client})


def start_proxy(stack: ExitStack, home: Path, upstream: str, workers: int = 1) -> str:
    """The proxy in front of ``upstream`` with a private embedded Redis; returns its base URL."""
    proxy_port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proxy_env = {**env, "NEXTSTATE_HOME": str(home), "NEXTSTATE_UPSTREAM_URL": upstream, "NEXTSTATE_PORT": str(proxy_port),
                 "NEXTSTATE_LOG_JSON": "true", "NEXTSTATE_WORKERS": str(workers)}
    proxy_env.pop("NEXTSTATE_REDIS_URL", None)  # a private embedded Redis under the temporary home
    proxy = subprocess.Popen([sys.executable, "-m", "proxy"], cwd=ROOT, env=proxy_env,
                             stderr=subprocess.DEVNULL, start_new_session=True)

    stack.callback(lambda: (proxy.terminate(), proxy.wait(20)))  # it stops its embedded Redis itself
    proxied = f"http://127.0.0.1:{proxy_port}/v1"
    _wait_http(f"{proxied}/models")
    return proxied


def start_stack(stack: ExitStack, home: Path, workers: int = 1, delay_s: float = 0.0) -> tuple[str, str]:
    """(direct base URL, proxied base URL); processes stop when the stack closes."""
    direct = start_upstream(stack, delay_s)
    return direct, start_proxy(stack, home, direct, workers)


async def _one(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    start = time.perf_counter()
    async with session.post(url, data=body, headers={"content-type": "application/json"}) as response:
        await response.read()
        assert response.status == 200, response.status
    return time.perf_counter() - start


async def _ttft(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    start = time.perf_counter()
    async with session.post(url, data=body, headers={"content-type": "application/json"}) as response:
        first = None
        async for _ in response.content.iter_any():
            if first is None:
                first = time.perf_counter() - start
        return first or 0.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def fixed_rate(targets: dict[str, str], rate: float, seconds: float) -> dict[str, list[float]]:
    """Open loop: each target gets ``rate`` requests/s, requests alternate between targets."""
    results: dict[str, list[float]] = {name: [] for name in targets}
    sessions = {name: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) for name in targets}
    try:
        for name, url in targets.items():  # warm up connections
            await asyncio.gather(*(_one(sessions[name], url, BODIES[name]) for _ in range(20)))
        names = list(targets)
        interval = 1.0 / (rate * len(names))
        total = int(rate * seconds) * len(names)
        tasks = []
        start = time.perf_counter()
        for i in range(total):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            name = names[i % len(names)]

            async def run(name: str = name) -> None:
                results[name].append(await _one(sessions[name], targets[name], BODIES[name]))

            tasks.append(asyncio.ensure_future(run()))
        await asyncio.gather(*tasks)
    finally:
        for session in sessions.values():
            await session.close()
    return results


async def ttft(targets: dict[str, str], count: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in targets}
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            for name, url in targets.items():
                results[name].append(await _ttft(session, url, STREAM_BODIES[name]))
    return results


async def peak(targets: dict[str, str], concurrency: int, window: float, rounds: int) -> dict[str, float]:
    """Closed loop, alternating windows per target; requests per second per target."""
    done: dict[str, int] = dict.fromkeys(targets, 0)
    spent: dict[str, float] = dict.fromkeys(targets, 0.0)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency * 2)) as session:
        for _ in range(rounds):
            for name, url in targets.items():
                stop = time.perf_counter() + window

                async def worker(url: str = url, name: str = name, stop: float = stop) -> None:
                    while time.perf_counter() < stop:
                        await _one(session, url, BODIES[name])
                        done[name] += 1

                start = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                spent[name] += time.perf_counter() - start
    return {name: done[name] / spent[name] for name in targets}


def _median_over_rounds(rounds: list[dict[str, list[float]]], name: str, q: float) -> float:
    """Median over rounds of (``name``'s percentile ``q`` minus direct's), in ms."""
    return statistics.median(_pct(r[name], q) - _pct(r["direct"], q) for r in rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s per target in the fixed-rate phase")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one fixed-rate round")
    parser.add_argument("--latency-rounds", type=int, default=5, help="fixed-rate rounds (the median is reported)")
    parser.add_argument("--ttft-requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--window", type=float, default=2.0, help="seconds per peak-throughput window")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="proxy worker processes")
    parser.add_argument("--slow-upstream-ms", type=float, default=50.0,
                        help="also measure peak throughput in front of an upstream that takes this long per answer "
                             "(0: skip)")
    parser.add_argument("--slow-concurrency", type=int, default=16)
    parser.add_argument("--clients", default="",
                        help="also forward through the bare forwarder with these upstream clients (comma-separated: "
                             "aiohttp, httpcore), side by side with the proxy's own (http1)")
    args = parser.parse_args(argv)
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="nextstate-bench-") as home:
        direct, proxied = start_stack(stack, Path(home) / "fast", args.workers)
        forwarder = start_forwarder(stack, direct)
        chat = {name: f"{url}/chat/completions" for name, url in
                (("direct", direct), ("forwarder", forwarder), ("proxied", proxied))}
        for client in clients:
            name = f"forwarder-{client}"
            chat[name] = f"{start_forwarder(stack, direct, client)}/chat/completions"
            BODIES[name], STREAM_BODIES[name] = BODIES["forwarder"], STREAM_BODIES["forwarder"]
        rounds = [uvloop.run(fixed_rate(chat, args.rate, args.seconds)) for _ in range(args.latency_rounds)]
        first = uvloop.run(ttft(chat, args.ttft_requests))
        throughput = uvloop.run(peak(chat, args.concurrency, args.window, args.rounds))
        stack.close()  # the slow pair runs alone
        slow: dict[str, float] = {}
        if args.slow_upstream_ms > 0:
            direct, proxied = start_stack(stack, Path(home) / "slow", args.workers, args.slow_upstream_ms / 1000)
            slow_chat = {"direct": f"{direct}/chat/completions", "proxied": f"{proxied}/chat/completions"}
            slow = uvloop.run(peak(slow_chat, args.slow_concurrency, args.window, args.rounds))
    pooled = {name: [v for r in rounds for v in r[name]] for name in chat}
    d, p = pooled["direct"], pooled["proxied"]
    report = {
        "proxy_workers": args.workers,
        "rate_per_target": args.rate,
        "requests_per_target": len(d),
        "latency_rounds": args.latency_rounds,
        "direct_p50_ms": _pct(d, 0.5), "proxied_p50_ms": _pct(p, 0.5),
        "direct_p99_ms": _pct(d, 0.99), "proxied_p99_ms": _pct(p, 0.99),
        "added_p50_ms": _median_over_rounds(rounds, "proxied", 0.5),
        "added_p99_ms": _median_over_rounds(rounds, "proxied", 0.99),
        "added_p50_ms_each_round": " ".join(f"{_pct(r['proxied'], 0.5) - _pct(r['direct'], 0.5):.3f}" for r in rounds),
        "forwarder_added_p50_ms": _median_over_rounds(rounds, "forwarder", 0.5),
        "forwarder_added_p99_ms": _median_over_rounds(rounds, "forwarder", 0.99),
        "direct_ttft_p50_ms": _pct(first["direct"], 0.5), "proxied_ttft_p50_ms": _pct(first["proxied"], 0.5),
        "added_ttft_p50_ms": _pct(first["proxied"], 0.5) - _pct(first["direct"], 0.5),
        "forwarder_added_ttft_p50_ms": _pct(first["forwarder"], 0.5) - _pct(first["direct"], 0.5),
        "direct_peak_rps": throughput["direct"], "forwarder_peak_rps": throughput["forwarder"],
        "proxied_peak_rps": throughput["proxied"],
        "forwarder_peak_ratio": throughput["forwarder"] / throughput["direct"],
        "peak_ratio": throughput["proxied"] / throughput["direct"],
        **({f"slow_upstream_{args.slow_upstream_ms:g}ms_direct_peak_rps": slow["direct"],
            f"slow_upstream_{args.slow_upstream_ms:g}ms_proxied_peak_rps": slow["proxied"],
            f"slow_upstream_{args.slow_upstream_ms:g}ms_peak_ratio": slow["proxied"] / slow["direct"]} if slow else {}),
        "mean_added_ms": (statistics.fmean(p) - statistics.fmean(d)) * 1000,
    }
    for client in clients:  # the upstream client options, each in the bare forwarder, beside the proxy's own
        name = f"forwarder-{client}"
        report[f"{name}_added_p50_ms"] = _median_over_rounds(rounds, name, 0.5)
        report[f"{name}_added_p99_ms"] = _median_over_rounds(rounds, name, 0.99)
        report[f"{name}_peak_rps"] = throughput[name]
        report[f"{name}_peak_ratio_to_http1"] = throughput[name] / throughput["forwarder"]
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}}  {value:.3f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
