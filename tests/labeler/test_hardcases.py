"""Hard cases: split votes and judge-vs-feedback disagreements relabeled offline by a strong judge."""

from __future__ import annotations

import pytest
import redis

from labeler.__main__ import main as labeler_main
from labeler.records import HARD_QUEUE
from labeler.samples import SampleStore
from tests.labeler.scripted_server import ScriptedJudge, cycle
from tests.labeler.support import dispatch, put_feedback, put_transition, put_turn, runtime, work
from tests.support.servers import serve_in_thread


@pytest.fixture(autouse=True)
def _keep_test_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command configures process-wide logging onto the current stderr; pytest closes that stream."""
    monkeypatch.setattr("proxy.logs.configure_logging", lambda *args, **kwargs: None)


def strong_judge(verdict: str) -> ScriptedJudge:
    def script(prompt: str) -> str:
        if "[HINT_START]" in prompt:
            return "The user wants another city. [HINT_START]Answer about Lyon, the city the user meant.[HINT_END]"
        return f"Looking at the next state carefully. {verdict}"

    return ScriptedJudge(script, models=["kimi-k2"])


def test_split_votes_are_relabeled_by_the_strong_judge(redis_url: str, redis_client: redis.Redis,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    policy = ScriptedJudge(cycle("\\boxed{1}", "\\boxed{-1}", "\\boxed{0}"))
    strong = strong_judge("\\boxed{-1}")
    with serve_in_thread(policy.app()) as policy_url, serve_in_thread(strong.app()) as strong_url:
        rt = runtime(redis_url, judge="llm", judge_api_base=f"{policy_url}/v1")
        put_turn(redis_client, "t1")
        put_transition(redis_client, "t1", "Hmm, I meant Lyon actually.")
        dispatch(rt)
        work(rt)
        (first,) = SampleStore(redis_client).history()
        assert (first.cls, first.hard, first.reason, first.reward) == ("observation", True, "split_vote", 0)
        assert first.judge_model == "openai/tiny-chat" and first.prompt_version == "prm-v1+hint-v1"
        assert rt.queue(HARD_QUEUE).get_job_ids() == ["hard-t1"]
        assert strong.prompts == []  # labeling never calls the strong judge

        monkeypatch.setenv("NEXTSTATE_REDIS_URL", redis_url)
        argv = ["label", "hard-cases", "--model", "openai/kimi-k2", "--api-base", f"{strong_url}/v1"]
        assert labeler_main(argv) == 0
        assert labeler_main(argv) == 0  # an empty queue: nothing to do, nothing changes

    history = SampleStore(redis_client).history()
    assert [(s.revision, s.source, s.cls) for s in history] == [(0, "judge", "observation"), (1, "strong_judge", "avoid")]
    latest = history[-1]
    assert latest.reward == -1 and not latest.hard and latest.judge_model == "openai/kimi-k2"
    assert latest.hint == "Answer about Lyon, the city the user meant."
    assert latest.previous is not None and latest.previous["reward"] == 0  # the replaced verdict, kept
    assert set(latest.verdicts) == {"judge", "strong_judge"}
    assert latest.messages == first.messages and latest.serving_version == "v2"
    assert rt.queue(HARD_QUEUE).get_job_ids() == []
    assert strong.requests[0]["model"] == "kimi-k2"


def test_feedback_disagreement_is_arbitrated_with_the_rating_in_view(redis_url: str, redis_client: redis.Redis,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    rt = runtime(redis_url)  # embedded judge
    put_turn(redis_client, "t1")
    put_transition(redis_client, "t1", "Thanks, great!")
    put_feedback(redis_client, "t1", -1, "the city is wrong")
    dispatch(rt)
    work(rt)
    assert SampleStore(redis_client).current("t1").hard  # type: ignore[union-attr]
    strong = strong_judge("\\boxed{-1}")
    with serve_in_thread(strong.app()) as strong_url:
        monkeypatch.setenv("NEXTSTATE_REDIS_URL", redis_url)
        assert labeler_main(["label", "hard-cases", "--model", "openai/kimi-k2", "--api-base", f"{strong_url}/v1"]) == 0
    prm_prompt = next(p for p in strong.prompts if "[HINT_START]" not in p)
    assert "explicit rating given by the user afterwards: -1; comment: the city is wrong" in prm_prompt
    latest = SampleStore(redis_client).current("t1")
    assert latest is not None and latest.source == "strong_judge" and latest.cls == "avoid"
    assert set(latest.verdicts) == {"judge", "feedback", "strong_judge"}
    assert latest.previous is not None and latest.previous["reward"] == -1  # the feedback verdict it replaced


def test_hard_cases_need_a_model(redis_url: str, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NEXTSTATE_REDIS_URL", redis_url)
    monkeypatch.delenv("NEXTSTATE_STRONG_MODEL", raising=False)
    assert labeler_main(["label", "hard-cases"]) == 2
    assert "strong judge needs a model" in capsys.readouterr().err
