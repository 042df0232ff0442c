"""What a killed publish leaves on disk — a staging directory, a version directory never recorded — is swept
once it is older than the grace period, in every scope, and nothing a version or a running publish uses is."""

from __future__ import annotations

import os
import time
from pathlib import Path

import structlog

from registry.records import Manifest
from registry.store import Registry
from registry.sweep import sweep
from tests.faults.conftest import SUITE
from tests.registry.conftest import adapter_files, registry  # noqa: F401
from tests.support import figures


def _age(path: Path, seconds: float) -> None:
    """Set the modification time of ``path`` and everything under it ``seconds`` back."""
    then = time.time() - seconds
    for folder, _, files in os.walk(path):
        for name in files:
            os.utime(Path(folder) / name, (then, then))
        os.utime(folder, (then, then))


def _published(registry: Registry) -> str:  # noqa: F811
    version = registry.allocate_version()
    staging = registry.staging_dir(version)
    (staging / "adapter_config.json").write_text("{}")
    (staging / "adapter_model.safetensors").write_bytes(b"")
    registry.publish(staging, Manifest(version=version, base_model="tiny-chat", method="combined", scope=registry.scope))
    return version


def _killed_publish(registry: Registry, renamed: bool) -> Path:  # noqa: F811
    """A publish killed after writing its staging directory, or after renaming it but before its record."""
    version = registry.allocate_version()
    staging = registry.staging_dir(version)
    (staging / "adapter_config.json").write_text("{}")
    if not renamed:
        return staging
    final = registry.root / version
    staging.rename(final)
    return final


def test_stale_publish_leftovers_are_swept_in_every_scope(registry: Registry) -> None:  # noqa: F811
    personal = registry.scoped("u-0123456789abcdef")
    kept = [registry.root / _published(registry), personal.root / _published(personal)]
    stale = [_killed_publish(registry, renamed=False), _killed_publish(registry, renamed=True),
             _killed_publish(personal, renamed=False), _killed_publish(personal, renamed=True)]
    # a scope whose first publish was killed has a directory but no record yet
    first = registry.scoped("u-fedcba9876543210")
    stale.append(_killed_publish(first, renamed=False))
    for path in [*kept, *stale]:
        _age(path, 7200)
    running = _killed_publish(registry, renamed=False)  # a publish still writing: fresh
    unknown = registry.root / "v99"  # a number this Redis never reserved (another Redis's version): kept
    unknown.mkdir()
    _age(unknown, 7200)

    with structlog.testing.capture_logs() as logs:
        removed = sweep(registry, grace_s=3600)
    figures.add(SUITE, "publish leftovers swept", len(removed))
    assert sorted(removed) == sorted(stale)
    assert all(not p.exists() for p in stale)
    assert all(p.exists() for p in [*kept, running, unknown])
    assert sorted(e["path"] for e in logs if e["event"] == "publish_leftover_removed") == sorted(map(str, stale))
    for path in kept:  # the recorded versions are as they were
        Registry(registry.redis, registry.store_root, "tiny-chat", scope=path.parent.name
                 if path.parent != registry.root else "global").check_loadable(path.name)
    assert sweep(registry, grace_s=3600) == []  # nothing left to do


def test_a_leftover_touched_within_the_grace_period_is_kept(registry: Registry) -> None:  # noqa: F811
    staging = _killed_publish(registry, renamed=False)
    _age(staging, 7200)
    (staging / "adapter_model.safetensors").write_bytes(b"still being written")  # its newest file is fresh
    assert sweep(registry, grace_s=3600) == [] and staging.exists()
    assert sweep(registry, grace_s=3600, now=time.time() + 3601) == [staging] and not staging.exists()
