"""Helpers of the labeler tests: write the proxy's records directly, run the dispatcher and RQ."""

from __future__ import annotations

from typing import Any

import redis
from rq.serializers import JSONSerializer

from labeler.dispatcher import Dispatcher
from labeler.jobs import Runtime, install
from labeler.records import LABEL_QUEUE
from labeler.settings import LabelerSettings
from labeler.worker import InlineWorker
from proxy.records import (
    FEEDBACK_STREAM,
    TRANSITIONS_STREAM,
    FeedbackRecord,
    Serving,
    TransitionRecord,
    TurnRecord,
    TurnRequest,
    TurnResponse,
    turn_key,
)

QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris, a city of about two million people on the Seine."


def runtime(url: str, **overrides: Any) -> Runtime:
    options: dict[str, Any] = {"redis_url": url, "job_retries": 2, "retry_intervals_s": [0], "claim_idle_ms": 60_000,
                               "dispatch_block_ms": 1, **overrides}
    settings = LabelerSettings(**options)
    return install(Runtime(settings=settings, redis=redis.Redis.from_url(url)))


def put_turn(client: redis.Redis, turn_id: str, *, question: str = QUESTION, answer: str = ANSWER,
             version: str | None = "v2", session: str = "sess-1") -> TurnRecord:
    turn = TurnRecord(
        record_id=turn_id, turn_id=turn_id, session_id=session, turn_index=0,
        request=TurnRequest(model="tiny-chat", messages=[{"role": "user", "content": question}]),
        response=TurnResponse(message={"role": "assistant", "content": answer}, finish_reason="stop"),
        serving=Serving(upstream_model=f"tiny-chat@{version}" if version else "tiny-chat", version=version,
                        arm="stable" if version else "base"),
    )
    client.set(turn_key(turn_id), turn.model_dump_json())
    return turn


def put_transition(client: redis.Redis, turn_id: str, next_text: str | None, *, role: str = "user",
                   session: str = "sess-1") -> str:
    next_state = [] if next_text is None else [{"role": role, "content": next_text}]
    record = TransitionRecord(record_id=f"tr-{turn_id}", transition_id=f"tr-{turn_id}", turn_id=turn_id,
                              session_id=session, turn_index=0, next_state=next_state,
                              has_next_state=next_text is not None,
                              reason="next_request" if next_text is not None else "session_done")
    return client.xadd(TRANSITIONS_STREAM, {"record": record.model_dump_json()}).decode()


def put_feedback(client: redis.Redis, turn_id: str, rating: int, comment: str | None = None,
                 feedback_id: str | None = None, scope: str | None = None) -> str:
    fid = feedback_id or f"fb-{turn_id}-{rating}"
    record = FeedbackRecord(record_id=f"fb-{fid}", feedback_id=fid, turn_id=turn_id, rating=rating,  # type: ignore[arg-type]
                            comment=comment, scope=scope)
    return client.xadd(FEEDBACK_STREAM, {"record": record.model_dump_json()}).decode()


def dispatch(rt: Runtime, consumer: str = "test") -> int:
    dispatcher = Dispatcher(rt, consumer=consumer)
    dispatcher.ensure_groups()
    return dispatcher.run_once(block_ms=0)


def work(rt: Runtime) -> None:
    InlineWorker([rt.queue(LABEL_QUEUE)], connection=rt.redis, serializer=JSONSerializer).work(burst=True)
