"""Adapter names and paths: a version directory is read only from inside the store, whatever Redis says,
and no name or path that could reach elsewhere is published to a policy server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import redis

from registry.errors import NotLoadable
from registry.names import UnsafeName, check_served_name, check_version, inside
from registry.publisher import Publisher
from registry.records import Manifest
from registry.store import Registry
from tests.security.conftest import SUITE
from tests.support import figures


def _publish(registry: Registry) -> str:
    version = registry.allocate_version()
    staging = registry.staging_dir(version)
    (staging / "adapter_config.json").write_text("{}")
    (staging / "adapter_model.safetensors").write_bytes(b"x")
    registry.publish(staging, Manifest(version=version, base_model="builtin:tiny-chat", method="combined"))
    return version


@pytest.mark.parametrize("name", ["v0", "v01", "../v1", "v1/..", "v1/../../etc", "V1", "v", "v1 ", "", "v1\x00", "v1\n"])
def test_bad_version_names(name: str) -> None:
    with pytest.raises(UnsafeName):
        check_version(name)


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", "..", "x..y", "", " x", "a\nb", "/etc/passwd", "x" * 200, "x\n"])
def test_bad_served_names(name: str) -> None:
    with pytest.raises(UnsafeName):
        check_served_name(name)


def test_good_names_pass() -> None:
    assert check_version("v12") == "v12" and check_served_name("tiny-chat@v3") == "tiny-chat@v3"
    assert check_served_name("Qwen2.5-7B-Instruct@v1") == "Qwen2.5-7B-Instruct@v1"


def test_a_version_recorded_elsewhere_is_never_read(redis_client: redis.Redis, tmp_path: Path) -> None:
    registry = Registry(redis_client, tmp_path / "adapters", base_model="tiny-chat")
    version = _publish(registry)
    assert registry.path_of(registry.get(version)) == (tmp_path / "adapters" / version).resolve()
    outside = tmp_path / "outside"
    shutil.copytree(tmp_path / "adapters" / version, outside)
    (tmp_path / "adapters" / "link").symlink_to(outside, target_is_directory=True)
    got_out = 0
    for path in (str(outside), str(tmp_path / "adapters" / version / ".." / ".." / "outside"),
                 str(tmp_path / "adapters" / "link"), str(tmp_path / "adapters"), "/etc"):
        info = registry.get(version).model_copy(update={"path": path})
        redis_client.hset("nextstate:{learn}:registry:versions", version, info.model_dump_json())  # a tampered record
        for read in (lambda: registry.path_of(registry.get(version)), lambda: registry.manifest(version)):
            try:
                read()
                got_out += 1
            except UnsafeName:
                pass
        with pytest.raises(NotLoadable):
            registry.check_loadable(version)
    figures.add(SUITE, "adapter reads from outside the store", got_out)
    assert got_out == 0
    with pytest.raises(UnsafeName):
        registry.publish(registry.staging_dir("x"), Manifest(version="../x", base_model="b", method="combined"))
    assert json.loads(redis_client.hget("nextstate:{learn}:registry:versions", version))["path"] == "/etc"


def test_publisher_refuses_unsafe_names() -> None:
    publisher = Publisher(urls=[], drain_seconds=0.0)
    with pytest.raises(UnsafeName):
        publisher.ensure_loaded("../evil", "/tmp")
    publisher.close()
    assert inside(Path("/a/b"), "/a/b/c") == Path("/a/b/c")
