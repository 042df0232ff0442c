"""A benchmark stopped with SIGTERM stops the stacks it started instead of leaving them running."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.processes import alive

ROOT = Path(__file__).resolve().parents[2]

BENCH = """
import subprocess, sys, time
from bench.prefbench import stack
stack.stop_stacks_on_termination()
child = stack.launch([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_termination_stops_every_live_stack(signum: int) -> None:
    with subprocess.Popen([sys.executable, "-c", BENCH], cwd=ROOT, stdout=subprocess.PIPE, text=True) as bench:
        try:
            assert bench.stdout is not None
            child = int(bench.stdout.readline())
            assert alive(child)
            bench.send_signal(signum)
            assert bench.wait(timeout=30) == 128 + signum
            deadline = time.monotonic() + 10
            while alive(child) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not alive(child)
        finally:
            bench.kill()


def test_no_stack_starts_once_the_benchmark_is_stopping() -> None:
    from bench.prefbench import stack

    stack._STOPPING.set()
    try:
        with pytest.raises(stack.StackError, match="stopping"):
            stack.launch([sys.executable, "-c", "pass"])
    finally:
        stack._STOPPING.clear()
