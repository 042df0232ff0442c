"""The dashboard end to end: a real proxy serving it behind the admin token, real Redis, a real registry
with real PEFT adapter files, turns recorded by the proxy, and headless Chromium drawing the page.

The turns the proxy recorded are labeled by the real labeler (dispatcher, RQ worker, embedded judge),
three jobs left queued; six hours of earlier samples, written with the labeler's record schema, give
the reward chart a time axis.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from rq.serializers import JSONSerializer

from labeler.dispatcher import Dispatcher
from labeler.jobs import Runtime, install
from labeler.records import LABEL_QUEUE, SAMPLES_STREAM, SampleRecord
from labeler.settings import LabelerSettings
from labeler.worker import InlineWorker
from proxy.app import create_app
from proxy.records import TRANSITIONS_STREAM
from proxy.settings import ProxySettings
from registry.actions import Control
from registry.dashboard import dashboard_for
from registry.publisher import Publisher
from registry.records import GateVerdict, Manifest
from registry.store import Registry
from tests.e2e.browser import Browser
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "dashboard-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_adapter(directory: Path) -> Path:
    """Real LoRA adapter files, saved by peft from a tiny randomly initialised Qwen2 model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    get_peft_model(Qwen2ForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(directory)
    return directory


def build_registry(client: redis.Redis, root: Path) -> Registry:
    """v1 promoted, v2 failed the gate, v3 in canary at 25%: every decision through the real actions."""
    registry = Registry(client, root / "adapters", base_model="tiny-chat")
    adapter = make_adapter(root / "adapter")
    gates = {"v1": GateVerdict(passed=True), "v2": GateVerdict(passed=False, reasons=["sacred: case 3 regressed"]),
             "v3": GateVerdict(passed=True)}
    for parent in (None, "v1", "v1"):
        version = registry.allocate_version()
        staging = registry.staging_dir(version)
        shutil.copytree(adapter, staging, dirs_exist_ok=True)
        registry.publish(staging, Manifest(version=version, parent=parent, base_model="builtin:tiny-chat",
                                           method="combined", metrics={"loss": 0.5}))
        registry.record_gate(version, gates[version])
    control = Control(registry, Publisher(urls=[], drain_seconds=0.0))
    control.promote("v1", actor="operator", reason="first stable version")
    control.start_canary("v3", 0.25, actor="controller")
    alice = control.scoped("alice")  # a personal scope whose first candidate is in its canary
    staging = alice.registry.staging_dir("v1")
    shutil.copytree(adapter, staging, dirs_exist_ok=True)
    alice.registry.publish(staging, Manifest(version=alice.registry.allocate_version(), base_model="builtin:tiny-chat",
                                             method="combined", scope="alice", started_from="v1"))
    alice.registry.record_gate("v1", GateVerdict(passed=True))
    alice.start_canary("v1", 0.5, actor="controller")
    return registry


def history(now: float) -> list[SampleRecord]:
    """Six hours of labeled samples: base before v1, then v1 improving, then the v3 canary beside it."""
    rows = []
    for i in range(72):  # one sample every 5 minutes
        t = now - 6 * 3600 + i * 300
        version = None if i < 24 else "v1"
        good = (i % 4 != 0) if version else (i % 2 == 0)  # v1 75% prefer, base 50%
        rows.append(SampleRecord(
            record_id=f"h{i}:r0", sample_id=f"h{i}:r0", turn_id=f"h{i}", session_id=f"hs{i // 3}",
            serving_version=version, cls="prefer" if good else "avoid", reward=1 if good else -1,
            votes=[1, 1, 1] if good else [-1, -1, 1], agreement=1.0 if good else 2 / 3, created_at=t,
            hint=None if good else "Answer in one sentence, as the user asked.",
            messages=[{"role": "user", "content": f"question {i}"}],
            response={"role": "assistant", "content": f"answer {i}"}, timings={"judge_ms": 120.0 + i},
        ))
    return rows


def label_recorded_turns(redis_url: str, leave_queued: int) -> int:
    """The real labeler on the transitions the proxy recorded: its dispatcher enqueues a job per
    transition, a real RQ worker runs all but ``leave_queued`` of them with the embedded judge."""
    rt = install(Runtime(settings=LabelerSettings(redis_url=redis_url, judge="embedded", dispatch_block_ms=1),
                         redis=redis.Redis.from_url(redis_url)))
    dispatcher = Dispatcher(rt, consumer="e2e")
    dispatcher.ensure_groups()
    enqueued = dispatcher.run_once(block_ms=1)
    queue = rt.queue(LABEL_QUEUE)
    InlineWorker([queue], connection=rt.redis, serializer=JSONSerializer).work(burst=True, max_jobs=enqueued - leave_queued)
    rt.redis.close()
    return enqueued - leave_queued


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, redis_client: redis.Redis) -> Iterator[dict[str, Any]]:
    build_registry(redis_client, tmp_path)
    now = time.time()
    for sample in history(now):
        redis_client.xadd(SAMPLES_STREAM, {"record": sample.model_dump_json()})
    fake = FakeUpstream()
    with serve_in_thread(fake.app) as upstream:
        settings = ProxySettings(
            home=tmp_path / "home", redis_url=redis_url, upstream_url=f"{upstream}/v1", admin_token=TOKEN,
            routing_refresh_s=0.1, sweep_interval_s=0.1, session_idle_timeout_s=0.5, read_timeout_s=5.0,
        )
        dashboard = dashboard_for(settings)
        app = create_app(settings, mounts=[("/dashboard", dashboard)])
        with serve_in_thread(app) as proxy_url:
            time.sleep(0.3)  # the routing refresher picks up stable v1 / canary v3
            with openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="sk-test", max_retries=0, timeout=10) as sdk:
                for session in range(4):
                    messages: list[dict[str, Any]] = [{"role": "user", "content": f"Say hello, session {session}"}]
                    for follow_up in ("thanks, and now in French?", "no, in French please", "thanks"):
                        reply = sdk.chat.completions.create(model="tiny-chat", messages=messages,  # type: ignore[arg-type]
                                                            extra_headers={"X-Session-Id": f"s{session}",
                                                                           "X-NextState-Canary": str(session % 2)})
                        messages += [{"role": "assistant", "content": reply.choices[0].message.content},
                                     {"role": "user", "content": follow_up}]
            deadline = time.monotonic() + 10
            while redis_client.xlen(TRANSITIONS_STREAM) < 12 and time.monotonic() < deadline:  # 8 next turns, 4 idle closes
                time.sleep(0.05)
            labeled = label_recorded_turns(redis_url, leave_queued=3)
            yield {"url": proxy_url, "labeled": labeled}
        dashboard.state.close()


