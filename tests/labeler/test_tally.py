"""Pure decisions with literal tables: vote parsing, tally, classification, hint selection, truncation."""

from __future__ import annotations

import pytest

from labeler.prompting import defuse, render, truncate
from labeler.tally import (
    Tally,
    accept_hint,
    classify,
    disagrees,
    extract_hint,
    parse_vote,
    select_hint,
    tally,
)


@pytest.mark.parametrize(("text", "vote"), [
    ("\\boxed{1}", 1),
    ("reasoning... \\boxed{-1}", -1),
    ("\\boxed{ 0 }", 0),
    ("first \\boxed{1} then on reflection \\boxed{-1}", None),  # changed its mind: no verdict
    ("Answer with \\boxed{1}, \\boxed{-1} or \\boxed{0}.", None),  # the options echoed: no verdict
    ("It worked: \\boxed{1}. Final: \\boxed{1}", 1),
    ("\\boxed{+1}", 1),
    ("\\boxed{2}", None),
    ("boxed 1", None),
    ("", None),
    (None, None),
])
def test_parse_vote(text: str | None, vote: int | None) -> None:
    assert parse_vote(text) == vote


@pytest.mark.parametrize(("votes", "expected"), [
    ([1, 1, 1], Tally(1, 1.0, 3)),
    ([1, 1, -1], Tally(1, 2 / 3, 3)),
    ([-1, -1, 1], Tally(-1, 2 / 3, 3)),
    ([1, -1, 0], Tally(0, 1 / 3, 3)),
    ([1, -1, None], Tally(0, 1 / 3, 2)),
    ([1, -1], Tally(0, 0.5, 2)),
    ([0, 0, 1], Tally(0, 2 / 3, 3)),
    ([1, None, None], Tally(1, 1 / 3, 1)),
    ([None, None, None], Tally(0, 0.0, 0)),
    ([], Tally(0, 0.0, 0)),
    ([-1, -1, 1, 1, 0], Tally(0, 0.4, 5)),
])
def test_tally(votes: list[int | None], expected: Tally) -> None:
    assert tally(votes) == expected


@pytest.mark.parametrize(("reward", "agreement", "kwargs", "cls", "hard", "reason"), [
    (1, 1.0, {}, "prefer", False, None),
    (-1, 1.0, {}, "avoid", False, None),
    (1, 2 / 3, {}, "prefer", False, None),
    (-1, 2 / 3, {}, "avoid", False, None),
    (1, 1 / 3, {}, "observation", True, "low_agreement"),
    (0, 1.0, {}, "observation", False, "neutral"),
    (0, 1 / 3, {}, "observation", True, "split_vote"),
    (0, 0.0, {}, "observation", True, "split_vote"),
    (1, 0.6, {"tau": 0.5, "tau_hard": 0.5}, "prefer", False, None),
    (1, 0.6, {"tau": 0.8, "tau_hard": 0.5}, "observation", False, "low_agreement"),
    (1, 0.6, {"tau": 0.5, "tau_hard": 0.7}, "prefer", True, "low_agreement"),
    (1, 1.0, {"has_next_state": False}, "observation", False, "no_next_state"),
    (0, 0.0, {"failed": True}, "observation", True, "judge_failed"),
])
def test_classify(reward: int, agreement: float, kwargs: dict, cls: str, hard: bool, reason: str | None) -> None:
    result = classify(reward, agreement, **kwargs)
    assert (result.cls, result.hard, result.reason) == (cls, hard, reason)


@pytest.mark.parametrize(("text", "hint"), [
    ("[HINT_START]Answer in one word.[HINT_END]", "Answer in one word."),
    ("thinking [HINT_START] Use   bullet\npoints. [HINT_END] done", "Use bullet points."),
    ("[HINT_START]a[HINT_END] then [HINT_START]Be brief.[HINT_END]", "Be brief."),
    ("NO_HINT", None),
    ("[HINT_START][HINT_END]", None),
    (None, None),
])
def test_extract_hint(text: str | None, hint: str | None) -> None:
    assert extract_hint(text) == hint


@pytest.mark.parametrize(("candidates", "min_chars", "selected"), [
    (["Answer in one word.", "Be brief.", None], 8, "Answer in one word."),
    (["Be brief.", "Short."], 8, "Be brief."),
    (["Short.", "Ok."], 8, None),
    ([None, None], 8, None),
    (["Do A. Do B. Do C. Do D.", "Answer in French."], 8, "Answer in French."),
    (["Do A. Do B. Do C.", "Answer in French."], 8, "Do A. Do B. Do C."),
    (["Same len A.", "Same len B."], 8, "Same len A."),
    (["Be brief.", "Answer in one word."], 30, None),
])
def test_select_hint_longest_accepted(candidates: list[str | None], min_chars: int, selected: str | None) -> None:
    assert select_hint(candidates, min_chars) == selected


@pytest.mark.parametrize(("hint", "accepted"), [("Answer in one word.", True), ("Be.", False), ("", False),
                                                ("One. Two. Three. Four.", False), ("用中文回答。请简短。", True)])
def test_accept_hint(hint: str, accepted: bool) -> None:
    assert accept_hint(hint, 8) is accepted


@pytest.mark.parametrize(("judge", "rating", "expected"), [(1, 1, False), (-1, 1, True), (1, -1, True),
                                                          (0, 1, False), (-1, -1, False), (0, -1, False)])
def test_disagrees(judge: int, rating: int, expected: bool) -> None:
    assert disagrees(judge, rating) is expected


@pytest.mark.parametrize(("text", "budget", "out", "cut"), [
    ("short", 10, "short", False),
    ("a" * 100, 100, "a" * 100, False),
])
def test_truncate_within_budget(text: str, budget: int, out: str, cut: bool) -> None:
    assert truncate(text, budget) == (out, cut)


def test_truncate_keeps_head_and_tail_and_says_so() -> None:
    text = "HEAD" + "x" * 10_000 + "TAIL"
    out, cut = truncate(text, 300)
    assert cut and len(out) <= 300
    assert out.startswith("HEAD") and out.endswith("TAIL") and "characters cut" in out


@pytest.mark.parametrize(("text", "out"), [
    ("output \\boxed{1}", "output boxed{1}"),
    ("[HINT_START]x[HINT_END]", "(hint START)x(hint END)"),
    ("<<<END_NEXT_STATE abc>>>", "«END_NEXT_STATE abc«"),
])
def test_defuse(text: str, out: str) -> None:
    assert defuse(text) == out


def test_render_is_single_pass() -> None:
    assert render("{{a}} {{b}}", {"a": "{{b}}", "b": "B"}) == "{{b}} B"
