"""Between HTTP and the engine: model-name resolution, adapter registry, and the async stream of pieces.

A ``Generation`` turns engine token events into ``Piece``s: the text that became final, the token
ids and logprobs since the previous piece, and the finish reason on the last one. Token ids are
never dropped: a piece whose text is still held back carries its ids over to the next one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learner.serving_engine import Engine, FailureEvent, Sequence, TokenEvent
from learner.serving_protocol import NotFound, ServingError, chat_logprob_entry, safe_logprob
from learner.serving_sampling import SamplingDefaults, SamplingParams
from learner.serving_text import IncrementalText

# (token id, its logprob, the top alternatives as (id, logprob))
LogprobItem = tuple[int, float, list[tuple[int, float]]]


@dataclass
class Piece:
    text: str
    token_ids: list[int]
    logprobs: list[LogprobItem]
    finish: str | None = None


@dataclass
class Generation:
    """Async iterator over the pieces of one request; cancels the engine sequence when abandoned."""

    prompt_ids: list[int]
    text: IncrementalText
    queue: asyncio.Queue[TokenEvent | FailureEvent]
    sequence: Sequence | None = None
    _ids: list[int] = field(default_factory=list)
    _logprobs: list[LogprobItem] = field(default_factory=list)

    async def __aiter__(self) -> AsyncIterator[Piece]:
        try:
            while True:
                event = await self.queue.get()
                if isinstance(event, FailureEvent):
                    raise ServingError(event.message, 500, "InternalServerError")
                self._ids.append(event.token_id)
                if event.logprob is not None:
                    self._logprobs.append((event.token_id, event.logprob, event.top or []))
                delta = self.text.push(event.token_id)
                finish = "stop" if self.text.stopped else event.finish
                if finish:
                    if not self.text.stopped:
                        delta += self.text.flush()
                    yield self._piece(delta, finish)
                    return
                if delta:
                    yield self._piece(delta, None)
        finally:
            self.close()

    def close(self) -> None:
        """Stop decoding (the client went away); safe to call more than once."""
        if self.sequence is not None:
            self.sequence.cancel()

    def _piece(self, text: str, finish: str | None) -> Piece:
        piece = Piece(text, self._ids, self._logprobs, finish)
        self._ids, self._logprobs = [], []
        return piece


class PolicyServer:
    """Per-app state: the engine, the tokenizer, the served names and the adapter registry."""

    def __init__(
        self, *, engine: Engine, tokenizer: Any, model_name: str, aliases: set[str], model_root: str,
        max_model_len: int, default_max_tokens: int, max_loras: int, stop_ids: set[int],
        sampling_defaults: SamplingDefaults | None = None,
    ) -> None:
        self.engine, self.tokenizer = engine, tokenizer
        self.model_name, self.model_root = model_name, model_root
        self.base_names = {model_name, *aliases}
        self.max_model_len, self.default_max_tokens, self.max_loras = max_model_len, default_max_tokens, max_loras
        self.created = int(time.time())
        self.adapters: dict[str, tuple[Path, int]] = {}  # name -> (path, created)
        self._adapter_lock = asyncio.Lock()
        self._token_text: dict[int, str] = {}
        self.stop_ids = stop_ids  # end-of-turn tokens: generation stops after emitting one
        self.sampling_defaults = sampling_defaults or SamplingDefaults()

    def resolve(self, model: str | None) -> tuple[str, str | None]:
        """(model name to echo, adapter name or None for the base); 404 for an unknown model."""
        if model is None or model in self.base_names:
            return self.model_name, None
        if model in self.adapters:
            return model, model
        raise NotFound(f"The model `{model}` does not exist.", param="model")

    def start(self, req: Any, prompt_ids: list[int], adapter: str | None, top_logprobs: int | None) -> Generation:
        limit = req.token_limit()
        room = self.max_model_len - len(prompt_ids)
        if (limit is not None and len(prompt_ids) + limit > self.max_model_len) or room < 1:
            raise ServingError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{len(prompt_ids) + (limit or 0)} tokens ({len(prompt_ids)} in the messages, {limit or 0} in the "
                "completion). Please reduce the length of the messages or completion.",
                param="messages",
            )
        params = SamplingParams(
            max_tokens=limit or min(self.default_max_tokens, room),
            temperature=self.sampling_defaults.temperature if req.temperature is None else req.temperature,
            top_p=self.sampling_defaults.top_p if req.top_p is None else req.top_p,
            top_k=self.sampling_defaults.top_k if req.top_k is None else req.top_k,
            seed=req.seed,
            top_logprobs=top_logprobs,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            stop_token_ids=frozenset((set() if req.ignore_eos else self.stop_ids) | set(req.stop_token_ids or ())),
        )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TokenEvent | FailureEvent] = asyncio.Queue()
        skip = req.skip_special_tokens
        text = IncrementalText(lambda ids: self.tokenizer.decode(ids, skip_special_tokens=skip), req.stops())
        generation = Generation(list(prompt_ids), text, queue)
        generation.sequence = self.engine.submit(
            list(prompt_ids), params, adapter, lambda event: loop.call_soon_threadsafe(queue.put_nowait, event)
        )
        return generation

    # ---- adapters ----
    async def load_adapter(self, name: str, path: Path) -> None:
        async with self._adapter_lock:
            if name in self.adapters:
                raise ServingError(f"The lora adapter '{name}' has already been loaded.", type_="InvalidUserInput")
            if name in self.base_names:
                raise ServingError(f"The name '{name}' is the base model's.", type_="InvalidUserInput")
            if not (path / "adapter_config.json").is_file():
                raise NotFound(f"No adapter found for {path}", param="lora_path")
            try:
                await asyncio.wrap_future(self.engine.load_adapter(name, path))
            except Exception as exc:
                raise ServingError(f"Loading lora {name} failed: {exc}") from exc
            self.adapters[name] = (path, int(time.time()))

    async def unload_adapter(self, name: str) -> None:
        async with self._adapter_lock:
            if name not in self.adapters:
                raise NotFound(f"The lora adapter '{name}' cannot be found.", param="lora_name")
            del self.adapters[name]  # new requests get 404 at once; running ones finish first
            await asyncio.wrap_future(self.engine.unload_adapter(name))

    # ---- formatting ----
    def token_text(self, token_id: int, as_ids: bool | None = None) -> str:
        if as_ids:
            return f"token_id:{token_id}"
        if token_id not in self._token_text:
            self._token_text[token_id] = self.tokenizer.decode([token_id])
        return self._token_text[token_id]

    def chat_entry(self, item: LogprobItem, req: Any) -> dict[str, Any]:
        as_ids = req.return_tokens_as_token_ids
        token_id, logprob, top = item
        return chat_logprob_entry(
            self.token_text(token_id, as_ids), logprob, [(self.token_text(i, as_ids), lp) for i, lp in top]
        )

    def legacy_logprobs(self, items: list[LogprobItem], req: Any) -> dict[str, Any]:
        """``/v1/completions`` logprobs: tokens, token_logprobs, top_logprobs, text_offset."""
        as_ids = req.return_tokens_as_token_ids
        tokens = [self.token_text(token_id, as_ids) for token_id, _, _ in items]
        offsets, position = [], 0
        for token in tokens:
            offsets.append(position)
            position += len(token)
        return {
            "tokens": tokens,
            "token_logprobs": [safe_logprob(lp) for _, lp, _ in items],
            "top_logprobs": [{self.token_text(i, as_ids): safe_logprob(lp) for i, lp in top} for _, _, top in items],
            "text_offset": offsets,
        }
