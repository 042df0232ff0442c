"""An OpenAI-compatible judge provider that answers from a script (the provider is outside the project)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

Script = Callable[[str], str]


@dataclass
class ScriptedJudge:
    """``script(prompt) -> answer``; answers can be delayed; prompts received are kept."""

    script: Script
    models: list[str] = field(default_factory=lambda: ["tiny-chat", "tiny-chat@v1"])
    delay_s: float = 0.0
    delays: list[float] = field(default_factory=list)
    """Per-request delays consumed in order (then ``delay_s``)."""
    fail_status: int | None = None
    prompts: list[str] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=itertools.count)

    def app(self) -> Starlette:
        async def models(_: Request) -> JSONResponse:
            return JSONResponse({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})

        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            prompt = body["messages"][-1]["content"]
            self.prompts.append(prompt)
            self.requests.append(body)
            delay = self.delays.pop(0) if self.delays else self.delay_s
            if delay:
                await asyncio.sleep(delay)
            if self.fail_status:
                return JSONResponse({"error": {"message": "scripted failure", "type": "server_error",
                                               "param": None, "code": None}}, status_code=self.fail_status)
            answer = self.script(prompt)
            return JSONResponse({
                "id": f"chatcmpl-{next(self._ids)}", "object": "chat.completion", "created": 0,
                "model": body.get("model", "judge"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": answer}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            })

        return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])


def cycle(*answers: str) -> Script:
    """A script answering the PRM prompts with ``answers`` in turn and hint prompts with NO_HINT."""
    it = itertools.cycle(answers)
    return lambda prompt: "NO_HINT" if "[HINT_START]" in prompt else next(it)
