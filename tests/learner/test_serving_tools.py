"""Tool calls read out of generated text as vLLM's ``hermes`` parser reads them, whole and streamed."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from learner.serving_tools import ToolCallParser, parse_tool_calls, wants_tool_calls

CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Zürich"}}</tool_call>'


def _streamed(text: str, cuts: list[int]) -> tuple[str, list[tuple[str, str]], int]:
    """Content, calls and the number of calls announced, with ``text`` fed in pieces cut at ``cuts``."""
    parser, content, announced, start = ToolCallParser(), "", 0, 0
    for end in [*sorted(set(cuts)), len(text)]:
        piece, calls = parser.feed(text[start:end])
        content, announced, start = content + piece, announced + len(calls), max(start, end)
    rest, calls = parser.finish()
    return content + rest, [(c.name, c.arguments) for c in parser.calls], announced + len(calls)


def test_an_answer_that_only_calls_a_tool_has_no_content() -> None:
    content, calls = parse_tool_calls("\n" + CALL + "\n")
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Zürich"})]
    assert calls[0].id.startswith("chatcmpl-tool-")
    assert calls[0].message() == {"id": calls[0].id, "type": "function",
                                  "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'}}


def test_text_before_a_call_is_content_and_several_calls_keep_their_order() -> None:
    text = 'Let me look.\n<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>{"name": "b"}</tool_call>'
    content, calls = parse_tool_calls(text)
    assert content == "Let me look."  # the layout around the tags is not content
    assert [(c.name, c.arguments) for c in calls] == [("a", "{}"), ("b", "{}")]
    assert len({c.id for c in calls}) == 2


def test_a_list_of_calls_in_one_block_and_arguments_given_as_text() -> None:
    content, calls = parse_tool_calls('<tool_call>[{"name": "a", "arguments": "{\\"x\\": 1}"}, {"name": "b", '
                                      '"parameters": {"y": 2}}]</tool_call>')
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("a", {"x": 1}), ("b", {"y": 2})]


def test_a_block_that_is_not_a_call_stays_in_the_content_word_for_word() -> None:
    for text in ("<tool_call>not json</tool_call> fine", '<tool_call>{"arguments": {}}</tool_call>',
                 '<tool_call>["a"]</tool_call>', "a < b and <tool_ca"):
        assert parse_tool_calls(text) == (text, [])


def test_a_block_left_open_at_the_end_is_read_to_the_end() -> None:
    content, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": {"q": "x"}}')
    assert content is None and [(c.name, c.arguments) for c in calls] == [("f", '{"q": "x"}')]


def test_plain_text_is_untouched() -> None:
    assert parse_tool_calls("Just words, <b>bold</b>.") == ("Just words, <b>bold</b>.", [])
    assert parse_tool_calls("") == ("", [])


def test_tool_choice_none_or_no_tools_turns_parsing_off() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert wants_tool_calls(tools, "auto") and wants_tool_calls(tools, None)
    assert not wants_tool_calls(tools, "none") and not wants_tool_calls(None, "auto") and not wants_tool_calls([], None)


def test_a_stream_holds_back_only_what_may_become_an_opening_tag() -> None:
    parser = ToolCallParser()
    assert parser.feed("Checking <tool") == ("Checking", [])  # the space may be layout before a tag
    assert parser.feed("_c") == ("", [])
    assert parser.feed('all>{"name": "f"}') == ("", [])
    content, calls = parser.feed("</tool_call> done")
    assert content == "done" and [c.name for c in calls] == ["f"]
    assert parser.finish() == ("", [])


PIECES = st.sampled_from(["Hi", " there", "\n", "<", "tool_call>", CALL, "</tool_call>", '{"name": "g"}', "<tool",
                          "_call>", "x", '<tool_call>{"name": "h", "arguments": {"k": [1, 2]}}</tool_call>', " "])


@given(st.lists(PIECES, max_size=12), st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_streamed_and_whole_answers_agree_however_the_text_is_cut(pieces: list[str], cuts: list[int]) -> None:
    text = "".join(pieces)
    whole_content, whole_calls = parse_tool_calls(text)
    content, calls, announced = _streamed(text, [c for c in cuts if c <= len(text)])
    assert calls == [(c.name, c.arguments) for c in whole_calls]
    assert announced == len(calls)  # every call is announced exactly once
    assert (content if content.strip() or not calls else None) == whole_content
    if not calls:
        assert content == text  # nothing the model wrote is lost
