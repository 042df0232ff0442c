"""Which gated version extends which: the tip the controller canaries and the parent the learner trains on."""

from __future__ import annotations

from registry.lineage import pending_tip, training_parent
from registry.records import VersionInfo


def infos(*rows: tuple[str, str, str | None]) -> list[VersionInfo]:
    return [VersionInfo(version=v, state=state, parent=parent, path=f"/adapters/{v}", served_name=f"tiny-chat@{v}")  # type: ignore[arg-type]
            for v, state, parent in rows]


def test_the_tip_is_the_newest_gated_version_reached_through_gated_versions() -> None:
    versions = infos(("v1", "promoted", None), ("v2", "canary", "v1"), ("v3", "gated_pass", "v2"),
                     ("v4", "gated_pass", "v3"), ("v5", "candidate", "v4"), ("v10", "gated_pass", "v4"))
    assert pending_tip(versions, "v2") == "v10"  # numbered, not sorted as text
    assert pending_tip(versions, "v1") is None  # v2 is a canary, not a gated version: the chain stops there
    assert pending_tip(versions, "v4") == "v10"


def test_a_chain_behind_a_failed_link_is_not_reached() -> None:
    versions = infos(("v1", "promoted", None), ("v2", "gated_fail", "v1"), ("v3", "gated_pass", "v2"),
                     ("v4", "rejected", "v1"), ("v5", "gated_pass", "v4"), ("v6", "gated_pass", "v1"))
    assert pending_tip(versions, "v1") == "v6"


def test_the_base_model_is_the_root_of_versions_without_a_parent() -> None:
    versions = infos(("v1", "gated_pass", None), ("v2", "gated_pass", None), ("v3", "gated_pass", "v1"))
    assert pending_tip(versions, None) == "v3"
    assert pending_tip([], None) is None


def test_the_learner_extends_the_tip_over_the_canary_else_the_canary_else_stable() -> None:
    versions = infos(("v1", "promoted", None), ("v2", "canary", "v1"), ("v3", "gated_pass", "v2"),
                     ("v4", "gated_pass", "v1"))
    assert training_parent(versions, canary="v2", stable="v1") == "v3"  # not v4, which only extends stable
    assert training_parent(versions[:2], canary="v2", stable="v1") == "v2"
    assert training_parent(versions[:1], canary=None, stable="v1") == "v1"
    assert training_parent([], canary=None, stable=None) is None