def api(url: str, path: str) -> Any:
    response = httpx.get(f"{url}/dashboard/api/{path}", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_dashboard_is_behind_the_admin_token(stack: dict[str, Any]) -> None:
    for path in ("/dashboard/", "/dashboard/api/summary", "/dashboard/static/dashboard.js"):
        response = httpx.get(stack["url"] + path, timeout=10)
        assert response.status_code == 401, path
        assert response.json()["error"]["type"]
    assert httpx.get(stack["url"] + "/dashboard/", headers=AUTH, timeout=10).status_code == 200
    bad = httpx.get(stack["url"] + "/dashboard/api/samples?limit=9999", headers=AUTH, timeout=10)
    assert bad.status_code == 400
    assert set(bad.json()["error"]) == {"message", "type", "param", "code"}


def test_dashboard_page_draws_the_stack_in_chromium(stack: dict[str, Any]) -> None:
    url = stack["url"]
    assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 200
    rewards, canary, timeline = api(url, "rewards"), api(url, "canary")["canary"], api(url, "timeline")
    queues, samples = api(url, "queues"), api(url, "samples")
    assert stack["labeled"] >= 8 and {"base", "v1", "v3"} <= set(rewards["series"])
    assert canary["version"] == "v3" and canary["arms"]["canary"]["n"] > 0

    browser = Browser()
    try:
        browser.navigate(f"{url}/dashboard/", headers=AUTH)
        browser.wait_for("Number(document.body?.dataset.refreshes || 0) >= 1")
        drawn = browser.evaluate("""(() => {
          const all = (sel) => [...document.querySelectorAll(sel)];
          return {
            series: all('#rewards path.series').map(p => p.dataset.version),
            points: all('#rewards circle.point').map(c => [c.dataset.version, +c.dataset.n, +c.dataset.rate]),
            canary: document.getElementById('canary').dataset.version,
            arms: all('#canary circle.arm').map(c => [c.dataset.arm, +c.dataset.n]),
            interval: [+document.getElementById('canary-facts').dataset.low, +document.getElementById('canary-facts').dataset.high],
            events: all('#timeline-chart circle.event').map(c => [c.dataset.kind, c.dataset.version]),
            versions: all('#versions tbody tr').map(r => [...r.cells].slice(0, 2).map(c => c.textContent)),
            bars: all('#queues rect.bar').map(b => [b.dataset.queue, b.dataset.kind, +b.dataset.value]),
            streams: all('#streams tbody tr').map(r => [r.cells[0].textContent, +r.cells[1].textContent]),
            samples: all('#samples tbody tr').length,
            hints: all('#samples .hint').map(h => h.textContent),
            routing: document.getElementById('routing').textContent,
            scopes: all('#scopes tbody tr').map(r => [...r.cells].map(c => c.textContent)),
          };
        })()""")
        browser.pump(0.5)
        shot = browser.screenshot(ROOT / "artifacts" / "dashboard.png")
        problems = browser.problems
    finally:
        browser.close()

    assert problems == []
    assert sorted(drawn["series"]) == sorted(rewards["series"])
    expected_points = sorted((v, p["n"], p["rate"]) for v, pts in rewards["series"].items() for p in pts)
    assert sorted(tuple(p) for p in drawn["points"]) == expected_points
    assert drawn["canary"] == "v3"
    assert drawn["interval"] == canary["interval"] and -1 <= canary["interval"][0] < canary["interval"][1] <= 1
    assert sorted(drawn["arms"]) == sorted([["canary", canary["arms"]["canary"]["n"]], ["stable", canary["arms"]["stable"]["n"]]])
    assert [tuple(e) for e in drawn["events"]] == [(e["kind"], e["version"] or "") for e in timeline["events"][-40:]]
    assert drawn["versions"] == [["v1", "promoted"], ["v2", "gated_fail"], ["v3", "canary"]]
    assert sorted(tuple(b) for b in drawn["bars"]) == sorted(
        (q["queue"], kind, q[kind]) for q in queues["queues"] for kind in ("queued", "started", "failed"))
    lengths = dict(tuple(s) for s in drawn["streams"])
    assert lengths["nextstate:{rec}:turns"] >= 12 and lengths["nextstate:{learn}:samples"] == 72 + stack["labeled"]
    assert drawn["samples"] == len(samples["samples"]) == 25
    assert drawn["hints"] == [row["hint"] for row in samples["samples"] if row["hint"]]
    assert drawn["hints"]  # the history carries hints; the page shows each next to its sample
    assert ("label", "queued", 3) in [tuple(b) for b in drawn["bars"]]
    assert "v3" in drawn["routing"] and "25.0%" in drawn["routing"]
    assert drawn["scopes"] == [["global", "v1", "v3 (25.0%)", "3"], ["alice", "global stable", "v1 (50.0%)", "1"]]
    assert shot.stat().st_size > 10_000
    (ROOT / "artifacts" / "dashboard-data.json").write_text(json.dumps({"rewards": rewards, "canary": canary}, indent=1))


def test_dashboard_opened_with_the_token_in_the_url_loads_its_data(stack: dict[str, Any]) -> None:
    """``http://user:<token>@host/dashboard/`` as people paste it: the page and every data fetch succeed."""
    host = stack["url"].removeprefix("http://")
    browser = Browser()
    try:
        browser.navigate(f"http://operator:{TOKEN}@{host}/dashboard/")
        browser.wait_for("Number(document.body?.dataset.refreshes || 0) >= 1")
        rows = browser.evaluate("document.querySelectorAll('#samples tbody tr').length")
        browser.pump(0.5)
        problems = browser.problems
    finally:
        browser.close()
    assert problems == []
    assert rows == 25
