"""Every multi-key script, transaction and read of nextstate keeps to one Redis Cluster hash slot.

Three checks: the keys each one touches hash to one slot (``redis.crc.key_slot``); the places in the code
that run one are exactly those listed here (a new one has to be added, with its keys); and the real code
runs them against a one-node Redis Cluster, which refuses (``CROSSSLOT``) any whose keys span slots.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from redis.crc import key_slot

from labeler.dispatcher import Dispatcher
from labeler.jobs import Runtime
from labeler.records import SAMPLES_STREAM, sample_key
from labeler.samples import SampleStore, apply_verdict
from labeler.settings import LabelerSettings
from learner.data import SampleReader
from proxy.access import ClientKey
from proxy.app import create_app
from proxy.ratelimit import SharedLimiter
from proxy.records import (
    FEEDBACK_STREAM,
    TRANSITIONS_STREAM,
    TURNS_STREAM,
    record_seen_key,
    response_context_key,
    session_key,
    turn_key,
)
from proxy.redis_connect import connect, connect_async
from proxy.settings import ProxySettings
from proxy.store import IDLE_SESSIONS_KEY, chain_key
from registry.actions import Control
from registry.forget_scope import forget_scope
from registry.publisher import Publisher
from registry.records import RETIRED_KEY, SCOPES_KEY, GateVerdict, Manifest, scope_keys
from registry.routing import write_table
from registry.store import Registry
from tests.support.fake_upstream import FakeUpstream
from tests.support.redis_cluster import RedisCluster
from tests.support.servers import serve_in_thread

ROOT = Path(__file__).resolve().parents[1]

# Where the code runs a multi-key script, a transaction or a read of several streams. A new one: add it
# here and its keys to SLOT_GROUPS (or split it, saying in a comment why it needs no atomicity).
MULTI_KEY_SITES = {
    "proxy/store.py": 2,  # _WRITE (seen, stream, turn copy); _RECORD_TURN (a turn, its session, transitions)
    "proxy/ratelimit.py": 1,  # _TAKE: one client key's bucket (one key)
    "labeler/samples.py": 1,  # _COMMIT (a turn's current sample, the samples stream)
    "labeler/dispatcher.py": 1,  # XREADGROUP over the transitions and feedback streams
    "learner/data.py": 1,  # XREADGROUP over the samples stream (one key)
    "registry/store.py": 1,  # atomic(): states, aliases, canary, audit; the learner's ack of its samples
    "registry/routing.py": 1,  # WATCH/MULTI of the routing table (one key)
}
SITE = re.compile(r"register_script\(|transaction=True|\.pipeline\(\)|xreadgroup\(|\.eval\(\s*[\"'A-Z_]")

SLOT_GROUPS = {
    "records": [TURNS_STREAM, TRANSITIONS_STREAM, FEEDBACK_STREAM, record_seen_key("r-1"), turn_key("t-1"),
                session_key("s-1"), IDLE_SESSIONS_KEY, chain_key("d" * 64), response_context_key("resp_1")],
    "learning": [SAMPLES_STREAM, sample_key("t-1"), SCOPES_KEY, RETIRED_KEY, *scope_keys("global"),
                 *scope_keys("u-0123456789abcdef"), *scope_keys("local")],
}


@pytest.mark.parametrize("group", sorted(SLOT_GROUPS))
def test_the_keys_one_script_or_transaction_touches_share_a_slot(group: str) -> None:
    slots = {key: key_slot(key.encode()) for key in SLOT_GROUPS[group]}
    assert len(set(slots.values())) == 1, slots


def test_every_multi_key_site_is_listed() -> None:
    found = {}
    for package in ("proxy", "labeler", "learner", "registry", "nextstate"):
        for path in sorted((ROOT / package).rglob("*.py")):
            count = len(SITE.findall(path.read_text()))
            if count:
                found[str(path.relative_to(ROOT))] = count
    assert found == MULTI_KEY_SITES


@pytest.fixture(scope="module")
def one_node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("slot-cluster"), masters=1).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(one_node_cluster: RedisCluster) -> Iterator[str]:
    one_node_cluster.flush()
    yield one_node_cluster.url
    one_node_cluster.flush()


def test_a_cluster_refuses_keys_of_two_slots(cluster_url: str) -> None:
    """The check below is real: the server refuses a script whose keys span slots."""
    with redis.Redis.from_url(cluster_url.replace("redis+cluster", "redis")) as node, \
            pytest.raises(redis.ResponseError, match="same slot"):
        node.eval("return redis.call('MSET', KEYS[1], 1, KEYS[2], 2)", 2, "a", "b")


def test_the_proxy_records_on_a_cluster(cluster_url: str, tmp_path: Path) -> None:
    """Turns, linked sessions (by header and by fingerprint), several choices, Responses chaining, a closing
    header, feedback and the idle sweep: every record write of the proxy, on a cluster."""
    fake = FakeUpstream()
    with serve_in_thread(fake.app) as upstream:
        settings = ProxySettings(home=tmp_path / "home", redis_url=cluster_url, upstream_url=f"{upstream}/v1",
                                 read_timeout_s=5.0, redis_timeout_s=2.0, sweep_interval_s=0.1,
                                 session_idle_timeout_s=0.5)
        with serve_in_thread(create_app(settings), timeout_graceful_shutdown=2) as proxy_url, \
                openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="sk-test", max_retries=0, timeout=10) as sdk:
            messages: list[dict[str, Any]] = [{"role": "user", "content": "Pick a number."}]
            first = sdk.chat.completions.with_raw_response.create(model="tiny-chat", messages=messages, n=2)  # type: ignore[arg-type]
            messages += [{"role": "assistant", "content": first.parse().choices[1].message.content},
                         {"role": "user", "content": "Why that one?"}]
            sdk.chat.completions.create(model="tiny-chat", messages=messages,  # type: ignore[arg-type]
                                        extra_headers={"X-Session-Done": "true"})
            sdk.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "Left idle."}],
                                        extra_headers={"X-Session-Id": "idle"})
            response = sdk.responses.create(model="tiny-chat", input="Start a story.")
            sdk.responses.create(model="tiny-chat", input="Go on.", previous_response_id=response.id)
            rated = first.headers["x-nextstate-turn-id"]
            assert httpx.post(f"{proxy_url}/v1/feedback", json={"turn_id": rated, "rating": 1}, timeout=10).status_code == 200
            with connect(cluster_url) as client:
                deadline = time.monotonic() + 20
                while client.xlen(TRANSITIONS_STREAM) < 6 and time.monotonic() < deadline:
                    time.sleep(0.1)
                transitions = [json.loads(f[b"record"]) for _, f in client.xrange(TRANSITIONS_STREAM)]
                turns = [json.loads(f[b"record"]) for _, f in client.xrange(TURNS_STREAM)]
                assert client.xlen(FEEDBACK_STREAM) == 1
    # the two choices (one chosen, one not), the closing turn, the idle session, and both Responses turns
    assert sorted(t["reason"] for t in transitions) == [
        "idle_timeout", "idle_timeout", "next_request", "next_request", "not_chosen", "session_done"]
    assert len(turns) == 6 and sorted(t["turn_id"] for t in transitions) == sorted(t["turn_id"] for t in turns)


def test_samples_the_dispatcher_and_the_registry_on_a_cluster(cluster_url: str, redis_url: str, tmp_path: Path) -> None:
    """The sample commit script, the dispatcher's read of two streams, the learner's reader and its ack
    inside the registry's transaction, every registry action in two scopes, and the routing table's WATCH."""
    client = connect(cluster_url)
    try:
        # the dispatcher reads both record streams in one XREADGROUP; its queues are on a single node
        rt = Runtime.open(LabelerSettings(redis_url=cluster_url, queue_url=redis_url, dispatch_block_ms=1,
                                          home=tmp_path / "home"), cluster_url)
        dispatcher = Dispatcher(rt, consumer="slots")
        dispatcher.ensure_groups()
        assert dispatcher.run_once(block_ms=1) == 0
        rt.queues.close()

        store = SampleStore(client)
        for turn_id in ("t-1", "t-2"):
            base = {"sample_id": turn_id, "turn_id": turn_id, "session_id": "s", "messages": [{"role": "user", "content": "q"}],
                    "response": {"role": "assistant", "content": "a"}}
            verdict = {"reward": 1, "votes": [1, 1, 1], "agreement": 1.0, "cls": "prefer"}
            for event in ("e-1", "e-1", "e-2"):
                store.commit(turn_id, event, lambda current, event=event, base=base, verdict=verdict:
                             apply_verdict(current, base, "judge", verdict, event_id=event))
        assert client.xlen(SAMPLES_STREAM) == 4

        reader = SampleReader(client, consumer="slots")
        entries = reader.read_all(10)
        assert len(entries) == 4 and reader.stored_revisions(["t-1", "t-2"]) == {"t-1": 1, "t-2": 1}
        registry = Registry(client, tmp_path / "adapters", base_model="tiny-chat")
        control = Control(registry, Publisher(urls=[], drain_seconds=0.0))
        for scope in ("global", "u-0123456789abcdef"):
            scoped = control.scoped(scope)
            versions = []
            for _ in range(3):
                version = scoped.registry.allocate_version()
                staging = scoped.registry.staging_dir(version)
                (staging / "adapter_config.json").write_text("{}")
                (staging / "adapter_model.safetensors").write_bytes(b"")
                with scoped.registry.atomic() as transaction:
                    scoped.registry.publish(staging, Manifest(version=version, base_model="tiny-chat", method="combined",
                                                              scope=scope))
                    reader.ack([entries.pop().entry_id] if entries else [], via=transaction)
                scoped.registry.record_gate(version, GateVerdict(passed=True))
                versions.append(version)
            scoped.promote(versions[0], actor="operator")
            scoped.start_canary(versions[1], 0.25, actor="controller")
            scoped.promote(versions[1], actor="controller")
            scoped.rollback(actor="operator")
            scoped.start_canary(versions[2], 0.1, actor="controller")
            scoped.reject(versions[2], actor="controller")
            scoped.pin(versions[0])
            scoped.release()
        assert reader.backlog() == 0
        assert registry.scopes() == ["global", "u-0123456789abcdef"]
        stored = control.sync()
        assert write_table(client, stored).revision == stored.revision + 1
        forgotten = forget_scope(control, "u-0123456789abcdef")
        assert len(forgotten.versions) == 3 and registry.scopes() == ["global"]
    finally:
        client.close()


def test_the_shared_rate_limit_on_a_cluster(cluster_url: str) -> None:
    """The bucket script runs on a cluster (its one key), and does not fall back to the local bucket."""
    key = ClientKey(digest=b"k" * 32, rpm=60, burst=2)

    async def take_three() -> list[float]:
        client = connect_async(cluster_url)
        try:
            limiter = SharedLimiter()
            waits = [await limiter.take(key, client) for _ in range(3)]
            assert limiter.local.buckets == {}  # every answer came from Redis
            return waits
        finally:
            await client.aclose()

    waits = asyncio.run(take_three())
    assert waits[:2] == [0.0, 0.0] and 0 < waits[2] <= 1.0
