"""Transitions and feedback through the dispatcher and real RQ workers (burst) on a real Redis."""

from __future__ import annotations

import time

import redis
from rq.registry import FailedJobRegistry

from labeler.dispatcher import DEAD_LETTER_STREAM, Dispatcher
from labeler.records import HARD_QUEUE, SAMPLES_STREAM, SampleRecord, sample_key
from labeler.samples import SampleStore
from proxy.records import TRANSITIONS_STREAM
from tests.labeler.support import dispatch, put_feedback, put_transition, put_turn, runtime, work


def samples(client: redis.Redis) -> list[SampleRecord]:
    return SampleStore(client).history()


def test_each_transition_becomes_one_labeled_sample(redis_url: str, redis_client: redis.Redis) -> None:
    rt = runtime(redis_url)
    for turn_id, text in [("t-thanks", "Thanks, perfect!"), ("t-fix", "Too long. Please answer in one word."),
                          ("t-end", None), ("t-tool", "Traceback (most recent call last): KeyError")]:
        put_turn(redis_client, turn_id)
        put_transition(redis_client, turn_id, text, role="tool" if turn_id == "t-tool" else "user")
    assert dispatch(rt) == 4
    work(rt)
    by_turn = {s.turn_id: s for s in samples(redis_client)}
    assert len(samples(redis_client)) == 4
    assert (by_turn["t-thanks"].cls, by_turn["t-thanks"].reward) == ("prefer", 1)
    fix = by_turn["t-fix"]
    assert (fix.cls, fix.reward, fix.hint) == ("avoid", -1, "Answer in one word.")
    assert (by_turn["t-end"].cls, by_turn["t-end"].reason) == ("observation", "no_next_state")
    assert by_turn["t-tool"].cls == "avoid"
    for sample in by_turn.values():
        assert sample.serving_version == "v2" and sample.source == "judge" and sample.revision == 0
        assert sample.messages[0]["content"].startswith("What is") and sample.response["role"] == "assistant"
        assert sample.record_id == f"{sample.turn_id}:r0" and sample.transition_id == f"tr-{sample.turn_id}"
        assert "label_ms" in sample.timings
        assert sample.cls == "observation" or "judge_ms" in sample.timings
    assert fix.judge_model == "embedded" and fix.prompt_version == "embedded-v1"
    current = SampleRecord.model_validate_json(redis_client.get(sample_key("t-fix")))
    assert current == fix
    # the stream entry uses the shared convention: one field named "record"
    _, fields = redis_client.xrange(SAMPLES_STREAM)[0]
    assert list(fields) == [b"record"]


def test_redelivery_and_duplicates_label_once(redis_url: str, redis_client: redis.Redis) -> None:
    rt = runtime(redis_url, claim_idle_ms=1)
    put_turn(redis_client, "t1")
    put_transition(redis_client, "t1", "No, that's wrong.")
    put_transition(redis_client, "t1", "No, that's wrong.")  # the same record appended twice
    # a dispatcher reads the entries and dies before acking them
    Dispatcher(rt, consumer="dead").ensure_groups()
    redis_client.xreadgroup(rt.settings.consumer_group, "dead", {TRANSITIONS_STREAM: ">"}, count=10)
    time.sleep(0.02)  # idle longer than claim_idle_ms
    assert dispatch(rt, consumer="alive") == 2  # re-claimed with XAUTOCLAIM
    work(rt)
    assert dispatch(rt, consumer="alive") == 0
    # the same job enqueued again after it finished: the sample store sees the event was applied
    from labeler.jobs import label_transition

    entry = redis_client.xrange(TRANSITIONS_STREAM)[0][0].decode()
    assert label_transition(entry, "tr-t1") == "duplicate"
    history = samples(redis_client)
    assert [(s.turn_id, s.revision, s.cls) for s in history] == [("t1", 0, "avoid")]
    assert redis_client.xpending(TRANSITIONS_STREAM, rt.settings.consumer_group)["pending"] == 0


def test_feedback_overrides_the_judge_and_keeps_both(redis_url: str, redis_client: redis.Redis) -> None:
    rt = runtime(redis_url)
    put_turn(redis_client, "t1")
    put_transition(redis_client, "t1", "Great, thanks!")
    dispatch(rt)
    work(rt)
    put_feedback(redis_client, "t1", -1, "Too long, please answer in one word.")
    dispatch(rt)
    work(rt)
    history = samples(redis_client)
    assert [(s.revision, s.source, s.cls) for s in history] == [(0, "judge", "prefer"), (1, "feedback", "avoid")]
    latest = history[-1]
    assert latest.reward == -1 and latest.hint == "Answer in one word."
    assert latest.previous is not None and latest.previous["reward"] == 1
    assert set(latest.verdicts) == {"judge", "feedback"}
    assert latest.hard and latest.verdicts["feedback"]["comment"].startswith("Too long")
    # judge (+1) vs feedback (-1) disagree: a hard case
    assert rt.queue(HARD_QUEUE).get_job_ids() == ["hard-t1"]
    # the same feedback delivered again changes nothing
    put_feedback(redis_client, "t1", -1, "Too long, please answer in one word.")
    dispatch(rt)
    work(rt)
    assert len(samples(redis_client)) == 2


