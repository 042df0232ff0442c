"""The admin app over real HTTP (uvicorn on loopback), on real Redis and two policy-server replicas."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.actions import Control
from registry.admin import create_admin_app
from registry.routing import read_table
from registry.settings import RegistrySettings
from tests.registry.conftest import PublishFn
from tests.support.servers import serve_in_thread

TOKEN = "s3cret"


@pytest.fixture
def admin(control: Control) -> Iterator[httpx.Client]:
    with serve_in_thread(create_admin_app(control, token=TOKEN)) as url, \
            httpx.Client(base_url=url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
        yield client


def test_token_is_required(admin: httpx.Client) -> None:
    for headers in ({"authorization": ""}, {"authorization": "Bearer wrong"}):
        response = admin.get("/versions", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_admin_token"
    assert admin.get("/versions").status_code == 200


def test_actions_and_errors(admin: httpx.Client, control: Control, publish: PublishFn, replicas: list[Any]) -> None:
    v1, v2, v3 = publish(gate=True), publish(gate=True), publish(gate=False)
    assert admin.post(f"/versions/{v1}/promote", json={"reason": "first"}).json()["aliases"]["stable"] == v1
    body = admin.post(f"/versions/{v2}/canary", json={"fraction": 0.2}).json()
    assert body["routing"]["canary"] == "v2" and body["routing"]["canary_fraction"] == 0.2

    refused = admin.post(f"/versions/{v3}/promote")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "illegal_transition"
    assert admin.get("/versions/v99").status_code == 404
    assert admin.post("/versions/v99/promote").json()["error"]["type"] == "not_found_error"
    bad = admin.post(f"/versions/{v2}/canary", content=b"[1]")
    assert bad.status_code == 400 and set(bad.json()["error"]) == {"message", "type", "param", "code"}

    listing = admin.get("/versions").json()
    assert [v["state"] for v in listing["data"]] == ["promoted", "canary", "gated_fail"]
    assert listing["canary"]["fraction"] == 0.2
    assert admin.get(f"/versions/{v1}").json()["manifest"]["version"] == v1

    assert admin.post("/rollback", json={"reason": "looks off"}).json()["rolled_back"] == v2
    assert admin.post(f"/versions/{v1}/pin").json()["pinned"] is True and control.registry.frozen()
    assert admin.post("/release").json()["pinned"] is False
    events = admin.get("/history", params={"version": v2}).json()["data"]
    assert [e["kind"] for e in events][-1] == "rolled_back" and events[-1]["reason"] == "looks off"
    assert all(e["actor"] == "operator" for e in events if e["kind"] in ("rolled_back", "canary_started"))
    assert read_table(control.registry.redis).canary is None  # type: ignore[union-attr]


def test_built_from_settings_without_lifespan(redis_url: str, tmp_path: Path, publish: PublishFn,
                                              control: Control) -> None:
    """Mounted on the proxy the app gets no lifespan: it opens its clients on first use."""
    settings = RegistrySettings(redis_url=redis_url, home=tmp_path / "home", adapters_dir=control.registry.root,
                                base_model="tiny-chat", policy_urls=control.publisher.urls)
    publish(gate=True)
    app = create_admin_app(settings)
    import asyncio

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as client:
            return await client.post("/versions/v1/canary", content=json.dumps({"fraction": 0.5}))

    response = asyncio.run(call())
    app.state.close()
    assert response.status_code == 200, response.text
    assert response.json()["routing"]["canary_fraction"] == 0.5
