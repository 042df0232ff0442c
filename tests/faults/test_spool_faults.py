"""The spool's disk is full (a spool file that is ``/dev/full``) while Redis is down: every request is
still served, and the records that could be kept nowhere are counted in a metric and a log line."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from tests.faults.conftest import SUITE
from tests.support import figures
from tests.support.redis_server import RedisServer

REQUESTS = 12


def test_a_full_spool_disk_drops_counted_records_and_serving_goes_on(
        start_proxy: Callable[..., str], private_redis: RedisServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    slot = tmp_path / "spool" / "slot-0"
    slot.mkdir(parents=True)
    (slot / "spool.jsonl").symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    url = start_proxy(redis=private_redis.url, spool_dir=tmp_path / "spool", redis_timeout_s=0.3,
                      replay_interval_s=0.1)
    private_redis.stop()
    figures.add(SUITE, "faults injected: spool disk full while redis is down")
    failed = 0
    with openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=10) as sdk:
        for step in range(REQUESTS):
            try:
                sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": f"hi {step}"}],
                                            stream=step % 2 == 0)
            except openai.OpenAIError:
                failed += 1
    figures.add(SUITE, "client requests failed", failed)
    assert failed == 0

    metric = 0.0
    for _ in range(100):  # the recorder writes after the responses
        text = httpx.get(f"{url}/metrics", timeout=5).text
        found = re.search(r'nextstate_proxy_records_total\{kind="turn",outcome="dropped"\} (\S+)', text)
        metric = float(found.group(1)) if found else 0.0
        if metric >= REQUESTS:
            break
        time.sleep(0.05)
    logged = capsys.readouterr()
    said = [int(n) for n in re.findall(r"spool_write_failed_records_dropped.*?total_dropped=(\d+)", logged.out + logged.err)]
    figures.add(SUITE, "records dropped on a full disk, counted", int(metric))
    assert metric == REQUESTS
    assert said and max(said) == REQUESTS


def test_an_unwritable_spool_directory_does_not_stop_the_proxy(
        start_proxy: Callable[..., str], private_redis: RedisServer, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")  # the spool directory cannot be made under a file, whoever runs the proxy
    url = start_proxy(redis=private_redis.url, spool_dir=blocker / "spool", redis_timeout_s=0.3)
    figures.add(SUITE, "faults injected: spool directory unwritable at start")
    with openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=10) as sdk:
        sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "recorded"}])
        private_redis.stop()
        sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "dropped"}])
    for _ in range(100):
        text = httpx.get(f"{url}/metrics", timeout=5).text
        if 'nextstate_proxy_records_total{kind="turn",outcome="dropped"} 1.0' in text:
            break
        time.sleep(0.05)
    assert 'nextstate_proxy_records_total{kind="turn",outcome="dropped"} 1.0' in text
    assert 'nextstate_proxy_records_total{kind="turn",outcome="written"} 1.0' in text
