"""The model cache: a built model appears under its final name complete or not at all.

A build runs in a staging directory next to the target under a file lock, and the finished directory
is renamed into place, so two processes never build the same model twice and a killed build leaves
no half model behind (only a staging directory that the next build ignores).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing), released on exit or process death."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(target: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """``target``, built by ``build(staging_dir)`` unless ``target / marker`` already exists.

    ``build`` must write ``marker`` last. The staging directory is made readable by other users
    (a model cache may be shared with a service account) and renamed onto ``target`` atomically.
    """
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if (target / marker).exists():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(staging)
            if not (staging / marker).exists():
                raise RuntimeError(f"building {target.name} wrote no {marker}")
            for path in [staging, *staging.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            shutil.rmtree(target, ignore_errors=True)  # an incomplete copy from an older layout
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
