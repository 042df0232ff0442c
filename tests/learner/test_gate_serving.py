"""End to end on real parts: the embedded policy server, the proxy, real Redis, peft adapters on the tiny
model. A gate failure never gets traffic; a passing candidate is loaded under its own name and serves
exactly the opted-in and sliced sessions; promotion and rollback through the admin routes."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from learner.gate import run_gate_for_version
from learner.modeling import load_model
from learner.serve import create_app as create_policy_server
from learner.serving_settings import ServeSettings
from proxy.app import create_app as create_proxy
from proxy.routing import slice_position
from proxy.settings import ProxySettings
from registry.actions import Control
from registry.admin import create_admin_app
from registry.canary import CanaryPolicy
from registry.controller import Controller
from registry.publisher import Publisher
from registry.settings import RegistrySettings
from registry.store import Registry
from tests.learner.gate_support import make_adapter, publish_adapter
from tests.registry.simulate import add_samples
from tests.support.servers import serve_in_thread

TOKEN = "admin-token"
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def stack(redis_url: str, tmp_path: Path, tiny_model_path: Path) -> Iterator[dict[str, Any]]:
    policy = create_policy_server(ServeSettings(home=tmp_path / "serve", served_model_name="tiny-chat",
                                                max_loras=4, adapters_dir=tmp_path / "store"), model_path=tiny_model_path)
    with serve_in_thread(policy, timeout_graceful_shutdown=2) as policy_url:
        settings = RegistrySettings(redis_url=redis_url, home=tmp_path / "home", adapters_dir=tmp_path / "store",
                                    base_model=str(tiny_model_path), served_base_model="tiny-chat",
                                    policy_urls=[policy_url], drain_seconds=0, gate_samples=4, gate_max_tokens=64)
        client = redis.Redis.from_url(redis_url)
        publisher = Publisher(settings.replicas(), drain_seconds=0)
        control = Control(Registry(client, settings.adapters_path(), base_model="tiny-chat"), publisher)
        proxy_settings = ProxySettings(home=tmp_path / "proxy", redis_url=redis_url, upstream_url=f"{policy_url}/v1",
                                       admin_token=TOKEN, routing_refresh_s=0.1, capture_tokens=True)
        proxy = create_proxy(proxy_settings, mounts=[("/admin", create_admin_app(control))])
        with serve_in_thread(proxy, timeout_graceful_shutdown=2) as proxy_url, \
                httpx.Client(base_url=proxy_url, timeout=60) as http:
            yield {"settings": settings, "control": control, "http": http, "policy_url": policy_url}
        publisher.close()
        client.close()


def chat(http: httpx.Client, session: str, **headers: str) -> httpx.Response:
    return http.post("/v1/chat/completions", headers={"x-session-id": session, **headers},
                     json={"model": "tiny-chat", "max_tokens": 3, "temperature": 0,
                           "messages": [{"role": "user", "content": "What color is the sky?"}]})


def loaded(policy_url: str) -> set[str]:
    models = httpx.get(f"{policy_url}/v1/models", timeout=10).json()["data"]
    return {m["id"] for m in models if m.get("parent")}


def settle() -> None:
    time.sleep(0.4)  # proxies reload the routing table every 0.1 s here


def test_gate_canary_promote_rollback_through_the_proxy(stack: dict[str, Any], tiny_model_path: Path,
                                                        tmp_path: Path) -> None:
    control, http, settings = stack["control"], stack["http"], stack["settings"]
    reg = control.registry
    bad = publish_adapter(reg, make_adapter(tiny_model_path, tmp_path / "bad", scramble=0.5), "builtin:tiny-chat")
    base, tok = load_model(tiny_model_path, device="cpu")
    assert not run_gate_for_version(bad, settings, control=control, base=base, tokenizer=tok).passed
    settle()
    assert loaded(stack["policy_url"]) == set()
    pinned = chat(http, "s-pin", **{"x-nextstate-policy": bad})
    assert pinned.status_code == 404 and pinned.json()["error"]["code"] == "model_not_found"
    assert chat(http, "s-opt", **{"x-nextstate-canary": "1"}).headers["x-nextstate-arm"] == "base"

    good = publish_adapter(reg, make_adapter(tiny_model_path, tmp_path / "good"), "builtin:tiny-chat")
    verdict = run_gate_for_version(good, settings, control=control, base=base, tokenizer=tok)
    assert verdict.passed, verdict.reasons
    assert loaded(stack["policy_url"]) == {f"tiny-chat@{good}"}
    control.step_canary(0.5, 2, "operator", "wider slice for the test")
    settle()

    opted = chat(http, "s-opt", **{"x-nextstate-canary": "1"})
    assert opted.status_code == 200, opted.text
    assert (opted.headers["x-nextstate-arm"], opted.headers["x-nextstate-version"]) == ("canary", good)
    assert chat(http, "s-out", **{"x-nextstate-canary": "0"}).headers["x-nextstate-arm"] == "base"
    arms: dict[str, set[str]] = {}
    for _ in range(2):
        for i in range(12):
            session = f"session-{i}"
            response = chat(http, session)
            assert response.status_code == 200, response.text
            arms.setdefault(session, set()).add(response.headers["x-nextstate-arm"])
    assert all(len(a) == 1 for a in arms.values())  # a session never switches arm
    assert {s: a.pop() for s, a in arms.items()} == {
        s: "canary" if slice_position(s) < 0.5 else "base" for s in arms}

    assert http.post(f"/admin/versions/{good}/promote").status_code == 401
    auth = {"authorization": f"Bearer {TOKEN}"}
    promoted = http.post(f"/admin/versions/{good}/promote", headers=auth, json={"reason": "looks good"})
    assert promoted.status_code == 200 and promoted.json()["aliases"]["stable"] == good
    settle()
    response = chat(http, "session-0")
    assert (response.headers["x-nextstate-arm"], response.headers["x-nextstate-version"]) == ("stable", good)

    rolled = http.post("/admin/rollback", headers=auth, json={"reason": "user reports"})
    assert rolled.status_code == 200 and rolled.json()["rolled_back"] == good
    control.sync()  # drain delay 0: the unreferenced adapter is unloaded on the next reconcile
    assert loaded(stack["policy_url"]) == set()
    settle()
    assert chat(http, "session-0").headers["x-nextstate-arm"] == "base"
    kinds = [(e.kind, e.version, e.actor) for e in reg.history()]
    for step in [("gate_verdict", bad, "gate"), ("gate_verdict", good, "gate"), ("canary_started", good, "gate"),
                 ("canary_step", good, "operator"), ("promoted", good, "operator"), ("rolled_back", good, "operator")]:
        assert step in kinds


def test_live_rewards_promote_then_roll_back_on_the_embedded_server(stack: dict[str, Any], tiny_model_path: Path,
                                                                     tmp_path: Path) -> None:
    control, settings = stack["control"], stack["settings"]
    reg = control.registry
    policy = CanaryPolicy(steps=(0.05, 0.25, 0.5), step_samples=20, min_samples=60, margin=0.25)
    controller = Controller(control, policy)
    base, tok = load_model(tiny_model_path, device="cpu")
    adapter = make_adapter(tiny_model_path, tmp_path / "a")
    rng = random.Random(5)

    def gate_and_run(canary_rate: float, stable_rate: float) -> tuple[str, str]:
        version = publish_adapter(reg, adapter, "builtin:tiny-chat", parent=reg.alias("stable"))  # trained on stable
        assert run_gate_for_version(version, settings, control=control, base=base, tokenizer=tok).passed
        assert f"tiny-chat@{version}" in loaded(stack["policy_url"])
        stable = reg.alias("stable")
        for _ in range(60):
            add_samples(control, version, 5, canary_rate, rng)
            add_samples(control, stable, 20, stable_rate, rng)
            decision = controller.tick()
            assert decision is not None
            if decision.action in ("promote", "rollback", "reject"):
                return version, decision.action
        raise AssertionError("no decision")

    first, action = gate_and_run(0.8, 0.8)
    assert action == "promote" and reg.alias("stable") == first
    assert loaded(stack["policy_url"]) == {f"tiny-chat@{first}"}  # stable is loaded, hence loadable

    second, action = gate_and_run(0.1, 0.9)
    assert action == "rollback" and reg.alias("stable") == first
    controller.tick()  # drain delay 0: the rolled-back adapter goes on the next reconcile
    assert loaded(stack["policy_url"]) == {f"tiny-chat@{first}"}
    settle()
    reply = chat(stack["http"], "after-rollback")
    assert reply.status_code == 200 and reply.headers["x-nextstate-version"] == first
    decisions = [e for e in reg.history() if e.actor == "controller" and e.kind in ("promoted", "rolled_back")]
    assert [(e.kind, e.version) for e in decisions] == [("promoted", first), ("rolled_back", second)]
    assert all("interval" in e.evidence and "canary" in e.evidence for e in decisions)
