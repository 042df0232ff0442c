"""RQ jobs of the labeler: plain importable functions that take ids, judge, and write a sample once.

Each worker process installs a :class:`Runtime` (settings, Redis, judge) from its entry point; a
job reads it, loads its inputs by id, and applies one label event through the sample store, which
makes re-delivery and retries no-ops. Errors are raised so that RQ retries the job (retries are
declared at enqueue); on the last attempt a transition that still cannot be judged is stored as an
observation-only sample marked ``judge_failed`` and sent to the hard queue before the error is
raised again for RQ's failed registry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis
import structlog
from rq import Queue, Retry, get_current_job
from rq.exceptions import DuplicateJobError
from rq.serializers import JSONSerializer

from labeler.directives import hint_from
from labeler.judges import Judge, build_judge
from labeler.records import HARD_QUEUE, LABEL_QUEUE, SampleRecord
from labeler.samples import SampleStore, apply_verdict, job_safe, load_turn, payload_from_turn
from labeler.settings import LabelerSettings
from labeler.tally import accept_hint, classify, disagrees, select_hint
from proxy.records import FEEDBACK_STREAM, TRANSITIONS_STREAM, FeedbackRecord, TransitionRecord
from proxy.redis_connect import connect, queue_url

log = structlog.get_logger("labeler.jobs")


class LabelInputMissing(LookupError):
    """A job's input (stream entry, turn) is not in Redis (yet): retryable until the last attempt."""


@dataclass
class Runtime:
    """What jobs of one worker process share; built once by the entry point and installed."""

    settings: LabelerSettings
    redis: redis.Redis
    """Where records and samples live (a Redis Cluster client when the URL names one)."""
    strong: bool = False
    queue_redis: redis.Redis | None = None
    """Where the RQ queues live, when not with the data (``NEXTSTATE_QUEUE_URL``: RQ cannot run on a cluster)."""
    _judge: Judge | None = field(default=None, repr=False)

    @classmethod
    def open(cls, settings: LabelerSettings, url: str, *, strong: bool = False) -> Runtime:
        """Clients for the data at ``url`` and for the queues at ``settings.queue_url`` (default: the same)."""
        data = connect(url)
        queues_at = queue_url(url, settings.queue_url)
        return cls(settings=settings, redis=data, strong=strong,
                   queue_redis=None if queues_at == url else redis.Redis.from_url(queues_at))

    def close(self) -> None:
        """Close the Redis clients (their pooled connections)."""
        self.redis.close()
        if self.queue_redis is not None:
            self.queue_redis.close()

    @property
    def queues(self) -> redis.Redis:
        """The client RQ's queues, jobs and workers use."""
        return self.queue_redis if self.queue_redis is not None else self.redis

    @property
    def judge(self) -> Judge:
        if self._judge is None:
            self._judge = build_judge(self.settings, strong=self.strong)
        return self._judge

    def queue(self, name: str = LABEL_QUEUE) -> Queue:
        return Queue(name, connection=self.queues, serializer=JSONSerializer)


_installed: list[Runtime] = []


def install(runtime: Runtime) -> Runtime:
    """Make ``runtime`` the one the jobs of this process use (called by entry points and tests)."""
    _installed[:] = [runtime]
    return runtime


def runtime() -> Runtime:
    if not _installed:
        raise RuntimeError("no labeler runtime installed in this process (start it with `nextstate worker`)")
    return _installed[0]


def _final_attempt() -> bool:
    job = get_current_job()
    return job is None or not job.retries_left


def _entry(client: redis.Redis, stream: str, entry_id: str) -> dict[bytes, bytes]:
    found: Any = client.xrange(stream, min=entry_id, max=entry_id)
    if not found:
        raise LabelInputMissing(f"{stream} has no entry {entry_id}")
    return found[0][1]


