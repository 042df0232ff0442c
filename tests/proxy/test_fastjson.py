from __future__ import annotations

import json

import pytest

from proxy import fastjson
from proxy.body import parse_chat
from proxy.capture import forward_body
from proxy.errors import BadRequest


def test_round_trip_is_compact_utf8() -> None:
    obj = {"content": "héllo ✓", "n": [1, 2.5, None, True]}
    assert fastjson.dumps(obj) == json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    assert fastjson.loads(fastjson.dumps(obj)) == obj


def test_what_orjson_refuses_falls_back_to_the_standard_library() -> None:
    big = 2**70
    assert fastjson.loads(b'{"seed": %d}' % big) == {"seed": big}
    assert fastjson.dumps({"seed": big}) == b'{"seed":%d}' % big
    assert fastjson.loads(b'{"x": NaN}')["x"] != fastjson.loads(b'{"x": NaN}')["x"]  # NaN, as json reads it


def test_a_body_with_a_huge_integer_is_accepted_and_forwarded_intact() -> None:
    raw = b'{"model": "a", "seed": %d, "messages": [{"role": "user", "content": "hi"}]}' % 2**70
    body = parse_chat(raw)
    forwarded = json.loads(forward_body(raw, body, model="b", capture=True))
    assert forwarded["seed"] == 2**70 and forwarded["model"] == "b" and forwarded["return_token_ids"] is True


def test_not_json_keeps_the_standard_message() -> None:
    with pytest.raises(BadRequest, match=r"not valid JSON: Expecting property name.*line 1 column 2"):
        parse_chat(b"{nope")


def test_log_serializer_writes_unknown_objects_as_text() -> None:
    line = json.loads(fastjson.dumps_str({"path": object.__new__(type("P", (), {"__str__": lambda s: "p"}))}))
    assert line == {"path": "p"}
