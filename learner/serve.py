"""``python -m learner serve``: the embedded OpenAI-compatible policy server (CPU or CUDA).

It answers every call nextstate makes to vLLM, in vLLM's format: ``/v1/chat/completions`` and
``/v1/completions`` (streamed or not, logprobs, ``return_token_ids``), ``/v1/responses`` (text, with
``previous_response_id``, streamed or not), ``/v1/models``, and vLLM's
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
import itertools
import json
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from learner.modeling import BUILTIN_TINY, load_model, render_prompt_ids, resolve_model
from learner.serving_engine import Engine, QueueFull
from learner.serving_generation import Generation, PolicyServer
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
from learner.serving_settings import ServeSettings
from proxy.items import chat_tools, to_messages

log = structlog.get_logger(__name__)


def error_response(error: ServingError) -> JSONResponse:
    headers = {"Retry-After": "1"} if error.status == 503 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"null")
    except json.JSONDecodeError as exc:
        raise ServingError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ServingError("request body must be a JSON object")
    return body


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    return _validate(model, await _json_object(request))


def _validate(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first.get("loc", ())) or None
        raise ServingError(first.get("msg", str(exc)).removeprefix("Value error, "), param=param) from exc


def _server(request: Request) -> PolicyServer:
    return request.app.state.server  # type: ignore[no-any-return]


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


# ---- chat ---------------------------------------------------------------------------------------
async def chat_completions(request: Request) -> Response:
    server = _server(request)
    req: ChatRequest = await _parse(request, ChatRequest)
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
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": text, "tool_calls": []},
        "logprobs": {"content": [server.chat_entry(e, req) for e in entries]} if top is not None else None,
        "finish_reason": finish,
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
    yield _sse(first)

    def choice(piece: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "index": 0,
            "delta": {"content": piece.text} if piece.text or not piece.finish else {},
            "logprobs": {"content": [server.chat_entry(e, req) for e in piece.logprobs]} if req.logprobs else None,
            "finish_reason": piece.finish,
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
            yield _sse({**base, "choices": [choice(piece)]})
    except ServingError as exc:
        yield _sse(exc.body())
    finally:
        generation.close()
    if req.include_usage():
        yield _sse({**base, "choices": [], "usage": usage(len(generation.prompt_ids), produced)})
    yield b"data: [DONE]\n\n"


# ---- completions --------------------------------------------------------------------------------
async def completions(request: Request) -> Response:
    server = _server(request)
    req: CompletionRequest = await _parse(request, CompletionRequest)
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


# ---- responses ----------------------------------------------------------------------------------
RESPONSES_KEPT = 1024
"""Stored responses a later request can continue by ``previous_response_id`` (the oldest are forgotten)."""


async def responses(request: Request) -> Response:
    """The Responses API (text in, text out) on the chat path: ``instructions``, ``input`` items,
    ``previous_response_id`` naming a response this server stored, streamed as typed events."""
    server = _server(request)
    body = await _json_object(request)
    kept: OrderedDict[str, list[dict[str, Any]]] = request.app.state.responses
    previous = body.get("previous_response_id")
    if previous is not None and previous not in kept:
        raise NotFound(f"Previous response with id '{previous}' not found.", param="previous_response_id")
    try:
        conversation = [*kept.get(previous, []), *to_messages(body.get("input", []))]
    except ValueError as exc:
        raise ServingError(str(exc), param="input") from exc
    instructions = body.get("instructions")
    system = [{"role": "system", "content": instructions}] if isinstance(instructions, str) and instructions else []
    req: ChatRequest = _validate(ChatRequest, {
        "model": body.get("model"), "messages": [*system, *conversation], "tools": chat_tools(body.get("tools")),
        "temperature": body.get("temperature"), "top_p": body.get("top_p"), "max_tokens": body.get("max_output_tokens"),
        "stream": bool(body.get("stream")),
    })
    model_name, adapter = server.resolve(req.model)
    try:
        prompt_ids = render_prompt_ids(server.tokenizer, req.messages, req.tools)
    except Exception as exc:
        raise ServingError(f"the input could not be rendered with the chat template: {exc}", param="input") from exc
    generation = server.start(req, prompt_ids, adapter, None)
    store = body.get("store") is not False
    response: dict[str, Any] = {
        "id": new_id("resp"), "object": "response", "created_at": now(), "status": "in_progress", "model": model_name,
        "instructions": instructions, "previous_response_id": previous, "output": [], "usage": None, "error": None,
        "incomplete_details": None, "tools": body.get("tools") or [], "tool_choice": "auto", "parallel_tool_calls": True,
        "temperature": req.temperature, "top_p": req.top_p, "max_output_tokens": req.max_tokens, "store": store,
        "text": {"format": {"type": "text"}},
    }
    message_id = new_id("msg")

    def finished(text: str, finish: str | None, produced: int) -> dict[str, Any]:
        cut = finish == "length"
        item = {"type": "message", "id": message_id, "status": "incomplete" if cut else "completed",
                "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}
        done = {**response, "status": "incomplete" if cut else "completed", "output": [item],
                "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
                "usage": {"input_tokens": len(prompt_ids), "output_tokens": produced,
                          "total_tokens": len(prompt_ids) + produced, "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}}}
        if store:
            kept[done["id"]] = [*conversation, {"role": "assistant", "content": text}]
            while len(kept) > RESPONSES_KEPT:
                kept.popitem(last=False)
        return done

    if req.stream:
        return StreamingResponse(_response_events(response, message_id, generation, finished),
                                 media_type="text/event-stream")
    text, produced, finish = "", 0, None
    async for piece in generation:
        text, produced, finish = text + piece.text, produced + len(piece.token_ids), piece.finish or finish
    return JSONResponse(finished(text, finish, produced))


async def _response_events(response: dict[str, Any], message_id: str, generation: Generation,
                           finished: Any) -> AsyncIterator[bytes]:
    """The Responses API's stream: lifecycle events around one message's text deltas."""
    sequence = itertools.count()

    def event(kind: str, **fields: Any) -> bytes:
        return f"event: {kind}\n".encode() + _sse({"type": kind, "sequence_number": next(sequence), **fields})

    at = {"item_id": message_id, "output_index": 0, "content_index": 0}
    yield event("response.created", response=response)
    yield event("response.in_progress", response=response)
    yield event("response.output_item.added", output_index=0,
                item={"type": "message", "id": message_id, "status": "in_progress", "role": "assistant", "content": []})
    yield event("response.content_part.added", **at, part={"type": "output_text", "text": "", "annotations": []})
    text, produced, finish = "", 0, None
    try:
        async for piece in generation:
            text, produced, finish = text + piece.text, produced + len(piece.token_ids), piece.finish or finish
            if piece.text:
                yield event("response.output_text.delta", **at, delta=piece.text)
    except ServingError as exc:
        yield event("response.failed", response={**response, "status": "failed",
                                                 "error": {"code": "server_error", "message": exc.message}})
        return
    finally:
        generation.close()
    done = finished(text, finish, produced)
    [item] = done["output"]
    yield event("response.output_text.done", **at, text=text)
    yield event("response.content_part.done", **at, part=item["content"][0])
    yield event("response.output_item.done", output_index=0, item=item)
    yield event("response.incomplete" if done["status"] == "incomplete" else "response.completed", response=done)


# ---- models, adapters, health -------------------------------------------------------------------
async def list_models(request: Request) -> Response:
    server = _server(request)
    cards = [model_card(server.model_name, server.model_root, None, server.created, server.max_model_len)]
    for name, (path, created) in sorted(server.adapters.items()):
        cards.append(model_card(name, str(path), server.model_name, created, server.max_model_len))
    return JSONResponse({"object": "list", "data": cards})


async def load_lora_adapter(request: Request) -> Response:
    server = _server(request)
    req: LoadLoRARequest = await _parse(request, LoadLoRARequest)
    if not req.lora_name or not req.lora_path:
        raise ServingError("Both 'lora_name' and 'lora_path' must be provided.", type_="InvalidUserInput")
    await server.load_adapter(req.lora_name, Path(req.lora_path))
    return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")


async def unload_lora_adapter(request: Request) -> Response:
    server = _server(request)
    req: UnloadLoRARequest = await _parse(request, UnloadLoRARequest)
    if not req.lora_name:
        raise ServingError("'lora_name' needs to be provided to unload a LoRA adapter.", type_="InvalidUserInput")
    await server.unload_adapter(req.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")


async def healthz(request: Request) -> Response:
    server = _server(request)
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
        )
        app.state.responses = OrderedDict()  # stored responses, by id (see ``responses``)
        log.info("policy_server_ready", model=name, path=str(path), device=str(engine.device))
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)

    return Starlette(
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
