"""The registry's admin actions over HTTP: a Starlette app mounted under ``/admin`` on the proxy.

The proxy guards the mount with ``NEXTSTATE_ADMIN_TOKEN``; run on its own, pass ``token`` and the app
checks ``Authorization: Bearer`` itself. Actions are the same ``registry.actions`` the CLI uses, run
in a worker thread (they make blocking Redis and policy-server calls), recorded with actor
``operator``. Errors are OpenAI-shaped: 404 unknown version, 409 refused by the state machine or the
registry, 502 a policy server failed, 401 bad token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack, asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from registry.actions import Control
from registry.errors import IllegalTransition, PolicyServerError, RegistryError, UnknownVersion
from registry.routing import read_table
from registry.settings import RegistrySettings
from registry.wiring import open_control


def error(status: int, message: str, type_: str, code: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status)


def _translate(exc: Exception) -> JSONResponse:
    if isinstance(exc, UnknownVersion):
        return error(404, f"unknown version {exc.args[0]}", "not_found_error", "unknown_version", "version")
    if isinstance(exc, IllegalTransition):
        return error(409, str(exc), "invalid_request_error", "illegal_transition", "version")
    if isinstance(exc, PolicyServerError):
        return error(502, str(exc), "upstream_error", "policy_server_error")
    return error(409, str(exc), "invalid_request_error", "registry_refused")


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


def create_admin_app(deps: RegistrySettings | Control, token: str | None = None) -> Starlette:
    """The admin app; ``deps`` is the process's settings (the lifespan opens Redis and the publisher)
    or a ready ``Control`` (its owner closes it)."""

    expected = hashlib.sha256(token.encode()).digest() if token else None  # compared as digests: length hidden too
    # Opened on first use: a mounted sub-app gets no lifespan events from its parent.
    stack = ExitStack()
    opened: list[Control] = [deps] if isinstance(deps, Control) else []
    guard = threading.Lock()

    def control() -> Control:
        with guard:
            if not opened:
                assert isinstance(deps, RegistrySettings)
                opened.append(open_control(deps, stack))
            return opened[0]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        with stack:
            yield

    def action(fn: Callable[[Control, Request, dict[str, Any]], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            if expected is not None:
                scheme, _, given = request.headers.get("authorization", "").partition(" ")
                digest = hashlib.sha256(given.strip().encode()).digest()
                if scheme.lower() != "bearer" or not hmac.compare_digest(digest, expected):
                    return error(401, "a valid admin token is required", "authentication_error", "invalid_admin_token")
            try:
                body = await _body(request)
            except ValueError as exc:
                return error(400, str(exc), "invalid_request_error", "invalid_body")
            try:
                result = await run_in_threadpool(lambda: fn(control(), request, body))
            except (RegistryError, KeyError) as exc:
                return _translate(exc if isinstance(exc, RegistryError) else UnknownVersion(*exc.args))
            return JSONResponse(result)

        return endpoint

    def reason(body: dict[str, Any], default: str) -> str:
        return str(body.get("reason") or default)

    def listing(c: Control, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        canary = c.registry.canary_state()
        return {"object": "list", "data": [i.model_dump(mode="json") for i in c.registry.versions()],
                "aliases": c.registry.aliases(), "canary": canary.model_dump(mode="json") if canary else None,
                "pinned": c.registry.frozen()}

    def show(c: Control, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        version = request.path_params["version"]
        return {"info": c.registry.get(version).model_dump(mode="json"),
                "manifest": c.registry.manifest(version).model_dump(mode="json")}

    def status(c: Control) -> dict[str, Any]:
        table = read_table(c.registry.redis)
        return {"aliases": c.registry.aliases(), "routing": table.model_dump(mode="json") if table else None}

    def promote(c: Control, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        c.promote(request.path_params["version"], "operator", reason(body, "promoted by operator"))
        return status(c)

    def reject(c: Control, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        c.reject(request.path_params.get("version"), "operator", reason(body, "rejected by operator"))
        return status(c)

    def canary(c: Control, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        fraction = body.get("fraction", 0.05)
        if not isinstance(fraction, int | float) or not 0 < fraction <= 1:
            raise RegistryError("fraction must be a number in (0, 1]")
        c.start_canary(request.path_params["version"], float(fraction), "operator", reason(body, "started by operator"))
        return status(c)

    def rollback(c: Control, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        return {"rolled_back": c.rollback("operator", reason(body, "rolled back by operator")), **status(c)}

    def pin(c: Control, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        c.pin(request.path_params["version"], "operator", reason(body, "pinned by operator"))
        return {"pinned": True, **status(c)}

    def release(c: Control, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        c.release("operator", reason(body, ""))
        return {"pinned": False, **status(c)}

    def history(c: Control, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        version = request.query_params.get("version")
        events = [e for e in c.registry.history() if version is None or e.version == version]
        return {"object": "list", "data": [e.model_dump(mode="json") for e in events]}

    def routing(c: Control, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        return status(c)

    routes = [
        Route("/versions", action(listing), methods=["GET"]),
        Route("/versions/{version}", action(show), methods=["GET"]),
        Route("/versions/{version}/promote", action(promote), methods=["POST"]),
        Route("/versions/{version}/reject", action(reject), methods=["POST"]),
        Route("/versions/{version}/canary", action(canary), methods=["POST"]),
        Route("/versions/{version}/pin", action(pin), methods=["POST"]),
        Route("/abort", action(reject), methods=["POST"]),
        Route("/rollback", action(rollback), methods=["POST"]),
        Route("/release", action(release), methods=["POST"]),
        Route("/history", action(history), methods=["GET"]),
        Route("/routing", action(routing), methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.close = stack.close  # for an owner that mounts the app (no lifespan) and shuts down itself
    return app
