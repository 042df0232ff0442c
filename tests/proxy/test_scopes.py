"""Learning scopes in the proxy: the pure scope decision, and requests routed by scope over real HTTP
with their turns recorded in their scope."""

from __future__ import annotations

import gzip
import hashlib
import json

import openai
import pytest

from proxy.records import FEEDBACK_STREAM, ROUTING_KEY, TRANSITIONS_STREAM, RoutingTable, ScopeRoute
from proxy.scopes import parse_sources, request_scope, resolve_scope
from proxy.settings import ProxySettings
from tests.proxy.conftest import read_stream, transitions, turns, wait_records
from tests.proxy.test_surface import CHAT, wait_for_table

ALICE_KEY, BOB_KEY = "sk-alice", "sk-bob"


def hashed(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    ("sources", "unkeyed", "header", "key", "user", "expected"),
    [
        ((), "global", "alice", "abc", "u1", "global"),  # global mode: one lineage for all
        (("header", "key", "user"), "local", "Alice", "abc", "u1", "alice"),  # a readable header is kept
        (("header", "key", "user"), "local", None, "abc", "u1", "k-abc"),
        (("header", "key", "user"), "local", "  ", None, "u1", f"u-{hashed('u1')}"),
        (("header", "key", "user"), "local", None, None, None, "local"),
        (("key",), "global", "alice", None, "u1", "global"),  # the header is not a source here
        (("user", "key"), "global", None, "abc", "u1", f"u-{hashed('u1')}"),  # order is the settings'
        (("user",), "global", None, None, 42, "global"),  # a non-string user names nothing
        (("header",), "global", "a b/../c", None, None, f"h-{hashed('a b/../c')}"),  # unsafe: hashed
        (("header",), "global", "x" * 49, None, None, f"h-{hashed('x' * 49)}"),  # too long: hashed
    ],
)
def test_request_scope(sources, unkeyed, header, key, user, expected) -> None:
    assert request_scope(sources, unkeyed, header=header, key_hash=key, user=user) == expected


@pytest.mark.parametrize(
    ("scope_by", "header", "client_scope", "expected"),
    [
        ("key", None, "team-a", "team-a"),  # a key configured with a scope names it
        ("header,key", "alice", "team-a", "alice"),  # unless a trusted header names another
        ("key", "alice", "team-a", "team-a"),  # an untrusted header names nothing
        ("key", None, None, "k-abc"),
        ("", None, None, "global"),
    ],
)
def test_resolve_scope(scope_by, header, client_scope, expected) -> None:
    assert resolve_scope(scope_by, "global", header=header, key_hash="abc", user=None,
                         client_scope=client_scope) == expected


def test_scope_settings_are_checked(tmp_path) -> None:
    assert parse_sources(" Header, key ") == ("header", "key")
    with pytest.raises(ValueError, match="unknown scope source"):
        ProxySettings(home=tmp_path, scope_by="header,cookie")
    with pytest.raises(ValueError, match="not a scope name"):
        ProxySettings(home=tmp_path, scope_unkeyed="Bad Name")


def alice_has_an_adapter(start_proxy, redis_client, http) -> tuple[str, str]:
    """A proxy scoping by key whose routing table gives alice's scope a stable of its own: (its URL, that scope)."""
    url = start_proxy(scope_by="key", scope_unkeyed="global")
    alice = f"k-{hashed(ALICE_KEY)}"
    table = RoutingTable(revision=1, base_model="tiny", stable="v1", versions={"v1": "tiny@v1"},
                         scopes={alice: ScopeRoute(stable="v2", versions={"v2": f"tiny@{alice}-v2"})})
    redis_client.set(ROUTING_KEY, table.model_dump_json())
    wait_for_table(http, url)
    return url, alice


