"""Fixtures: a scripted upstream and the real proxy, both under uvicorn on loopback, real Redis."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from proxy.app import create_app
from proxy.records import TRANSITIONS_STREAM, TURNS_STREAM
from proxy.settings import ProxySettings
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import serve_in_thread


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
def upstream_url(fake: FakeUpstream) -> Iterator[str]:
    with serve_in_thread(fake.app, timeout_graceful_shutdown=2) as url:
        yield f"{url}/v1"


def proxy_settings(tmp_path: Path, redis_url: str, upstream_url: str, **overrides: Any) -> ProxySettings:
    values: dict[str, Any] = {
        "home": tmp_path / "home", "redis_url": redis_url, "upstream_url": upstream_url,
        "read_timeout_s": 5.0, "connect_timeout_s": 1.0, "redis_timeout_s": 0.5,
        "replay_interval_s": 0.1, "sweep_interval_s": 0.1, "routing_refresh_s": 0.1, **overrides,
    }
    return ProxySettings(**values)


@pytest.fixture
def start_proxy(tmp_path: Path, redis_url: str, upstream_url: str) -> Iterator[Callable[..., str]]:
    """Start a proxy (keyword arguments override settings); returns its base URL."""
    stack = contextlib.ExitStack()

    def start(*, mounts: list[Any] | None = None, redis: str | None = None, upstream: str | None = None,
              **overrides: Any) -> str:
        settings = proxy_settings(tmp_path, redis or redis_url, upstream or upstream_url, **overrides)
        # bounded graceful shutdown, so one lingering connection cannot stall a teardown
        return stack.enter_context(serve_in_thread(create_app(settings, mounts=mounts), timeout_graceful_shutdown=2))

    with stack:
        yield start


@pytest.fixture
def proxy_url(start_proxy: Callable[..., str]) -> str:
    return start_proxy()


@pytest.fixture
def client(proxy_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="sk-test-key", max_retries=0, timeout=10) as sdk:
        yield sdk


def read_stream(client: redis.Redis, stream: str) -> list[dict[str, Any]]:
    return [json.loads(fields[b"record"]) for _, fields in client.xrange(stream)]


def wait_records(client: redis.Redis, stream: str, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Wait until ``stream`` holds at least ``count`` records (writing happens after the response)."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_stream(client, stream)
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.02)


def turns(client: redis.Redis, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    return wait_records(client, TURNS_STREAM, count, timeout)


def transitions(client: redis.Redis, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    return wait_records(client, TRANSITIONS_STREAM, count, timeout)


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    """One plain HTTP client for the whole run (building one per request costs a TLS context each)."""
    with httpx.Client(timeout=10) as client:
        yield client
