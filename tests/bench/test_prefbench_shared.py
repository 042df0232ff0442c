"""The shared-scope bench's user mix: persona counts, every other user opted in, bad mixes refused."""

from __future__ import annotations

import pytest

from bench.prefbench.shared import DEFAULT_USERS, users_of


def test_the_default_mix_is_mostly_one_preference() -> None:
    users = users_of(DEFAULT_USERS)
    assert [persona for _, persona, _ in users] == ["listy"] * 5 + ["quiet"]
    assert [name for name, _, _ in users] == [f"u{i}" for i in range(1, 7)]
    assert [opted for _, _, opted in users] == [True, False] * 3


def test_the_conflicting_mix() -> None:
    assert users_of("listy:4,quiet:2") == [("u1", "listy", True), ("u2", "listy", False), ("u3", "listy", True),
                                           ("u4", "listy", False), ("u5", "quiet", True), ("u6", "quiet", False)]


@pytest.mark.parametrize("spec", ["listy", "listy:0", "nobody:2", "listy:two", "listy:3,"])
def test_a_bad_mix_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="persona:count"):
        users_of(spec)
