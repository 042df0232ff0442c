"""The llm judge against the embedded policy server: the base model judges itself, no adapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from labeler.llm_judge import LLMJudge
from labeler.settings import LabelerSettings
from tests.support.servers import serve_in_thread

pytest.importorskip("torch")


@pytest.mark.slow
def test_base_model_of_the_policy_server_judges(tiny_model_path: Path, tmp_path: Path) -> None:
    from learner.serve import create_app
    from learner.serving_settings import ServeSettings

    app = create_app(ServeSettings(home=tmp_path, max_num_seqs=4, max_queue=16), model_path=tiny_model_path)
    with serve_in_thread(app) as url:
        # the tiny model has a 2048-token byte-level context: small budgets keep the PRM prompt inside it
        settings = LabelerSettings(judge="llm", judge_api_base=f"{url}/v1", judge_max_tokens=16, judge_timeout_s=120,
                                   hint_votes=1, request_budget_chars=64, response_budget_chars=64,
                                   next_state_budget_chars=64)
        judge = LLMJudge.from_settings(settings)
        assert judge.model == "openai/tiny-chat"
        verdict = judge.judge([{"role": "user", "content": "What is the capital of France?"}],
                              {"role": "assistant", "content": "The capital of France is Paris."},
                              [{"role": "user", "content": "Please answer in one word."}])
    assert verdict.errors == []  # every vote came back over real HTTP
    assert len(verdict.votes) == 3 and len(verdict.hints) == 1
    assert all(v in (1, -1, 0, None) for v in verdict.votes)
    assert verdict.tally().reward in (1, -1, 0)
