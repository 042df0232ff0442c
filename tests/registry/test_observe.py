"""The dashboard's and exporter's math on literal tables: rates, intervals, buckets, series and arms."""

from __future__ import annotations

import pytest

from labeler.records import SampleRecord
from registry import observe
from registry.exporter import decision_label, quantile
from registry.records import AuditEvent


def s(turn: str, version: str | None, cls: str, t: float, revision: int = 0) -> SampleRecord:
    reward = {"prefer": 1, "avoid": -1, "observation": 0}[cls]
    return SampleRecord(record_id=f"{turn}:r{revision}", sample_id=f"{turn}:r{revision}", turn_id=turn, session_id="x",
                        serving_version=version, cls=cls, reward=reward, created_at=t, revision=revision,
                        messages=[], response={})


@pytest.mark.parametrize(("prefer", "avoid", "rate"), [(0, 0, None), (3, 1, 0.75), (0, 5, 0.0), (2, 0, 1.0)])
def test_reward_rate(prefer: int, avoid: int, rate: float | None) -> None:
    assert observe.reward_rate(prefer, avoid) == rate


@pytest.mark.parametrize(
    ("successes", "total", "low", "high"),
    [(0, 0, None, None), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (0, 10, 0.0, 0.2775), (80, 100, 0.7112, 0.8666)],
)
def test_wilson_interval(successes: int, total: int, low: float | None, high: float | None) -> None:
    interval = observe.wilson_interval(successes, total)
    if low is None:
        assert interval is None
    else:
        assert interval == (pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4))


@pytest.mark.parametrize(
    ("span", "width"),
    [(0, 60), (60 * 48, 60), (60 * 49, 300), (6 * 3600, 900), (2 * 86400, 3600), (30 * 86400, 86400), (10**9, 7 * 86400)],
)
def test_bucket_width(span: float, width: int) -> None:
    assert observe.bucket_width(span) == width


@pytest.mark.parametrize(("version", "label"), [(None, "base"), ("v3", "v3"), ("tiny-chat@v3", "v3"), ("org/m@v12", "v12")])
def test_version_label(version: str | None, label: str) -> None:
    assert observe.version_label(version) == label


def test_reward_series_buckets_per_version() -> None:
    samples = [
        s("a", None, "prefer", 1000), s("b", None, "avoid", 1010), s("c", "v1", "prefer", 1020),
        s("d", "v1", "prefer", 1090), s("e", "v1", "avoid", 1100), s("f", "v1", "observation", 1110),
    ]
    assert observe.reward_series(samples, width=60) == {"width": 60, "series": {
        "base": [{"t": 960, "rate": 0.5, "prefer": 1, "avoid": 1, "n": 2}],
        "v1": [{"t": 1020, "rate": 1.0, "prefer": 1, "avoid": 0, "n": 1},
               {"t": 1080, "rate": 0.5, "prefer": 1, "avoid": 1, "n": 2}],
    }}
    assert observe.reward_series([s("f", "v1", "observation", 5)]) == {"width": 60, "series": {}}


def test_arm_stats_since_the_canary_started() -> None:
    samples = [s("a", "v2", "prefer", 5), s("b", "v2", "prefer", 20), s("c", "v2", "avoid", 30),
               s("d", "v2", "observation", 40), s("e", "v1", "prefer", 50)]
    stats = observe.arm_stats(samples, "v2", since=10)
    assert {k: stats[k] for k in ("version", "prefer", "avoid", "observation", "n")} == {
        "version": "v2", "prefer": 1, "avoid": 1, "observation": 1, "n": 2}
    assert stats["rate"] == 0.5 and stats["low"] == pytest.approx(0.0945, abs=1e-4)
    assert observe.arm_stats(samples, None)["n"] == 0


def test_latest_per_turn_keeps_the_highest_revision_in_its_place() -> None:
    rows = [s("a", None, "prefer", 1), s("b", None, "prefer", 2), s("a", None, "avoid", 3, revision=1)]
    assert [(r.turn_id, r.cls) for r in observe.latest_per_turn(rows)] == [("b", "prefer"), ("a", "avoid")]


@pytest.mark.parametrize(("q", "value"), [(0.0, 1.0), (0.5, 2.0), (0.9, 4.0), (0.99, 4.0), (1.0, 4.0)])
def test_quantile_nearest_rank(q: float, value: float) -> None:
    assert quantile([4.0, 1.0, 3.0, 2.0], q) == value


@pytest.mark.parametrize(
    ("kind", "evidence", "label"),
    [("gate_verdict", {"gate": {"passed": True}}, ("gate_verdict", "pass")),
     ("gate_verdict", {"gate": {"passed": False}}, ("gate_verdict", "fail")),
     ("promoted", {"from": "canary"}, ("promoted", ""))],
)
def test_decision_label(kind: str, evidence: dict[str, object], label: tuple[str, str]) -> None:
    assert decision_label(AuditEvent(kind=kind, actor="gate", evidence=evidence)) == label
