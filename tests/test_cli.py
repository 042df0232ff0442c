"""The ``nextstate`` command: dispatch, and the proxy composed with the admin routes and dashboard."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nextstate.cli import COMMANDS
from tests.support.servers import free_port, wait_healthy


def _nextstate(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nextstate", *args], capture_output=True, text=True,
                          timeout=60, **kwargs)  # type: ignore[call-overload]


def test_help_lists_every_command() -> None:
    result = _nextstate("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert f"  {name} " in result.stdout


def test_unknown_command_is_refused() -> None:
    result = _nextstate("frobnicate")
    assert result.returncode == 2
    assert "unknown command 'frobnicate'" in result.stderr


@pytest.fixture
def composed_proxy(redis_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = dict(os.environ, NEXTSTATE_REDIS_URL=redis_url, NEXTSTATE_HOME=str(tmp_path),
               NEXTSTATE_ADMIN_TOKEN="s3cret", NEXTSTATE_UPSTREAM_URL="http://127.0.0.1:9/v1")
    log = tmp_path / "proxy.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "nextstate", "proxy", "--port", str(port)], env=env,
                                   stdout=sink, stderr=sink)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(f"{url}/healthz", process, "nextstate proxy", output=log.read_text)
    yield url
    process.terminate()
    process.wait(timeout=20)


def test_nextstate_proxy_serves_admin_and_dashboard_behind_the_token(composed_proxy: str) -> None:
    url = composed_proxy
    assert httpx.get(f"{url}/admin/versions").status_code == 401
    versions = httpx.get(f"{url}/admin/versions", headers={"Authorization": "Bearer s3cret"})
    assert versions.status_code == 200, versions.text
    page = httpx.get(f"{url}/dashboard/", auth=("admin", "s3cret"))
    assert page.status_code == 200
    assert "<html" in page.text.lower()
    summary = httpx.get(f"{url}/dashboard/api/summary", auth=("admin", "s3cret"))
    assert summary.status_code == 200
    assert isinstance(summary.json(), dict)
    # vLLM's runtime LoRA endpoints are never reachable through the public port
    assert httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/"}).status_code == 404
