"""The recording and labeling loop on a Redis Cluster of three masters, started here on loopback.

A real proxy records two conversations and a feedback through ``NEXTSTATE_REDIS_URL=redis+cluster://…``;
the labeler's dispatcher hands the transitions and the feedback to RQ, whose queues live on a single-node
Redis of their own (``NEXTSTATE_QUEUE_URL``: RQ does not run on a cluster); a real worker process labels
them with the embedded judge; the learner's sample reader reads the samples and acknowledges them in the
transaction that records a candidate. Every record, transition and sample arrives exactly once, and a
second pass of the dispatcher and the reader finds nothing left to do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from prometheus_client import generate_latest
from redis.crc import key_slot

from labeler.dispatcher import Dispatcher
from labeler.jobs import Runtime
from labeler.records import LABEL_QUEUE, LEARNING_TAG, SAMPLES_STREAM, SampleRecord, sample_key
from labeler.settings import LabelerSettings
from learner.data import SampleReader
from proxy.app import create_app
from proxy.records import FEEDBACK_STREAM, RECORDS_TAG, TRANSITIONS_STREAM, TURNS_STREAM, turn_key
from proxy.redis_connect import connect, connect_queues
from proxy.settings import ProxySettings
from registry.exporter import build_registry
from registry.forget import Who, forget
from registry.records import Manifest
from registry.store import Registry
from tests.support.fake_upstream import FakeUpstream
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer
from tests.support.servers import serve_in_thread

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    started = RedisCluster(tmp_path / "cluster", masters=3).start()
    yield started
    started.stop()


def records(client: redis.Redis, stream: str) -> list[dict[str, Any]]:
    return [json.loads(fields[b"record"]) for _, fields in client.xrange(stream)]


def wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def converse(proxy_url: str) -> str:
    """Two conversations (one named by header, one linked by fingerprint) and a thumbs-down; the rated turn."""
    with openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="sk-test", max_retries=0, timeout=10) as sdk:
        messages: list[dict[str, Any]] = [{"role": "user", "content": "Name a colour."}]
        rated = ""
        for index, follow_up in enumerate(("Another one, please.", "Shorter, please.", "Thanks.")):
            headers = {"X-Session-Id": "named", **({"X-Session-Done": "true"} if index == 2 else {})}
            raw = sdk.chat.completions.with_raw_response.create(model="tiny-chat", messages=messages,  # type: ignore[arg-type]
                                                                extra_headers=headers)
            rated = rated or raw.headers["x-nextstate-turn-id"]
            reply = raw.parse().choices[0].message.content
            messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": follow_up}]
        plain: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
        first = sdk.chat.completions.create(model="tiny-chat", messages=plain)  # type: ignore[arg-type]
        plain += [{"role": "assistant", "content": first.choices[0].message.content},
                  {"role": "user", "content": "No, say it in French."}]
        sdk.chat.completions.create(model="tiny-chat", messages=plain,  # type: ignore[arg-type]
                                    extra_headers={"X-Session-Done": "true"})
    answer = httpx.post(f"{proxy_url}/v1/feedback", json={"turn_id": rated, "rating": -1, "comment": "too long"},
                        timeout=10)
    assert answer.status_code == 200, answer.text
    return rated


def run_worker(cluster_url: str, queue_url: str, home: Path) -> None:
    """One real RQ worker process (``nextstate worker --child --burst``): data on the cluster, queues beside it."""
    env = {**os.environ, "NEXTSTATE_REDIS_URL": cluster_url, "NEXTSTATE_QUEUE_URL": queue_url,
           "NEXTSTATE_JUDGE": "embedded", "NEXTSTATE_HOME": str(home), "NEXTSTATE_LOG_JSON": "true"}
    done = subprocess.run([sys.executable, "-m", "labeler", "worker", "--child", "--burst"], cwd=ROOT, env=env,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_proxy_labeler_and_learner_reader_on_a_redis_cluster(cluster: RedisCluster, tmp_path: Path) -> None:
    queues = RedisServer(tmp_path / "queues").start()
    data = connect(cluster.url, socket_timeout=5)
    try:
        fake = FakeUpstream()
        with serve_in_thread(fake.app) as upstream:
            settings = ProxySettings(home=tmp_path / "home", redis_url=cluster.url, upstream_url=f"{upstream}/v1",
                                     read_timeout_s=5.0, redis_timeout_s=2.0, sweep_interval_s=0.1)
            with serve_in_thread(create_app(settings), timeout_graceful_shutdown=2) as proxy_url:
                rated = converse(proxy_url)
                wait_for(lambda: len(data.xrange(TRANSITIONS_STREAM)) >= 5 and data.xlen(FEEDBACK_STREAM) >= 1,
                         "the proxy's records")
        # nothing went to the spool: every record was written to the cluster
        assert not any(p.stat().st_size for p in (tmp_path / "home" / "spool").rglob("*.jsonl"))

        turns = records(data, TURNS_STREAM)
        transitions = records(data, TRANSITIONS_STREAM)
        assert len(turns) == 5 and len({t["turn_id"] for t in turns}) == 5
        assert Counter(t["session_id"] for t in turns).most_common(1)[0] == ("named", 3)
        assert sorted(t["turn_id"] for t in transitions) == sorted(t["turn_id"] for t in turns)  # one each
        reasons = Counter(t["reason"] for t in transitions)
        assert reasons == {"next_request": 3, "session_done": 2}, reasons
        assert [t["has_next_state"] for t in transitions].count(True) == 3
        assert [f["turn_id"] for f in records(data, FEEDBACK_STREAM)] == [rated]

        # the labeler: the dispatcher enqueues one job per transition and feedback, a worker process runs them
        labeler = LabelerSettings(redis_url=cluster.url, queue_url=queues.url, judge="embedded", dispatch_block_ms=1,
                                  home=tmp_path / "home")
        rt = Runtime.open(labeler, cluster.url)
        try:
            dispatcher = Dispatcher(rt, consumer="cluster-test")
            dispatcher.ensure_groups()
            assert dispatcher.run_once(block_ms=1) == 6
            assert rt.queue(LABEL_QUEUE).count == 6  # on the queue Redis, not on the cluster
            run_worker(cluster.url, queues.url, tmp_path / "worker-home")
            assert dispatcher.run_once(block_ms=1) == 0  # everything was acknowledged
            assert dispatcher.sweep_failed() == 0
            assert rt.queues.keys("rq:job:*") and not list(data.scan_iter(match="rq:*"))  # RQ kept off the cluster
        finally:
            rt.redis.close()
            rt.queues.close()

        samples = [SampleRecord.model_validate_json(f[b"record"]) for _, f in data.xrange(SAMPLES_STREAM)]
        revisions = Counter((s.turn_id, s.revision) for s in samples)
        assert set(revisions.values()) == {1}  # no revision written twice
        assert {s.turn_id for s in samples} == {t["turn_id"] for t in turns}
        current = {t["turn_id"]: SampleRecord.model_validate_json(data.get(sample_key(t["turn_id"]))) for t in turns}
        assert current[rated].source == "feedback" and current[rated].reward == -1
        assert all(c.revision == max(r for (tid, r) in revisions if tid == turn) for turn, c in current.items())

        # the learner's reader: every revision once, acknowledged with the candidate that trained on it
        reader = SampleReader(data, consumer="cluster-learner")
        entries = reader.read_all(100)
        assert len(entries) == len(samples) and len({e.entry_id for e in entries}) == len(entries)
        assert reader.stored_revisions(current) == {turn: c.revision for turn, c in current.items()}
        registry = Registry(data, tmp_path / "adapters", base_model="tiny-chat", scope="u-cluster")
        version = registry.allocate_version()
        with registry.atomic() as transaction:
            registry.publish(registry.staging_dir(version), Manifest(version=version, base_model="tiny-chat",
                             method="combined", scope="u-cluster", sample_ids=[e.entry_id for e in entries]))
            reader.ack([e.entry_id for e in entries], via=transaction)
        assert registry.get(version).state == "candidate" and registry.scopes() == ["global", "u-cluster"]
        assert reader.backlog() == 0
        assert SampleReader(data, consumer="cluster-learner").read_all(100) == []

        # the record keys and the learning keys each keep to their tag's slot, on different masters here
        assert key_slot(TURNS_STREAM.encode()) == key_slot(RECORDS_TAG.strip("{}").encode())
        assert key_slot(SAMPLES_STREAM.encode()) == key_slot(LEARNING_TAG.strip("{}").encode())
        nodes = {data.get_node_from_key(key).name for key in (TURNS_STREAM, SAMPLES_STREAM)}  # type: ignore[attr-defined]
        assert len(nodes) == 2, nodes

        # what operators run against it: the exporter's scrape and forgetting a session
        with connect_queues(cluster.url, queues.url) as queue_client:
            scrape = generate_latest(build_registry(data, queues=queue_client)).decode()
            assert "nextstate_exporter_up 1.0" in scrape
            removed = forget(data, Who(session="named"), queues=queue_client)
        assert removed["turns"] == 3 and removed["transitions"] == 3, removed
        assert len(records(data, TURNS_STREAM)) == 2
        assert all(data.get(turn_key(t["turn_id"])) is None for t in turns if t["session_id"] == "named")
    finally:
        data.close()
        queues.stop()


def test_the_proxy_serves_through_a_cluster_outage_and_replays_its_spool(cluster: RedisCluster, tmp_path: Path) -> None:
    """Every node down: requests are served, records wait in the spool; the cluster back: each is written once."""
    fake = FakeUpstream()
    data = connect(cluster.url, socket_timeout=5)
    try:
        with serve_in_thread(fake.app) as upstream:
            settings = ProxySettings(home=tmp_path / "home", redis_url=cluster.url, upstream_url=f"{upstream}/v1",
                                     read_timeout_s=5.0, redis_timeout_s=0.5, replay_interval_s=0.2)
            with serve_in_thread(create_app(settings), timeout_graceful_shutdown=2) as proxy_url, \
                    openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="sk-test", max_retries=0, timeout=20) as sdk:
                messages: list[dict[str, Any]] = [{"role": "user", "content": "One."}]

                def ask(follow_up: str) -> None:
                    reply = sdk.chat.completions.create(model="tiny-chat", messages=messages,  # type: ignore[arg-type]
                                                        extra_headers={"X-Session-Id": "outage"})
                    messages.extend([{"role": "assistant", "content": reply.choices[0].message.content},
                                     {"role": "user", "content": follow_up}])

                ask("Two.")
                wait_for(lambda: data.xlen(TURNS_STREAM) == 1, "the first turn")
                cluster.stop()
                started = time.monotonic()
                ask("Three.")
                ask("Four.")
                served_s = time.monotonic() - started
                cluster.restart()
                wait_for(lambda: data.xlen(TURNS_STREAM) >= 3 and data.xlen(TRANSITIONS_STREAM) >= 2,
                         "the spooled records", timeout=60)
                time.sleep(0.5)  # a second replay would show here
        turns = records(data, TURNS_STREAM)
        transitions = records(data, TRANSITIONS_STREAM)
        assert len(turns) == 3 and len({t["turn_id"] for t in turns}) == 3
        assert [t["reason"] for t in transitions] == ["next_request", "next_request"]
        assert [t["turn_id"] for t in transitions] == [t["turn_id"] for t in turns[:2]]
        assert served_s < 10, served_s
    finally:
        data.close()
