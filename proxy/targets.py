"""Request targets as pure decisions: a path with dot-segments is refused before anything routes on it,
and what passes through to the upstream is an allow-list of the OpenAI API's resource paths.

A dot-segment (``.`` or ``..``, raw or percent-encoded, between ``/`` or ``\\`` separators, also
encoded) could climb out of ``/v1`` behind any server or reverse proxy that normalises paths, to the
policy server's root or its runtime-LoRA endpoints; such a path is refused, never normalised.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

# the OpenAI API's resources (the first path segment under /v1) that the pass-through sends on
API_RESOURCES = frozenset({
    "assistants", "audio", "batches", "chat", "completions", "containers", "conversations", "embeddings", "evals",
    "files", "fine_tuning", "images", "models", "moderations", "realtime", "responses", "threads", "uploads",
    "vector_stores",
})
_SEPARATORS = re.compile(r"[/\\]")


def has_dot_segment(raw_path: str) -> bool:
    """Does the path hold a ``.`` or ``..`` segment, as sent or once (or twice) percent-decoded?"""
    if "." not in raw_path and "%" not in raw_path:  # the usual case, decided without a split
        return False
    path = raw_path
    for _ in range(3):  # as sent, decoded, decoded again (a double-encoded "%252e")
        if any(segment in (".", "..") for segment in _SEPARATORS.split(path)):
            return True
        decoded = unquote(path)
        if decoded == path:
            return False
        path = decoded
    return True  # still encoded after three rounds: nothing a client needs


def extra_prefixes(setting: str) -> tuple[str, ...]:
    """The comma-separated ``passthrough_extra_paths`` setting as path prefixes under ``/v1`` (``/rerank``)."""
    return tuple("/" + item.strip().strip("/") for item in setting.split(",") if item.strip().strip("/"))


def passes_through(path: str, extra: tuple[str, ...] = ()) -> bool:
    """May ``path`` (under ``/v1``, without it, e.g. ``/embeddings``) go to the upstream as it came?"""
    resource = path.lstrip("/").split("/", 1)[0]
    if resource in API_RESOURCES:
        return True
    return any(path == prefix or path.startswith(prefix + "/") for prefix in extra)
