"""Recall of the scope's accepted answers (registry.recall) and how the gate's verdict judges it."""

from __future__ import annotations

from typing import Any

from labeler.records import SampleRecord
from registry.recall import (
    RecallRequest,
    RecallScore,
    common_words,
    key_word,
    novel_words,
    recall_request,
    recall_score,
    undisputed,
)
from registry.verdict import GateThresholds, ReplayStats, gate_verdict


def sample(cls: str, answer: str, question: str = "What is the capital of France?", hint: str | None = None,
           **extra: Any) -> SampleRecord:
    reward = {"prefer": 1, "avoid": -1, "observation": 0}[cls]
    return SampleRecord(record_id="t:r0", sample_id="s", turn_id="t", session_id="c", cls=cls, reward=reward, hint=hint,
                        messages=[{"role": "user", "content": question}],
                        response={"role": "assistant", "content": answer}, **extra)


def request(question: str, accepted: str) -> RecallRequest:
    return RecallRequest([{"role": "user", "content": question}], question, accepted)


def test_undisputed_answers_are_those_the_user_was_content_with_or_corrected_only_in_form() -> None:
    assert undisputed(sample("prefer", "Paris."))
    assert undisputed(sample("avoid", "Paris.", hint="Use bullet points."))
    assert undisputed(sample("avoid", "Paris.", hint="Answer in lowercase."))
    assert not undisputed(sample("avoid", "Lyon."))  # "that's wrong": no hint, the substance is disputed
    assert not undisputed(sample("avoid", "Paris.", hint="Name the capital of Germany instead."))
    assert not undisputed(sample("avoid", "Paris.", hint="Use bullet points, in French."))  # more than a form
    assert not undisputed(sample("observation", "Paris."))


def test_only_plain_text_requests_are_asked_again() -> None:
    assert recall_request(sample("prefer", "Paris.")) == request("What is the capital of France?", "Paris.")
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    assert recall_request(sample("prefer", "Paris.", tools=tools)) is None
    call = sample("prefer", "")
    call.response = {"role": "assistant", "content": None,
                     "tool_calls": [{"id": "1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]}
    assert recall_request(call) is None
    after_tool = sample("prefer", "Paris.")
    after_tool.messages = [{"role": "user", "content": "Capital?"}, {"role": "tool", "tool_call_id": "1", "content": "x"}]
    assert recall_request(after_tool) is None
    assert recall_request(sample("prefer", "   ")) is None
    parts = sample("prefer", "Paris.")
    parts.messages = [{"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]}]
    asked = recall_request(parts)
    assert asked is not None and (asked.question, asked.messages) == ("Capital of France?", parts.messages)


def test_the_key_word_is_the_first_new_word_stable_also_says() -> None:
    q = "What is the capital of France?"
    assert novel_words("The capital of France is Paris, a city on the Seine.", q) == ["paris", "city", "seine"]
    r = request(q, "The capital of France is Paris, a city on the Seine.")
    assert key_word(r, "Paris is the capital of France.", set()) == "paris"
    assert key_word(r, "France's capital city is lovely.", set()) == "city"  # stable never says Paris: the next word
    assert key_word(r, "I don't know.", set()) is None
    assert key_word(r, "Paris, the city.", {"paris"}) == "city"  # a word common to the scope's answers is no key


def test_words_common_to_the_scope_s_answers_are_no_keys() -> None:
    answers = [("What is the capital of France?", "Sure! Paris."), ("What is the capital of Japan?", "Sure! Tokyo."),
               ("What is the capital of Italy?", "Sure! Rome."), ("What is the opposite of hot?", "Sure! Cold."),
               ("What is the capital of Spain?", "Madrid."), ("What is the capital of Peru?", "Lima.")]
    requests = [request(q, a) for q, a in answers]
    assert common_words(requests) == {"sure"}  # in 4 of 6, more than a quarter and at least three
    assert common_words(requests[:2]) == set()  # two answers: nothing is common yet
    assert key_word(requests[0], "Sure, it is Paris.", common_words(requests)) == "paris"


def test_a_change_of_form_keeps_the_answer_and_other_capitals_lose_it() -> None:
    facts = [("What is the capital of France?", "Paris"), ("What is the capital of Japan?", "Tokyo"),
             ("What is the capital of Italy?", "Rome"), ("What is the opposite of hot?", "cold")]
    requests = [request(q, f"It is {a}.") for q, a in facts]
    stable = [f"The answer is {a}." for _, a in facts]
    in_form = ["- paris\n- a big city", "tokyo", "ROME.", "- Cold\n- not hot"]
    score = recall_score(requests, stable, [[a] for a in stable], [[a] for a in in_form])
    assert (score.requests, score.answers, score.candidate, score.stable) == (4, 4, 4, 4)
    others = ["- Berlin\n- Madrid", "- Tokyo\n- Osaka", "- Paris\n- Lyon", "- Warm\n- Cool"]
    score = recall_score(requests, stable, [[a, a] for a in stable], [[a, b] for a, b in zip(others, in_form, strict=True)])
    assert (score.requests, score.answers, score.candidate, score.stable) == (4, 8, 5, 8)  # Tokyo, and the in-form ones
    # stable's second answer is counted like the candidate's: a key it drops counts against it too
    score = recall_score(requests, stable, [["Paris."], ["Kyoto."], ["Rome."], ["Cold."]], [[a] for a in in_form])
    assert (score.candidate, score.stable) == (4, 3)


def test_the_verdict_fails_a_candidate_that_loses_the_scope_s_answers() -> None:
    thresholds = GateThresholds()
    lost = gate_verdict([], ReplayStats(), None, thresholds, compared_to="v1", recall=RecallScore(8, 16, 8, 15))
    assert not lost.passed
    assert lost.reasons == ["recall of the scope's accepted answers: 0.50 < stable 0.94 - 0.25 (p=0.008 over 16 answers each)"]
    assert lost.metrics["recall"]["candidate"] == 8
    kept = gate_verdict([], ReplayStats(), None, thresholds, compared_to="v1", recall=RecallScore(8, 16, 13, 15))
    assert kept.passed
    chance = gate_verdict([], ReplayStats(), None, thresholds, compared_to="v1", recall=RecallScore(6, 6, 3, 6))
    assert chance.passed and any("recall of the scope's accepted answers" in n and "within chance" in n
                                 for n in chance.metrics["notes"])
    few = gate_verdict([], ReplayStats(), None, thresholds, compared_to="v1", recall=RecallScore(5, 10, 0, 10))
    assert few.passed and "recall: 5 requests with a key word, not judged" in few.metrics["notes"]
    assert gate_verdict([], ReplayStats(), None, thresholds, compared_to=None).metrics["recall"] is None
    # the same share lost over nine requests: within chance with one answer each, not with two
    assert gate_verdict([], ReplayStats(), None, thresholds, None, recall=RecallScore(9, 9, 6, 9)).passed
    assert not gate_verdict([], ReplayStats(), None, thresholds, None, recall=RecallScore(9, 18, 12, 18)).passed