def test_requests_route_to_their_scopes_adapter_and_record_their_scope(start_proxy, fake, redis_client, http) -> None:
    url, alice = alice_has_an_adapter(start_proxy, redis_client, http)
    cases = [(ALICE_KEY, (f"tiny@{alice}-v2", "v2", alice, alice)), (BOB_KEY, ("tiny@v1", "v1", f"k-{hashed(BOB_KEY)}", "global")),
             (None, ("tiny@v1", "v1", "global", "global"))]
    for key, (model, version, _, _) in cases:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = http.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers)
        assert response.status_code == 200 and response.headers["x-nextstate-version"] == version
        assert fake.requests[-1]["body"]["model"] == model
    records = turns(redis_client, len(cases))
    assert [(r["scope"], r["serving"]["scope"], r["serving"]["version_scope"]) for r in records] == [
        (scope, scope, version_scope) for _, (_, _, scope, version_scope) in cases]
    # a pin resolves in the request's own scope first
    pinned = http.post(f"{url}/v1/chat/completions", json={**CHAT, "model": f"tiny@{alice}-v2"},
                       headers={"Authorization": f"Bearer {ALICE_KEY}"})
    assert pinned.headers["x-nextstate-arm"] == "pinned" and fake.requests[-1]["body"]["model"] == f"tiny@{alice}-v2"
    # another user cannot pin alice's adapter by its served name
    other = http.post(f"{url}/v1/chat/completions", json={**CHAT, "model": f"tiny@{alice}-v2"},
                      headers={"Authorization": f"Bearer {BOB_KEY}"})
    assert other.headers.get("x-nextstate-version") == "v1" and fake.requests[-1]["body"]["model"] == "tiny@v1"


def test_feedback_counts_only_in_the_scope_of_the_turn(start_proxy, redis_client, http) -> None:
    """Bob cannot rate Alice's turn into her lineage: to him it does not exist (404, as an unknown id)."""
    url = start_proxy(scope_by="key,user", scope_unkeyed="global")
    alice = {"Authorization": f"Bearer {ALICE_KEY}"}
    turn_id = http.post(f"{url}/v1/chat/completions", json=CHAT, headers=alice).headers["x-nextstate-turn-id"]
    mine = http.post(f"{url}/v1/chat/completions", json={**CHAT, "user": "carol"}).headers["x-nextstate-turn-id"]
    turns(redis_client, 2)
    unknown = http.post(f"{url}/v1/feedback", json={"turn_id": "t-none", "rating": -1}, headers=alice).json()
    for headers, body in [({"Authorization": f"Bearer {BOB_KEY}"}, {}), ({}, {}), ({}, {"user": "alice"})]:
        refused = http.post(f"{url}/v1/feedback", json={"turn_id": turn_id, "rating": -1, "comment": "one word", **body},
                            headers=headers)
        assert refused.status_code == 404
        assert refused.json()["error"]["code"] == unknown["error"]["code"] == "turn_not_found"
    assert http.post(f"{url}/v1/feedback", json={"turn_id": turn_id, "rating": 1}, headers=alice).status_code == 200
    carol = http.post(f"{url}/v1/feedback", json={"turn_id": mine, "rating": -1, "user": "carol"})  # a body's user
    assert carol.status_code == 200 and carol.json()["status"] == "accepted"
    wait_records(redis_client, FEEDBACK_STREAM, 2)
    records = read_stream(redis_client, FEEDBACK_STREAM)
    assert [(r["turn_id"], r["rating"], r["scope"]) for r in records] == [
        (turn_id, 1, f"k-{hashed(ALICE_KEY)}"), (mine, -1, f"u-{hashed('carol')}")]


