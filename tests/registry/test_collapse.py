"""Collapse detectors on real text as literal tables, and how the gate's verdict uses them."""

from __future__ import annotations

import pytest

from registry.collapse import (
    CollapseBounds,
    TextStats,
    collapse_reasons,
    cross_prompt_similarity,
    degenerate_share,
    lcs_length,
    loops,
    ngram_repetition,
    rouge_l,
    text_stats,
)
from registry.verdict import GateThresholds, ReplayStats, gate_verdict


@pytest.mark.parametrize(("text", "expected"), [
    ("", 0.0),
    ("Paris.", 0.0),
    ("The capital of France is Paris, a city on the Seine.", 0.0),
    ("the sky is blue the sky is blue the sky is blue", 0.6),  # 10 trigrams, 4 distinct
    ("no no no no no no", 0.75),  # 4 trigrams, one distinct
    ("The Sky is blue. the sky IS blue!", 1 / 3),  # case and punctuation do not hide a loop
    ("1. Berlin\n2. Berlin\n3. Berlin\n4. Berlin\n5. Berlin\n6. Berlin", 0.75),  # list numbers do not hide one
    ("- Berlin\n* Berlin\n\u2022 Berlin\n10) Berlin", 0.5),  # nor do bullets
    ("1. Tokyo\n2. Kyoto\n3. Osaka\n4. Nara", 0.0),  # a list of different items is no loop
    ("1. Boil 2 cups of water.\n2. Add 1 cup of rice.", 0.0),  # numbers inside a line stay words
])
def test_ngram_repetition(text: str, expected: float) -> None:
    assert ngram_repetition(text) == pytest.approx(expected)


def test_lcs_and_rouge_l() -> None:
    assert lcs_length("abcbdab", "bdcaba") == 4
    assert lcs_length("", "abc") == 0
    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert rouge_l("the cat sat", "a dog ran") == 0.0
    assert rouge_l("the cat sat on the mat", "the cat lay on a mat") == pytest.approx(2 * 4 / 12)
    assert rouge_l("", "") == 1.0 and rouge_l("", "x") == 0.0


def test_cross_prompt_similarity_pairs_answers_of_different_prompts_only() -> None:
    varied = [["Paris is the capital.", "It is Paris."], ["Ducks quack.", "A duck says quack."]]
    same = [["I cannot help with that."] * 2, ["I cannot help with that."] * 2]
    assert cross_prompt_similarity(varied) < 0.2
    assert cross_prompt_similarity(same) == 1.0
    assert cross_prompt_similarity([["only one prompt", "answers alike", "answers alike"]]) == 0.0


def test_degenerate_share_counts_empty_and_looping_capped_answers() -> None:
    texts = ["Paris is big.", "", " \n", "Yes", "A long answer that simply went on", "go go go go go go go go"]
    # a long answer alone is not a loop, and a one-word answer is an answer (a user may want one)
    assert degenerate_share(texts, [False, False, False, False, True, True]) == 0.5
    assert degenerate_share(["go go go go go go go go"], [False]) == 0.0  # ended by itself
    assert degenerate_share([], []) == 0.0
    numbered_loop = "1. William Shakespeare\n2. William Shakespeare\n3. William Shakespeare\n4. William"
    assert degenerate_share([numbered_loop, "1. Rome\n2. Milan\n3. Turin\n4. Naples"], [True, True]) == 0.5


def test_text_stats_of_a_healthy_and_a_collapsed_policy() -> None:
    healthy = text_stats([["Paris is the capital of France.", "The capital is Paris."],
                          ["A duck says quack.", "Ducks quack loudly."]], [[False, False], [False, False]])
    looped = text_stats([["yes yes yes yes yes yes", "yes yes yes yes yes yes"],
                         ["yes yes yes yes yes yes", "yes yes yes yes yes yes"]], [[True, True], [True, True]])
    assert healthy == TextStats(4, 0.0, healthy.self_similarity, 0.0, 4.25)
    assert healthy.self_similarity < 0.2
    assert (looped.repetition, looped.self_similarity, looped.degenerate) == (0.75, 1.0, 1.0)
    assert text_stats([], []) == TextStats(0, 0.0, 0.0, 0.0, 0.0)


B = CollapseBounds(max_repetition_rise=0.15, max_similarity_rise=0.15, max_degenerate_rise=0.25, max_anchor_logp_drop=1.0)
STABLE = TextStats(answers=40, repetition=0.05, self_similarity=0.10, degenerate=0.10, mean_words=30.0)


@pytest.mark.parametrize(("candidate", "drop", "fragment"), [
    (STABLE, 0.0, None),
    (TextStats(40, 0.19, 0.24, 0.34, 5.0), 0.9, None),  # every rise just inside its bound; shorter is not collapse
    (TextStats(40, 0.30, 0.10, 0.10, 30.0), None, "repeated 3-grams"),
    (TextStats(40, 0.05, 0.40, 0.10, 30.0), None, "answers to different prompts alike"),
    (TextStats(40, 0.05, 0.10, 0.50, 30.0), None, "empty or looping"),
    (STABLE, 1.5, "anchor answers lost 1.500"),
    (TextStats(0, 0.0, 0.0, 0.0, 0.0), None, None),  # nothing sampled: nothing to judge
])
def test_collapse_reasons(candidate: TextStats, drop: float | None, fragment: str | None) -> None:
    reasons = collapse_reasons(candidate, STABLE, drop, B)
    if fragment is None:
        assert reasons == []
    else:
        assert len(reasons) == 1 and fragment in reasons[0]


def test_the_gate_fails_a_collapsed_candidate_and_reports_the_text_statistics() -> None:
    thresholds = GateThresholds(collapse=B)
    looped = TextStats(40, 0.6, 0.9, 0.8, 40.0)
    failed = gate_verdict([], ReplayStats(), 0.1, thresholds, "v1", text=(looped, STABLE), anchor_logp_drop=2.0)
    assert not failed.passed and len([r for r in failed.reasons if r.startswith("collapse:")]) == 4
    assert failed.metrics["text"]["candidate"]["repetition"] == 0.6 and failed.metrics["anchor_logp_drop"] == 2.0
    assert failed.metrics["thresholds"]["collapse"]["max_anchor_logp_drop"] == 1.0
    passed = gate_verdict([], ReplayStats(), 0.1, thresholds, "v1", text=(STABLE, STABLE), anchor_logp_drop=0.1)
    assert passed.passed and passed.reasons == []
    assert gate_verdict([], ReplayStats(), None, thresholds, None).passed  # measured nothing: judged nothing


@pytest.mark.parametrize(("answer", "expected"), [
    ("1. Berlin\n2. Berlin\n3. Berlin\n4. Berlin\n5. Berlin\n6. Berlin", True),  # SmolLM2's learned "list"
    ("* Reverse\n* Reverse\n* Reverse", True),
    ("1. Santiago\n2. Chile\n3. Chile", True),  # one line said twice
    ("1 day\n\nThere are 7 days in a week.\n\nThere are 7 days in a week.", True),
    ("the sky is blue the sky is blue the sky is blue", True),  # a loop on one line
    ("- The capital of Japan is Tokyo.\n- It is also the largest city.", False),
    ("- Capital: Tokyo\n- Country: Japan", False),
    ("The capital of Japan is Tokyo.", False),
    ("", False),
])
def test_loops_are_lines_said_twice_or_repeated_3grams(answer: str, expected: bool) -> None:
    assert loops(answer) is expected
