"""The gate's recall check on the model: the scope's own requests whose answers its users accepted, answered
again by stable and by the candidate, and counted by ``registry.recall``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError

from labeler.records import SAMPLES_STREAM, SampleRecord
from learner.gate_policies import Policies, generate, stable_answers
from learner.modeling import render_prompt_ids
from registry.recall import RecallRequest, RecallScore, recall_request, recall_score
from registry.store import Registry


def scope_samples(registry: Registry, count: int) -> Iterator[SampleRecord]:
    """The registry scope's samples among the newest ``count`` records, newest first, the latest revision of
    each turn once (a stream's newer record of a turn is its later revision)."""
    seen: set[str] = set()
    for _, fields in registry.redis.xrevrange(SAMPLES_STREAM, count=count):
        try:
            sample = SampleRecord.model_validate_json(fields.get(b"record") or fields["record"])
        except ValidationError:
            continue
        if sample.scope != registry.scope or sample.turn_id in seen:  # only the candidate's own scope's evidence
            continue
        seen.add(sample.turn_id)
        yield sample


def recall_requests(registry: Registry, tokenizer: Any, limit: int, max_prompt_tokens: int) -> list[RecallRequest]:
    """The newest ``limit`` requests of the scope whose answers were not disputed, one per question."""
    requests: list[RecallRequest] = []
    questions: set[str] = set()
    for sample in scope_samples(registry, count=limit * 20):
        request = recall_request(sample)
        if request is None or request.question in questions:
            continue
        if len(render_prompt_ids(tokenizer, request.messages)) > max_prompt_tokens:
            continue
        questions.add(request.question)
        requests.append(request)
        if len(requests) >= limit:
            break
    return requests


def recall(policies: Policies, requests: list[RecallRequest], answers: int, temperature: float, max_tokens: int,
           seed: int) -> RecallScore | None:
    """Per request, ``answers`` + 1 answers from stable (the first picks the key word, the others are counted)
    and ``answers`` from the candidate; None when there is no request."""
    if not requests:
        return None
    conversations, k = [r.messages for r in requests], answers
    decode = policies.tokenizer.batch_decode
    stable = decode(stable_answers(policies, conversations, k + 1, temperature, max_tokens, seed), skip_special_tokens=True)
    candidate = decode(generate(policies, "candidate", conversations, k, temperature, max_tokens, seed),
                       skip_special_tokens=True)
    per_request = range(len(requests))
    return recall_score(requests, [stable[i * (k + 1)] for i in per_request],
                        [stable[i * (k + 1) + 1:(i + 1) * (k + 1)] for i in per_request],
                        [candidate[i * k:(i + 1) * k] for i in per_request])
