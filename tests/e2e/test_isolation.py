"""Two users with opposite preferences on one stack, scopes by API key: each one's versions learn from that
user's turns only (``python -m bench.prefbench.isolation``, short: 8 interactions each, real stack)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_users_on_one_stack_train_only_their_own_scopes(tmp_path: Path, tiny_model_path: Path) -> None:
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTSTATE_")}
    done = subprocess.run(
        [sys.executable, "-m", "bench.prefbench.isolation", "--interactions", "8", "--every", "8", "--out", str(out),
         "--model-cache", str(tiny_model_path.parent)],
        cwd=root, env=env, capture_output=True, text=True, timeout=850, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    trained = result["trained"]
    # each user's reactions trained candidates in that user's scope, and nothing of the other user's did
    assert trained["A"].get("A", 0) >= 4 and trained["B"].get("B", 0) >= 4, trained
    assert trained["A"].get("B", 0) == 0 and trained["B"].get("A", 0) == 0, trained
    assert all(result["events"][user].get("candidate_created", 0) >= 1 for user in ("A", "B")), result["events"]
    # before any learning both users are served the same base model: the same answers to the same prompts
    start = {(p["user"], p["preference"]): p["satisfaction"] for p in result["points"] if p["interactions"] == 0}
    assert start[("A", "terse")] == start[("B", "terse")] and start[("A", "curious")] == start[("B", "curious")]
