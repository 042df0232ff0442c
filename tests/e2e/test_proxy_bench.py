"""``bench/proxy_overhead`` runs end to end (tiny sizes): every figure it reports is there and sane."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_proxy_overhead_bench_reports_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.proxy_overhead", "--rate", "20", "--seconds", "1", "--latency-rounds", "2", "--ttft-requests", "5",
         "--concurrency", "4", "--window", "0.3", "--rounds", "1", "--slow-upstream-ms", "5", "--slow-concurrency", "8", "--clients", "aiohttp,httpcore"],
        cwd=ROOT, capture_output=True, text=True, timeout=280, check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = dict(line.split(None, 1) for line in done.stdout.splitlines() if line.strip())
    assert int(report["requests_per_target"]) == 40 and len(report["added_p50_ms_each_round"].split()) == 2
    for key in ("direct_p50_ms", "proxied_p50_ms", "proxied_ttft_p50_ms", "direct_peak_rps", "proxied_peak_rps",
                "forwarder_peak_rps", "forwarder-aiohttp_peak_rps", "forwarder-httpcore_peak_rps",
                "slow_upstream_5ms_direct_peak_rps", "slow_upstream_5ms_proxied_peak_rps"):
        assert float(report[key]) > 0, key
    assert 0 < float(report["forwarder_peak_ratio"]) < 1.5
    assert 0 < float(report["peak_ratio"]) < 1.5 and 0 < float(report["slow_upstream_5ms_peak_ratio"]) < 1.5
