"""``nextstate worker`` as real processes: a work horse killed mid-job, a crashed worker restarted."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue, Worker
from rq.registry import FailedJobRegistry

from labeler.records import HARD_QUEUE, LABEL_QUEUE, SampleRecord
from labeler.samples import SampleStore
from labeler.worker import InlineWorker, LabelWorker
from tests.labeler.scripted_server import ScriptedJudge, cycle
from tests.labeler.support import put_transition, put_turn
from tests.support.servers import serve_in_thread

ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], object], timeout: float = 90.0, what: str | Callable[[], str] = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


def children_of(pid: int, own_group: bool = False) -> list[int]:
    """Child processes of ``pid``; ``own_group``: only those leading their own process group (RQ's horse)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and (not own_group or int(fields[2]) == int(entry.name)):
                found.append(int(entry.name))
    return found


def start_worker(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "labeler", "worker", *args], cwd=ROOT,
                                env={**os.environ, **env, "NEXTSTATE_LOG_JSON": "true"},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture
def stop_later() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # also what an exited supervisor may have left behind
        proc.wait()


def process_tree(pid: int) -> str:
    """``pid`` and its descendants: state, kernel wait channel, command line (for a stop that hangs)."""
    lines, todo = [], [pid]
    while todo:
        current = todo.pop()
        proc = Path(f"/proc/{current}")
        with contextlib.suppress(OSError):
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            lines.append(f"{current} {state} {(proc / 'wchan').read_text()} {cmdline}")
        todo.extend(children_of(current))
    return "\n".join(lines)


def stop(proc: subprocess.Popen[bytes], log: Path) -> int:
    """SIGTERM the supervisor and wait for it; a hang fails with its processes and log."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"not stopped after 60 s:\n{process_tree(proc.pid)}\nlog:\n{log.read_text()[-8000:]}") from None


def samples(client: redis.Redis) -> list[SampleRecord]:
    return SampleStore(client).history()


@pytest.mark.parametrize("worker_class", [LabelWorker, InlineWorker])
def test_command_listener_stops_at_once_when_its_unsubscribe_landed_first(redis_client: redis.Redis,
                                                                          worker_class: type) -> None:
    """The order that made a warm shutdown hang for a minute: the listener thread has already seen the
    channel unsubscribed (and gone to wait for a new subscription) when the worker stops it."""
    worker = worker_class([Queue(LABEL_QUEUE, connection=redis_client)], connection=redis_client)
    worker.subscribe()
    wait_for(lambda: worker.pubsub.subscribed, what="the subscription")
    worker.pubsub.unsubscribe()
    wait_for(lambda: not worker.pubsub.subscribed, what="the listener to see the unsubscribe")
    started = time.monotonic()
    worker.unsubscribe()
    assert not worker.pubsub_thread.is_alive()
    assert time.monotonic() - started < 5


@pytest.mark.slow
@pytest.mark.parametrize("retries", [2, 0])
def test_work_horse_killed_mid_job_is_retried_and_labels_once(redis_url: str, redis_client: redis.Redis,
                                                              tmp_path: Path, stop_later: list, retries: int) -> None:
    """With retries left the job runs again and labels once; without, the transition is kept as observation."""
    provider = ScriptedJudge(cycle("The user corrects it. \\boxed{-1}"), delays=[60.0])
    with serve_in_thread(provider.app()) as url:
        env = {"NEXTSTATE_REDIS_URL": redis_url, "NEXTSTATE_JUDGE": "llm", "NEXTSTATE_JUDGE_API_BASE": f"{url}/v1",
               "NEXTSTATE_JUDGE_MODEL": "openai/tiny-chat", "NEXTSTATE_JUDGE_VOTES": "1", "NEXTSTATE_HINT_VOTES": "0",
               "NEXTSTATE_JOB_RETRIES": str(retries), "NEXTSTATE_RETRY_INTERVALS_S": "[0]",
               "NEXTSTATE_SWEEP_INTERVAL_S": "0.5", "NEXTSTATE_HOME": str(tmp_path)}
        proc = start_worker(env, tmp_path / "worker.log", "--workers", "1")
        stop_later.append(proc)
        put_turn(redis_client, "t1")
        put_transition(redis_client, "t1", "No, that's wrong.")
        wait_for(lambda: provider.prompts, what="the first judge call")  # the job is in the work horse now
        (worker,) = Worker.all(connection=redis_client)
        (horse,) = wait_for(lambda: children_of(worker.pid, own_group=True), what="the work horse")  # type: ignore[misc]
        os.kill(horse, signal.SIGKILL)
        wait_for(lambda: samples(redis_client), what="the sample")
        time.sleep(1.0)  # a second label, if any, would land now
        history = samples(redis_client)
        if retries:
            assert [(s.turn_id, s.revision, s.cls, s.reward) for s in history] == [("t1", 0, "avoid", -1)]
            assert len(provider.prompts) == 2  # killed attempt + the retry
        else:
            assert [(s.turn_id, s.revision, s.cls, s.hard) for s in history] == [("t1", 0, "observation", True)]
            assert "Work-horse terminated unexpectedly" in (history[0].reason or "")
            assert len(provider.prompts) == 1
            assert FailedJobRegistry("label", connection=redis_client).get_job_ids() == ["label-tr-t1"]
            assert Queue(HARD_QUEUE, connection=redis_client).get_job_ids() == ["hard-t1"]
        assert stop(proc, tmp_path / "worker.log") == 0
    log = (tmp_path / "worker.log").read_text()
    assert "Work-horse terminated unexpectedly" in log
    assert ("enqueued for retry" in log) is bool(retries)


@pytest.mark.slow
def test_worker_processes_are_restarted_and_stop_cleanly(redis_url: str, redis_client: redis.Redis,
                                                         tmp_path: Path, stop_later: list) -> None:
    env = {"NEXTSTATE_REDIS_URL": redis_url, "NEXTSTATE_JUDGE": "embedded", "NEXTSTATE_HOME": str(tmp_path)}
    proc = start_worker(env, tmp_path / "worker.log", "--workers", "2")
    stop_later.append(proc)
    for index, text in enumerate(["Thanks!", "Please answer in one word.", "Redo it."]):
        put_turn(redis_client, f"t{index}")
        put_transition(redis_client, f"t{index}", text)
    wait_for(lambda: len(samples(redis_client)) == 3, what="three samples")
    workers = wait_for(lambda: [p for p in children_of(proc.pid) if Path(f"/proc/{p}/cmdline").read_bytes().find(b"--child") > 0],
                       what="worker processes")
    assert len(workers) == 2  # type: ignore[arg-type]
    os.kill(workers[0], signal.SIGKILL)  # type: ignore[index]
    wait_for(lambda: (tmp_path / "worker.log").read_text().count("worker_started") == 3, what="a restart")
    put_turn(redis_client, "t9")
    put_transition(redis_client, "t9", "Great, that works.")
    wait_for(lambda: len(samples(redis_client)) == 4,
             what=lambda: f"the fourth sample; log:\n{(tmp_path / 'worker.log').read_text()[-6000:]}")
    assert {s.turn_id: s.cls for s in samples(redis_client)} == {"t0": "prefer", "t1": "avoid", "t2": "avoid",
                                                                  "t9": "prefer"}
    assert stop(proc, tmp_path / "worker.log") == 0
    assert "worker_exited" in (tmp_path / "worker.log").read_text()
