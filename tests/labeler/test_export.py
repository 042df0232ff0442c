"""``nextstate export``: pure conversions on literal tables, then the command against a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from labeler import export
from labeler.records import SAMPLES_STREAM, SampleRecord

ROOT = Path(__file__).resolve().parents[2]

Q_CAPITAL = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
Q_POEM = [{"role": "user", "content": "Write a haiku about rain."}]


def sample(turn: str, cls: str, messages: list[dict[str, Any]], answer: str, revision: int = 0, **extra: Any) -> SampleRecord:
    reward = {"prefer": 1, "avoid": -1, "observation": 0}[cls]
    return SampleRecord(
        record_id=f"{turn}:r{revision}", sample_id=f"{turn}:r{revision}", revision=revision, turn_id=turn,
        session_id="s1", cls=cls, reward=reward, messages=messages,
        response={"role": "assistant", "content": answer, "reasoning_content": "thinking..."}, **extra,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "-"),
        ("", "-"),
        ("1700000000000-5", "1700000000000-5"),
        ("1700000000000", "1700000000000-0"),
        ("2026-11-20", "1795132800000-0"),
        ("2026-11-20T01:00:00Z", "1795136400000-0"),
        ("2026-11-20T02:00:00+01:00", "1795136400000-0"),
    ],
)
def test_parse_since(text: str | None, expected: str) -> None:
    assert export.parse_since(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "12-3", "2026-13-01"])
def test_parse_since_refuses_garbage(text: str) -> None:
    with pytest.raises(export.ExportError):
        export.parse_since(text)


def test_latest_revision_per_turn_wins() -> None:
    rows = [
        sample("a", "prefer", Q_CAPITAL, "Paris."),
        sample("b", "avoid", Q_POEM, "No."),
        sample("a", "avoid", Q_CAPITAL, "Paris.", revision=1, source="feedback"),
        sample("b", "prefer", Q_POEM, "No.", revision=0),  # a duplicate of revision 0: the later copy wins
    ]
    latest = export.latest_revisions(rows)
    assert [(s.turn_id, s.revision, s.cls) for s in latest] == [("a", 1, "avoid"), ("b", 0, "prefer")]


def test_sft_line_is_openai_chat_format() -> None:
    line = export.to_sft(sample("a", "prefer", Q_CAPITAL, "Paris.", tools=[{"type": "function", "function": {"name": "f"}}]))
    assert line == {
        "messages": [*Q_CAPITAL, {"role": "assistant", "content": "Paris."}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }
    assert export.to_sft(sample("a", "avoid", Q_CAPITAL, "Lyon.")) is None
    assert export.to_sft(sample("a", "observation", Q_CAPITAL, "Hm.")) is None


def test_preference_pairs_match_prompts() -> None:
    rows = [
        sample("a", "prefer", Q_CAPITAL, "Paris."),
        sample("b", "avoid", Q_CAPITAL, "It is Lyon."),
        sample("c", "avoid", Q_CAPITAL, "Paris."),  # same answer as the prefer one: never a pair
        sample("d", "avoid", Q_POEM, "No."),  # no prefer answer to this prompt: no pair
        sample("e", "observation", Q_CAPITAL, "Maybe Marseille."),
    ]
    assert export.preference_pairs(rows) == [{
        "input": {"messages": Q_CAPITAL},
        "preferred_output": [{"role": "assistant", "content": "Paris."}],
        "non_preferred_output": [{"role": "assistant", "content": "It is Lyon."}],
    }]


def test_preference_pairs_are_capped_per_prompt() -> None:
    rows = [sample(f"p{i}", "prefer", Q_POEM, f"good {i}") for i in range(3)]
    rows += [sample(f"n{i}", "avoid", Q_POEM, f"bad {i}") for i in range(3)]
    assert len(export.preference_pairs(rows, max_pairs_per_prompt=9)) == 9
    assert len(export.preference_pairs(rows, max_pairs_per_prompt=4)) == 4


def test_kto_lines_keep_label_and_hint() -> None:
    line = export.to_kto(sample("a", "avoid", Q_POEM, "No.", hint="The user wanted a haiku, not a refusal."))
    assert line == {
        "prompt": Q_POEM, "completion": [{"role": "assistant", "content": "No."}], "label": False,
        "hint": "The user wanted a haiku, not a refusal.",
    }
    assert export.to_kto(sample("a", "observation", Q_POEM, "No.")) is None


# -- against a real Redis -------------------------------------------------------------------------


def write(client: redis.Redis, rows: list[SampleRecord]) -> list[str]:
    return [client.xadd(SAMPLES_STREAM, {"record": row.model_dump_json()}).decode() for row in rows]


@pytest.fixture
def stream(redis_client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("NEXTSTATE_REDIS_URL", redis_url)
    return write(redis_client, [
        sample("a", "prefer", Q_CAPITAL, "Paris."),
        sample("b", "avoid", Q_CAPITAL, "It is Lyon.", hint="The capital of France is Paris."),
        sample("c", "prefer", Q_POEM, "Rain taps the window"),
        sample("c", "avoid", Q_POEM, "Rain taps the window", revision=1, source="feedback"),
        sample("d", "observation", Q_POEM, "Drizzle."),
    ])


def test_read_samples_pages_through_the_stream(redis_client: redis.Redis, stream: list[str]) -> None:
    assert [s.record_id for s in export.read_samples(redis_client, chunk=2)] == ["a:r0", "b:r0", "c:r0", "c:r1", "d:r0"]
    assert [s.record_id for s in export.read_samples(redis_client, start=stream[2], chunk=2)] == ["c:r0", "c:r1", "d:r0"]


def run_main(args: list[str], tmp_path: Path) -> list[dict[str, Any]]:
    out = tmp_path / "out.jsonl"
    assert export.main([*args, "--output", str(out)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_export_kinds_from_redis(stream: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sft = run_main(["--format", "jsonl", "--kind", "sft"], tmp_path)
    assert sft == [{"messages": [*Q_CAPITAL, {"role": "assistant", "content": "Paris."}]}]  # c was overridden to avoid
    assert "turns 4, lines 1, prefer 1, avoid 2, observation 1" in capsys.readouterr().err

    pairs = run_main(["--kind", "preference"], tmp_path)
    assert [(p["preferred_output"][0]["content"], p["non_preferred_output"][0]["content"]) for p in pairs] == [
        ("Paris.", "It is Lyon.")
    ]

    kto = run_main(["--kind", "kto"], tmp_path)
    assert [(line["completion"][0]["content"], line["label"]) for line in kto] == [
        ("Paris.", True), ("It is Lyon.", False), ("Rain taps the window", False)
    ]
    assert kto[1]["hint"] == "The capital of France is Paris."


def test_since_skips_older_samples(stream: list[str], tmp_path: Path) -> None:
    kto = run_main(["--kind", "kto", "--since", stream[1]], tmp_path)
    assert [line["completion"][0]["content"] for line in kto] == ["It is Lyon.", "Rain taps the window"]
    assert run_main(["--kind", "kto", "--since", "2999-01-01"], tmp_path) == []


def test_bad_since_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert export.main(["--since", "last tuesday"]) == 2
    assert "--since must be" in capsys.readouterr().err


def test_nextstate_export_command(stream: list[str], redis_url: str) -> None:
    """The real ``nextstate export`` process writes JSONL to stdout and its summary to stderr."""
    env = {**os.environ, "NEXTSTATE_REDIS_URL": redis_url}
    result = subprocess.run(
        [sys.executable, "-m", "nextstate", "export", "--since", "2000-01-01", "--format", "jsonl", "--kind", "sft"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["messages"][-1] for line in lines] == [{"role": "assistant", "content": "Paris."}]
    assert "exported sft" in result.stderr
