"""Leftovers of killed publishes: staging directories and version directories that no version record names.

A publisher killed half-way (``registry.store``) leaves a ``.tmp-vN-…`` staging directory, or a ``vN``
directory renamed into place whose record never reached Redis. Nothing reads either, and the version
number is never used again. ``sweep`` removes them from every scope's directory once nothing in them has
changed for ``grace_s`` (so a publish still writing is never hit) and logs each one. An unrecorded ``vN``
goes only when this Redis reserved its number (N at most the scope's version counter): pointed at a
Redis that lost its data, the store keeps the directories of versions Redis no longer knows.
The learner sweeps when it starts; the canary controller when it starts and every ``grace_s`` after.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path

import redis
import structlog

from proxy.redis_connect import CLUSTER_UNREACHABLE
from proxy.scopes import valid_scope
from registry.records import GLOBAL_SCOPE
from registry.store import Registry

log = structlog.get_logger(__name__)

STAGING_PREFIX = ".tmp-"
_VERSION_DIR = re.compile(r"v([0-9]+)")


def last_change(path: Path) -> float:
    """The newest modification time of ``path`` and everything under it."""
    newest = path.stat().st_mtime
    for folder, folders, files in os.walk(path):
        for name in (*folders, *files):
            try:
                newest = max(newest, os.stat(os.path.join(folder, name), follow_symlinks=False).st_mtime)
            except FileNotFoundError:
                continue
    return newest


def leftovers(registry: Registry) -> list[Path]:
    """The staging and unrecorded version directories in one scope's directory (stale or not)."""
    if not registry.root.is_dir():
        return []
    recorded = {str(v.decode() if isinstance(v, bytes) else v) for v in registry.redis.hkeys(registry.keys.versions)}
    reserved = int(registry.redis.get(registry.keys.counter) or 0)
    found = []
    for child in sorted(registry.root.iterdir()):
        if not child.is_dir() or child.is_symlink():
            continue
        numbered = _VERSION_DIR.fullmatch(child.name)
        if child.name.startswith(STAGING_PREFIX) or (
                numbered and child.name not in recorded and int(numbered.group(1)) <= reserved):
            found.append(child)
    return found


def scope_names(store: Registry) -> list[str]:
    """Every scope with a directory or a record (a first publish of a scope is killed before its record)."""
    on_disk = []
    scopes_dir = store.store_root / "scopes"
    if scopes_dir.is_dir():
        on_disk = [p.name for p in scopes_dir.iterdir() if p.is_dir() and valid_scope(p.name)]
    return sorted({*store.scopes(), *on_disk} - {GLOBAL_SCOPE}, key=str)


def sweep(store: Registry, grace_s: float = 3600.0, now: float | None = None) -> list[Path]:
    """Remove every scope's leftovers unchanged for ``grace_s``; the directories removed."""
    now = time.time() if now is None else now
    removed = []
    for scope in [GLOBAL_SCOPE, *scope_names(store)]:
        registry = store.scoped(scope)
        for path in leftovers(registry):
            try:
                age = now - last_change(path)
            except FileNotFoundError:  # gone meanwhile (its publish finished, or another sweep)
                continue
            if age < grace_s:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            log.info("publish_leftover_removed", scope=scope, path=str(path), age_s=round(age))
    return removed


def run(store: Registry, grace_s: float, stop: threading.Event) -> None:
    """Sweep now and every ``grace_s`` (at least a minute) until ``stop`` is set; errors are logged."""
    while not stop.is_set():
        try:
            sweep(store, grace_s)
        except (redis.RedisError, OSError, *CLUSTER_UNREACHABLE) as exc:
            log.warning("publish_leftover_sweep_failed", error=repr(exc))
        stop.wait(max(60.0, grace_s))


def start_in_thread(store: Registry, grace_s: float, stop: threading.Event) -> threading.Thread:
    """The sweep loop beside another (the controller)."""
    thread = threading.Thread(target=run, args=(store, grace_s, stop), name="leftover-sweep", daemon=True)
    thread.start()
    return thread
