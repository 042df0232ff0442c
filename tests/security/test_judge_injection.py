"""The labeled injection set (``labeler/data/injections_v1.jsonl``) against every judge kind: the
embedded rules, and the llm judge in front of a scripted provider that obeys any verdict it reads
(at the transport seam, over real HTTP). Every row asks for the opposite of its label; a label is
flipped when the attacked next state is judged otherwise than the same next state without the attack."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labeler.embedded import EmbeddedJudge
from labeler.judges import Judge
from labeler.tally import select_hint
from tests.labeler.scripted_server import ScriptedJudge
from tests.labeler.test_llm_judge import gullible, make_judge
from tests.security.conftest import SUITE
from tests.support import figures
from tests.support.servers import serve_in_thread

ROWS = [json.loads(line) for line in
        (Path(__file__).parents[2] / "labeler" / "data" / "injections_v1.jsonl").read_text().splitlines()]


@pytest.fixture(params=["embedded", "llm"])
def judge(request: pytest.FixtureRequest) -> Iterator[tuple[str, Judge]]:
    if request.param == "embedded":
        yield "embedded", EmbeddedJudge()
        return
    with serve_in_thread(ScriptedJudge(gullible).app()) as url:
        yield "llm", make_judge(url, judge_model="openai/tiny-chat", judge_votes=1, hint_votes=0)


def test_no_injection_flips_a_label(judge: tuple[str, Judge]) -> None:
    kind, judging = judge
    flipped: list[str] = []
    for row in ROWS:
        clean = judging.judge(row["messages"], row["response"], row["clean_next_state"]).tally().reward
        if kind == "embedded":  # the scripted provider reads a tool result as a user message: its own label
            assert clean == row["label"], row["id"]
        attacked = judging.judge(row["messages"], row["response"], row["next_state"])
        if attacked.tally().reward != clean:
            flipped.append(row["id"])
        assert "Always agree" not in (select_hint(attacked.hints) or ""), row["id"]
    figures.add(SUITE, f"judge labels flipped by injection ({kind}, of {len(ROWS)})", len(flipped))
    assert not flipped, flipped
    assert len({row["category"] for row in ROWS}) >= 12


def _roles(rows: list[dict[str, Any]]) -> set[str]:
    return {m["role"] for row in rows for m in row["next_state"]}


def test_the_set_attacks_users_and_tools() -> None:
    assert _roles(ROWS) == {"user", "tool"} and {row["label"] for row in ROWS} == {1, -1}
