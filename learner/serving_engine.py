"""The generation engine: one worker thread owns the model, decodes requests token by token, loads adapters.

Requests wait in a bounded queue and up to ``max_num_seqs`` are decoded at once, one token each per
round: sequences of the same adapter share one batched forward on one left-padded, masked KV cache
that is kept from round to round and rebuilt only when the set of sequences changes (rebuilding it
every token copied the whole cache several times per token), so the active LoRA switches at most once
per adapter per round; prompts prefill alone.
Adapter loads and unloads run on the same thread between two tokens, so they never race a forward
pass and never interrupt a request in flight; an unloaded adapter is only removed once its last request has finished. At most ``max_loras`` adapters are
materialised at once (``learner.serving_adapters``).
"""

from __future__ import annotations

import concurrent.futures
import inspect
import random
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from learner.serving_adapters import LoraSlots
from learner.serving_sampling import SamplingParams, choose_token

log = structlog.get_logger(__name__)


class QueueFull(Exception):
    """The waiting queue is at its limit; the client should retry later."""


class AdapterError(Exception):
    """An adapter could not be loaded (bad files, incompatible shapes)."""


@dataclass(frozen=True)
class TokenEvent:
    """One generated token; ``finish`` is set on the last one ("stop" or "length")."""

    token_id: int
    logprob: float | None
    top: list[tuple[int, float]] | None
    finish: str | None


@dataclass(frozen=True)
class FailureEvent:
    message: str


Sink = Callable[[TokenEvent | FailureEvent], None]


@dataclass(eq=False)
class Sequence:
    """A request being decoded; ``cancel()`` may be called from any thread."""

    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None
    sink: Sink
    generator: torch.Generator | None = None
    cache: Any = None  # its own KV cache, while it is decoded alone
    batch: Batch | None = None  # the shared batch it is a row of, while it is decoded batched
    generated: list[int] = field(default_factory=list)
    counts: Counter[int] = field(default_factory=Counter)
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(eq=False)
class Batch:
    """Sequences of one adapter decoded together: one KV cache, row ``i`` is ``members[i]``, left-padded."""

    members: list[Sequence]
    cache: Any
    pads: list[int]  # padding columns at the left of each row

    def row_cache(self, row: int) -> DynamicCache:
        """The row's own cache (padding dropped): a sequence that leaves the batch goes on with it."""
        own, pad = DynamicCache(), self.pads[row]
        for layer, cached in enumerate(self.cache.layers):
            own.update(cached.keys[row : row + 1, :, pad:], cached.values[row : row + 1, :, pad:], layer)
        return own


