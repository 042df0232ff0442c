"""``nextstate forget --scope`` and ``nextstate registry scopes`` through the composition root, on real
Redis and fake policy servers: a scope's versions, adapters, turns, transitions, feedback and samples go;
everything of other scopes stays."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from labeler.records import SAMPLES_STREAM, SampleRecord, sample_key
from nextstate.cli import main as nextstate
from proxy.records import (
    FEEDBACK_STREAM,
    TRANSITIONS_STREAM,
    TURNS_STREAM,
    FeedbackRecord,
    ResponseContext,
    TransitionRecord,
    TurnRecord,
    TurnRequest,
    TurnResponse,
    response_context_key,
    session_key,
    turn_key,
)
from proxy.store import chain_key
from registry.actions import Control
from registry.routing import read_table
from registry.store import Registry
from tests.registry.test_cli import env as env  # the CLI's environment fixture
from tests.registry.test_scopes import publish_in


def record_turn(client: redis.Redis, scope: str) -> str:
    """A turn of ``scope`` with its transition, feedback and sample, as the proxy and labeler write them."""
    turn_id = uuid.uuid4().hex
    session = f"s@{scope}"
    turn = TurnRecord(record_id=turn_id, turn_id=turn_id, session_id=session, turn_index=0, scope=scope,
                      request=TurnRequest(messages=[{"role": "user", "content": "hi"}]),
                      response=TurnResponse(message={"role": "assistant", "content": "x"}))
    client.xadd(TURNS_STREAM, {"record": turn.model_dump_json()})
    client.set(turn_key(turn_id), turn.model_dump_json())
    transition = TransitionRecord(record_id=f"tr-{turn_id}", transition_id=f"tr-{turn_id}", turn_id=turn_id,
                                  session_id=session, turn_index=0)
    client.xadd(TRANSITIONS_STREAM, {"record": transition.model_dump_json()})
    feedback = FeedbackRecord(record_id=f"fb-{turn_id}", feedback_id=f"fb-{turn_id}", turn_id=turn_id, rating=1)
    client.xadd(FEEDBACK_STREAM, {"record": feedback.model_dump_json()})
    for revision in (0, 1):
        sample = SampleRecord(record_id=f"{turn_id}:r{revision}", sample_id=turn_id, turn_id=turn_id, session_id=session,
                              revision=revision, cls="prefer", reward=1, scope=scope, messages=turn.request.messages,
                              response=turn.response.message)
        client.xadd(SAMPLES_STREAM, {"record": sample.model_dump_json()})
        client.set(sample_key(turn_id), sample.model_dump_json())
    # the proxy's state of the conversation: the session, its fingerprint chain, a Responses API context
    client.set(session_key(session), json.dumps({"turn_id": turn_id}))
    client.set(chain_key(f"chain-{scope}"), session)
    context = ResponseContext(response_id=f"resp-{turn_id}", session_id=session, messages=turn.request.messages, scope=scope)
    client.set(response_context_key(context.response_id), context.model_dump_json())
    return turn_id


def test_forget_a_scope_removes_what_it_owns_only(env: None, control: Control, registry: Registry,
                                                  adapter_files: Path, replicas: list[Any],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    client = registry.redis
    stable = publish_in(registry, adapter_files)
    control.promote(stable, "operator", "shared stable")
    alice, bob = control.scoped("alice"), control.scoped("bob")
    for scoped in (alice, bob):
        version = publish_in(scoped.registry, adapter_files, started_from=stable)
        scoped.start_canary(version, 0.5, "operator")
    kept = [record_turn(client, "bob"), record_turn(client, "global")]
    gone = [record_turn(client, "alice"), record_turn(client, "alice")]

    assert nextstate(["registry", "scopes"]) == 0
    listing = capsys.readouterr().out
    assert "alice" in listing and "v1 50%" in listing and "the global stable" in listing
    assert nextstate(["registry", "ls", "--scope", "alice"]) == 0
    assert "tiny-chat@alice-v1" in capsys.readouterr().out

    assert nextstate(["forget", "--scope", "alice"]) == 0
    out = capsys.readouterr().out
    for line in ("forgot scope alice", "versions          1 (v1)", "adapters unloaded 1", "turns             2",
                 "transitions       2", "feedback          2", "samples           4", "conversation keys 4"):
        assert line in out
    assert registry.scopes() == ["global", "bob"] and alice.registry.versions() == []
    assert not alice.registry.root.exists() and bob.registry.root.exists()
    assert set(read_table(client).scopes) == {"bob"}
    for app, _ in replicas:
        assert "tiny-chat@alice-v1" not in app.state.loaded and "tiny-chat@bob-v1" in app.state.loaded
    for stream in (TURNS_STREAM, TRANSITIONS_STREAM, FEEDBACK_STREAM, SAMPLES_STREAM):
        text = b"".join(fields[b"record"] for _, fields in client.xrange(stream))
        assert all(t.encode() in text for t in kept) and not any(t.encode() in text for t in gone)
    assert all(client.exists(turn_key(t)) == 0 and client.exists(sample_key(t)) == 0 for t in gone)
    assert all(client.exists(turn_key(t)) == 1 for t in kept)
    assert client.exists(session_key("s@alice"), chain_key("chain-alice")) == 0
    assert client.exists(session_key("s@bob"), chain_key("chain-bob"), session_key("s@global")) == 3
    contexts = [json.loads(client.get(k))["scope"] for k in client.scan_iter(match=response_context_key("*"))]
    assert sorted(contexts) == ["bob", "global"]

    assert nextstate(["forget", "--scope", "global"]) == 1
    assert "cannot be forgotten" in capsys.readouterr().err
