"""Sacred checks and the gate's verdict as literal tables (no model: numbers and text in, verdict out)."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.errors import RegistryError
from registry.sacred import Check, SacredCase, check_answer, load_suite, score
from registry.verdict import CaseScore, GateThresholds, ReplayStats, drop_p_value, gate_verdict

SUITE = Path(__file__).resolve().parents[2] / "learner" / "sacred" / "tiny.jsonl"

CHECKS = [
    ("Paris", Check(type="contains", value="Paris"), True),
    ("paris", Check(type="contains", value="Paris"), False),
    ("paris", Check(type="contains", value="Paris", ignore_case=True), True),
    ("Paris\nCheers!", Check(type="not_contains", value="\n"), False),
    ("Paris", Check(type="not_contains", value="\n"), True),
    ("- city: Paris", Check(type="regex", value="^- "), True),
    ("The city: Paris", Check(type="regex", value="^- "), False),
    ("one two three", Check(type="max_words", value=3), True),
    ("one two three four", Check(type="max_words", value=3), False),
    ("  Green \n", Check(type="exact", value="Green"), True),
    ("Green.", Check(type="exact", value="Green"), False),
    ("GREEN", Check(type="exact", value="green", ignore_case=True), True),
]


@pytest.mark.parametrize(("answer", "check", "expected"), CHECKS)
def test_checks(answer: str, check: Check, expected: bool) -> None:
    assert check_answer(answer, check) is expected


def test_no_guesses_reads_bare_names_in_list_lines_against_the_prompt() -> None:
    tokyo = Check(type="no_guesses", value=r"\bTokyo\b", ignore_case=True)
    case = SacredCase(id="fact-japan", prompt="What is the capital of Japan?",
                      checks=[Check(type="regex", value=r"\bTokyo\b", ignore_case=True), tokyo])
    assert score(["1. Tokyo\n2. Kyoto\n3. Osaka\n4. Hiroshima"], case) == 0.0  # a list of guesses: which is it?
    assert score(["- Capital: Tokyo\n- Country: Japan"], case) == 1.0  # labels are no guesses, nor what was asked
    assert score(["- The capital of Japan is Tokyo.\n- It is also the largest city."], case) == 1.0  # statements
    assert score(["Tokyo, Kyoto or Osaka."], case) == 1.0  # not a list: the regex alone judges it
    assert score(["The capital of Japan is Tokyo."], case) == 1.0
    assert check_answer("1. TOKYO\n2. tokyo", tokyo, "What is the capital of Japan?")  # the same name twice
    assert not check_answer("* Kyoto\n* Osaka", tokyo, "")  # no prompt: every bare name counts


def test_score_is_share_of_answers_passing_every_check() -> None:
    case = SacredCase(id="c", prompt="q", checks=[Check(type="contains", value="moo"), Check(type="max_words", value=3)])
    assert case.messages == [{"role": "user", "content": "q"}]
    assert score(["moo", "a cow says moo", "moo moo moo moo", "baa"], case) == 0.25
    assert score([], case) == 0.0


def test_shipped_suite_loads(tmp_path: Path) -> None:
    suite = load_suite(SUITE)
    assert len([c for c in suite if c.anchor]) >= 3 and len([c for c in suite if not c.anchor]) >= 8
    assert {check.type for c in suite for check in c.checks} == {"contains", "not_contains", "regex", "max_words", "exact"}
    chat = load_suite(SUITE.with_name("chat.jsonl"))  # a general chat model's facts may not be hedged in a list
    assert all(any(check.type == "no_guesses" for check in c.checks) for c in chat if c.id.startswith("fact-"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "q", "checks": [{"type": "contains", "value": "x"}]}\n{"id": "b", "prompt": "q"}\n')
    with pytest.raises(RegistryError, match=r"bad.jsonl:2: invalid sacred case"):
        load_suite(bad)


T = GateThresholds(sacred_tolerance=0.25, replay_tolerance=0.0, replay_min_samples=4, max_kl=0.5)
GOOD_REPLAY = ReplayStats(prefer_n=10, prefer_delta=0.2, avoid_n=10, avoid_delta=-0.1)

VERDICTS = [
    # cases, replay, kl -> passed, reason fragment
    ([CaseScore("a", 1.0, 1.0), CaseScore("b", 0.5, 0.75)], GOOD_REPLAY, 0.1, True, None),
    ([CaseScore("a", 1.0, 1.0), CaseScore("b", 0.375, 0.75)], GOOD_REPLAY, 0.1, False, "sacred case b"),
    ([CaseScore("a", 0.9, 0.1)], GOOD_REPLAY, 0.1, True, None),
    ([], ReplayStats(10, -0.01, 10, -0.1), 0.1, False, "prefer log-likelihood fell"),
    ([], ReplayStats(10, 0.3, 10, 0.02), 0.1, False, "avoid log-likelihood rose"),
    ([], ReplayStats(3, -5.0, 3, 5.0), 0.1, True, None),  # too few held-out samples to judge
    ([], GOOD_REPLAY, 0.51, False, "drift"),
    ([], GOOD_REPLAY, None, True, None),  # no anchors: drift not measured
    # with the number of sampled answers known, a drop must also be unlikely by chance (Fisher, one-sided)
    ([CaseScore("a", 0.5, 1.0, 4)], GOOD_REPLAY, 0.1, True, None),  # 2/4 vs 4/4: p = 15/70
    ([CaseScore("a", 0.0, 1.0, 4)], GOOD_REPLAY, 0.1, False, "sacred case a"),  # 0/4 vs 4/4: p = 1/70
    ([CaseScore("a", 0.5, 1.0, 8)], GOOD_REPLAY, 0.1, False, "(p=0.038 over 8 answers each)"),  # 4/8 vs 8/8
    # pooled over the suite: 10 cases each 7/8 vs 8/8 -> 70/80 vs 80/80, no single case significant
    ([CaseScore(f"c{i}", 0.875, 1.0, 8) for i in range(10)], GOOD_REPLAY, 0.1, False, "sacred suite: 70/80"),
    ([CaseScore(f"c{i}", 0.875, 1.0, 8) for i in range(2)] + [CaseScore(f"d{i}", 1.0, 1.0, 8) for i in range(8)],
     GOOD_REPLAY, 0.1, True, None),  # 78/80 vs 80/80: within chance
    # against the base model too, where stable is an adapter: steps each within the tolerance add up
    ([CaseScore(f"c{i}", 0.875, 0.875, 8, base=1.0) for i in range(10)], GOOD_REPLAY, 0.1, False,
     "sacred suite: 70/80 answers pass < the base model 80/80"),  # level with stable, 70/80 vs the base's 80/80
    ([CaseScore("a", 0.5, 0.75, 8, base=1.0)], GOOD_REPLAY, 0.1, False,
     "sacred case a: 0.50 < the base model 1.00"),  # 4/8 vs stable's 6/8 passes; vs the base's 8/8, p = 0.038
    ([CaseScore(f"c{i}", 0.875, 1.0, 8, base=0.875) for i in range(2)] + [CaseScore(f"d{i}", 1.0, 1.0, 8, base=1.0)
                                                                          for i in range(8)], GOOD_REPLAY, 0.1, True, None),
    ([CaseScore(f"c{i}", 0.875, 0.875, 8, base=None) for i in range(10)], GOOD_REPLAY, 0.1, True, None),  # no base
    # replay with a standard error: a wrong-way move chance explains passes, one it does not fails
    ([], ReplayStats(4, -0.08, 10, -0.1, prefer_se=0.06), 0.1, True, None),  # z = 1.33
    ([], ReplayStats(4, -0.08, 10, -0.1, prefer_se=0.02), 0.1, False, "prefer log-likelihood fell"),  # z = 4
    ([], ReplayStats(10, 0.1, 10, 0.2, avoid_se=0.05), 0.1, False, "avoid log-likelihood rose"),  # z = 4
]


@pytest.mark.parametrize(("cases", "replay", "kl", "passed", "fragment"), VERDICTS)
def test_verdict_table(cases: list[CaseScore], replay: ReplayStats, kl: float | None, passed: bool,
                       fragment: str | None) -> None:
    verdict = gate_verdict(cases, replay, kl, T, compared_to="v1")
    assert verdict.passed is passed, verdict.reasons
    if fragment:
        assert any(fragment in reason for reason in verdict.reasons)
    assert verdict.metrics["kl"] == kl and verdict.compared_to == "v1"
    assert verdict.metrics["replay"]["prefer_n"] == replay.prefer_n


def test_drop_p_value_is_the_hypergeometric_tail() -> None:
    assert drop_p_value(2, 4, 4, 4) == pytest.approx(15 / 70)  # C(6,2)C(2,2)/C(8,4)
    assert drop_p_value(0, 4, 4, 4) == pytest.approx(1 / 70)
    assert drop_p_value(1, 4, 4, 4) == pytest.approx(5 / 70)  # C(5,1)C(3,3)/C(8,4); 0 passes cannot happen
    assert drop_p_value(4, 4, 4, 4) == pytest.approx(1.0)
    assert drop_p_value(3, 4, 1, 4) == pytest.approx(69 / 70)  # the candidate is better: far from flagged


def test_chance_level_drops_are_noted_not_failed() -> None:
    verdict = gate_verdict([CaseScore("a", 0.5, 1.0, 4)], GOOD_REPLAY, 0.1, T, None)
    assert verdict.passed and any("within chance (p=0.214" in note for note in verdict.metrics["notes"])


def test_tolerance_zero_is_strict() -> None:
    strict = GateThresholds(sacred_tolerance=0.0)
    assert not gate_verdict([CaseScore("a", 0.875, 1.0)], ReplayStats(), None, strict, None).passed
    assert gate_verdict([CaseScore("a", 1.0, 1.0)], ReplayStats(), None, strict, None).passed
