"""Learning scopes in the proxy: the pure scope decision, and requests routed by scope over real HTTP
with their turns recorded in their scope."""

from __future__ import annotations

import hashlib

import pytest

from proxy.records import FEEDBACK_STREAM, ROUTING_KEY, RoutingTable, ScopeRoute
from proxy.scopes import parse_sources, request_scope, resolve_scope
from proxy.settings import ProxySettings
from tests.proxy.conftest import read_stream, turns, wait_records
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


def test_requests_route_to_their_scopes_adapter_and_record_their_scope(start_proxy, fake, redis_client, http) -> None:
    url = start_proxy(scope_by="key", scope_unkeyed="global")
    alice = f"k-{hashed(ALICE_KEY)}"
    table = RoutingTable(revision=1, base_model="tiny", stable="v1", versions={"v1": "tiny@v1"},
                         scopes={alice: ScopeRoute(stable="v2", versions={"v2": f"tiny@{alice}-v2"})})
    redis_client.set(ROUTING_KEY, table.model_dump_json())
    wait_for_table(http, url)
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
