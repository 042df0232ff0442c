"""Labeled samples into training items: a consumer group on the samples stream, selection, token ids.

Entries are acknowledged only after the candidate trained on them is published, so a crash leaves
them pending and the next run (same consumer name, or any consumer once they have been idle for
``claim_idle_ms``) trains them again. ``select`` is the pure decision of what takes a batch slot:
the latest revision per turn, never observation-only, never a sample already in the lineage.
``build_item`` turns a sample into token ids: the captured ids, the chat template only when none were
captured (and the item records which).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from pydantic import ValidationError

from labeler.records import SAMPLES_STREAM, SampleRecord, sample_key
from learner.logprobs import append_hint
from learner.modeling import normalize_messages, render_prompt_ids
from registry.store import Registry, UnknownVersion

DEFAULT_GROUP = "learner"


@dataclass(frozen=True)
class Entry:
    """One stream entry: its id and the sample it holds (None when it could not be parsed)."""

    entry_id: str
    sample: SampleRecord | None


@dataclass(frozen=True)
class Selection:
    """What a batch trains on, and every other entry with the reason it takes no slot."""

    train: list[Entry]
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> entry ids

    @property
    def entry_ids(self) -> list[str]:
        """Every entry id covered (trained or skipped): all are acknowledged together after publish."""
        return [e.entry_id for e in self.train] + [i for ids in self.skipped.values() for i in ids]

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), **{k: len(v) for k, v in sorted(self.skipped.items())}}


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def has_signal(sample: SampleRecord, method: str) -> bool:
    """Whether a sample carries a term of ``method``: a reward for rl, a hint for opd, either for combined."""
    rewarded = sample.reward != 0 and sample.cls in ("prefer", "avoid")
    hinted = bool(sample.hint and sample.hint.strip())
    return {"rl": rewarded, "opd": hinted}.get(method, rewarded or hinted)


def select(
    entries: Sequence[Entry],
    *,
    method: str,
    lineage_ids: set[str] | frozenset[str] = frozenset(),
    stored_revisions: dict[str, int] | None = None,
    present: set[str] | None = None,
) -> Selection:
    """Pick the samples that take a batch slot; ``stored_revisions`` is turn id -> latest known revision,
    ``present`` the entry ids still in the stream (one deleted since it was read — forgotten, or past
    retention — takes no slot)."""
    skipped: dict[str, list[str]] = {}
    latest: dict[str, Entry] = {}

    def skip(reason: str, entry: Entry) -> None:
        skipped.setdefault(reason, []).append(entry.entry_id)

    for entry in entries:
        s = entry.sample
        if present is not None and entry.entry_id not in present:
            skip("deleted", entry)
            continue
        if s is None:
            skip("unreadable", entry)
            continue
        if stored_revisions and stored_revisions.get(s.turn_id, s.revision) > s.revision:
            skip("superseded", entry)
            continue
        held = latest.get(s.turn_id)
        if held is not None and held.sample is not None:
            if held.sample.revision >= s.revision:
                skip("superseded", entry)
                continue
            skip("superseded", held)
        latest[s.turn_id] = entry
    train: list[Entry] = []
    for entry in latest.values():
        s = entry.sample
        assert s is not None
        if not s.trainable:
            skip("observation", entry)
        elif s.sample_id in lineage_ids:
            skip("already_trained", entry)
        elif not has_signal(s, method):
            skip("no_signal", entry)
        else:
            train.append(entry)
    return Selection(train=train, skipped=skipped)


def lineage_sample_ids(registry: Registry, version: str | None) -> set[str]:
    """Sample ids trained into ``version`` and all its ancestors (their manifests list them)."""
    seen: set[str] = set()
    visited: set[str] = set()
    while version is not None and version not in visited:
        visited.add(version)
        try:
            manifest = registry.manifest(version)
        except (UnknownVersion, FileNotFoundError):
            break
        seen.update(manifest.sample_ids)
        version = manifest.parent
    return seen


class SampleReader:
    """A consumer of the samples stream in a consumer group; first its own pending entries, then new ones."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        stream: str = SAMPLES_STREAM,
        group: str = DEFAULT_GROUP,
        consumer: str = "learner-1",
        claim_idle_ms: int = 600_000,
    ) -> None:
        self.redis, self.stream, self.group, self.consumer = client, stream, group, consumer
        self.claim_idle_ms = claim_idle_ms
        self._pending_cursor: str | None = "0"  # None once this consumer's backlog is read
        self._claim_cursor: str | None = "0-0"
        self.ensure_group()

    def ensure_group(self) -> None:
        with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: it exists already
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)

    def _parse(self, raw: Iterable[tuple[Any, Any]]) -> list[Entry]:
        out = []
        for entry_id, fields in raw:
            sample = None
            payload = (fields or {}).get(b"record") or (fields or {}).get("record")
            if payload is not None:
                with contextlib.suppress(ValidationError, ValueError):
                    sample = SampleRecord.model_validate_json(payload)
            out.append(Entry(_text(entry_id), sample))
        return out

    def _read(self, cursor: str, count: int, block_ms: int | None) -> list[Entry]:
        reply = self.redis.xreadgroup(self.group, self.consumer, {self.stream: cursor}, count=count, block=block_ms)
        return self._parse(reply[0][1]) if reply else []

    def read(self, count: int, block_ms: int | None = None) -> list[Entry]:
        """Up to ``count`` entries: this consumer's unacknowledged backlog, idle ones of dead consumers, new."""
        if self._pending_cursor is not None:
            entries = self._read(self._pending_cursor, count, None)
            if entries:
                self._pending_cursor = entries[-1].entry_id
                return entries
            self._pending_cursor = None
        if self._claim_cursor is not None:
            cursor, claimed, *_ = self.redis.xautoclaim(
                self.stream, self.group, self.consumer, self.claim_idle_ms, start_id=self._claim_cursor, count=count
            )
            self._claim_cursor = None if _text(cursor) == "0-0" else _text(cursor)
            entries = self._parse((i, f) for i, f in claimed if f is not None)
            if entries:
                return entries
        return self._read(">", count, block_ms)

    def read_all(self, limit: int) -> list[Entry]:
        """Everything available now (backlog first), at most ``limit`` entries; never blocks."""
        out: list[Entry] = []
        while len(out) < limit:
            got = self.read(min(256, limit - len(out)))
            if not got and self._pending_cursor is None and self._claim_cursor is None:
                break
            out.extend(got)
        return out

    def stored_revisions(self, turn_ids: Iterable[str]) -> dict[str, int]:
        """Latest revision per turn from the labeler's per-turn copy (absent turns are left out)."""
        ids = list(dict.fromkeys(turn_ids))
        if not ids:
            return {}
        out: dict[str, int] = {}
        try:
            values = self.redis.mget([sample_key(t) for t in ids])
        except redis.ResponseError:  # not plain strings: nothing to compare against
            return {}
        for turn_id, raw in zip(ids, values, strict=True):
            if raw is None:
                continue
            with contextlib.suppress(ValidationError, ValueError):
                out[turn_id] = SampleRecord.model_validate_json(raw).revision
        return out

    def present(self, entry_ids: Iterable[str]) -> set[str]:
        """Those of ``entry_ids`` still in the stream (one round trip)."""
        ids = list(dict.fromkeys(entry_ids))
        if not ids:
            return set()
        with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xrange(self.stream, min=entry_id, max=entry_id, count=1)
            found = pipe.execute()
        return {entry_id for entry_id, got in zip(ids, found, strict=True) if got}

    def ack(self, entry_ids: Sequence[str], via: Any = None) -> int:
        """Acknowledge ``entry_ids``; ``via`` a Redis transaction queues the ack there (its count is then 0)."""
        if not entry_ids:
            return 0
        if via is not None:
            via.xack(self.stream, self.group, *entry_ids)
            return 0
        return int(self.redis.xack(self.stream, self.group, *entry_ids))

    def backlog(self) -> int:
        """Entries delivered to no consumer yet plus pending ones (Redis >= 7 reports the lag)."""
        for info in self.redis.xinfo_groups(self.stream):
            if _text(info.get("name")) == self.group:
                lag = info.get("lag")
                return int(lag or 0) + int(info.get("pending") or 0)
        return 0


