"""Session identity and turn linking as pure functions, on literal conversations."""

from __future__ import annotations

import pytest

from proxy.sessions import (
    PreviousTurn,
    link,
    message_digest,
    opening_fingerprint,
    prefix_hash,
    session_identity,
    turn_index,
)

SYSTEM = {"role": "system", "content": "be brief"}
U1 = {"role": "user", "content": "what is 2+2?"}
A1 = {"role": "assistant", "content": "5"}
U2 = {"role": "user", "content": "wrong, it is 4"}
CALL = {"role": "assistant", "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{\"a\":2}"}}]}
TOOL = {"role": "tool", "tool_call_id": "c1", "content": "4"}


def previous(request: list[dict], reply: dict, turn_id: str = "t1") -> PreviousTurn:
    digests = [message_digest(m) for m in request]
    return PreviousTurn(turn_id, len(request), prefix_hash(digests), message_digest(reply))


def run_link(prev: PreviousTurn, messages: list[dict]):
    return link(prev, messages, [message_digest(m) for m in messages])


@pytest.mark.parametrize(
    ("request_", "reply", "next_request", "linked", "next_state"),
    [
        ([SYSTEM, U1], A1, [SYSTEM, U1, A1, U2], True, [U2]),
        ([U1], CALL, [U1, CALL, TOOL], True, [TOOL]),
        ([U1], CALL, [U1, CALL, TOOL, U2], True, [TOOL, U2]),  # every new user/tool message
        ([U1], A1, [U1], False, []),  # a retry
        ([U1], A1, [U1, {"role": "assistant", "content": "4"}, U2], False, []),  # reply edited
        ([SYSTEM, U1], A1, [{"role": "system", "content": "other"}, U1, A1, U2], False, []),  # history edited
        ([U1], A1, [U1, A1], True, []),  # continues, but nothing new yet
    ],
)
def test_link_table(request_, reply, next_request, linked, next_state) -> None:
    result = run_link(previous(request_, reply), next_request)
    assert (result.linked, result.next_state) == (linked, next_state)


def test_digest_ignores_fields_clients_add_or_drop() -> None:
    as_served = {"role": "assistant", "content": "5"}
    as_resent = {"role": "assistant", "content": "5", "refusal": None, "audio": None, "annotations": []}
    assert message_digest(as_served) == message_digest(as_resent)
    assert message_digest({"role": "assistant", "content": None}) == message_digest({"role": "assistant", "content": ""})
    parts = {"role": "user", "content": [{"type": "text", "text": "hi"}]}
    assert message_digest(parts) == message_digest({"role": "user", "content": "hi"})
    assert message_digest(A1) != message_digest({"role": "user", "content": "5"})


@pytest.mark.parametrize(
    ("header", "user", "expected"),
    [("abc", "bob", ("abc", "abc")), (None, "bob", ("user:bob", "user:bob")), (None, None, ("", None)),
     ("", "", ("", None))],
)
def test_session_identity(header, user, expected) -> None:
    assert session_identity(header, user, [U1]) == expected


def test_opening_fingerprint_is_constant_over_a_conversation() -> None:
    assert opening_fingerprint([SYSTEM, U1]) == opening_fingerprint([SYSTEM, U1, A1, U2])
    assert opening_fingerprint([SYSTEM, U1]) != opening_fingerprint([SYSTEM, U2])


def test_turn_index_counts_assistant_replies() -> None:
    assert [turn_index(m) for m in ([U1], [U1, A1, U2], [U1, CALL, TOOL, A1, U2])] == [0, 1, 2]