def test_feedback_from_another_scope_never_reaches_the_turns_sample(redis_url: str, redis_client: redis.Redis) -> None:
    rt = runtime(redis_url)
    put_turn(redis_client, "t1")  # recorded in the global scope
    put_transition(redis_client, "t1", "Great, thanks!")
    dispatch(rt)
    work(rt)
    put_feedback(redis_client, "t1", -1, "Answer in one word.", feedback_id="other", scope="k-0123456789abcdef")
    put_feedback(redis_client, "t1", -1, "Answer in lowercase.", feedback_id="own", scope="global")
    dispatch(rt)
    work(rt)
    history = samples(redis_client)
    assert [(s.revision, s.source, s.cls) for s in history] == [(0, "judge", "prefer"), (1, "feedback", "avoid")]
    assert history[-1].hint == "Answer in lowercase."  # the turn's own scope's feedback, not the other one's
    assert history[-1].verdicts["feedback"]["comment"] == "Answer in lowercase."


def test_feedback_before_the_judge_still_wins(redis_url: str, redis_client: redis.Redis) -> None:
    rt = runtime(redis_url)
    put_turn(redis_client, "t1")
    put_feedback(redis_client, "t1", 1)
    dispatch(rt)
    work(rt)
    put_transition(redis_client, "t1", "Thanks!")
    dispatch(rt)
    work(rt)
    history = samples(redis_client)
    assert [(s.revision, s.source, s.cls) for s in history] == [(0, "feedback", "prefer"), (1, "feedback", "prefer")]
    assert history[-1].verdicts["judge"]["reward"] == 1 and not history[-1].hard
    assert rt.queue(HARD_QUEUE).get_job_ids() == []


def test_unparseable_entries_are_kept_in_a_dead_letter_stream(redis_url: str, redis_client: redis.Redis) -> None:
    rt = runtime(redis_url)
    redis_client.xadd(TRANSITIONS_STREAM, {"record": "{not json"})
    redis_client.xadd(TRANSITIONS_STREAM, {"wrong": "field"})
    assert dispatch(rt) == 2
    dead = redis_client.xrange(DEAD_LETTER_STREAM)
    assert len(dead) == 2 and dead[0][1][b"record"] == b"{not json"
    assert redis_client.xpending(TRANSITIONS_STREAM, rt.settings.consumer_group)["pending"] == 0


def test_unjudgeable_transition_becomes_observation_after_retries(redis_url: str, redis_client: redis.Redis) -> None:
    rt = runtime(redis_url, judge="llm", judge_model="openai/tiny-chat", judge_api_base="http://127.0.0.1:9/v1",
                 judge_timeout_s=2, job_retries=2)
    put_turn(redis_client, "t1")
    put_transition(redis_client, "t1", "Thanks!")
    dispatch(rt)
    work(rt)
    history = samples(redis_client)
    assert len(history) == 1
    sample = history[0]
    assert sample.cls == "observation" and sample.hard and sample.reward == 0
    assert sample.reason is not None and sample.reason.startswith("judge_failed: JudgeUnavailable")
    assert sample.messages  # still carries its turn
    failed = FailedJobRegistry(queue=rt.queue())
    assert failed.get_job_ids() == ["label-tr-t1"]
    job = rt.queue().fetch_job("label-tr-t1")
    assert job is not None and "JudgeUnavailable" in (job.latest_result().exc_string or "")  # type: ignore[union-attr]
    assert rt.queue(HARD_QUEUE).get_job_ids() == ["hard-t1"]
    # the sweep finds the failed job already turned into a sample: nothing twice
    assert Dispatcher(rt).sweep_failed() == 1
    assert len(samples(redis_client)) == 1


def test_missing_turn_is_retried_then_kept_as_observation(redis_url: str, redis_client: redis.Redis) -> None:
    rt = runtime(redis_url, job_retries=1)
    put_transition(redis_client, "ghost", "Thanks!")
    dispatch(rt)
    work(rt)
    (sample,) = samples(redis_client)
    assert sample.cls == "observation" and sample.reason.startswith("judge_failed: LabelInputMissing")  # type: ignore[union-attr]
    assert sample.messages == []


def test_inputs_cut_to_budget_are_marked_truncated(redis_url: str, redis_client: redis.Redis) -> None:
    rt = runtime(redis_url, next_state_budget_chars=200)
    put_turn(redis_client, "t1")
    put_transition(redis_client, "t1", "No, that's wrong. " + "blah " * 2000)
    dispatch(rt)
    work(rt)
    (sample,) = samples(redis_client)
    assert sample.truncated and sample.cls == "avoid"
    assert len(sample.next_state[0]["content"]) > 10_000  # the stored next state itself is never cut


def test_feedback_for_a_turn_not_stored_yet_trains_once_the_turn_arrives(redis_url: str,
                                                                         redis_client: redis.Redis) -> None:
    rt = runtime(redis_url, job_retries=0)
    put_feedback(redis_client, "late", -1, "Answer in French.")
    dispatch(rt)
    work(rt)
    (first,) = samples(redis_client)
    assert (first.cls, first.reason, first.messages) == ("observation", "turn_missing", [])
    put_turn(redis_client, "late")
    put_transition(redis_client, "late", "Thanks!")
    dispatch(rt)
    work(rt)
    latest = samples(redis_client)[-1]
    assert (latest.revision, latest.source, latest.cls, latest.reason) == (1, "feedback", "avoid", None)
    assert latest.messages and latest.hint == "Answer in French." and latest.hard  # judge +1 vs feedback -1