def test_conversations_never_cross_scopes(start_proxy, redis_client) -> None:
    """Two keys' clients that name the same session, or send the same conversation, have a session each: one
    user's message never becomes the next state of another user's turn, nor joins its conversation."""
    url = start_proxy(scope_by="key", scope_unkeyed="global")
    alice, bob = (openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) for key in (ALICE_KEY, BOB_KEY))
    scope_a, scope_b = f"k-{hashed(ALICE_KEY)}", f"k-{hashed(BOB_KEY)}"
    hi = {"role": "user", "content": "hi"}

    def ask(client: openai.OpenAI, messages: list[dict[str, str]], **kwargs) -> tuple[str, str, str]:
        raw = client.chat.completions.with_raw_response.create(model="m", messages=messages, **kwargs)  # type: ignore[arg-type]
        return raw.headers["x-nextstate-turn-id"], raw.headers["x-nextstate-session-id"], raw.parse().choices[0].message.content or ""

    named = {"extra_headers": {"X-Session-Id": "s1"}}
    a1, session_a, reply = ask(alice, [hi], **named)
    b1, session_b, _ = ask(bob, [hi, {"role": "assistant", "content": reply}, {"role": "user", "content": "bob's secret"}],
                           **named)
    assert (session_a, session_b) == (f"s1@{scope_a}", f"s1@{scope_b}")
    a2, session_a2, _ = ask(alice, [hi, {"role": "assistant", "content": reply}, {"role": "user", "content": "alice goes on"}],
                            **named)
    assert session_a2 == session_a
    # the same conversation without a session name: found by fingerprint in its own scope only
    c1, fp_a, reply = ask(alice, [{"role": "user", "content": "hello"}])
    c2, fp_b, _ = ask(bob, [{"role": "user", "content": "hello"}, {"role": "assistant", "content": reply},
                            {"role": "user", "content": "bob again"}])
    c3, fp_a2, _ = ask(alice, [{"role": "user", "content": "hello"}, {"role": "assistant", "content": reply},
                               {"role": "user", "content": "alice again"}])
    assert fp_b != fp_a and fp_a2 == fp_a
    records = {r["turn_id"]: r for r in turns(redis_client, 6)}
    assert {t: records[t]["scope"] for t in (a1, a2, c1, c3)} == dict.fromkeys((a1, a2, c1, c3), scope_a)
    assert {records[t]["scope"] for t in (b1, c2)} == {scope_b}
    links = {t["turn_id"]: t for t in transitions(redis_client, 2)}
    assert (links[a1]["next_turn_id"], links[a1]["next_state"]) == (a2, [{"role": "user", "content": "alice goes on"}])
    assert (links[c1]["next_turn_id"], links[c1]["next_state"]) == (c3, [{"role": "user", "content": "alice again"}])
    assert not any("bob" in json.dumps(t["next_state"]) for t in read_stream(redis_client, TRANSITIONS_STREAM))


def test_a_response_of_another_scope_is_not_continued_into_its_records(start_proxy, redis_client) -> None:
    url = start_proxy(scope_by="key", scope_unkeyed="global")
    alice, bob = (openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) for key in (ALICE_KEY, BOB_KEY))
    first = alice.responses.create(model="m", input="alice's question")
    raw = bob.responses.with_raw_response.create(model="m", previous_response_id=first.id, input="and then?")
    assert raw.parse().output_text == "echo: and then?"  # served: the upstream decides what it continues
    assert "x-nextstate-turn-id" not in raw.headers  # but the proxy does not know this conversation in bob's scope
    own = alice.responses.with_raw_response.create(model="m", previous_response_id=first.id, input="go on")
    [one, two] = turns(redis_client, 2)
    assert two["turn_id"] == own.headers["x-nextstate-turn-id"] and two["session_id"] == one["session_id"]
    assert [m["content"] for m in two["request"]["messages"]] == ["alice's question", "echo: alice's question", "go on"]


