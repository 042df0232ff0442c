"""Adapter names and paths, checked wherever they are read: a version is ``vN``, a served name is
``<base>@vN``-like (no path separators), and an adapter directory lies inside the store's root."""

from __future__ import annotations

import re
from pathlib import Path

from registry.errors import RegistryError

_VERSION = re.compile(r"v[1-9][0-9]{0,8}")
_SERVED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}")


class UnsafeName(RegistryError, ValueError):
    """A version, adapter name or adapter path that could reach outside the adapter store."""


def check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise UnsafeName(f"not a version name: {version!r} (v1, v2, …)")
    return version


def check_served_name(name: str) -> str:
    """An adapter name as the policy server knows it: letters, digits and ``._@:+-``, no ``..``."""
    if not isinstance(name, str) or not _SERVED.fullmatch(name) or ".." in name:
        raise UnsafeName(f"not an adapter name: {name!r}")
    return name


def inside(root: Path, path: str | Path) -> Path:
    """``path`` resolved (links followed), refused unless it lies strictly inside ``root``."""
    base = Path(root).expanduser().resolve()
    resolved = Path(path).expanduser().resolve()
    if resolved == base or not resolved.is_relative_to(base):
        raise UnsafeName(f"adapter path {str(path)!r} is outside the adapter store {str(base)!r}")
    return resolved