# -- items: samples as token ids --------------------------------------------------------------------


@dataclass(frozen=True)
class TrainItem:
    """One sample as the trainer sees it. Lists of ints/floats, no tensors: cheap to build and test."""

    sample_id: str
    entry_id: str
    cls: str
    prompt_ids: list[int]
    response_ids: list[int]
    reward: float  # +1 prefer / -1 avoid / 0 none
    has_reward: bool
    teacher_prompt_ids: list[int] | None  # prompt with the hint appended; None = no OPD term
    captured_logprobs: list[float] | None  # pi_old as served, None when not usable (see build_item)
    token_method: str  # "captured" | "retokenized"
    hint: str | None = None


def response_ids_by_template(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
    response: dict[str, Any], prompt_ids: list[int],
) -> list[int]:
    """Response token ids from the chat template: the rendered conversation minus the rendered prompt, up to
    and including the end-of-turn token (what the model generates; ChatML templates add a newline after it)."""
    full = tokenizer.apply_chat_template(
        normalize_messages([*messages, {**response, "role": "assistant"}]), tools=tools or None,
        tokenize=False, add_generation_prompt=False,
    )
    ids = list(tokenizer(str(full), add_special_tokens=False)["input_ids"])
    if ids[: len(prompt_ids)] == prompt_ids and len(ids) > len(prompt_ids):
        answer = ids[len(prompt_ids):]
        eos = tokenizer.eos_token_id
        return answer[: answer.index(eos) + 1] if eos is not None and eos in answer else answer
    text = str(response.get("content") or "")  # templates that rewrite history: content + end of sequence
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + eos


