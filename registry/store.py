"""The adapter store: immutable version directories on disk, their metadata and aliases in Redis.

A version is published by writing it completely into a temporary directory next to the store and
renaming it into place (atomic on one filesystem), then recording it in Redis and appending a
``candidate_created`` event. A directory, once named ``vN``, is never modified. Every state or alias
change goes through this class and is appended to the audit stream with its actor and evidence.
Exceptions are drawn in ``registry.errors``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import redis

from registry.errors import NotLoadable, RegistryError, UnknownVersion
from registry.names import UnsafeName, check_version, inside
from registry.records import (
    ALIASES_KEY,
    CANARY_KEY,
    COUNTER_KEY,
    EVENTS_STREAM,
    FROZEN_KEY,
    LOCK_KEY,
    STABLE_HISTORY_KEY,
    VERSIONS_KEY,
    AuditEvent,
    CanaryState,
    GateVerdict,
    Manifest,
    VersionInfo,
    VersionState,
)
from registry.states import check_transition

__all__ = ["NotLoadable", "Registry", "RegistryError", "UnknownVersion", "read_manifest", "served_name"]

ALIASES = ("stable", "canary", "previous")
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def served_name(base_model: str, version: str) -> str:
    """The name a version is served under upstream: ``<base>@vN`` (new name per version)."""
    short = base_model.rstrip("/").split("/")[-1].replace("builtin:", "")
    return f"{short}@{version}"


def missing_files(path: Path) -> list[str]:
    """Files a loadable version directory lacks (empty list = loadable)."""
    missing = [name for name in ("manifest.json", "adapter_config.json") if not (path / name).is_file()]
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        missing.append(WEIGHT_FILES[0])
    return missing


def _text(raw: Any) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


class Registry:
    """Versions live under ``root/vN``; metadata, aliases and the audit log live in Redis."""

    def __init__(self, client: redis.Redis, root: Path, base_model: str | None = None) -> None:
        self.redis = client
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.base_model = base_model  # the name the policy server serves the base model under

    # -- versions -------------------------------------------------------------------------------
    def allocate_version(self) -> str:
        """Reserve the next version name (``v1``, ``v2``, ...); never reused even if unpublished."""
        return f"v{int(self.redis.incr(COUNTER_KEY))}"

    def staging_dir(self, version: str) -> Path:
        """A fresh temporary directory on the store's filesystem to write a version into."""
        path = self.root / f".tmp-{version}-{time.time_ns()}"
        path.mkdir(parents=True)
        return path

    def publish(self, staging: Path, manifest: Manifest, actor: str = "learner", **extra: Any) -> VersionInfo:
        """Write the manifest into ``staging`` and rename it to ``root/<version>`` atomically."""
        final = self.root / check_version(manifest.version)
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
            **extra,
        )
        self.redis.hset(self._versions_key(), manifest.version, info.model_dump_json())
        self.log(AuditEvent(kind="candidate_created", version=manifest.version, actor=actor,
                            reason="training run published a candidate" if actor == "learner" else f"published by {actor}",
                            evidence={"metrics": manifest.metrics, "samples": len(manifest.sample_ids),
                                      "parent": manifest.parent, **extra}))
        return info

    def discard_staging(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def get(self, version: str) -> VersionInfo:
        raw = self.redis.hget(self._versions_key(), version)
        if raw is None:
            raise UnknownVersion(version)
        return VersionInfo.model_validate_json(raw)

    def manifest(self, version: str) -> Manifest:
        """The version's manifest, with the gate verdict filled in from the registry once there is one
        (the file itself is written before the gate runs and never changes)."""
        info = self.get(version)
        manifest = Manifest.model_validate_json((self.path_of(info) / "manifest.json").read_text())
        if manifest.gate is None and info.gate is not None:
            manifest = manifest.model_copy(update={"gate": info.gate})
        return manifest

    def path_of(self, info: VersionInfo) -> Path:
        """The version's directory, refused (``UnsafeName``) unless it is ``<root>/<version>``: a record
        in Redis never makes the registry read or publish from elsewhere."""
        path = inside(self.root, info.path)
        if path.name != check_version(info.version):
            raise UnsafeName(f"{info.version} is recorded at {info.path}, not in its own directory")
        return path

    def versions(self) -> list[VersionInfo]:
        infos = [VersionInfo.model_validate_json(v) for v in self.redis.hgetall(self._versions_key()).values()]
        return sorted(infos, key=lambda i: int(i.version.lstrip("v")))

    def check_loadable(self, version: str) -> VersionInfo:
        """The version's info, or ``NotLoadable`` when its directory could not be served."""
        info = self.get(version)
        try:
            path = self.path_of(info)
        except UnsafeName as exc:
            raise NotLoadable(str(exc)) from exc
        missing = missing_files(path)
        if missing:
            raise NotLoadable(f"{version} at {info.path} is missing {', '.join(missing)}")
        return info

    def _save(self, info: VersionInfo) -> None:
        info.updated_at = time.time()
        self.redis.hset(self._versions_key(), info.version, info.model_dump_json())

    def set_state(self, version: str, target: VersionState, actor: str, reason: str = "",
                  evidence: dict[str, Any] | None = None, kind: str | None = None) -> VersionInfo:
        """Move a version to ``target`` (refused unless the state machine allows it) and log it."""
        info = self.get(version)
        check_transition(version, info.state, target)
        previous_state, info.state = info.state, target
        self._save(info)
        self.log(AuditEvent(kind=kind or target, version=version, actor=actor, reason=reason,
                            evidence={"from": previous_state, "to": target, **(evidence or {})}))
        return info

    def record_gate(self, version: str, verdict: GateVerdict, actor: str = "gate") -> VersionInfo:
        """Store the gate's verdict with the version and move it to gated_pass or gated_fail."""
        info = self.get(version)
        target: VersionState = "gated_pass" if verdict.passed else "gated_fail"
        check_transition(version, info.state, target)
        info.gate = verdict
        self._save(info)
        reason = "sacred gate passed" if verdict.passed else "sacred gate failed: " + "; ".join(verdict.reasons)
        return self.set_state(version, target, actor, reason, kind="gate_verdict",
                              evidence={"gate": verdict.model_dump(mode="json")})

    # -- aliases --------------------------------------------------------------------------------
    def alias(self, name: str) -> str | None:
        return _text(self.redis.hget(ALIASES_KEY, name))

    def aliases(self) -> dict[str, str | None]:
        return {name: self.alias(name) for name in ALIASES}

    def set_alias(self, name: str, version: str | None, actor: str, reason: str = "",
                  evidence: dict[str, Any] | None = None) -> None:
        """Point an alias at a version (``None`` clears it; for ``stable`` that means the base model)."""
        if name not in ALIASES:
            raise RegistryError(f"unknown alias {name!r}; aliases are {', '.join(ALIASES)}")
        old = self.alias(name)
        if old == version:
            return
        if version is not None and name == "stable":
            self.check_loadable(version)
        if version is None:
            self.redis.hdel(ALIASES_KEY, name)
        else:
            self.get(version)
            self.redis.hset(ALIASES_KEY, name, version)
        if name == "stable" and version is not None:
            self.redis.rpush(STABLE_HISTORY_KEY, version)
        self.log(AuditEvent(kind="alias_changed", version=version, actor=actor, reason=reason,
                            evidence={"alias": name, "from": old, "to": version, **(evidence or {})}))

    def stable_history(self) -> list[str]:
        return [str(_text(v)) for v in self.redis.lrange(STABLE_HISTORY_KEY, 0, -1)]

    # -- canary and freeze ----------------------------------------------------------------------
    def canary_state(self) -> CanaryState | None:
        raw = self.redis.get(CANARY_KEY)
        return CanaryState.model_validate_json(raw) if raw else None

    def save_canary_state(self, state: CanaryState | None) -> None:
        if state is None:
            self.redis.delete(CANARY_KEY)
        else:
            self.redis.set(CANARY_KEY, state.model_dump_json())

    def frozen(self) -> bool:
        return bool(self.redis.exists(FROZEN_KEY))

    def set_frozen(self, frozen: bool) -> None:
        if frozen:
            self.redis.set(FROZEN_KEY, "1")
        else:
            self.redis.delete(FROZEN_KEY)

    def lock(self, timeout: float = 120.0, wait: float = 60.0) -> Any:
        """A cross-process lock so that two actions never interleave (CLI, admin, controller)."""
        return self.redis.lock(LOCK_KEY, timeout=timeout, blocking_timeout=wait)

    # -- audit ----------------------------------------------------------------------------------
    def log(self, event: AuditEvent) -> str:
        return str(self.redis.xadd(EVENTS_STREAM, {"event": event.model_dump_json()}))

    def history(self) -> list[AuditEvent]:
        entries = self.redis.xrange(EVENTS_STREAM)
        return [AuditEvent.model_validate_json(fields.get(b"event") or fields["event"]) for _, fields in entries]

    @staticmethod
    def _versions_key() -> str:
        return VERSIONS_KEY


def read_manifest(path: Path) -> Manifest:
    return Manifest.model_validate(json.loads((Path(path) / "manifest.json").read_text()))
