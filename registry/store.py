"""The adapter store: immutable version directories on disk, their metadata and aliases in Redis.

A version is published by writing it completely into a temporary directory next to the store and
renaming it into place (atomic on one filesystem), then recording it in Redis together with its
``candidate_created`` event (one transaction). Only a recorded version is visible: a publisher killed
before the record leaves at most a directory that nothing reads (``.tmp-*`` or an unrecorded ``vN``),
removed later by ``registry.sweep``. A directory, once named ``vN``, is never modified. Every state or alias
change goes through this class and is appended to the audit stream with its actor and evidence.
Exceptions are drawn in ``registry.errors``.

A ``Registry`` is one learning scope's lineage: the global scope's versions live under ``root/vN``
with the unscoped Redis keys, a personal scope's under ``root/scopes/<scope>/vN`` with keys of its own
(``registry.records.scope_keys``). ``scoped(name)`` gives another scope's registry on the same store.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from registry.errors import NotLoadable, RegistryError, UnknownVersion
from registry.lease import DEFAULT_LEASE_S, Lease
from registry.names import UnsafeName, check_version, inside
from registry.records import (
    GLOBAL_SCOPE,
    SCOPES_KEY,
    AuditEvent,
    CanaryState,
    GateVerdict,
    Manifest,
    VersionInfo,
    VersionState,
    scope_keys,
)
from registry.states import check_transition

__all__ = ["NotLoadable", "Registry", "RegistryError", "UnknownVersion", "read_manifest", "served_name"]

ALIASES = ("stable", "canary", "previous")
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def served_name(base_model: str, version: str, scope: str = GLOBAL_SCOPE) -> str:
    """The name a version is served under upstream: ``<base>@vN``, in a personal scope ``<base>@<scope>-vN``
    (a new name per version and scope; scope names are ``[a-z0-9-]``, valid in a vLLM LoRA name)."""
    short = base_model.rstrip("/").split("/")[-1].replace("builtin:", "")
    return f"{short}@{version}" if scope == GLOBAL_SCOPE else f"{short}@{scope}-{version}"


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

    def __init__(self, client: redis.Redis, root: Path, base_model: str | None = None,
                 scope: str = GLOBAL_SCOPE) -> None:
        self.redis = client
        self.store_root = Path(root)
        self.scope = scope
        self.keys = scope_keys(scope)
        self.root = self.store_root if scope == GLOBAL_SCOPE else self.store_root / "scopes" / scope
        self.root.mkdir(parents=True, exist_ok=True)
        self.base_model = base_model  # the name the policy server serves the base model under
        self._writes: Any = None  # inside ``atomic()``: the MULTI/EXEC pipeline every write is queued on
        self._lease: Lease | None = None  # inside ``lock()``: the lease every commit confirms first

    @property
    def _w(self) -> Any:
        """Where writes go: the open transaction inside ``atomic()``, else Redis directly."""
        return self._writes if self._writes is not None else self.redis

    @contextmanager
    def atomic(self) -> Iterator[Any]:
        """Queue every state, alias, canary and audit write made inside into one MULTI/EXEC transaction.

        All of them land or none does: a process killed half-way leaves Redis as it was, so no alias ever
        names a version whose state, or whose predecessor's alias, was not written with it. Reads inside
        still see the state before the block (hold ``lock()`` around it so nothing else changes it; under
        the lock the block commits only while its lease is still held).
        Yields the transaction, so a caller can add writes of its own (the learner acks its samples there).
        """
        if self._writes is not None:
            yield self._writes  # already inside one: the outer block commits
            return
        self._writes = self.redis.pipeline(transaction=True)
        try:
            yield self._writes
            if self._lease is not None:  # a full lease ahead for the commit, or LeaseLost and nothing written
                self._lease.confirm()
            self._writes.execute()
        finally:
            self._writes.reset()
            self._writes = None

    # -- scopes ---------------------------------------------------------------------------------
    def scoped(self, scope: str) -> Registry:
        """The registry of another learning scope on the same store and Redis."""
        return self if scope == self.scope else Registry(self.redis, self.store_root, self.base_model, scope)

    def scopes(self) -> list[str]:
        """Every scope with a lineage: ``global`` first, then the personal ones by name."""
        personal = sorted(str(_text(s)) for s in self.redis.smembers(SCOPES_KEY))
        return [GLOBAL_SCOPE, *personal]

    def effective_stable(self) -> VersionInfo | None:
        """What serves this scope's stable arm: its own stable, else (a personal scope) the global stable."""
        own = self.alias("stable")
        if own is not None:
            return self.get(own)
        if self.scope == GLOBAL_SCOPE:
            return None
        return self.scoped(GLOBAL_SCOPE).effective_stable()

    # -- versions -------------------------------------------------------------------------------
    def allocate_version(self) -> str:
        """Reserve the next version name (``v1``, ``v2``, ...); never reused even if unpublished."""
        return f"v{int(self.redis.incr(self.keys.counter))}"

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
            served_name=served_name(manifest.base_model, manifest.version, self.scope),
            parent=manifest.parent,
            scope=self.scope,
            started_from=manifest.started_from,
            **extra,
        )
        with self.atomic():  # the record and its event together: a version is never visible unannounced
            if self.scope != GLOBAL_SCOPE:
                self._w.sadd(SCOPES_KEY, self.scope)
            self._w.hset(self._versions_key(), manifest.version, info.model_dump_json())
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
        self._w.hset(self._versions_key(), info.version, info.model_dump_json())

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
        return _text(self.redis.hget(self.keys.aliases, name))

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
            self._w.hdel(self.keys.aliases, name)
        else:
            self.get(version)
            self._w.hset(self.keys.aliases, name, version)
        if name == "stable" and version is not None:
            self._w.rpush(self.keys.stable_history, version)
        self.log(AuditEvent(kind="alias_changed", version=version, actor=actor, reason=reason,
                            evidence={"alias": name, "from": old, "to": version, **(evidence or {})}))

    def stable_history(self) -> list[str]:
        return [str(_text(v)) for v in self.redis.lrange(self.keys.stable_history, 0, -1)]

    # -- canary and freeze ----------------------------------------------------------------------
    def canary_state(self) -> CanaryState | None:
        raw = self.redis.get(self.keys.canary)
        return CanaryState.model_validate_json(raw) if raw else None

    def save_canary_state(self, state: CanaryState | None) -> None:
        if state is None:
            self._w.delete(self.keys.canary)
        else:
            self._w.set(self.keys.canary, state.model_dump_json())

    def frozen(self) -> bool:
        return bool(self.redis.exists(self.keys.frozen))

    def set_frozen(self, frozen: bool) -> None:
        if frozen:
            self.redis.set(self.keys.frozen, "1")
        else:
            self.redis.delete(self.keys.frozen)

    @contextmanager
    def lock(self, lease_s: float = DEFAULT_LEASE_S, wait: float = 60.0) -> Iterator[Lease]:
        """A cross-process lock so that two actions never interleave (CLI, admin, controller): a short lease
        the holder renews (``registry.lease``), so a dead holder's lock frees itself within ``lease_s``.
        ``atomic()`` inside it commits only while the lease is still this holder's."""
        with Lease(self.redis, self.keys.lock, lease_s, wait) as lease:
            self._lease = lease
            try:
                yield lease
            finally:
                self._lease = None

    # -- audit ----------------------------------------------------------------------------------
    def log(self, event: AuditEvent) -> str:
        """Append ``event`` to the audit stream; its id ("" inside ``atomic()``, known only at commit)."""
        if event.scope != self.scope:
            event = event.model_copy(update={"scope": self.scope})
        added = self._w.xadd(self.keys.events, {"event": event.model_dump_json()})
        return "" if self._writes is not None else str(added)

    def history(self) -> list[AuditEvent]:
        entries = self.redis.xrange(self.keys.events)
        return [AuditEvent.model_validate_json(fields.get(b"event") or fields["event"]) for _, fields in entries]

    def _versions_key(self) -> str:
        return self.keys.versions


def read_manifest(path: Path) -> Manifest:
    return Manifest.model_validate(json.loads((Path(path) / "manifest.json").read_text()))