class Engine:
    """Owns the model on one thread; thread-safe ``submit``, ``load_adapter`` and ``unload_adapter``."""

    def __init__(self, model: Any, *, max_num_seqs: int = 8, max_queue: int = 64, max_loras: int = 4) -> None:
        # the key-value cache argument and output field: ``cache`` in newer transformers, ``past_key_values`` before
        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.device = next(model.parameters()).device
        self.max_num_seqs, self.max_queue, self.max_loras = max_num_seqs, max_queue, max_loras
        self.registered: dict[str, Path] = {}  # every adapter the API knows (name -> path)
        self._slots = LoraSlots(model, max_loras)  # the adapters in the model
        self._draining: set[str] = set()  # unloaded from the API, removed once idle
        self._waiting: deque[Sequence] = deque()
        self._active: list[Sequence] = []
        self._jobs: list[Callable[[], None]] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._batching = True  # decode same-adapter sequences in one forward (off after a failure)
        self.batched_steps = 0  # forwards that decoded more than one sequence
        self._thread = threading.Thread(target=self._run, name="nextstate-engine", daemon=True)

    # ---- thread-safe API -------------------------------------------------------------------
    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def submit(self, prompt_ids: list[int], params: SamplingParams, adapter: str | None, sink: Sink) -> Sequence:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(params.seed if params.seed is not None else random.getrandbits(63))
        seq = Sequence(prompt_ids, params, adapter, sink, generator)
        with self._cond:
            if len(self._waiting) >= self.max_queue and len(self._active) >= self.max_num_seqs:
                raise QueueFull(f"the request queue is full ({self.max_queue} waiting)")
            self._waiting.append(seq)
            self._cond.notify_all()
        return seq

    def load_adapter(self, name: str, path: Path) -> concurrent.futures.Future[None]:
        """Register and materialise an adapter on the engine thread; the future fails with AdapterError."""
        return self._call(lambda: self._load(name, path))

    def unload_adapter(self, name: str) -> concurrent.futures.Future[None]:
        return self._call(lambda: self._unload(name))

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "waiting": len(self._waiting),
                "running": len(self._active),
                "adapters": sorted(self.registered),
                "materialised": self._slots.names,
                "draining": sorted(self._draining),
                "batched_steps": self.batched_steps,
            }

    def _call(self, work: Callable[[], None]) -> concurrent.futures.Future[None]:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()

        def job() -> None:
            try:
                work()
            except Exception as exc:
                future.set_exception(exc)
            else:
                future.set_result(None)

        with self._cond:
            self._jobs.append(job)
            self._cond.notify_all()
        return future

    # ---- engine thread ---------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                while not (self._jobs or self._waiting or self._active or self._stopping):
                    self._cond.wait()
                if self._stopping:
                    break
                jobs, self._jobs = self._jobs, []
            for job in jobs:
                job()
            try:
                self._admit()
                groups: dict[str | None, list[Sequence]] = {}
                for seq in list(self._active):
                    groups.setdefault(seq.adapter, []).append(seq)
                for adapter, seqs in groups.items():
                    self._step_group(adapter, seqs)
                self._remove_drained()
            except Exception:  # never let the engine thread die: fail what is running, keep serving
                log.exception("engine_round_failed")
                for seq in self._active:
                    seq.sink(FailureEvent("internal engine error"))
                self._active.clear()
        with self._cond:
            leftovers = [*self._active, *self._waiting]
        for seq in leftovers:
            seq.sink(FailureEvent("the server is shutting down"))

    def _admit(self) -> None:
        with self._cond:
            candidates = list(self._waiting)
        for seq in candidates:
            if len(self._active) >= self.max_num_seqs:
                break
            if seq.cancelled or (seq.adapter is not None and seq.adapter not in self.registered):
                with self._cond:
                    self._waiting.remove(seq)
                if not seq.cancelled:
                    seq.sink(FailureEvent(f"adapter {seq.adapter!r} is not loaded"))
                continue
            if seq.adapter is not None and not self._ensure_materialised(seq.adapter):
                continue  # every adapter slot is busy: wait for one to free up
            with self._cond:
                self._waiting.remove(seq)
            self._active.append(seq)

    def _step_group(self, adapter: str | None, seqs: list[Sequence]) -> None:
        """One token for every sequence of one adapter: prefills alone, decodes batched."""
        for seq in [s for s in seqs if s.cancelled]:
            self._active.remove(seq)
        warm = [s for s in seqs if not s.cancelled and (s.cache is not None or s.batch is not None)]
        for seq in [s for s in seqs if not s.cancelled and s.cache is None and s.batch is None]:
            self._step(seq)
        if len(warm) > 1 and self._batching:
            try:
                self._batched_step(adapter, warm)
                return
            except Exception:  # an unusual cache layout: decode one by one from now on
                log.exception("batched_decoding_disabled")
                self._batching = False
        for seq in warm:
            self._step(seq)

    def _step(self, seq: Sequence) -> None:
        try:
            if seq.batch is not None:  # decoded alone from now on: it takes its row of the batch along
                seq.cache, seq.batch = seq.batch.row_cache(seq.batch.members.index(seq)), None
            model = self._slots.model_for(seq.adapter)
            ids = seq.prompt_ids if seq.cache is None else seq.generated[-1:]
            out = model(input_ids=torch.tensor([ids], device=self.device), use_cache=True, logits_to_keep=1,
                        **{self._cache_kw: seq.cache})
            self._advance(seq, out.logits[0, -1], getattr(out, self._cache_kw))
        except Exception as exc:
            self._fail(seq, exc)

    def _batched_step(self, adapter: str | None, seqs: list[Sequence]) -> None:
        """Decode one token for several sequences in one forward on their shared, left-padded cache.

        Positions stay each sequence's own, so the result equals single-sequence decoding up to
        float rounding. The batch is reused while the same sequences go on, else formed anew.
        """
        batch = seqs[0].batch
        if batch is None or batch.members != seqs:
            batch = self._form_batch(seqs)
        model = self._slots.model_for(adapter)
        width = batch.cache.get_seq_length()
        mask_B_T = torch.ones(len(seqs), width + 1, dtype=torch.long, device=self.device)
        for row, pad in enumerate(batch.pads):
            mask_B_T[row, :pad] = 0
        out = model(
            input_ids=torch.tensor([seq.generated[-1:] for seq in seqs], device=self.device),
            attention_mask=mask_B_T,
            position_ids=torch.tensor([[width - pad] for pad in batch.pads], device=self.device),
            use_cache=True, logits_to_keep=1, **{self._cache_kw: batch.cache},
        )
        self.batched_steps += 1
        batch.cache = getattr(out, self._cache_kw)
        for row, seq in enumerate(seqs):
            try:
                self._advance(seq, out.logits[row, -1], None)
            except Exception as exc:
                self._fail(seq, exc)

    def _form_batch(self, seqs: list[Sequence]) -> Batch:
        """One left-padded cache holding every sequence's own (from its cache or its row of an earlier batch)."""
        owns = [seq.cache if seq.batch is None else seq.batch.row_cache(seq.batch.members.index(seq)) for seq in seqs]
        lengths = [own.get_seq_length() for own in owns]
        width = max(lengths)
        cache = DynamicCache()
        for layer in range(len(owns[0].layers)):
            keys = [F.pad(own.layers[layer].keys, (0, 0, width - n, 0)) for own, n in zip(owns, lengths, strict=True)]
            values = [F.pad(own.layers[layer].values, (0, 0, width - n, 0)) for own, n in zip(owns, lengths, strict=True)]
            cache.update(torch.cat(keys), torch.cat(values), layer)
        batch = Batch(list(seqs), cache, [width - n for n in lengths])
        for seq in seqs:
            seq.cache, seq.batch = None, batch
        return batch

    def _advance(self, seq: Sequence, logits_V: torch.Tensor, cache: Any) -> None:
        """Choose the next token; ``cache`` is the sequence's own, None for a row of a batch."""
        if cache is not None:
            seq.cache = cache
        token, logprob, top = choose_token(logits_V, seq.params, seq.generator, seq.counts)
        seq.generated.append(token)
        seq.counts[token] += 1
        finish = None
        if token in seq.params.stop_token_ids:
            finish = "stop"
        elif len(seq.generated) >= seq.params.max_tokens:
            finish = "length"
        if finish:
            self._active.remove(seq)
            seq.cache, seq.batch = None, None
        seq.sink(TokenEvent(token, logprob if seq.params.top_logprobs is not None else None, top, finish))

    def _fail(self, seq: Sequence, exc: Exception) -> None:
        log.exception("generation_failed", error=repr(exc))
        if seq in self._active:
            self._active.remove(seq)
        seq.sink(FailureEvent(f"generation failed: {exc}"))

    def _in_use(self) -> set[str]:
        return {seq.adapter for seq in self._active if seq.adapter is not None}

    def _ensure_materialised(self, name: str) -> bool:
        if name in self._slots:
            return True
        if not self._slots.make_room(self._in_use()):
            return False
        try:
            self._slots.add(name, self.registered[name])
        except Exception as exc:
            log.exception("adapter_reload_failed", adapter=name)
            for seq in [s for s in self._waiting if s.adapter == name]:
                with self._cond:
                    self._waiting.remove(seq)
                seq.sink(FailureEvent(f"adapter {name!r} could not be loaded: {exc}"))
            return False
        return True

    def _load(self, name: str, path: Path) -> None:
        if name in self._slots:  # an unloaded adapter of that name still finishes its requests
            raise AdapterError(f"adapter {name!r} is still draining its requests; retry shortly")
        if self._slots.make_room(self._in_use()):  # else every slot is busy: load on first use
            try:
                self._slots.add(name, path)
            except Exception as exc:
                if name in self._slots:
                    self._slots.remove(name)
                raise AdapterError(str(exc)) from exc
        with self._cond:
            self.registered[name] = path
            self._draining.discard(name)

    def _unload(self, name: str) -> None:
        with self._cond:
            self.registered.pop(name, None)
            orphans = [s for s in self._waiting if s.adapter == name]
            for seq in orphans:
                self._waiting.remove(seq)
        for seq in orphans:
            seq.sink(FailureEvent(f"adapter {name!r} was unloaded"))
        if name in self._slots:
            self._draining.add(name)
        self._remove_drained()

    def _remove_drained(self) -> None:
        if not self._draining:
            return
        busy = self._in_use()
        for name in list(self._draining):
            if name not in busy:
                self._draining.discard(name)
                if name in self._slots and name not in self.registered:
                    self._slots.remove(name)
                    log.info("adapter_removed", adapter=name)
