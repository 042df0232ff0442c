"""The OpenClaw-RL v2 metric beside ours: sessions until three consecutive satisfying first replies.

A session's first reply is the assistant's answer to the session's opening question, before any
reaction could steer it, so a streak of satisfying first replies means the model now answers this user
the way they like unprompted. Pure: interactions in, a count out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def first_replies(interactions: Iterable[Mapping[str, Any]]) -> list[bool]:
    """Whether each session's first reply satisfied the persona, in session order."""
    seen: dict[str, bool] = {}
    for interaction in sorted(interactions, key=lambda i: int(i["index"])):
        seen.setdefault(str(interaction["session_id"]), bool(interaction["satisfied"]))
    return list(seen.values())


def sessions_to_streak(interactions: Iterable[Mapping[str, Any]], streak: int = 3) -> int | None:
    """The number of sessions held when ``streak`` consecutive first replies had satisfied; None if never."""
    run = 0
    for count, satisfied in enumerate(first_replies(interactions), 1):
        run = run + 1 if satisfied else 0
        if run >= streak:
            return count
    return None
