"""The recorder: turns served exchanges into records, off the request path, Redis or spool.

Handlers only ``submit`` (a non-blocking queue put) after the response has been sent. One task
builds the records (parsing the response happens here, not on the hot path) and applies them to
Redis in order, in batches of whatever has queued up. When Redis fails, the entries go to the spool, and while the spool holds anything
every new entry goes there too, so order is kept; the same task replays the spool when Redis is back.
Entries are redacted (``proxy.redact``) before they are written anywhere.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import redis
import structlog
from pydantic import BaseModel

from proxy import fastjson, items
from proxy.accumulate import Accumulator
from proxy.metrics import Metrics
from proxy.records import FeedbackRecord, ResponseContext, Serving, Timings, TurnRecord, TurnRequest
from proxy.redact import Redactor
from proxy.redis_connect import CLUSTER_UNREACHABLE
from proxy.routing import Decision
from proxy.sessions import message_digest, turn_index
from proxy.spool import Spool
from proxy.store import Store
from proxy.tasks import cancelling

log = structlog.get_logger("proxy.recorder")

_NOT_PARAMS = frozenset({"messages", "tools", "model"})
# what makes a write wait in the spool: any Redis error (down, loading, read-only, out of memory), or
# the socket failing, a Redis Cluster with no reachable node or a slot without one; such records are
# retried, never dropped
REDIS_DOWN = (redis.RedisError, OSError, *CLUSTER_UNREACHABLE)


@dataclass
class Exchange:
    """One served main turn, as the handler saw it; the recorder turns it into records."""

    turn_id: str
    session_id: str
    body: dict[str, Any]
    stream: bool
    decision: Decision
    upstream_model: str | None
    started_at: float
    chained: bool = False
    done: bool = False
    client_key_hash: str | None = None
    completion: bytes = b""
    parsed: Any = None
    """``completion`` already parsed on the request path, when it had to be."""
    chunks: list[bytes] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    api: Literal["chat", "responses"] = "chat"
    """Which API served it: a Responses API answer is read as a chat completion (proxy.items)."""
    instructions: int = 0
    """Leading messages that are the request's ``instructions`` (not carried to the next response)."""


class Sibling(BaseModel):
    """Another choice of the same request (``n > 1``): a turn of its own, and the reply it gave."""

    turn: TurnRecord
    reply_digest: str


class Entry(BaseModel):
    """One unit of recording work; also the line format of the spool."""

    kind: Literal["turn", "feedback"]
    turn: TurnRecord | None = None
    digests: list[str] = []
    reply_digest: str = ""
    chained: bool = False
    done: bool = False
    feedback: FeedbackRecord | None = None
    siblings: list[Sibling] = []
    context: ResponseContext | None = None


def choice_turn_id(turn_id: str, index: int) -> str:
    """Id of the turn of choice ``index`` (the first choice keeps the request's turn id)."""
    return f"{turn_id}-c{index}"


def build_entry(exchange: Exchange) -> Entry | None:
    """Parse what was served into a turn entry (one turn per choice); None when it had no choice."""
    accumulator = Accumulator()
    response_id = None
    if exchange.api == "responses":
        served = items.final_response(b"".join(exchange.chunks)) if exchange.stream else fastjson.loads(exchange.completion)
        answered = items.completion(served) if isinstance(served, dict) else None
        if answered is None:
            return None
        accumulator.feed_completion(answered)
        response_id = served.get("id")
    elif exchange.stream:
        accumulator.feed_sse(b"".join(exchange.chunks))
    else:
        parsed = exchange.parsed if exchange.parsed is not None else fastjson.loads(exchange.completion)
        accumulator.feed_completion(parsed)
    if not accumulator.saw_choice:
        return None
    body = exchange.body
    messages = body["messages"]
    first, *others = accumulator.indices()
    request = TurnRequest(
        model=body.get("model"), messages=messages, tools=body.get("tools"),
        params={k: v for k, v in body.items() if k not in _NOT_PARAMS},
    )
    decision = exchange.decision
    serving = Serving(upstream_model=exchange.upstream_model, version=decision.version, arm=decision.arm,
                      scope=decision.scope, version_scope=decision.version_scope)

    def turn(index: int) -> TurnRecord:
        turn_id = exchange.turn_id if index == first else choice_turn_id(exchange.turn_id, index)
        return TurnRecord(
            record_id=turn_id, created_at=exchange.started_at, turn_id=turn_id, session_id=exchange.session_id,
            turn_index=turn_index(messages), stream=exchange.stream, request=request,
            response=accumulator.response(index), tokens=accumulator.tokens(index), serving=serving,
            timings=exchange.timings, client_key_hash=exchange.client_key_hash, scope=decision.scope,
            choice_index=index, choice_of=None if index == first else exchange.turn_id, api=exchange.api,
        )

    main = turn(first)
    siblings = [Sibling(turn=(t := turn(index)), reply_digest=message_digest(t.response.message)) for index in others]
    context = None
    if isinstance(response_id, str) and response_id and body.get("store") is not False:  # may be continued
        context = ResponseContext(response_id=response_id, session_id=exchange.session_id, scope=decision.scope,
                                  messages=[*messages[exchange.instructions:], main.response.message])
    return Entry(
        kind="turn", turn=main, digests=[message_digest(m) for m in messages],
        reply_digest=message_digest(main.response.message), chained=exchange.chained, done=exchange.done,
        siblings=siblings, context=context,
    )


