"""Feedback, routing from the table in Redis, admin mounts, health, readiness and metrics."""

from __future__ import annotations

import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from proxy.records import FEEDBACK_STREAM, ROUTING_KEY, UPSTREAM_OUTCOMES_KEY, RoutingTable
from proxy.routing import slice_position
from tests.proxy.conftest import read_stream, turns, wait_records
from tests.support.fake_upstream import Reply

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


def served_turn(proxy_url: str, http: httpx.Client) -> str:
    response = http.post(f"{proxy_url}/v1/chat/completions", json=CHAT)
    return response.headers["x-nextstate-turn-id"]


def wait_for_table(http: httpx.Client, proxy_url: str, timeout: float = 10.0) -> str:
    """Wait until the proxy routes by the table just written (it reloads every 0.1 s in tests);
    return the version that served the first request routed by it."""
    deadline = time.monotonic() + timeout
    while True:
        headers = http.post(f"{proxy_url}/v1/chat/completions", json=CHAT,
                            headers={"X-NextState-Record": "off"}).headers
        if "x-nextstate-version" in headers:
            return headers["x-nextstate-version"]
        assert time.monotonic() < deadline, "the routing table was not picked up"
        time.sleep(0.05)


def test_feedback_is_validated_and_appended_once(proxy_url, redis_client, http) -> None:
    turn_id = served_turn(proxy_url, http)
    turns(redis_client, 1)
    body = {"turn_id": turn_id, "rating": 1, "comment": "great"}
    first = http.post(f"{proxy_url}/v1/feedback", json=body)
    again = http.post(f"{proxy_url}/v1/feedback", json=body)  # the same feedback twice: stored once
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    http.post(f"{proxy_url}/v1/feedback", json={"turn_id": turn_id, "rating": -1})
    records = wait_records(redis_client, FEEDBACK_STREAM, 2)
    time.sleep(0.2)
    records = read_stream(redis_client, FEEDBACK_STREAM)
    assert [(r["turn_id"], r["rating"], r["comment"]) for r in records] == [(turn_id, 1, "great"), (turn_id, -1, None)]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"turn_id": "nope", "rating": 1}, 404, "turn_id"),
        ({"rating": 1}, 400, "turn_id"),
        ({"turn_id": "x", "rating": 2}, 400, "rating"),
        ({"turn_id": "x", "rating": True}, 400, "rating"),
        ({"turn_id": "x", "rating": 1, "comment": 5}, 400, "comment"),
    ],
)
def test_feedback_errors(proxy_url, body, status, param, http) -> None:
    response = http.post(f"{proxy_url}/v1/feedback", json=body)
    assert response.status_code == status
    assert response.json()["error"]["param"] == param


def test_routing_table_in_redis_routes_and_is_recorded(proxy_url, fake, redis_client, http) -> None:
    table = RoutingTable(revision=1, base_model="tiny", stable="v1", canary="v2", canary_fraction=0.5,
                         versions={"v1": "tiny@v1", "v2": "tiny@v2"})
    redis_client.set(ROUTING_KEY, table.model_dump_json())
    probe_version = wait_for_table(http, proxy_url)
    canary_session = next(f"s{i}" for i in range(100) if slice_position(f"s{i}") < 0.5)
    stable_session = next(f"s{i}" for i in range(100) if slice_position(f"s{i}") >= 0.5)
    cases = [
        ({"X-Session-Id": canary_session}, CHAT, ("v2", "canary", "tiny@v2")),
        ({"X-Session-Id": stable_session}, CHAT, ("v1", "stable", "tiny@v1")),
        ({"X-Session-Id": stable_session, "X-NextState-Canary": "1"}, CHAT, ("v2", "canary", "tiny@v2")),
        ({"X-NextState-Policy": "v1", "X-NextState-Canary": "1"}, CHAT, ("v1", "pinned", "tiny@v1")),
        ({}, {**CHAT, "model": "tiny@v2"}, ("v2", "pinned", "tiny@v2")),
    ]
    for headers, body, (version, arm, model) in cases:
        response = http.post(f"{proxy_url}/v1/chat/completions", json=body, headers=headers)
        assert (response.headers["x-nextstate-version"], response.headers["x-nextstate-arm"]) == (version, arm)
        assert fake.requests[-1]["body"]["model"] == model
    records = turns(redis_client, len(cases))
    assert [r["serving"]["arm"] for r in records] == ["canary", "stable", "canary", "pinned", "pinned"]
    assert records[0]["serving"]["upstream_model"] == "tiny@v2"

    # the canary's health: upstream outcomes per served version, counted off the request path
    fake.push(Reply(status=500))
    http.post(f"{proxy_url}/v1/chat/completions", json=CHAT, headers={"X-NextState-Policy": "v1"})
    fake.push(Reply(status=404))  # the adapter is not loaded upstream (a restarted server): an error, and missing
    http.post(f"{proxy_url}/v1/chat/completions", json=CHAT, headers={"X-NextState-Policy": "v2"})
    ok = {"v1": 2, "v2": 3}
    ok[probe_version] += 1
    expected = {b"v1:ok": str(ok["v1"]).encode(), b"v2:ok": str(ok["v2"]).encode(), b"v1:error": b"1",
                b"v2:error": b"1", b"v2:missing": b"1"}
    deadline = time.monotonic() + 5
    while redis_client.hgetall(UPSTREAM_OUTCOMES_KEY) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert redis_client.hgetall(UPSTREAM_OUTCOMES_KEY) == expected

    metrics = http.get(f"{proxy_url}/metrics").text
    assert 'nextstate_proxy_policy_requests_total{arm="canary",status="200",version="v2"} 2.0' in metrics
    assert 'nextstate_proxy_policy_requests_total{arm="pinned",status="500",version="v1"} 1.0' in metrics
    assert 'nextstate_proxy_policy_request_seconds_count{arm="stable",version="v1"}' in metrics