def build_item(
    entry: Entry, tokenizer: Any, *, method: str, parent_version: str | None,
    max_prompt_tokens: int, max_response_tokens: int, parent_scope: str = "global",
) -> TrainItem:
    """Token ids of a sample. Captured logprobs count as pi_old only if the parent (``parent_version`` of
    the lineage of ``parent_scope``) served the turn."""
    s = entry.sample
    assert s is not None
    tokens = s.tokens
    captured = bool(tokens.method == "captured" and tokens.prompt_token_ids and tokens.response_token_ids)
    if captured:
        prompt = list(tokens.prompt_token_ids or [])
        response = list(tokens.response_token_ids or [])
    else:
        prompt = render_prompt_ids(tokenizer, s.messages, s.tools)
        response = response_ids_by_template(tokenizer, s.messages, s.tools, s.response, prompt)
    logprobs = None
    if (captured and s.serving_version == parent_version and s.version_scope == parent_scope
            and tokens.response_logprobs is not None
            and len(tokens.response_logprobs) == len(response)):
        logprobs = list(tokens.response_logprobs)[:max_response_tokens]
    rewarded = method != "opd" and s.reward != 0
    hinted = method != "rl" and bool(s.hint and s.hint.strip())
    teacher = None
    if hinted:
        assert s.hint is not None
        teacher = render_prompt_ids(tokenizer, append_hint(s.messages, s.hint.strip()), s.tools)[-max_prompt_tokens:]
    return TrainItem(
        sample_id=s.sample_id, entry_id=entry.entry_id, cls=s.cls,
        prompt_ids=prompt[-max_prompt_tokens:], response_ids=response[:max_response_tokens],
        reward=float(s.reward) if rewarded else 0.0, has_reward=rewarded,
        teacher_prompt_ids=teacher, captured_logprobs=logprobs,
        token_method="captured" if captured else "retokenized", hint=s.hint if hinted else None,
    )


def entry_scope(entry: Entry) -> str:
    """The learning scope an entry's sample belongs to (an unreadable one: global, where it is skipped)."""
    return entry.sample.scope if entry.sample is not None else "global"


def by_scope(entries: list[Entry]) -> dict[str, list[Entry]]:
    """Entries grouped by learning scope, each group in stream order."""
    groups: dict[str, list[Entry]] = {}
    for entry in entries:
        groups.setdefault(entry_scope(entry), []).append(entry)
    return groups
