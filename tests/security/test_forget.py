"""``nextstate forget``: a person's turns, transitions, feedback, samples and hard cases are deleted from
a stack that recorded and labeled them (real proxy, real labeler), the audit log keeps the request and
the counts but no content, others' data stays, and the learner's next round skips what it already held."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
import redis
from rq.serializers import JSONSerializer

from labeler.dispatcher import Dispatcher
from labeler.jobs import Runtime, enqueue_hard, install
from labeler.records import HARD_QUEUE, LABEL_QUEUE, SAMPLES_STREAM
from labeler.settings import LabelerSettings
from labeler.worker import InlineWorker
from learner.data import SampleReader, select
from proxy.records import TRANSITIONS_STREAM, TURNS_STREAM
from registry.forget import Who, forget, key_hash_of
from registry.forget import main as forget_main
from registry.records import EVENTS_STREAM
from tests.proxy.conftest import wait_records
from tests.security.conftest import SUITE
from tests.security.stored import everything_stored
from tests.support import figures

PEOPLE = {"alice": "sk-alice-0123456789", "bob": "sk-bob-0123456789"}


def _converse(url: str, name: str, session: str) -> None:
    """Three turns of one conversation, then feedback on the first; every message names the person."""
    with openai.OpenAI(base_url=f"{url}/v1", api_key=PEOPLE[name], max_retries=0, timeout=10) as sdk:
        messages = [{"role": "user", "content": f"hello, {name} speaking"}]
        first = None
        for follow_up in (f"no, {name} wanted French", f"thanks from {name}"):
            raw = sdk.chat.completions.with_raw_response.create(
                model="m", messages=messages, user=name, extra_headers={"X-Session-Id": session})  # type: ignore[arg-type]
            first = first or raw.headers["x-nextstate-turn-id"]
            messages += [{"role": "assistant", "content": raw.parse().choices[0].message.content},
                         {"role": "user", "content": follow_up}]
        sdk.chat.completions.create(model="m", messages=messages, user=name,  # type: ignore[arg-type]
                                    extra_headers={"X-Session-Id": session, "X-Session-Done": "true"})
    feedback = httpx.post(f"{url}/v1/feedback", json={"turn_id": first, "rating": -1, "comment": f"{name} disliked"},
                          headers={"authorization": f"Bearer {PEOPLE[name]}"}, timeout=10)
    assert feedback.status_code == 200, feedback.text


def _label(redis_url: str) -> Runtime:
    rt = install(Runtime(settings=LabelerSettings(redis_url=redis_url, judge="embedded", dispatch_block_ms=1),
                         redis=redis.Redis.from_url(redis_url)))
    dispatcher = Dispatcher(rt, consumer="test")
    dispatcher.ensure_groups()
    dispatcher.run_once(block_ms=1)
    InlineWorker([rt.queue(LABEL_QUEUE)], connection=rt.redis, serializer=JSONSerializer).work(burst=True)
    return rt


@pytest.mark.parametrize("by", ["user", "key", "session"])
def test_forget_removes_a_person_everywhere(by: str, start_proxy: Callable[..., str], redis_url: str,
                                            redis_client: redis.Redis, tmp_path: Path) -> None:
    url = start_proxy()
    for name in PEOPLE:
        _converse(url, name, f"session-{name}")
    assert len(wait_records(redis_client, TRANSITIONS_STREAM, 6)) == 6
    rt = _label(redis_url)
    assert redis_client.xlen(SAMPLES_STREAM) >= 6
    alice_turns = [t["turn_id"] for _, f in redis_client.xrange(TURNS_STREAM)
                   if (t := json.loads(f[b"record"]))["session_id"] == "session-alice"]
    enqueue_hard(rt, alice_turns[0], "split_vote")  # a hard case waiting for the strong judge
    Dispatcher(rt, consumer="test").run_once(block_ms=1)  # the feedback's jobs, queued and left there
    reader = SampleReader(redis_client, group="learner", consumer="l1")
    reader.ensure_group()
    held = reader.read_all(1000)  # a learner holding every sample, waiting for a full batch
    rt.redis.close()

    who = {"user": Who(user="alice"), "key": Who(key_hash=key_hash_of(PEOPLE["alice"])),
           "session": Who(session="session-alice")}[by]
    counts = forget(redis_client, who)
    stored = everything_stored(redis_client, tmp_path / "home" / "spool")
    left = stored.count("alice")
    figures.add(SUITE, "forgotten person's records left in storage", left)
    assert left == 0, [line for line in stored.splitlines() if "alice" in line][:3]
    assert counts["turns"] == 3 and counts["transitions"] == 3 and counts["samples"] >= 3
    assert counts["feedback"] == 1 and counts["hard_cases"] == 1
    assert stored.count("bob") >= 10  # the other person's data is all there
    assert redis_client.xlen(TURNS_STREAM) == 3 and redis_client.xlen(TRANSITIONS_STREAM) == 3
    assert not any(alice_turns[0] in j for j in rt.queue(HARD_QUEUE).get_job_ids())

    events = [json.loads(f[b"event"]) for _, f in redis_client.xrange(EVENTS_STREAM)]
    assert [e["kind"] for e in events] == ["data_forgotten"]
    assert events[0]["evidence"]["by"] == by and events[0]["evidence"]["removed"] == counts
    assert "alice" not in json.dumps(events)  # the request, not the content (a user name is hashed)

    selection = select(held, method="combined", present=reader.present(e.entry_id for e in held))
    trained_turns = {e.sample.turn_id for e in selection.train if e.sample is not None}
    assert not trained_turns & set(alice_turns)
    assert len(selection.skipped["deleted"]) == counts["samples"]


def test_forget_command_reports_counts(redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setenv("NEXTSTATE_REDIS_URL", redis_url)
    monkeypatch.setenv("NEXTSTATE_HOME", str(tmp_path))
    redis_client.xadd(TURNS_STREAM, {"record": json.dumps({"turn_id": "t1", "session_id": "s1",
                                                           "client_key_hash": key_hash_of("sk-x")})})
    assert forget_main(["--key", "sk-x"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["removed"]["turns"] == 1 and report["forgotten"] == {"by": "key", "key_hash": key_hash_of("sk-x")}
    with pytest.raises(SystemExit):
        forget_main([])  # one of --session, --key, --user is required
