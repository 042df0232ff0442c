"""Lineage of waiting versions: which gated version extends a given one, and what the learner trains on.

The learner trains each candidate on top of the newest version that will reach users next (the
running canary, else stable, or a gated version already extending one of them), so the versions
waiting behind a canary form a chain, each holding the training of those before it. The controller
canaries the tip of the chain that extends stable: one canary ships every link, and no link's
training samples are stranded on a sibling that will never be promoted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class _Version(Protocol):
    version: str
    state: str
    parent: str | None


def _number(version: str) -> int:
    return int(version.lstrip("v"))


def pending_chain(versions: Iterable[_Version], root: str | None) -> list[str]:
    """The gated versions from ``root`` to the newest one that extends it through gated versions only,
    first link first (empty if none does). ``root`` None means the base model: a version with no parent
    extends it."""
    children: dict[str | None, list[str]] = {}
    for info in versions:
        if info.state == "gated_pass" and info.version != root:
            children.setdefault(info.parent, []).append(info.version)
    parent_of: dict[str, str | None] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for child in children.get(parent, []):
            if child not in parent_of:
                parent_of[child] = parent
                frontier.append(child)
    if not parent_of:
        return []
    chain = [max(parent_of, key=_number)]
    link = parent_of[chain[-1]]
    while link is not None and link != root:
        chain.append(link)
        link = parent_of[link]
    return chain[::-1]


def pending_tip(versions: Iterable[_Version], root: str | None) -> str | None:
    """The newest gated version that extends ``root`` through gated versions only (None if none does)."""
    chain = pending_chain(versions, root)
    return chain[-1] if chain else None


def training_parent(versions: Iterable[_Version], canary: str | None, stable: str | None) -> str | None:
    """The version the next candidate extends: the tip of the gated chain over the canary (else stable)."""
    root = canary or stable
    return pending_tip(versions, root) or root
