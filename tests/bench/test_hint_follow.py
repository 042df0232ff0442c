"""bench.hint_follow on the tiny model: it prints facts per topic and one row per preference with three rates."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import hint_follow


def test_hint_follow_reports_every_preference(tiny_model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hint_follow.main(["--model", str(tiny_model_path), "--topics", "capitals", "--answers", "1"]) == 0
    out = capsys.readouterr().out
    assert "facts right, capitals:" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == [name for name, _, _ in hint_follow.PREFERENCES]
    rates = [[float(cell) for cell in row.strip(" |").split(" | ")[2:]] for row in rows]
    assert all(len(r) == 3 and all(0.0 <= x <= 1.0 for x in r) for r in rates)
    # the tiny model was trained on "Answer in lowercase.": asked, it writes lowercase more often than unasked
    lowercase = rates[-1]
    assert lowercase[1] > lowercase[0]
    kept = out.split("as hint demonstrations", 1)[1].strip().splitlines()[1:]
    assert len(kept) == len(hint_follow.PREFERENCES) and all(" kept (" in line for line in kept)
