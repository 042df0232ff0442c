"""Pure pieces of the server: stop-string hold-back, incremental UTF-8 text, token choice."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from learner.serving_sampling import SamplingParams, choose_token
from learner.serving_text import IncrementalText, find_stop, stop_prefix_len


@pytest.mark.parametrize(
    ("text", "stops", "expected"),
    [
        ("hello", [], 0),
        ("hello wor", ["world"], 3),
        ("hello w", ["world", "wx"], 1),
        ("abc", ["c"], 0),  # a complete stop is found by find_stop, not held back
        ("the end.", [".\n"], 1),
    ],
)
def test_stop_prefix_len(text: str, stops: list[str], expected: int) -> None:
    assert stop_prefix_len(text, stops) == expected


@pytest.mark.parametrize(
    ("text", "stops", "start", "expected"),
    [("a. b. c", ["."], 0, 1), ("a. b. c", ["."], 2, 4), ("abc", ["x"], 0, None), ("abc", ["c", "b"], 0, 1)],
)
def test_find_stop(text: str, stops: list[str], start: int, expected: int | None) -> None:
    assert find_stop(text, stops, start) == expected


def _bytes_decode(ids: list[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


def test_incremental_text_holds_back_partial_characters() -> None:
    text = IncrementalText(_bytes_decode)
    pieces = [text.push(b) for b in "é!".encode()]
    assert pieces == ["", "é", "!"]
    assert text.flush() == "" and text.text == "é!"


def test_incremental_text_stops_before_the_stop_string() -> None:
    text = IncrementalText(_bytes_decode, stops=["END"])
    released = "".join(text.push(b) for b in b"abEN")
    assert released == "ab" and not text.stopped  # "EN" may start "END": held back
    assert text.push(ord("D")) == "" and text.stopped and text.text == "ab"


def test_incremental_text_releases_a_false_alarm() -> None:
    text = IncrementalText(_bytes_decode, stops=["END"])
    assert "".join(text.push(b) for b in b"aEN") == "a"
    assert text.push(ord("x")) == "ENx"
    assert text.flush() == ""


LOGITS = torch.tensor([0.0, 3.0, 1.0, 2.0])


def test_greedy_and_top_logprobs() -> None:
    token, logprob, top = choose_token(LOGITS, SamplingParams(max_tokens=1, temperature=0.0, top_logprobs=2), None, Counter())
    assert token == 1
    assert logprob == pytest.approx(float(torch.log_softmax(LOGITS, -1)[1]))
    assert [t for t, _ in top or []] == [1, 3]
    assert choose_token(LOGITS, SamplingParams(max_tokens=1), None, Counter())[2] is None


def test_top_k_and_top_p_restrict_the_choice() -> None:
    generator = torch.Generator().manual_seed(0)
    for params in (SamplingParams(max_tokens=1, top_k=1), SamplingParams(max_tokens=1, top_p=0.05)):
        assert {choose_token(LOGITS, params, generator, Counter())[0] for _ in range(50)} == {1}
    two = SamplingParams(max_tokens=1, top_k=2)
    assert {choose_token(LOGITS, two, generator, Counter())[0] for _ in range(200)} == {1, 3}


def test_seeded_sampling_is_reproducible() -> None:
    def draw(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return [choose_token(LOGITS, SamplingParams(max_tokens=1), generator, Counter())[0] for _ in range(30)]

    assert draw(5) == draw(5)
    assert draw(5) != draw(6)


def test_penalties_move_away_from_repeated_tokens() -> None:
    params = SamplingParams(max_tokens=1, temperature=0.0, frequency_penalty=2.0)
    assert choose_token(LOGITS, params, None, Counter({1: 1}))[0] == 3
    # the reported logprob stays the raw model's, whatever the penalties
    assert choose_token(LOGITS, params, None, Counter({1: 1}))[1] == pytest.approx(float(torch.log_softmax(LOGITS, -1)[3]))
