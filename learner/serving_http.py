"""Request reading and event framing shared by the policy server's endpoints."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from learner.serving_generation import PolicyServer
from learner.serving_protocol import ServingError


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400."""
    try:
        body = json.loads(await request.body() or b"null")
    except json.JSONDecodeError as exc:
        raise ServingError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ServingError("request body must be a JSON object")
    return body


async def parse(request: Request, model: type[BaseModel]) -> Any:
    return validate(model, await json_object(request))


def validate(model: type[BaseModel], body: dict[str, Any]) -> Any:
    """``body`` as ``model``; the first validation error as a 400 naming its parameter."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first.get("loc", ())) or None
        raise ServingError(first.get("msg", str(exc)).removeprefix("Value error, "), param=param) from exc


def policy_server(request: Request) -> PolicyServer:
    return request.app.state.server  # type: ignore[no-any-return]


def sse(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``payload``."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