def test_upstream_model_setting_names_the_base_model(start_proxy, fake, http) -> None:
    url = start_proxy(upstream_model="served-base")
    http.post(f"{url}/v1/chat/completions", json=CHAT)
    assert fake.requests[-1]["body"]["model"] == "served-base"


def test_without_a_table_the_clients_model_is_forwarded(proxy_url, fake, http) -> None:
    http.post(f"{proxy_url}/v1/chat/completions", json={**CHAT, "model": "whatever"})
    assert fake.requests[-1]["body"]["model"] == "whatever"


def _admin_app() -> Starlette:
    return Starlette(routes=[Route("/ping", lambda request: PlainTextResponse("pong"))])


def test_admin_mounts_need_the_token(start_proxy, http) -> None:
    url = start_proxy(mounts=[("/admin", _admin_app())], admin_token="s3cret")
    assert http.get(f"{url}/admin/ping").status_code == 401
    assert http.get(f"{url}/admin/ping", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = http.get(f"{url}/admin/ping", headers={"Authorization": "Bearer s3cret"})
    assert (ok.status_code, ok.text) == (200, "pong")


def test_a_browser_opens_admin_mounts_with_basic_auth(start_proxy, http) -> None:
    url = start_proxy(mounts=[("/admin", _admin_app())], admin_token="s3cret")
    challenge = http.get(f"{url}/admin/ping")
    assert challenge.status_code == 401
    assert challenge.headers["www-authenticate"].lower().startswith("basic")  # the browser prompts
    assert http.get(f"{url}/admin/ping", auth=("admin", "wrong")).status_code == 401
    assert http.get(f"{url}/admin/ping", headers={"Authorization": "Basic !!notbase64"}).status_code == 401
    ok = http.get(f"{url}/admin/ping", auth=("anyone", "s3cret"))
    assert (ok.status_code, ok.text) == (200, "pong")


def test_admin_mounts_are_disabled_without_a_token(start_proxy, http) -> None:
    url = start_proxy(mounts=[("/admin", _admin_app())])
    response = http.get(f"{url}/admin/ping", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_health_readiness_and_metrics(start_proxy, proxy_url, tmp_path, http) -> None:
    assert http.get(f"{proxy_url}/healthz").json() == {"status": "ok"}
    ready = http.get(f"{proxy_url}/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"redis": "ok", "upstream": "ok"}
    served_turn(proxy_url, http)
    metrics = http.get(f"{proxy_url}/metrics").text
    assert 'nextstate_proxy_requests_total{route="/v1/chat/completions",status="200"} 1.0' in metrics
    assert "nextstate_proxy_overhead_seconds_bucket" in metrics
    assert "nextstate_proxy_request_seconds_bucket" in metrics
    broken = start_proxy(redis=f"unix://{tmp_path}/no-such.sock", upstream="http://127.0.0.1:9/v1")
    not_ready = http.get(f"{broken}/readyz")
    assert not_ready.status_code == 503
    assert set(not_ready.json()["checks"]) == {"redis", "upstream"}
    assert all(v != "ok" for v in not_ready.json()["checks"].values())


def test_one_canonical_log_line_per_request(proxy_url, http) -> None:
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        response = http.post(f"{proxy_url}/v1/chat/completions", json=CHAT, headers={"X-Session-Id": "logged"})
        time.sleep(0.1)
    lines = [entry for entry in logs if entry["event"] == "request"]
    assert len(lines) == 1
    line = lines[0]
    assert (line["path"], line["status"], line["session_id"]) == ("/v1/chat/completions", 200, "logged")
    assert line["turn_id"] == response.headers["x-nextstate-turn-id"]
    assert line["overhead_ms"] >= 0 and line["duration_ms"] >= line["overhead_ms"]


def test_a_conversation_without_session_id_never_switches_arm(proxy_url, redis_client) -> None:
    table = RoutingTable(revision=1, base_model="tiny", stable="v1", canary="v2", canary_fraction=0.5,
                         versions={"v1": "tiny@v1", "v2": "tiny@v2"})
    redis_client.set(ROUTING_KEY, table.model_dump_json())
    arms = []
    with httpx.Client(base_url=proxy_url) as http:
        wait_for_table(http, proxy_url)
        for opening in range(8):
            history = [{"role": "user", "content": f"opening {opening}"}]
            seen = set()
            for step in range(3):
                response = http.post("/v1/chat/completions", json={"model": "tiny", "messages": history})
                seen.add(response.headers["x-nextstate-arm"])
                reply = response.json()["choices"][0]["message"]
                history = [*history, reply, {"role": "user", "content": f"more {step}"}]
            assert len(seen) == 1
            arms.append(seen.pop())
    assert set(arms) == {"stable", "canary"}  # 8 openings spread over both arms
