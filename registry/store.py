"""The adapter store: immutable version directories on disk, their metadata and aliases in Redis.

A version is published by writing it completely into a temporary directory next to the store and
renaming it into place (atomic on one filesystem), then recording it in Redis and appending a
``candidate_created`` event. A directory, once named ``vN``, is never modified.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import redis

from registry.records import (
    ALIASES_KEY,
    COUNTER_KEY,
    EVENTS_STREAM,
    VERSIONS_KEY,
    AuditEvent,
    Manifest,
    VersionInfo,
)


class RegistryError(Exception):
    """Base of the registry's errors (not retryable: the request itself is wrong)."""


class UnknownVersion(RegistryError, KeyError):
    pass


def served_name(base_model: str, version: str) -> str:
    """The name a version is served under upstream: ``<base>@vN`` (new name per version)."""
    short = base_model.rstrip("/").split("/")[-1].replace("builtin:", "")
    return f"{short}@{version}"


class Registry:
    """Versions live under ``root/vN``; metadata, aliases and the audit log live in Redis."""

    def __init__(self, client: redis.Redis, root: Path) -> None:
        self.redis = client
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # -- versions -------------------------------------------------------------------------------
    def allocate_version(self) -> str:
        """Reserve the next version name (``v1``, ``v2``, ...); never reused even if unpublished."""
        return f"v{int(self.redis.incr(COUNTER_KEY))}"

    def staging_dir(self, version: str) -> Path:
        """A fresh temporary directory on the store's filesystem to write a version into."""
        path = self.root / f".tmp-{version}-{time.time_ns()}"
        path.mkdir(parents=True)
        return path

    def publish(self, staging: Path, manifest: Manifest, actor: str = "learner") -> VersionInfo:
        """Write the manifest into ``staging`` and rename it to ``root/<version>`` atomically."""
        final = self.root / manifest.version
        if final.exists():
            raise RegistryError(f"version {manifest.version} already exists; versions are immutable")
        (staging / "manifest.json").write_text(manifest.model_dump_json(indent=2))
        staging.rename(final)
        info = VersionInfo(
            version=manifest.version,
            state="candidate",
            path=str(final),
            served_name=served_name(manifest.base_model, manifest.version),
            parent=manifest.parent,
        )
        self.redis.hset(self._versions_key(), manifest.version, info.model_dump_json())
        self.log(AuditEvent(kind="candidate_created", version=manifest.version, actor=actor,
                            reason="training run published a candidate",
                            evidence={"metrics": manifest.metrics, "samples": len(manifest.sample_ids),
                                      "parent": manifest.parent}))
        return info

    def discard_staging(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def get(self, version: str) -> VersionInfo:
        raw = self.redis.hget(self._versions_key(), version)
        if raw is None:
            raise UnknownVersion(version)
        return VersionInfo.model_validate_json(raw)

    def manifest(self, version: str) -> Manifest:
        return Manifest.model_validate_json((Path(self.get(version).path) / "manifest.json").read_text())

    def versions(self) -> list[VersionInfo]:
        infos = [VersionInfo.model_validate_json(v) for v in self.redis.hgetall(self._versions_key()).values()]
        return sorted(infos, key=lambda i: int(i.version.lstrip("v")))

    # -- aliases --------------------------------------------------------------------------------
    def alias(self, name: str) -> str | None:
        raw = self.redis.hget(ALIASES_KEY, name)
        return raw.decode() if isinstance(raw, bytes) else raw

    # -- audit ----------------------------------------------------------------------------------
    def log(self, event: AuditEvent) -> str:
        return str(self.redis.xadd(EVENTS_STREAM, {"event": event.model_dump_json()}))

    def history(self) -> list[AuditEvent]:
        return [AuditEvent.model_validate_json(fields[b"event"]) for _, fields in self.redis.xrange(EVENTS_STREAM)]

    @staticmethod
    def _versions_key() -> str:
        return VERSIONS_KEY


def read_manifest(path: Path) -> Manifest:
    return Manifest.model_validate(json.loads((Path(path) / "manifest.json").read_text()))
