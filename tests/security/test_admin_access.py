"""Every admin route and the dashboard on the proxy's public port: closed without the admin token,
absent when no token is set, and a client key is not an admin token."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import httpx

from registry.admin import create_admin_app
from registry.dashboard import dashboard_for
from registry.settings import RegistrySettings
from tests.security.conftest import SUITE
from tests.support import figures

TOKEN, CLIENT_KEY = "admin-s3cret-token", "sk-client-0123456789"
ADMIN_ROUTES = [
    ("GET", "/admin/versions"), ("GET", "/admin/versions/v1"), ("POST", "/admin/versions/v1/promote"),
    ("POST", "/admin/versions/v1/reject"), ("POST", "/admin/versions/v1/canary"), ("POST", "/admin/versions/v1/pin"),
    ("POST", "/admin/abort"), ("POST", "/admin/rollback"), ("POST", "/admin/release"), ("GET", "/admin/history"),
    ("GET", "/admin/routing"),
]
DASHBOARD_ROUTES = [("GET", f"/dashboard/{path}") for path in (
    "", "api/summary", "api/rewards", "api/canary", "api/timeline", "api/queues", "api/samples", "static/dashboard.js",
)]
WRONG = [
    {}, {"authorization": "Bearer"}, {"authorization": "Bearer wrong"}, {"authorization": f"Bearer {TOKEN}x"},
    {"authorization": f"Bearer {TOKEN[:-1]}"}, {"authorization": TOKEN}, {"authorization": f"Token {TOKEN}"},
    {"authorization": f"Bearer {CLIENT_KEY}"}, {"x-api-key": TOKEN}, {"cookie": f"token={TOKEN}"},
    {"authorization": "Basic " + base64.b64encode(b"admin:wrong").decode()},
    {"authorization": "Basic " + base64.b64encode(TOKEN.encode()).decode()},  # no user:password form
    {"authorization": "Basic !!!"},
]


def _mounts(tmp_path: Path, redis_url: str) -> list[tuple[str, object]]:
    registry = RegistrySettings(home=tmp_path / "registry", redis_url=redis_url)
    return [("/admin", create_admin_app(registry)), ("/dashboard", dashboard_for(registry))]


def test_every_admin_route_needs_the_token(start_proxy: Callable[..., str], tmp_path: Path, redis_url: str) -> None:
    url = start_proxy(mounts=_mounts(tmp_path, redis_url), admin_token=TOKEN, api_keys=CLIENT_KEY)
    got_in = 0
    for method, path in ADMIN_ROUTES + DASHBOARD_ROUTES:
        for headers in WRONG:
            response = httpx.request(method, url + path, headers=headers, json={}, timeout=10)
            got_in += response.status_code != 401
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json()["error"]["code"] == "invalid_admin_token"
    figures.add(SUITE, "unauthorised requests that got in", got_in)

    for headers in ({"authorization": f"Bearer {TOKEN}"}, {"authorization": f"bearer {TOKEN}"}):
        assert httpx.get(url + "/admin/versions", headers=headers, timeout=30).status_code == 200
    basic = httpx.get(url + "/dashboard/api/summary", auth=("anyone", TOKEN), timeout=30)
    assert basic.status_code == 200, basic.text


def test_admin_routes_are_absent_without_a_token(start_proxy: Callable[..., str], tmp_path: Path,
                                                 redis_url: str) -> None:
    url = start_proxy(mounts=_mounts(tmp_path, redis_url), admin_token=None)
    got_in = 0
    for method, path in ADMIN_ROUTES + DASHBOARD_ROUTES:
        for headers in ({}, {"authorization": "Bearer "}, {"authorization": "Bearer None"}):
            response = httpx.request(method, url + path, headers={k: v.strip() for k, v in headers.items()},
                                     json={}, timeout=10)
            got_in += response.status_code != 404
            assert response.status_code == 404, (method, path, response.text)
    figures.add(SUITE, "unauthorised requests that got in", got_in)
    # the upstream's runtime LoRA endpoints are not reachable through the public port either
    for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/load_lora_adapter", "/v1/LOAD_LORA_ADAPTER"):
        assert httpx.post(url + path, json={"lora_name": "x", "lora_path": "/"}, timeout=10).status_code == 404