class Recorder:
    def __init__(self, store: Store, spool: Spool, metrics: Metrics, *, replay_interval_s: float = 1.0,
                 orphans: list[Spool] | None = None, gather_s: float = 0.0, redactor: Redactor | None = None,
                 retention_s: float = 0.0) -> None:
        self.retention_s = retention_s
        """Spooled records older than this are dropped at replay, not written (0 = kept)."""
        self.store = store
        self.redactor = redactor if redactor is not None and redactor.active else None
        """Scrubs every entry before it is written anywhere (Redis or the spool)."""
        self.spool = spool
        self.orphans = list(orphans or [])
        """Spools left by processes that are gone; replayed before this process's own."""
        self.metrics = metrics
        self.replay_interval_s = replay_interval_s
        self.gather_s = gather_s
        """Wait this long after the first queued item before handling a batch (0 = at once)."""
        self.queue: asyncio.Queue[Exchange | Entry | asyncio.Future[None]] = asyncio.Queue()
        self.pending_turns: set[str] = set()
        self.dropped = 0
        """Records neither Redis nor the spool could take (a full or unwritable disk), since start."""
        self._next_replay = 0.0
        self._idle = asyncio.Event()
        self._idle.set()

    def submit(self, item: Exchange | Entry) -> None:
        if isinstance(item, Exchange):
            self.pending_turns.add(item.turn_id)
        self._idle.clear()
        self.queue.put_nowait(item)

    def barrier(self) -> asyncio.Future[None]:
        """A future that resolves once everything submitted before it has been handled."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle.clear()
        self.queue.put_nowait(future)
        return future

    def knows_turn(self, turn_id: str) -> bool:
        """True when a turn is still on its way to Redis (queued or spooled)."""
        first = turn_id.partition("-c")[0]  # another choice of a request is on its way with the first
        return turn_id in self.pending_turns or first in self.pending_turns or self.pending()

    def pending(self) -> bool:
        """Anything spooled, here or in an adopted spool, not yet replayed."""
        return self.spool.pending() or bool(self.orphans)

    def _count(self, entries: list[Entry], results: list[int], outcome: str | None = None) -> None:
        for entry, result in zip(entries, results, strict=True):
            if result >= 10:
                self.metrics.records.labels(entry.kind, "session_moved").inc()
            label = outcome or ("written" if result % 10 else "duplicate")
            self.metrics.records.labels(entry.kind, label).inc()

    def _to_spool(self, entries: list[Entry]) -> None:
        dropped: Counter[str] = Counter()
        error: OSError | None = None
        for entry in entries:
            try:
                self.spool.append(entry.model_dump_json())
            except OSError as exc:  # disk full or unwritable: serving goes on, the loss is counted
                error = exc
                dropped[entry.kind] += 1
                continue
            self.metrics.records.labels(entry.kind, "spooled").inc()
        if dropped:
            for kind, count in dropped.items():
                self.metrics.records.labels(kind, "dropped").inc(count)
            self.dropped += sum(dropped.values())
            log.error("spool_write_failed_records_dropped", dropped=sum(dropped.values()), total_dropped=self.dropped,
                      spool=str(self.spool.path), error=repr(error))
        self.metrics.spool_pending.set(1 if self.pending() else 0)

    async def replay(self, force: bool = False, batch: int = 128) -> bool:
        """Replay the spool in order, in batches; True when it is empty afterwards."""
        if not force and time.monotonic() < self._next_replay:
            return False
        try:
            for spool in [*self.orphans, self.spool]:  # the orphans hold the older records
                await self._replay_one(spool, batch)
                spool.reset_if_drained()
                if spool is not self.spool:
                    self.orphans.remove(spool)
                    spool.close()  # releases the slot
        except REDIS_DOWN as exc:
            self._next_replay = time.monotonic() + self.replay_interval_s
            log.info("spool_replay_paused", error=repr(exc))
            return False
        drained = not self.pending()
        self.metrics.spool_pending.set(0 if drained else 1)
        if drained:
            log.info("spool_replayed")
        return drained

    async def _replay_one(self, spool: Spool, batch: int) -> None:
        while lines := list(itertools.islice(spool.entries(), batch)):
            entries = []
            oldest = time.time() - self.retention_s if self.retention_s > 0 else 0.0
            for _, line in lines:
                try:
                    entry = Entry.model_validate_json(line)
                except ValueError as exc:  # a damaged line cannot block the ones after it
                    log.error("spool_line_unreadable", spool=str(spool.path), error=repr(exc))
                    self.metrics.records.labels("unknown", "failed").inc()
                    continue
                record = entry.turn or entry.feedback
                if record is not None and record.created_at < oldest:  # past retention: never stored
                    self.metrics.records.labels(entry.kind, "expired").inc()
                    continue
                entries.append(entry)
            if entries:
                self._count(entries, await self.store.apply(entries), "replayed")
            spool.commit(lines[-1][0])

    def _entry(self, item: Exchange | Entry) -> Entry | None:
        try:
            entry = item if isinstance(item, Entry) else build_entry(item)
            if entry is not None and self.redactor is not None and (changed := self.redactor.entry(entry)):
                self.metrics.records.labels(entry.kind, "redacted").inc(changed)
        except Exception as exc:  # a malformed upstream answer or a failing scrubber: never stored unscrubbed
            log.error("record_build_failed", error=repr(exc))
            self.metrics.records.labels(item.kind if isinstance(item, Entry) else "turn", "failed").inc()
            entry = None
        if entry is None and isinstance(item, Exchange):
            self.pending_turns.discard(item.turn_id)
        return entry

    async def _handle(self, entries: list[Entry]) -> None:
        try:
            if self.pending() and not await self.replay():
                self._to_spool(entries)
                return
            try:
                self._count(entries, await self.store.apply(entries))
            except REDIS_DOWN as exc:  # whatever part was applied is deduplicated on replay
                log.warning("redis_unavailable_spooling", error=repr(exc), records=len(entries))
                self._to_spool(entries)
        finally:
            for entry in entries:
                if entry.turn is not None:
                    self.pending_turns.discard(entry.turn.turn_id)

    async def run(self, max_batch: int = 128) -> None:
        """Handle everything queued, in order, a batch at a time (one batch = two Redis round trips)."""
        if self.pending():
            self.metrics.spool_pending.set(1)
        while not cancelling():
            if self.queue.empty():
                self._idle.set()
            try:
                timeout = self.replay_interval_s if self.pending() else None
                items = [await asyncio.wait_for(self.queue.get(), timeout)]
            except TimeoutError:
                await self.replay()
                continue
            if self.gather_s > 0:  # let the client take its answer first; what arrives meanwhile joins the batch
                await asyncio.sleep(self.gather_s)
            while len(items) < max_batch and not self.queue.empty():
                items.append(self.queue.get_nowait())
            barriers = [item for item in items if isinstance(item, asyncio.Future)]
            entries = [e for item in items if not isinstance(item, asyncio.Future) and (e := self._entry(item))]
            try:
                if entries:
                    await self._handle(entries)
            except Exception as exc:  # keep the recorder alive whatever happens; count it
                if cancelling():
                    raise asyncio.CancelledError from exc
                log.error("record_failed", error=repr(exc), records=len(entries))
                self.metrics.records.labels("turn", "failed").inc(len(entries))
            finally:
                for barrier in barriers:
                    if not barrier.done():
                        barrier.set_result(None)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until everything submitted so far has been handled (written or spooled)."""
        await asyncio.wait_for(self._idle.wait(), timeout)
