"""Token capture: ask the upstream for logprobs and token ids, strip them from what the client sees.

vLLM answers ``return_token_ids: true`` with a top-level ``prompt_token_ids`` (first stream chunk
only) and per-choice ``token_ids`` (per delta when streaming); ``logprobs: true`` adds
``choices[].logprobs.content[].logprob`` for each generated token. The request body is forwarded as
the client's bytes whenever possible: new keys are spliced in before the closing brace, and only a
changed ``model`` or a client's explicit ``logprobs: false`` costs a re-serialisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy import fastjson

CAPTURE_FIELDS = {"logprobs": True, "return_token_ids": True}


@dataclass(frozen=True)
class Wants:
    """What the client itself asked for (kept in its response); the rest is stripped."""

    logprobs: bool
    token_ids: bool

    @property
    def everything(self) -> bool:
        return self.logprobs and self.token_ids


def client_wants(body: dict[str, Any]) -> Wants:
    return Wants(bool(body.get("logprobs")), bool(body.get("return_token_ids")))


def forward_body(raw: bytes, body: dict[str, Any], *, model: str | None, capture: bool) -> bytes:
    """The bytes to send upstream: the client's body with ``model`` replaced and capture fields added."""
    model_changes = model is not None and body.get("model") != model
    extra = {k: v for k, v in CAPTURE_FIELDS.items() if capture and body.get(k) is not True}
    if not model_changes and not extra:
        return raw
    if model_changes or any(k in body for k in extra):
        rewritten = dict(body)
        if model_changes:
            rewritten["model"] = model
        rewritten.update(extra)
        return fastjson.dumps(rewritten)
    end = raw.rstrip()
    if not end.endswith(b"}"):
        return raw
    splice = b"".join(b',"%s":true' % key.encode() for key in extra)
    return end[:-1] + splice + b"}"


def strip_copy(obj: Any, wants: Wants) -> Any:
    """``strip`` on a copy, leaving ``obj`` whole (only the top level and the choices are copied)."""
    if not isinstance(obj, dict):
        return obj
    copy = dict(obj)
    if isinstance(copy.get("choices"), list):
        copy["choices"] = [dict(choice) if isinstance(choice, dict) else choice for choice in copy["choices"]]
    return strip(copy, wants)


def strip(obj: Any, wants: Wants) -> Any:
    """Remove from a completion (or stream chunk) the capture fields the client did not ask for."""
    if not isinstance(obj, dict):
        return obj
    if not wants.token_ids:
        obj.pop("prompt_token_ids", None)
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if not wants.token_ids:
            choice.pop("token_ids", None)
        if not wants.logprobs and "logprobs" in choice:
            choice["logprobs"] = None
    return obj


def chosen_logprobs(choice: dict[str, Any]) -> list[float] | None:
    """The logprob of each generated token of a choice (or stream delta), or None when absent.

    A token without a numeric ``logprob`` makes the whole piece None: missing, never guessed (0.0 would
    claim probability 1). The record then holds no logprobs for the turn (their count no longer matches
    the token ids), and the learner recomputes them.
    """
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return None
    content = logprobs.get("content")
    if not isinstance(content, list):
        return None
    values = []
    for item in content:
        value = item.get("logprob") if isinstance(item, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        values.append(float(value))
    return values

