"""``nextstate proxy`` as a real process (one and several workers), and spool slots per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from proxy.spool import Spool
from tests.proxy.conftest import turns
from tests.support.servers import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("workers", [1, 2])
def test_cli_serves_and_records(tmp_path, redis_url, redis_client, upstream_url, workers, http) -> None:
    port = free_port()
    env = {**os.environ, "NEXTSTATE_HOME": str(tmp_path), "NEXTSTATE_REDIS_URL": redis_url, "NEXTSTATE_LOG_JSON": "true"}
    process = subprocess.Popen(
        [sys.executable, "-m", "nextstate", "proxy", "--port", str(port), "--upstream-url", upstream_url,
         "--workers", str(workers)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", process, "proxy")
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0) as sdk:
            for i in range(4):
                sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": f"hi {i}"}])
        assert len(turns(redis_client, 4)) == 4
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught
    assert process.returncode in (0, -15), stderr.decode()[-2000:]
    assert b"Traceback" not in stderr, stderr.decode()[-2000:]
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("event") == "request" and line.get("path") == "/v1/chat/completions"]
    assert len(requests) == 4 and all(r["status"] == 200 and r["turn_id"] for r in requests)  # canonical JSON lines
    assert len(list((tmp_path / "spool").glob("slot-*"))) == workers


def test_spool_slots_are_exclusive_and_reusable(tmp_path) -> None:
    first, second = Spool.claim(tmp_path), Spool.claim(tmp_path)
    assert first.path.parent != second.path.parent
    first.append('{"n": 1}')
    assert first.pending() and not second.pending()
    first.close()
    again = Spool.claim(tmp_path)
    assert again.path == first.path and [line for _, line in again.entries()] == ['{"n": 1}\n']
    again.close()
    second.close()