def test_another_scopes_adapter_is_served_to_no_one_else(start_proxy, fake, redis_client, http) -> None:
    """Text completions and pass-through bodies go upstream as sent, but never naming another user's adapter."""
    url, alice = alice_has_an_adapter(start_proxy, redis_client, http)
    before = len(fake.requests)
    bob, carol = {"Authorization": f"Bearer {BOB_KEY}"}, {}
    for path, body in [("/v1/completions", {"model": f"tiny@{alice}-v2", "prompt": "hi"}),
                       ("/v1/completions", {"model": f"tiny@{alice}-v9", "prompt": "hi"}),  # retired ones too
                       ("/v1/embeddings", {"model": f"tiny@{alice}-v2", "input": "hi"})]:
        for headers in (bob, carol):
            refused = http.post(url + path, json=body, headers=headers)
            assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found", refused.text
    assert len(fake.requests) == before  # none of them reached the upstream
    for path, body, headers in [("/v1/completions", {"model": f"tiny@{alice}-v2", "prompt": "hi"},
                                 {"Authorization": f"Bearer {ALICE_KEY}"}),
                                ("/v1/completions", {"model": "tiny@v1", "prompt": "hi"}, bob),
                                ("/v1/embeddings", {"model": "tiny", "input": "hi"}, bob),
                                ("/v1/completions", {"model": "other@k-x-v2", "prompt": "hi"}, bob)]:  # not this base
        assert http.post(url + path, json=body, headers=headers).status_code == 200
    assert [r["body"]["model"] for r in fake.requests[before:]] == [f"tiny@{alice}-v2", "tiny@v1", "tiny", "other@k-x-v2"]
    # and the model list names no other user's adapter
    fake.listed = ["tiny@v1", f"tiny@{alice}-v2", f"tiny@k-{hashed(BOB_KEY)}-v3"]
    listed = {key: [m["id"] for m in http.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"]]
              for key in (ALICE_KEY, BOB_KEY)}
    assert listed == {ALICE_KEY: [fake.model, "tiny@v1", f"tiny@{alice}-v2"],
                      BOB_KEY: [fake.model, "tiny@v1", f"tiny@k-{hashed(BOB_KEY)}-v3"]}
    assert [m["id"] for m in http.get(f"{url}/v1/models").json()["data"]] == [fake.model, "tiny@v1"]


def test_a_body_sent_on_as_sent_names_another_scopes_adapter_in_no_form(start_proxy, fake, redis_client, http) -> None:
    """A pass-through body is read, never changed, whatever its form: JSON under any content type or none,
    compressed, a multipart or URL-encoded form."""
    url, alice = alice_has_an_adapter(start_proxy, redis_client, http)
    theirs = f"tiny@{alice}-v2"
    as_json = json.dumps({"model": theirs, "input": "hi"}).encode()
    forms = [dict(content=as_json),  # no content type: an upstream may read it as JSON all the same
             dict(content=as_json, headers={"content-type": "text/plain"}),
             dict(content=gzip.compress(as_json), headers={"content-type": "application/json", "content-encoding": "gzip"}),
             dict(content=as_json.replace(b"@", b"\\u0040")),  # the name behind a JSON escape
             dict(content=b" " * 200 + as_json.replace(b"@", b"\\u0040")),  # after any amount of white space
             dict(content=b"\xef\xbb\xbf" + as_json.replace(b"@", b"\\u0040")),  # after a byte-order mark
             dict(content=as_json.decode().encode("utf-16")),  # in UTF-16, as a Python server still reads it
             dict(files={"file": ("a.wav", b"RIFF" + bytes(range(64)), "audio/wav")}, data={"model": theirs}),
             dict(content=f"model={theirs.replace('@', '%40')}&x=1".encode(),
                  headers={"content-type": "application/x-www-form-urlencoded"})]
    before = len(fake.requests)
    for form in forms:
        for key in (BOB_KEY, None):
            headers = {**form.get("headers", {}), **({"Authorization": f"Bearer {key}"} if key else {})}
            refused = http.post(f"{url}/v1/audio/transcriptions", **{**form, "headers": headers})
            assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found", (form, refused.text)
    assert len(fake.requests) == before  # none of them reached the upstream
    alice_auth = {"Authorization": f"Bearer {ALICE_KEY}"}
    served = [dict(files={"file": ("a.wav", b"RIFF", "audio/wav")}, data={"model": theirs}, headers=alice_auth),
              dict(content=as_json, headers=alice_auth),
              dict(files={"file": ("a.wav", b"RIFF", "audio/wav")}, data={"model": "tiny"}),
              # a JSON body is read for its model only: another field may mention any name
              dict(content=json.dumps({"model": "tiny", "input": f"what is {theirs}?"}).encode()),
              dict(content=b"\x1f\x8b not gzip", headers={"content-type": "application/octet-stream"})]
    for form in served:
        assert http.post(f"{url}/v1/audio/transcriptions", **form).status_code == 200, form
    assert len(fake.requests) == before + len(served)
    assert fake.requests[before]["body"].count(theirs.encode()) == 1  # sent on as sent
