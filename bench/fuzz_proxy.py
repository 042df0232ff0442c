"""The proxy under a long generated attack: at least ``--requests`` requests (10,000 by default) from
its own OpenAPI document (schemathesis + Hypothesis, requests that follow the document and requests
that break it), against ``nextstate proxy`` on product defaults in front of the scripted upstream.

Reports the statuses seen, every answer that breaks the rules (a 5xx other than the documented
502/503/504, a 4xx not in the OpenAI error shape) and the proxy process's resident memory over the
run (it must stay bounded). Exits non-zero on any violation.
Run: ``.venv/bin/python -m bench.fuzz_proxy [--requests 10000] [--per-operation 400]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench.proxy_overhead import ROOT, _free_port, _wait_http, start_upstream
from tests.support import fuzz


def rss_mib(pid: int) -> float:
    """Resident memory (VmRSS) of a process, in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_proxy(stack: ExitStack, home: Path, upstream: str) -> tuple[str, int]:
    """``nextstate proxy`` (``python -m proxy``) on defaults with a private embedded Redis: (URL, pid)."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NEXTSTATE_HOME": str(home), "NEXTSTATE_UPSTREAM_URL": upstream,
           "NEXTSTATE_PORT": str(port), "NEXTSTATE_LOG_LEVEL": "warning"}
    env.pop("NEXTSTATE_REDIS_URL", None)
    process = subprocess.Popen([sys.executable, "-m", "proxy"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    stack.callback(lambda: (process.terminate(), process.wait(20)))
    url = f"http://127.0.0.1:{port}"
    _wait_http(f"{url}/healthz")
    return url, process.pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="stop after at least this many requests")
    parser.add_argument("--per-operation", type=int, default=400,
                        help="generated requests per operation and mode in one round (rounds repeat with new seeds)")
    args = parser.parse_args(argv)
    print("settings changed from the product defaults: none (the proxy runs as `nextstate proxy` would)")
    with ExitStack() as stack, tempfile.TemporaryDirectory() as home:
        upstream = start_upstream(stack)
        url, pid = start_proxy(stack, Path(home), upstream)
        start_rss, samples = rss_mib(pid), []
        total = fuzz.Report()
        started = time.monotonic()
        seed = 0
        while total.requests < args.requests:
            report = fuzz.run(url, args.per_operation, seed=None if seed else 1,
                              on_request=lambda r: samples.append(rss_mib(pid)) if r.requests % 500 == 0 else None)
            seed += 1
            total.requests += report.requests
            total.statuses.update(report.statuses)
            total.violation_count += report.violation_count
            total.violations += report.violations[: 20 - len(total.violations)]
            print(f"round {seed}: {report.requests} requests, {report.violation_count} violations, "
                  f"rss {rss_mib(pid):.1f} MiB, {time.monotonic() - started:.0f} s", flush=True)
        elapsed = time.monotonic() - started
        end_rss = rss_mib(pid)
    print(f"requests: {total.requests} in {elapsed:.0f} s ({total.requests / elapsed:.0f}/s)")
    print("statuses: " + ", ".join(f"{status}: {count}" for status, count in sorted(total.statuses.items())))
    print(f"violations: {total.violation_count}")
    for line in total.violations:
        print(f"  {line}")
    print(f"proxy rss: {start_rss:.1f} MiB at start, {max(samples, default=end_rss):.1f} MiB peak, "
          f"{end_rss:.1f} MiB at the end")
    return 1 if total.violation_count else 0


if __name__ == "__main__":
    raise SystemExit(main())
