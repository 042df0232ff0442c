"""The sacred gate on the real tiny model with real peft adapters, real Redis, two policy-server replicas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from learner import tinycorpus
from learner.gate import CHAT_SUITE, TINY_SUITE, GateRun, evaluate, run_gate_for_version, suite_for
from learner.modeling import load_model
from registry.actions import Control
from registry.canary import CanaryPolicy
from registry.controller import Controller
from registry.publisher import Publisher
from registry.routing import read_table
from registry.sacred import load_suite
from registry.settings import RegistrySettings
from registry.store import Registry
from registry.verdict import GateThresholds
from tests.learner.gate_support import add_samples, lowercase_pairs, make_adapter, publish_adapter
from tests.registry.fake_policy import create_fake_policy
from tests.support.servers import serve_in_thread

FAST = GateRun(samples=4, max_tokens=64)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """The tiny model is faster on one thread when other processes share the two cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def adapters(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    train = lowercase_pairs(tinycorpus.FACTS[::3])
    return {
        "identity": make_adapter(tiny_model_path, root / "identity"),
        "lowercase": make_adapter(tiny_model_path, root / "lowercase", train, steps=12, lr=3e-3),
        "scrambled": make_adapter(tiny_model_path, root / "scrambled", scramble=0.5),
        "other_facts": make_adapter(tiny_model_path, root / "other_facts", other_fact_pairs(tinycorpus.FACTS[:12]),
                                    steps=12, lr=3e-3),
    }


def other_fact_pairs(facts: Any) -> list[tuple[str, str]]:
    """Each question answered in lowercase with the next fact's answer: the form kept, the answer lost."""
    return [(fact.question(0), tinycorpus.render_answer(facts[(i + 1) % len(facts)], "lowercase"))
            for i, fact in enumerate(facts)]


@pytest.fixture
def apps() -> list[Any]:
    return [create_fake_policy(), create_fake_policy()]


@pytest.fixture
def settings(redis_url: str, tmp_path: Path, tiny_model_path: Path, apps: list[Any]) -> Iterator[RegistrySettings]:
    with serve_in_thread(apps[0]) as a, serve_in_thread(apps[1]) as b:
        yield RegistrySettings(redis_url=redis_url, home=tmp_path / "home", adapters_dir=tmp_path / "store",
                               base_model=str(tiny_model_path), served_base_model="tiny-chat",
                               policy_urls=[a, b], drain_seconds=0, gate_samples=4, gate_max_tokens=64)


@pytest.fixture
def control(settings: RegistrySettings) -> Iterator[Control]:
    client = redis.Redis.from_url(str(settings.redis_url))
    publisher = Publisher(settings.replicas(), drain_seconds=0)
    yield Control(Registry(client, settings.adapters_path(), base_model="tiny-chat"), publisher)
    publisher.close()
    client.close()


def fresh_base(tiny_model_path: Path) -> tuple[Any, Any]:
    return load_model(tiny_model_path, device="cpu")  # peft injects layers in place: one base per gate


def test_identity_adapter_passes_and_scrambled_fails(control: Control, adapters: dict[str, Path],
                                                     tiny_model_path: Path) -> None:
    suite = load_suite(TINY_SUITE)
    reg = control.registry
    good = publish_adapter(reg, adapters["identity"], str(tiny_model_path))
    verdict = evaluate(reg, good, *fresh_base(tiny_model_path), suite, FAST)
    assert verdict.passed, verdict.reasons
    assert verdict.metrics["kl"] == pytest.approx(0.0, abs=1e-4)
    cases = verdict.metrics["sacred"]
    assert all(c["candidate"] == c["stable"] for c in cases.values())  # same seeds, same model
    assert verdict.metrics["sacred_mean"]["stable"] >= 0.4  # the base model passes a good share of the suite
    text = verdict.metrics["text"]
    assert text["candidate"] == text["stable"] and text["stable"]["answers"] > 0  # same answers, same statistics
    assert verdict.metrics["anchor_logp_drop"] == pytest.approx(0.0, abs=1e-4)

    bad = publish_adapter(reg, adapters["scrambled"], str(tiny_model_path))
    verdict = evaluate(reg, bad, *fresh_base(tiny_model_path), suite, FAST)
    assert not verdict.passed
    assert any(r.startswith("sacred case") for r in verdict.reasons)
    assert any(r.startswith("drift") for r in verdict.reasons) and verdict.metrics["kl"] > 0.5
    assert verdict.metrics["anchor_logp_drop"] > 1.0  # stable's anchor answers became unlikely
    assert any(r.startswith("collapse:") for r in verdict.reasons)


@pytest.fixture
def sides(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The side of every sampling the gate runs, in order."""
    import learner.gate_policies as gate

    seen: list[str] = []
    real = gate.generate
    monkeypatch.setattr(gate, "generate", lambda policies, side, *a, **k: seen.append(side) or real(policies, side, *a, **k))
    return seen


def test_the_stable_sides_answers_are_reused_while_the_stable_version_stays(
    control: Control, adapters: dict[str, Path], tiny_model_path: Path, sides: list[str],
) -> None:
    suite = load_suite(TINY_SUITE)
    reg = control.registry
    base = fresh_base(tiny_model_path)  # lent to one gate after another, as the learner does
    first = evaluate(reg, publish_adapter(reg, adapters["identity"], str(tiny_model_path)), *base, suite, FAST)
    stable_runs = sides.count("stable")
    assert stable_runs >= 1
    second = evaluate(reg, publish_adapter(reg, adapters["scrambled"], str(tiny_model_path)), *base, suite, FAST)
    assert sides.count("stable") == stable_runs  # nothing sampled again for the unchanged stable side
    assert {k: c["stable"] for k, c in second.metrics["sacred"].items()} == {
        k: c["stable"] for k, c in first.metrics["sacred"].items()}
    assert not second.passed  # the candidate side is still measured afresh


def test_against_an_adapter_stable_the_base_model_is_scored_too_and_sampled_once(
    control: Control, adapters: dict[str, Path], tiny_model_path: Path, sides: list[str],
) -> None:
    suite = load_suite(TINY_SUITE)
    reg = control.registry
    base = fresh_base(tiny_model_path)
    first = evaluate(reg, publish_adapter(reg, adapters["identity"], str(tiny_model_path)), *base, suite, FAST)
    assert "base" not in sides  # stable is the base model: nothing more to sample
    assert all("base" not in c for c in first.metrics["sacred"].values())
    control.registry.set_alias("stable", control.registry.versions()[-1].version, actor="test")
    second = evaluate(reg, publish_adapter(reg, adapters["identity"], str(tiny_model_path)), *base, suite, FAST)
    assert "base" not in sides  # the base model's answers to the suite are the first gate's stable answers, kept
    cases = second.metrics["sacred"]
    assert {k: c["base"] for k, c in cases.items()} == {k: c["stable"] for k, c in first.metrics["sacred"].items()}
    assert all(c["base"] == c["stable"] == c["candidate"] for c in cases.values())  # identity adapters: one model
    assert second.passed, second.reasons
    other = fresh_base(tiny_model_path)  # another loaded copy keeps nothing: the base model answers afresh
    third = evaluate(reg, publish_adapter(reg, adapters["scrambled"], str(tiny_model_path)), *other, suite, FAST)
    base_runs = sides.count("base")
    assert base_runs >= 1
    assert {k: c["base"] for k, c in third.metrics["sacred"].items()} == {k: c["base"] for k, c in cases.items()}
    assert not third.passed and any("the base model" in r for r in third.reasons)
    evaluate(reg, publish_adapter(reg, adapters["scrambled"], str(tiny_model_path)), *other, suite, FAST)
    assert sides.count("base") == base_runs  # kept like stable's while the process lends the same base


def test_replay_needs_prefer_up_and_avoid_down(control: Control, adapters: dict[str, Path], tiny_model_path: Path) -> None:
    reg = control.registry
    trained_on = add_samples(reg, lowercase_pairs(tinycorpus.FACTS[::3][:4]), "prefer", "trained")
    held_out = lowercase_pairs(tinycorpus.FACTS[1::3][:6])
    version = publish_adapter(reg, adapters["lowercase"], str(tiny_model_path), sample_ids=trained_on)
    run = GateRun(samples=2, max_tokens=24, thresholds=GateThresholds(sacred_tolerance=1.0, max_kl=100.0))
    add_samples(reg, held_out, "prefer", "held-prefer")
    verdict = evaluate(reg, version, *fresh_base(tiny_model_path), [], run)
    replay = verdict.metrics["replay"]
    assert replay["prefer_n"] == 6 and replay["avoid_n"] == 0  # the 4 trained-on samples are excluded
    assert replay["prefer_delta"] > 0.02 and verdict.passed, verdict.reasons  # measured: about 0.05 nats/token

    add_samples(reg, held_out, "avoid", "held-prefer")  # relabeled: the same turns are now avoid
    verdict = evaluate(reg, version, *fresh_base(tiny_model_path), [], run)
    assert verdict.metrics["replay"]["avoid_n"] == 6 and verdict.metrics["replay"]["prefer_n"] == 0
    assert not verdict.passed and any("avoid log-likelihood rose" in r for r in verdict.reasons)


def test_a_candidate_that_no_longer_says_what_the_scope_s_users_accepted_fails(
        control: Control, adapters: dict[str, Path], tiny_model_path: Path) -> None:
    reg = control.registry
    add_samples(reg, lowercase_pairs(tinycorpus.FACTS[:12]), "prefer", "accepted")
    run = GateRun(samples=2, max_tokens=24, thresholds=GateThresholds(sacred_tolerance=0.25, max_kl=100.0,
                                                                     replay_tolerance=100.0))
    kept = evaluate(reg, publish_adapter(reg, adapters["lowercase"], str(tiny_model_path)), *fresh_base(tiny_model_path),
                    [], run)
    recall = kept.metrics["recall"]
    # a new form, the same answers: sampled at 0.3, a few of them may still miss the key word (22 and 24 of 24 seen)
    assert recall["requests"] >= 10 and recall["candidate"] >= recall["stable"] - recall["answers"] // 8, recall
    assert kept.passed, kept.reasons
    lost = evaluate(reg, publish_adapter(reg, adapters["other_facts"], str(tiny_model_path)),
                    *fresh_base(tiny_model_path), [], run)
    recall = lost.metrics["recall"]
    assert recall["candidate"] <= recall["stable"] // 2, recall
    assert not lost.passed and any(r.startswith("recall of the scope's accepted answers") for r in lost.reasons)


def test_failed_candidate_never_gets_traffic_passing_one_gets_canary(
        settings: RegistrySettings, control: Control, adapters: dict[str, Path], tiny_model_path: Path,
        apps: list[Any]) -> None:
    reg = control.registry
    bad = publish_adapter(reg, adapters["scrambled"], str(tiny_model_path))
    base, tokenizer = fresh_base(tiny_model_path)
    verdict = run_gate_for_version(bad, settings, control=control, base=base, tokenizer=tokenizer)
    assert not verdict.passed and reg.get(bad).state == "gated_fail"
    assert reg.get(bad).gate == verdict
    Controller(control, CanaryPolicy()).tick()
    table = read_table(reg.redis)
    assert table is None or (bad not in table.versions and table.canary is None)
    assert [app.state.loaded for app in apps] == [{}, {}]

    good = publish_adapter(reg, adapters["identity"], str(tiny_model_path))
    base, tokenizer = fresh_base(tiny_model_path)
    verdict = run_gate_for_version(good, settings, control=control, base=base, tokenizer=tokenizer)
    assert verdict.passed and reg.get(good).state == "canary"
    table = read_table(reg.redis)
    assert table is not None and table.canary == good and table.versions[good] == reg.get(good).served_name and table.canary_fraction == 0.05
    assert bad not in table.versions
    assert [set(app.state.loaded) for app in apps] == [{reg.get(good).served_name}] * 2
    kinds = [(e.kind, e.version, e.actor) for e in reg.history()]
    assert ("gate_verdict", bad, "gate") in kinds and ("gate_verdict", good, "gate") in kinds
    assert ("canary_started", good, "gate") in kinds
    gate_event = next(e for e in reg.history() if e.kind == "gate_verdict" and e.version == bad)
    assert gate_event.evidence["gate"]["metrics"]["kl"] > 0.5


def test_the_gate_picks_the_suite_that_fits_the_model(tmp_path: Path) -> None:
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "nextstate_tiny.json").write_text("{}")
    assert suite_for(tmp_path / "tiny") == TINY_SUITE  # the built-in tiny model, wherever it is cached
    assert suite_for(tmp_path) == CHAT_SUITE  # any other model: a general chat model's suite
    chat = load_suite(CHAT_SUITE)
    assert len([c for c in chat if c.anchor]) >= 3 and len([c for c in chat if not c.anchor]) >= 10


def test_the_chat_suites_breadth_of_facts_holds_none_of_prefbenchs_questions() -> None:
    """The facts the gate keeps across the board are its own, so PrefBench's facts on fresh prompts stay a
    held-out measure of what a candidate lost."""
    breadth = [c for c in load_suite(CHAT_SUITE) if c.samples == 2]
    assert len(breadth) >= 20 and all(c.prompt and c.checks for c in breadth)
    assert [c.id for c in breadth if tinycorpus.find_fact(c.prompt or "") is not None] == []
    subjects = {f.subject.lower() for f in tinycorpus.FACTS if f.topic in ("capitals", "opposites")}
    assert [c.id for c in breadth if (c.prompt or "").lower().rstrip("?").split()[-1] in subjects] == []
