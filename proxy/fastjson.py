"""JSON on the hot path: orjson, with the standard library for what orjson refuses.

orjson rejects integers beyond 64 bits and the non-standard ``NaN``/``Infinity`` literals that
``json`` accepts; those fall back to ``json`` so the proxy takes every body it took before (and a
body that is not JSON at all still fails with the standard library's message). Output is compact
UTF-8, as ``json.dumps(..., ensure_ascii=False, separators=(",", ":"))`` would write it.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:  # integers beyond 64 bits
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def dumps_str(obj: Any, **_: Any) -> str:
    """A structlog serializer: anything it cannot encode is written as its ``str``."""
    try:
        return orjson.dumps(obj, default=str).decode()
    except orjson.JSONEncodeError:
        return json.dumps(obj, default=str)