def enqueue_hard(rt: Runtime, turn_id: str, reason: str) -> bool:
    """Queue a turn for the strong judge once (a turn already waiting there is not queued twice)."""
    try:
        rt.queue(HARD_QUEUE).enqueue_call(
            "labeler.hardcases.relabel", args=(turn_id,), job_id=f"hard-{job_safe(turn_id)}", unique=True,
            description=f"hard case {turn_id}: {reason}", timeout=rt.settings.job_timeout_s, result_ttl=86_400,
            failure_ttl=7 * 86_400, meta={"reason": reason},
        )
    except DuplicateJobError:
        return False
    return True


def enqueue_label(rt: Runtime, entry_id: str, transition_id: str) -> bool:
    """One labeling job per transition (deterministic id); False when it is already queued or running."""
    return _enqueue(rt, "labeler.jobs.label_transition", (entry_id, transition_id), f"label-{job_safe(transition_id)}")


def enqueue_feedback(rt: Runtime, entry_id: str, feedback_id: str) -> bool:
    return _enqueue(rt, "labeler.jobs.apply_feedback", (entry_id, feedback_id), f"feedback-{job_safe(feedback_id)}")


def _enqueue(rt: Runtime, func: str, args: tuple[str, str], job_id: str) -> bool:
    s = rt.settings
    retry = Retry(max=s.job_retries, interval=s.retry_intervals_s) if s.job_retries else None
    try:
        rt.queue().enqueue_call(func, args=args, job_id=job_id, unique=True, retry=retry, timeout=s.job_timeout_s,
                                result_ttl=3600, failure_ttl=7 * 86_400)
    except DuplicateJobError:
        return False
    return True


def _base(transition: TransitionRecord, payload: dict[str, Any]) -> dict[str, Any]:
    return {"sample_id": transition.turn_id, "turn_id": transition.turn_id, "session_id": transition.session_id,
            "transition_id": transition.transition_id, "next_state": transition.next_state, **payload}


def label_transition(entry_id: str, transition_id: str) -> str:
    """Judge one transition and store its sample (revision of the turn); returns the outcome."""
    rt = runtime()
    s = rt.settings
    store = SampleStore(rt.redis)
    fields = _entry(rt.redis, TRANSITIONS_STREAM, entry_id)
    transition = TransitionRecord.model_validate_json(fields[b"record"])
    current = store.current(transition.turn_id)
    if current is not None and transition.transition_id in current.events:
        return "duplicate"
    started = time.perf_counter()
    try:
        turn = load_turn(rt.redis, transition.turn_id)
        if turn is None:
            raise LabelInputMissing(f"turn {transition.turn_id} is not stored (yet)")
        verdict_dict: dict[str, Any]
        if not transition.has_next_state or not transition.next_state:
            verdict_dict = {"reward": 0, "votes": [], "agreement": 0.0, "cls": "observation", "hard": False,
                            "reason": "no_next_state", "model": None, "prompt_version": None}
        else:
            verdict = rt.judge.judge(turn.request.messages, turn.response.message, transition.next_state)
            result = verdict.tally()
            decision = classify(result.reward, result.agreement, tau=s.tau, tau_hard=s.tau_hard)
            verdict_dict = {
                "reward": result.reward, "votes": list(verdict.votes),  # None = an invalid vote
                "agreement": result.agreement, "cls": decision.cls, "hard": decision.hard, "reason": decision.reason,
                "hint": select_hint(verdict.hints, s.hint_min_chars), "model": verdict.model,
                "prompt_version": verdict.prompt_version, "truncated": verdict.truncated, "errors": verdict.errors,
                "timings": verdict.timings,
            }
        payload = payload_from_turn(turn)
    except Exception as exc:
        if not _final_attempt():
            raise
        reason = f"judge_failed: {type(exc).__name__}: {exc}"[:500]
        verdict_dict = {"reward": 0, "votes": [], "agreement": 0.0, "cls": "observation", "hard": True,
                        "reason": reason, "model": None, "prompt_version": None}
        _write_judged(rt, store, transition, _base(transition, payload_from_turn(load_turn(rt.redis, transition.turn_id))),
                      verdict_dict, started)
        log.error("transition_unjudgeable", transition_id=transition_id, reason=reason)
        raise
    return _write_judged(rt, store, transition, _base(transition, payload), verdict_dict, started)


