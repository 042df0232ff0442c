"""``nextstate worker``: labeler RQ worker processes plus the dispatcher, supervised.

The command starts ``--workers N`` RQ worker processes on the ``label`` queue (each forks a work
horse per job, so a crash inside a job never takes the worker down; RQ then retries the job as
declared at enqueue) and runs the dispatcher, which turns new transitions and feedback into jobs.
A worker process that dies is restarted. SIGTERM or Ctrl-C stops everything: workers finish the
job in hand first (RQ's warm shutdown).

Scaling across machines: run ``nextstate worker`` on as many hosts as needed with the same
``NEXTSTATE_REDIS_URL`` (and ``NEXTSTATE_QUEUE_URL``, when the queues live on a Redis of their own, as
they must beside a Redis Cluster). All workers pull from the same RQ queue, and all dispatchers join
the same consumer group, so each stream entry is handed to exactly one of them; entries left pending
by a host that died are re-claimed by the others after ``NEXTSTATE_CLAIM_IDLE_MS``. ``--no-dispatch``
runs workers only; ``python -m labeler worker --child`` is one bare worker process.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from types import FrameType

import structlog
from rq import SimpleWorker, Worker
from rq.worker import BaseWorker

from labeler.dispatcher import Dispatcher
from labeler.jobs import Runtime, install
from labeler.judges import JudgeError
from labeler.records import LABEL_QUEUE
from labeler.settings import LabelerSettings

log = structlog.get_logger("labeler.worker")

# How often an RQ worker's command listener looks up from its read to see whether it should stop.
LISTENER_WAKE_S = 0.5


def listen_for_commands(worker: BaseWorker) -> None:
    """Subscribe ``worker`` to its RQ command channel, as RQ does, with a listener that stops promptly.

    RQ 3 reads the channel in a thread that wakes every 60 s, and recent redis-py joins that thread without a
    timeout when the worker unsubscribes at its stop: once the unsubscribe lands first, a warm shutdown
    waits out the whole minute. Commands still arrive at once; only stopping depends on the wake-up.
    """
    worker.log.info("Worker %s: subscribing to channel %s", worker.name, worker.pubsub_channel_name)
    worker.pubsub = worker.connection.pubsub()
    worker.pubsub.subscribe(**{worker.pubsub_channel_name: worker.handle_payload})
    worker.pubsub_thread = worker.pubsub.run_in_thread(sleep_time=LISTENER_WAKE_S, daemon=True,
                                                       exception_handler=worker._pubsub_exception_handler)


class LabelWorker(Worker):
    """RQ's forking worker (a work horse per job) that stops within a second of being asked."""

    def subscribe(self) -> None:
        listen_for_commands(self)


class InlineWorker(SimpleWorker):
    """RQ's worker that runs jobs in its own process (tests, one-off runs), stopping as promptly."""

    def subscribe(self) -> None:
        listen_for_commands(self)


def run_child(settings: LabelerSettings, url: str, burst: bool = False) -> int:
    """One RQ worker process on the label queue."""
    rt = install(Runtime.open(settings, url))
    try:
        rt.judge  # noqa: B018 -- build it before forking work horses, so each job starts ready
    except JudgeError as exc:  # the judge may come up later; jobs retry until it does
        log.warning("judge_not_ready", error=str(exc)[:300])
    # maintenance also re-queues a job stranded by a worker that died while taking it (after ~1 min)
    worker = LabelWorker([rt.queue(LABEL_QUEUE)], connection=rt.queues, serializer=rt.queue().serializer,
                         name=f"labeler-{socket.gethostname()}-{os.getpid()}",
                         maintenance_interval=settings.maintenance_interval_s)
    worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level.upper())
    return 0


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class Supervisor:
    """Keeps ``count`` worker processes alive and the dispatcher running until stopped."""

    def __init__(self, settings: LabelerSettings, url: str, count: int, dispatch: bool = True) -> None:
        self.settings = settings
        self.url = url
        self.count = count
        self.dispatch = dispatch
        self.stop = threading.Event()
        self.children: list[subprocess.Popen[bytes]] = []
        self.restarts = 0

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "NEXTSTATE_REDIS_URL": self.url,
               **({"NEXTSTATE_QUEUE_URL": self.settings.queue_url} if self.settings.queue_url else {})}
        # its own process group: when a worker dies, its scheduler process (which shares the worker's
        # Redis socket and would keep a dead BLMOVE alive, swallowing the next job) dies with it
        child = subprocess.Popen([sys.executable, "-m", "labeler", "worker", "--child"], env=env,
                                 start_new_session=True)
        log.info("worker_started", pid=child.pid)
        return child

    def run(self) -> int:
        self.children = [self._spawn() for _ in range(self.count)]
        thread = self._start_dispatcher() if self.dispatch else None
        while not self.stop.wait(0.5):  # the wait also paces restarts of a child that keeps crashing
            if thread is not None and not thread.is_alive() and not self.stop.is_set():
                log.error("dispatcher_died", restarting=True)
                thread = self._start_dispatcher()
            for index, child in enumerate(self.children):
                code = child.poll()
                if code is not None and not self.stop.is_set():
                    log.error("worker_exited", pid=child.pid, code=code, restarting=True)
                    _kill_group(child.pid)
                    self.children[index] = self._spawn()
                    self.restarts += 1
        return self._shutdown(thread)

    def _start_dispatcher(self) -> threading.Thread:
        rt = Runtime.open(self.settings, self.url)
        dispatcher = Dispatcher(rt)

        def run() -> None:
            try:
                dispatcher.run(self.stop)
            except Exception:  # reported here, then the supervisor starts a fresh dispatcher
                log.exception("dispatcher_failed")
            finally:
                rt.close()

        thread = threading.Thread(target=run, name="dispatcher", daemon=True)
        thread.start()
        log.info("dispatcher_started", consumer=dispatcher.consumer, group=dispatcher.group)
        return thread

    def _shutdown(self, thread: threading.Thread | None) -> int:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.job_timeout_s
        for child in self.children:
            try:
                child.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            _kill_group(child.pid)  # anything the worker left behind
        if thread is not None:
            thread.join(timeout=10)
        log.info("labeler_stopped")
        return 0

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        self.stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nextstate worker", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, help="worker processes (default: NEXTSTATE_WORKERS or 2)")
    parser.add_argument("--no-dispatch", action="store_true", help="run workers only, no dispatcher")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--burst", action="store_true", help="with --child: exit when the queue is empty")
    args = parser.parse_args(argv)

    from proxy.embedded_redis import resolve_redis_url
    from proxy.logs import configure_logging
    from proxy.redis_connect import queue_settings_problem

    settings = LabelerSettings(**({"workers": args.workers} if args.workers else {}))
    configure_logging(settings.log_level, settings.log_json)
    if problem := queue_settings_problem(settings.redis_url, settings.queue_url):
        print(f"nextstate worker: {problem}", file=sys.stderr)
        return 2
    url, embedded = resolve_redis_url(settings.redis_url, settings.home_dir())
    if args.child:
        return run_child(settings, url, burst=args.burst)
    supervisor = Supervisor(settings, url, settings.workers, dispatch=not args.no_dispatch)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    log.info("labeler_starting", workers=settings.workers, judge=settings.judge, redis=url.split("@")[-1])
    try:
        return supervisor.run()
    finally:
        if embedded is not None:
            embedded.stop()
