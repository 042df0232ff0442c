"""``nextstate label hard-cases --model <litellm model id>``: the strong judge, offline, in batch.

Hard cases (split votes, judge failures, judge vs explicit feedback) wait in the RQ queue
``hard``; nothing on the proxy's request path ever calls the strong judge. This command drains
the queue with a strong model through litellm (for example a Kimi model), several cases in
parallel, and writes a new revision of each sample: the strong verdict decides the label, and
every earlier verdict stays in ``verdicts`` (the one it replaced also in ``previous``). A case is
removed from the queue only after its new revision is stored; a crash leaves it queued.
``relabel`` is also a plain RQ job, so an RQ worker started with strong-judge settings on the
``hard`` queue does the same work continuously.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed

import structlog
from rq import get_current_job
from rq.job import Job
from tqdm import tqdm

from labeler.jobs import Runtime, install, runtime
from labeler.judges import JudgeError
from labeler.records import HARD_QUEUE
from labeler.samples import SampleStore, apply_verdict
from labeler.settings import LabelerSettings
from labeler.tally import classify, select_hint

log = structlog.get_logger("labeler.hardcases")


def relabel(turn_id: str, event_id: str | None = None) -> str:
    """Judge one hard case with the installed (strong) judge and store the overriding revision."""
    rt = runtime()
    s = rt.settings
    store = SampleStore(rt.redis)
    current = store.current(turn_id)
    if current is None:
        return "missing"
    if event_id is None:
        job = get_current_job()
        event_id = f"strong:{job.id}:{job.created_at.timestamp()}" if job is not None else f"strong:{turn_id}:r{current.revision}"
    feedback = current.verdicts.get("feedback")
    extra = None
    if feedback is not None:
        comment = f"; comment: {feedback.get('comment')}" if feedback.get("comment") else ""
        extra = f"[explicit rating given by the user afterwards: {feedback['reward']:+d}{comment}]"
    verdict = rt.judge.judge(current.messages, current.response, current.next_state, extra_next_state=extra)
    result = verdict.tally()
    decision = classify(result.reward, result.agreement, tau=s.tau, tau_hard=0.0,
                        has_next_state=bool(current.next_state) or feedback is not None)
    strong = {"reward": result.reward, "votes": list(verdict.votes), "agreement": result.agreement,
              "cls": decision.cls, "hard": False, "reason": decision.reason or None,
              "hint": select_hint(verdict.hints, s.hint_min_chars), "model": verdict.model,
              "prompt_version": verdict.prompt_version, "truncated": verdict.truncated, "errors": verdict.errors,
              "source_id": event_id}
    base = {"turn_id": turn_id}
    commit = store.commit(turn_id, event_id, lambda cur: apply_verdict(cur, base, "strong_judge", strong,
                                                                       event_id=event_id, hard=False))
    log.info("hard_case_relabeled", turn_id=turn_id, outcome=commit.outcome, cls=decision.cls, model=verdict.model)
    return commit.outcome


def drain(rt: Runtime, limit: int | None = None, concurrency: int = 8, progress: bool = True) -> dict[str, int]:
    """Relabel every queued hard case (at most ``limit``); returns counts per outcome."""
    install(rt)
    queue = rt.queue(HARD_QUEUE)
    job_ids = queue.get_job_ids()[: limit or None]
    counts: dict[str, int] = {"written": 0, "duplicate": 0, "missing": 0, "skipped": 0, "failed": 0}

    def one(job_id: str) -> str:
        job = Job.fetch(job_id, connection=rt.queues, serializer=queue.serializer)
        outcome = relabel(str(job.args[0]), event_id=f"strong:{job.id}:{job.created_at.timestamp()}")
        queue.remove(job_id)
        job.delete()
        return outcome

    rt.judge  # noqa: B018 -- build the judge once, before the threads share it
    with ThreadPoolExecutor(max_workers=concurrency) as pool, tqdm(total=len(job_ids), disable=not progress,
                                                                    desc="hard cases", file=sys.stderr) as bar:
        futures = {pool.submit(one, job_id): job_id for job_id in job_ids}
        for future in as_completed(futures):
            try:
                counts[future.result()] += 1
            except Exception as exc:  # the case stays queued for the next run
                counts["failed"] += 1
                log.error("hard_case_failed", job_id=futures[future], error=f"{type(exc).__name__}: {exc}"[:300])
            bar.update(1)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nextstate label", description="labeling batch jobs")
    sub = parser.add_subparsers(dest="command", required=True)
    hard = sub.add_parser("hard-cases", help="relabel the hard-case queue with a strong judge")
    hard.add_argument("--model", help="litellm model id of the strong judge (default: NEXTSTATE_STRONG_MODEL)")
    hard.add_argument("--api-base", help="base URL of the strong judge (default: the provider's)")
    hard.add_argument("--api-key", help="API key (default: NEXTSTATE_STRONG_API_KEY or the provider's env variable)")
    hard.add_argument("--votes", type=int, help="votes per case (default: NEXTSTATE_JUDGE_VOTES)")
    hard.add_argument("--limit", type=int, help="relabel at most this many cases")
    hard.add_argument("--concurrency", type=int, help="cases judged in parallel")
    args = parser.parse_args(argv)

    from proxy.embedded_redis import resolve_redis_url
    from proxy.logs import configure_logging
    from proxy.redis_connect import queue_settings_problem

    overrides = {k: v for k, v in {"strong_model": args.model, "strong_api_base": args.api_base,
                                   "strong_api_key": args.api_key, "judge_votes": args.votes,
                                   "strong_concurrency": args.concurrency}.items() if v is not None}
    settings = LabelerSettings(**overrides)  # type: ignore[arg-type]
    configure_logging(settings.log_level, settings.log_json)
    if problem := queue_settings_problem(settings.redis_url, settings.queue_url):
        print(f"nextstate label: {problem}", file=sys.stderr)
        return 2
    url, _ = resolve_redis_url(settings.redis_url, settings.home_dir())
    rt = Runtime.open(settings, url, strong=True)
    try:
        counts = drain(rt, limit=args.limit, concurrency=settings.strong_concurrency)
    except JudgeError as exc:
        print(f"nextstate label hard-cases: {exc}", file=sys.stderr)
        return 2
    finally:
        rt.close()
    print(" ".join(f"{k}={v}" for k, v in counts.items()))
    return 1 if counts["failed"] else 0