def _write_judged(rt: Runtime, store: SampleStore, transition: TransitionRecord, base: dict[str, Any],
                  verdict: dict[str, Any], started: float) -> str:
    verdict = {**verdict, "source_id": transition.transition_id, "at": time.time()}
    base["timings"] = {**verdict.get("timings", {}), "label_ms": (time.perf_counter() - started) * 1000}
    hard_reason: list[str] = []

    def build(current: SampleRecord | None) -> SampleRecord:
        hard_reason.clear()
        feedback = (current.verdicts.get("feedback") if current is not None else None) or None
        hard = bool(verdict.get("hard"))
        if feedback is not None and disagrees(verdict["reward"], feedback["reward"]):
            hard = True
            hard_reason.append("feedback_disagrees")
        elif hard:
            hard_reason.append(str(verdict.get("reason")))
        return apply_verdict(current, base, "judge", verdict, event_id=transition.transition_id, hard=hard or None)

    commit = store.commit(transition.turn_id, transition.transition_id, build)
    if commit.outcome == "written" and hard_reason:
        enqueue_hard(rt, transition.turn_id, hard_reason[0])
    log.info("transition_labeled", transition_id=transition.transition_id, turn_id=transition.turn_id,
             outcome=commit.outcome, cls=commit.sample.cls if commit.sample else None,
             reward=commit.sample.reward if commit.sample else None)
    return commit.outcome


def apply_feedback(entry_id: str, feedback_id: str) -> str:
    """Explicit feedback creates or overrides the turn's sample; a comment is a hint candidate."""
    rt = runtime()
    store = SampleStore(rt.redis)
    fields = _entry(rt.redis, FEEDBACK_STREAM, entry_id)
    feedback = FeedbackRecord.model_validate_json(fields[b"record"])
    turn = load_turn(rt.redis, feedback.turn_id)
    if turn is None and not _final_attempt():
        raise LabelInputMissing(f"turn {feedback.turn_id} is not stored (yet)")
    if turn is not None and feedback.scope is not None and feedback.scope != turn.scope:
        # given in another learning scope than the turn's: it must never reach that scope's lineage
        log.warning("feedback_scope_mismatch", feedback_id=feedback.feedback_id, turn_id=feedback.turn_id)
        return "scope_mismatch"
    comment = (feedback.comment or "").strip()
    candidates = [hint_from(comment)] if comment else []
    if comment and feedback.rating < 0 and accept_hint(comment, rt.settings.hint_min_chars):
        candidates.append(comment)
    hint = next((c for c in candidates if c), None)
    verdict = {
        "reward": feedback.rating, "votes": [feedback.rating], "agreement": 1.0,
        "cls": ("prefer" if feedback.rating > 0 else "avoid") if turn is not None else "observation",
        "hard": False, "reason": None if turn is not None else "turn_missing", "hint": hint, "comment": feedback.comment,
        "model": None, "prompt_version": None, "source_id": feedback.feedback_id, "at": time.time(),
    }
    base = {"sample_id": feedback.turn_id, "turn_id": feedback.turn_id, "session_id": turn.session_id if turn else "",
            **payload_from_turn(turn)}
    hard_reason: list[str] = []

    def build(current: SampleRecord | None) -> SampleRecord:
        hard_reason.clear()
        judged = current.verdicts.get("judge") if current is not None else None
        if judged is not None and disagrees(judged["reward"], feedback.rating):
            hard_reason.append("feedback_disagrees")
        return apply_verdict(current, base, "feedback", verdict, event_id=feedback.feedback_id,
                             hard=True if hard_reason else None)

    commit = store.commit(feedback.turn_id, feedback.feedback_id, build)
    if commit.outcome == "written" and hard_reason:
        enqueue_hard(rt, feedback.turn_id, hard_reason[0])
    log.info("feedback_applied", feedback_id=feedback.feedback_id, turn_id=feedback.turn_id, outcome=commit.outcome)
    return commit.outcome
