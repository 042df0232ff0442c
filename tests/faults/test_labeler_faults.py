"""A labeler worker's work horse SIGKILLed mid-job, again and again, while transitions queue up: every
transition is labeled exactly once."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from rq import Worker

from tests.faults.conftest import SUITE
from tests.labeler.scripted_server import ScriptedJudge, cycle
from tests.labeler.support import put_transition, put_turn
from tests.labeler.test_worker_process import children_of, samples, start_worker, stop, stop_later, wait_for  # noqa: F401
from tests.support import figures
from tests.support.servers import serve_in_thread

TRANSITIONS = 6
KILLS = 3


@pytest.mark.slow
def test_work_horses_killed_repeatedly_label_each_transition_once(redis_url: str, redis_client: redis.Redis,
                                                                  tmp_path: Path, stop_later: list) -> None:  # noqa: F811
    provider = ScriptedJudge(cycle("The user corrects it. \\boxed{-1}"), delay_s=60.0)  # every call hangs: a job to kill
    with serve_in_thread(provider.app(), timeout_graceful_shutdown=1) as url:
        env = {"NEXTSTATE_REDIS_URL": redis_url, "NEXTSTATE_JUDGE": "llm", "NEXTSTATE_JUDGE_API_BASE": f"{url}/v1",
               "NEXTSTATE_JUDGE_MODEL": "openai/tiny-chat", "NEXTSTATE_JUDGE_VOTES": "1", "NEXTSTATE_HINT_VOTES": "0",
               "NEXTSTATE_JOB_RETRIES": str(KILLS), "NEXTSTATE_RETRY_INTERVALS_S": "[0]",
               "NEXTSTATE_SWEEP_INTERVAL_S": "0.5", "NEXTSTATE_HOME": str(tmp_path)}
        proc = start_worker(env, tmp_path / "worker.log", "--workers", "1")
        stop_later.append(proc)
        for index in range(TRANSITIONS):
            put_turn(redis_client, f"t{index}")
            put_transition(redis_client, f"t{index}", "No, that's wrong.")
        killed: set[int] = set()
        for kill in range(KILLS):
            wait_for(lambda k=kill: len(provider.prompts) > k, what="a judge call in flight")
            (worker,) = Worker.all(connection=redis_client)
            horse = wait_for(lambda w=worker: [p for p in children_of(w.pid, own_group=True) if p not in killed],
                             what="a new work horse")[0]  # type: ignore[index]
            if kill == KILLS - 1:
                provider.delay_s = 0.0  # the last kill: from now on the judge answers at once
            os.kill(horse, signal.SIGKILL)
            killed.add(horse)
            figures.add(SUITE, "faults injected: labeler work horse SIGKILLed mid-job")
        wait_for(lambda: len(samples(redis_client)) >= TRANSITIONS, what="every transition labeled")
        time.sleep(1.0)  # a second label of any transition would land now
        labeled = Counter(s.turn_id for s in samples(redis_client))
        assert stop(proc, tmp_path / "worker.log") == 0
    lost = TRANSITIONS - len(labeled)
    duplicated = sum(n - 1 for n in labeled.values())
    figures.add(SUITE, "records lost", lost)
    figures.add(SUITE, "records duplicated", duplicated)
    assert lost == 0 and duplicated == 0
    assert all(s.reward == -1 and s.revision == 0 for s in samples(redis_client))
    assert (tmp_path / "worker.log").read_text().count("Work-horse terminated unexpectedly") >= KILLS
