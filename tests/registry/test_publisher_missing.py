"""The publisher and the proxy's 404s: a version found missing upstream is loaded again at once, and an
unload the policy server answers with 404 "cannot be found" is done."""

from __future__ import annotations

from typing import Any

from registry.actions import Control
from registry.records import UPSTREAM_OUTCOMES_KEY
from tests.registry.conftest import PublishFn
from tests.registry.test_actions import loaded


def test_a_version_found_missing_is_reloaded_once_per_new_miss(control: Control, publish: PublishFn,
                                                               replicas: list[Any]) -> None:
    v1 = publish(gate=True)
    control.promote(v1, "operator")
    publisher, redis = control.publisher, control.registry.redis
    assert publisher.reload_missing(control.registry) == []
    replicas[0][0].state.loaded.clear()  # the replica restarted; the proxy's requests to it get 404
    redis.hincrby(UPSTREAM_OUTCOMES_KEY, f"{v1}:error", 2)
    redis.hincrby(UPSTREAM_OUTCOMES_KEY, f"{v1}:missing", 2)
    redis.hincrby(UPSTREAM_OUTCOMES_KEY, "v99:missing", 1)  # a version nothing routes to any more: left alone
    assert publisher.reload_missing(control.registry) == ["tiny-chat@v1"]
    assert loaded(replicas) == [{"tiny-chat@v1"}] * 2
    assert publisher.reload_missing(control.registry) == []  # no new miss since


def test_an_unload_answered_cannot_be_found_is_done(control: Control, publish: PublishFn, replicas: list[Any],
                                                    monkeypatch) -> None:
    v1 = publish(gate=True)
    control.promote(v1, "operator")
    publisher = control.publisher
    app = replicas[0][0]
    app.state.loaded.pop("tiny-chat@v1")  # gone between the listing and the unload (a restart, another actor)
    monkeypatch.setattr(publisher, "loaded", lambda url: {"tiny-chat@v1"})
    publisher.unload("tiny-chat@v1")  # vLLM's 404 "cannot be found" is done, not an error
    assert loaded(replicas) == [set(), set()]
    assert [call for call in app.state.calls if call[0] == "unload"] == [("unload", "tiny-chat@v1")]
