"""A stand-in for vLLM's runtime LoRA API (an external server), served on loopback in tests.

It keeps what is loaded, refuses a second load of the same name (as vLLM does) and records every call
so tests can check ordering. Loading requires a directory with an ``adapter_config.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route


def create_fake_policy(base: str = "tiny-chat") -> Starlette:
    loaded: dict[str, str] = {}
    calls: list[tuple[str, str]] = []

    async def models(request: Request) -> JSONResponse:
        data: list[dict[str, Any]] = [{"id": base, "object": "model", "parent": None}]
        data += [{"id": name, "object": "model", "parent": base, "root": path} for name, path in loaded.items()]
        return JSONResponse({"object": "list", "data": data})

    async def load(request: Request) -> PlainTextResponse | JSONResponse:
        body = await request.json()
        name, path = body["lora_name"], body["lora_path"]
        calls.append(("load", name))
        if name in loaded:
            return JSONResponse({"error": {"message": f"The lora adapter '{name}' has already been loaded.",
                                           "type": "InvalidUserInput", "param": None, "code": 400}}, 400)
        if not (Path(path) / "adapter_config.json").is_file():
            return JSONResponse({"error": {"message": f"no adapter at {path}", "type": "InvalidUserInput",
                                           "param": None, "code": 400}}, 400)
        loaded[name] = path
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(request: Request) -> PlainTextResponse | JSONResponse:
        body = await request.json()
        name = body["lora_name"]
        calls.append(("unload", name))
        if loaded.pop(name, None) is None:
            return JSONResponse({"error": {"message": f"The lora adapter '{name}' cannot be found.",
                                           "type": "NotFoundError", "param": None, "code": 404}}, 404)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    app = Starlette(routes=[
        Route("/v1/models", models),
        Route("/v1/load_lora_adapter", load, methods=["POST"]),
        Route("/v1/unload_lora_adapter", unload, methods=["POST"]),
    ])
    app.state.loaded = loaded
    app.state.calls = calls
    return app
