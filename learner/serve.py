"""``python -m learner serve``: the embedded OpenAI-compatible policy server (CPU or CUDA).

It answers every call nextstate makes to vLLM, in vLLM's format: ``/v1/chat/completions`` and
``/v1/completions`` (streamed or not, logprobs, ``return_token_ids``; tool calls parsed out of the
text as vLLM's ``hermes`` parser does, ``learner.serving_tools``), ``/v1/responses`` (text, with
``previous_response_id``, streamed or not; ``learner.serving_responses``), ``/v1/models``, and vLLM's
runtime LoRA API, ``POST /v1/load_lora_adapter`` / ``POST /v1/unload_lora_adapter``; a request picks
an adapter with ``"model": "<lora_name>"``. Generation runs on the engine thread
(``learner.serving_engine``), never on the event loop.

The LoRA endpoints are control plane only: anyone who can reach them can load files from this host
into the served model. Bind the server to a private address and never expose it publicly; clients
reach it through the proxy, which keeps admin routes behind its token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from learner.modeling import BUILTIN_TINY, load_model, render_prompt_ids, resolve_model
from learner.serving_engine import Engine, QueueFull
from learner.serving_generation import Generation, PolicyServer
from learner.serving_http import parse, policy_server, sse
from learner.serving_protocol import (
    ChatRequest,
    CompletionRequest,
    LoadLoRARequest,
    NotFound,
    ServingError,
    UnloadLoRARequest,
    model_card,
    new_id,
    now,
    usage,
)
from learner.serving_responses import responses
from learner.serving_sampling import SamplingDefaults
from learner.serving_settings import ServeSettings
from learner.serving_tools import ToolCallParser, parse_tool_calls, wants_tool_calls
from registry.names import UnsafeName, check_served_name, inside

log = structlog.get_logger(__name__)


def error_response(error: ServingError) -> JSONResponse:
    headers = {"Retry-After": "1"} if error.status == 503 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


# ---- chat ---------------------------------------------------------------------------------------
async def chat_completions(request: Request) -> Response:
    server = policy_server(request)
    req: ChatRequest = await parse(request, ChatRequest)
    model_name, adapter = server.resolve(req.model)
    try:
        prompt_ids = render_prompt_ids(server.tokenizer, req.messages, req.tools)
    except Exception as exc:
        raise ServingError(f"the messages could not be rendered with the chat template: {exc}", param="messages") from exc
    top = (req.top_logprobs or 0) if req.logprobs else None
    generation = server.start(req, prompt_ids, adapter, top)
    if req.stream:
        return StreamingResponse(_chat_stream(server, req, model_name, generation), media_type="text/event-stream")
    text, token_ids, entries, finish = "", [], [], None
    async for piece in generation:
        text += piece.text
        token_ids += piece.token_ids
        entries += piece.logprobs
        finish = piece.finish or finish
    content, calls = parse_tool_calls(text) if wants_tool_calls(req.tools, req.tool_choice) else (text, [])
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": content, "tool_calls": [call.message() for call in calls]},
        "logprobs": {"content": [server.chat_entry(e, req) for e in entries]} if top is not None else None,
        "finish_reason": "tool_calls" if calls else finish,
        "stop_reason": None,
    }
    body: dict[str, Any] = {
        "id": new_id("chatcmpl"), "object": "chat.completion", "created": now(), "model": model_name,
        "choices": [choice], "usage": usage(len(prompt_ids), len(token_ids)),
    }
    if req.return_token_ids:
        choice["token_ids"] = token_ids
        body["prompt_token_ids"] = prompt_ids
    return JSONResponse(body)


async def _chat_stream(server: PolicyServer, req: ChatRequest, model_name: str, generation: Generation) -> AsyncIterator[bytes]:
    base = {"id": new_id("chatcmpl"), "object": "chat.completion.chunk", "created": now(), "model": model_name}
    first: dict[str, Any] = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]}
    if req.return_token_ids:
        first["prompt_token_ids"] = generation.prompt_ids
        first["choices"][0]["token_ids"] = []
    yield sse(first)
    parser = ToolCallParser() if wants_tool_calls(req.tools, req.tool_choice) else None

    def choice(piece: Any) -> dict[str, Any]:
        # with tools: the content outside the calls, and each call whole once its closing tag is read
        text, calls = parser.read(piece.text, bool(piece.finish)) if parser is not None else (piece.text, [])
        delta: dict[str, Any] = {"content": text} if text or not piece.finish else {}
        if calls:
            first_index = len(parser.calls) - len(calls) if parser is not None else 0
            delta["tool_calls"] = [call.delta(first_index + i) for i, call in enumerate(calls)]
        called = parser is not None and bool(parser.calls)
        entry: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "logprobs": {"content": [server.chat_entry(e, req) for e in piece.logprobs]} if req.logprobs else None,
            "finish_reason": "tool_calls" if piece.finish and called else piece.finish,
        }
        if req.return_token_ids:
            entry["token_ids"] = piece.token_ids
        return entry

    async for event in _pieces_as_sse(req, base, generation, choice):
        yield event


async def _pieces_as_sse(req: ChatRequest | CompletionRequest, base: dict[str, Any], generation: Generation,
                         choice: Any) -> AsyncIterator[bytes]:
    """One chunk per generated piece, an error event if generation fails, the usage chunk, ``[DONE]``."""
    produced = 0
    try:
        async for piece in generation:
            produced += len(piece.token_ids)
            yield sse({**base, "choices": [choice(piece)]})
    except ServingError as exc:
        yield sse(exc.body())
    finally:
        generation.close()
    if req.include_usage():
        yield sse({**base, "choices": [], "usage": usage(len(generation.prompt_ids), produced)})
    yield b"data: [DONE]\n\n"


# ---- completions --------------------------------------------------------------------------------
async def completions(request: Request) -> Response:
    server = policy_server(request)
    req: CompletionRequest = await parse(request, CompletionRequest)
    model_name, adapter = server.resolve(req.model)
    prompt = req.prompt[0] if isinstance(req.prompt, list) and isinstance(req.prompt[0], str) else req.prompt
    prompt_ids = list(prompt) if isinstance(prompt, list) else server.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    generation = server.start(req, prompt_ids, adapter, req.logprobs)
    if req.stream:
        return StreamingResponse(_completion_stream(server, req, model_name, generation), media_type="text/event-stream")
    text, token_ids, entries, finish = "", [], [], None
    async for piece in generation:
        text += piece.text
        token_ids += piece.token_ids
        entries += piece.logprobs
        finish = piece.finish or finish
    choice: dict[str, Any] = {
        "index": 0, "text": text, "finish_reason": finish, "stop_reason": None,
        "logprobs": server.legacy_logprobs(entries, req) if req.logprobs is not None else None,
    }
    if req.return_token_ids:
        choice["prompt_token_ids"], choice["token_ids"] = prompt_ids, token_ids
    return JSONResponse({
        "id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": model_name,
        "choices": [choice], "usage": usage(len(prompt_ids), len(token_ids)),
    })


async def _completion_stream(server: PolicyServer, req: CompletionRequest, model_name: str, generation: Generation) -> AsyncIterator[bytes]:
    base = {"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": model_name}
    sent_prompt = False

    def choice(piece: Any) -> dict[str, Any]:
        nonlocal sent_prompt
        entry: dict[str, Any] = {
            "index": 0, "text": piece.text, "finish_reason": piece.finish, "stop_reason": None,
            "logprobs": server.legacy_logprobs(piece.logprobs, req) if req.logprobs is not None else None,
        }
        if req.return_token_ids:
            entry["token_ids"] = piece.token_ids
            if not sent_prompt:  # vLLM sends the prompt ids once, on the first chunk
                entry["prompt_token_ids"] = generation.prompt_ids
        sent_prompt = True
        return entry

    async for event in _pieces_as_sse(req, base, generation, choice):
        yield event


# ---- models, adapters, health -------------------------------------------------------------------
async def list_models(request: Request) -> Response:
    server = policy_server(request)
    cards = [model_card(server.model_name, server.model_root, None, server.created, server.max_model_len)]
    for name, (path, created) in sorted(server.adapters.items()):
        cards.append(model_card(name, str(path), server.model_name, created, server.max_model_len))
    return JSONResponse({"object": "list", "data": cards})


async def load_lora_adapter(request: Request) -> Response:
    server = policy_server(request)
    req: LoadLoRARequest = await parse(request, LoadLoRARequest)
    if not req.lora_name or not req.lora_path:
        raise ServingError("Both 'lora_name' and 'lora_path' must be provided.", type_="InvalidUserInput")
    try:  # only a registry version, never a path elsewhere on the machine (a relative one is under the store)
        name = check_served_name(req.lora_name)
        path = inside(request.app.state.adapters_root, request.app.state.adapters_root / req.lora_path)
    except UnsafeName as exc:
        raise ServingError(str(exc), type_="InvalidUserInput") from exc
    await server.load_adapter(name, path)
    return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")


async def unload_lora_adapter(request: Request) -> Response:
    server = policy_server(request)
    req: UnloadLoRARequest = await parse(request, UnloadLoRARequest)
    if not req.lora_name:
        raise ServingError("'lora_name' needs to be provided to unload a LoRA adapter.", type_="InvalidUserInput")
    await server.unload_adapter(req.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")


async def healthz(request: Request) -> Response:
    server = policy_server(request)
    return JSONResponse({"status": "ok", "model": server.model_name, **server.engine.stats()})


async def _serving_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServingError)
    return error_response(exc)


async def _queue_full(request: Request, exc: Exception) -> Response:
    return error_response(ServingError(str(exc), 503, "ServiceUnavailableError"))


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(NotFound(f"{request.url.path} not found"))


async def _internal(request: Request, exc: Exception) -> Response:
    log.exception("request_failed", path=request.url.path)
    return error_response(ServingError(f"internal error: {exc}", 500, "InternalServerError"))


def end_of_turn_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end an assistant turn: the generation config's EOS ids and the tokenizer's EOS."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    return {i for i in ids if isinstance(i, int)}


def create_app(settings: ServeSettings, model_path: Path | None = None) -> Starlette:
    """App factory; the lifespan loads the model (``model_path`` or the resolved ``base_model``)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        path = model_path or await asyncio.to_thread(resolve_model, settings.base_model, settings.home_dir())
        model, tokenizer = await asyncio.to_thread(load_model, path, settings.device, settings.dtype)
        engine = Engine(model, max_num_seqs=settings.max_num_seqs, max_queue=settings.max_queue, max_loras=settings.max_loras).start()
        # a built-in model is served under its name without the prefix, as the registry names its versions
        name = settings.served_model_name or settings.base_model.removeprefix("builtin:")
        app.state.server = PolicyServer(
            engine=engine, tokenizer=tokenizer, model_name=name, aliases={settings.base_model},
            model_root=str(path), max_model_len=settings.max_model_len or int(getattr(model.config, "max_position_embeddings", 2048)),
            default_max_tokens=settings.default_max_tokens, max_loras=settings.max_loras,
            stop_ids=end_of_turn_ids(model, tokenizer),
            sampling_defaults=SamplingDefaults.from_generation_config(getattr(model, "generation_config", None)),
        )
        app.state.responses = OrderedDict()  # stored responses, by id (see ``responses``)
        log.info("policy_server_ready", model=name, path=str(path), device=str(engine.device))
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/responses", responses, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/load_lora_adapter", load_lora_adapter, methods=["POST"]),
            Route("/v1/unload_lora_adapter", unload_lora_adapter, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/health", healthz, methods=["GET"]),
        ],
        exception_handlers={ServingError: _serving_error, QueueFull: _queue_full, 404: _not_found, Exception: _internal},
        lifespan=lifespan,
    )
    app.state.adapters_root = settings.adapters_path()
    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from proxy.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m learner serve", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="overrides NEXTSTATE_BASE_MODEL")
    parser.add_argument("--host", help="overrides NEXTSTATE_SERVE_HOST")
    parser.add_argument("--port", type=int, help="overrides NEXTSTATE_SERVE_PORT")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"base_model": args.model, "serve_host": args.host, "serve_port": args.port}.items() if v}
    settings = ServeSettings(**overrides)
    configure_logging(settings.log_level, settings.log_json)
    threads = settings.torch_threads or (1 if settings.base_model == BUILTIN_TINY else None)
    if threads:  # process-wide, so only here in the entry point, never in the app factory
        import torch

        torch.set_num_threads(threads)
    started = time.monotonic()
    uvicorn.run(create_app(settings), host=settings.serve_host, port=settings.serve_port, log_level="warning")
    log.info("policy_server_stopped", seconds=round(time.monotonic() - started, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
