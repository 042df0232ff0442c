"""Running PrefBench: one private stack per (method, persona, seed), the simulated user, evaluations.

Learning happens only through the real loop (proxy -> streams -> labeler -> samples -> learner ->
registry -> gate -> personal canary -> promotion), on the product defaults of ``nextstate up``: the
user learns in its personal scope (``local``) and its candidates are decided by the personal canary.
The simulated user is a plain client (no nextstate headers; ``BenchConfig.opt_in`` is the variant that
sends them). Every setting the bench changes is in ``changed_settings`` with its reason and is printed.
The user is paced: between its sessions it waits until the idle timeout closed the last one and what
is in flight was labeled, trained and gated. Satisfaction is measured on held-out prompts served as
stable, never recorded.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import openai

from bench.prefbench.personas import PERSONAS
from bench.prefbench.personas_text import TEXT_PERSONAS
from bench.prefbench.questions import question_stream, split_pools
from bench.prefbench.simulator import FeedbackMix
from bench.prefbench.stack import Pipeline, Progress, Stack
from bench.prefbench.user import MAX_TOKENS, Interaction, SimulatedUser, evaluate
from proxy.redis_connect import connect

METHODS = ("none", "rl", "opd", "combined")
USER_SCOPE = "local"  # nextstate up's scope for every request that names none: the one person on the machine
SWEEP_S = 1.0  # NEXTSTATE_SWEEP_INTERVAL_S for the plain client: an idle session is closed within this after its timeout


@dataclass(frozen=True)
class BenchConfig:
    methods: tuple[str, ...] = METHODS
    personas: tuple[str, ...] = ("terse", "quiet", "listy")
    seeds: tuple[int, ...] = (0, 1, 2)
    interactions: int = 24
    every: int = 4
    """Evaluate every ``every`` interactions (and before the first)."""
    eval_prompts: int = 16
    topics: tuple[str, ...] = ()
    """Question topics of both pools (``learner.tinycorpus.TOPICS``); empty: all of them."""
    questions: str = "plain"
    """How the questions are asked: "plain" or "open" (``bench.prefbench.questions``)."""
    mix: FeedbackMix = field(default_factory=FeedbackMix)
    batch_size: int = 4
    """The learner's batch size (the library default; also used to tell a waiting learner from a training one)."""
    lr: float | None = None
    """Learner learning rate; None = the learner's preset (the tiny model's: 3e-3, with 3 steps per batch)."""
    steps_per_batch: int | None = None
    """Learner optimiser steps per batch; None = the learner's preset."""
    opt_in: bool = False
    """False: a plain client (no nextstate headers). True: the user names and closes its sessions and opts in to
    the canary (``X-NextState-Canary: 1``), for comparison."""
    idle_timeout_s: float = 6.0
    """``NEXTSTATE_SESSION_IDLE_TIMEOUT_S`` for the plain client: its conversations end by idleness."""
    gate_samples: int = 4
    """Sampled answers per sacred case and policy in the gate."""
    settle_timeout_s: float = 240.0
    think_s: float = 0.3
    """Pause before each message of the simulated user (reading time), so records reach the loop."""
    model: str | None = None
    """Model name clients send; unset = the first model the proxy lists."""
    max_tokens: int = MAX_TOKENS
    """The longest answer the simulated user asks for (``max_tokens`` of its requests)."""
    model_cache: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    jobs: int = 2
    """Runs at once, each on its own stack: a run leaves a core idle while it starts, polls and waits for
    labels, so two at a time finish the matrix sooner on 2 cores. With more than one, every model process
    uses one thread (two runs' processes then share the cores instead of fighting over them)."""


def changed_settings(config: BenchConfig, method: str, seed: int) -> dict[str, tuple[str, str]]:
    """Every setting the bench changes from the product defaults: name -> (value, reason)."""
    settings: dict[str, tuple[str, str]] = {} if config.opt_in else {
        "NEXTSTATE_SESSION_IDLE_TIMEOUT_S": (
            f"{config.idle_timeout_s:g}", "the simulated user's conversations follow each other within seconds (a "
            "person's idle gap is minutes): a short idle timeout closes each one, as the default 1800 s does for a "
            f"person, so its last turn gets its next state without the bench waiting half an hour; "
            f"{config.idle_timeout_s:g} s stays above the gap between two messages of one conversation (an answer "
            f"of the busy model, then 0.3 s reading)"),
        "NEXTSTATE_SWEEP_INTERVAL_S": (
            f"{SWEEP_S:g}", f"with a {config.idle_timeout_s:g} s idle timeout, idle sessions are looked for every "
            "second (default 5 s)"),
    }
    settings |= {
        "NEXTSTATE_CONTROLLER_INTERVAL": (
            "1", "the user answers within seconds of a decision being due; a 1 s tick (default 10 s) lets the "
            "personal canary's decision land before the next session instead of up to 10 s later (pacing only: "
            "the rule, its margin and confidence are the defaults)"),
        "NEXTSTATE_WORKERS": ("1", "one labeler worker process on a 2-core machine (default 2)"),
        "NEXTSTATE_GATE_SAMPLES": (
            str(config.gate_samples), "fewer sampled answers per sacred case and policy (default 8): every gate "
            "check still runs, at half the CPU time"),
        "NEXTSTATE_METHOD": (method if method != "none" else "combined", "the method under test"),
        "NEXTSTATE_SEED": (str(seed), "the run's seed"),
        "NEXTSTATE_LEARNER_METRICS_PORT": ("0", "runs at once must not share the learner's metrics port"),
    }
    if config.batch_size != 4:
        settings["NEXTSTATE_BATCH_SIZE"] = (str(config.batch_size), "set on the command line")
    if config.lr is not None:
        settings["NEXTSTATE_LR"] = (str(config.lr), "set on the command line")
    if config.steps_per_batch is not None:
        settings["NEXTSTATE_STEPS_PER_BATCH"] = (str(config.steps_per_batch), "set on the command line")
    if config.jobs > 1:
        settings["OMP_NUM_THREADS"] = ("1", "two runs at once share the cores instead of fighting over them")
    settings.update({k: (v, "set by the caller") for k, v in config.extra_env.items()})
    return settings


def stack_env(config: BenchConfig, method: str, seed: int) -> tuple[dict[str, str], str | None]:
    """Environment and components of the stack for one run (``none`` runs without a learner)."""
    env = {name: value for name, (value, _) in changed_settings(config, method, seed).items()}
    components = "redis,serve,proxy,worker" if method == "none" else None
    return env, components


def settings_report(config: BenchConfig) -> str:
    """The settings the bench changes, each with its reason (printed before the runs and kept in the results)."""
    lines = ["settings changed from the product defaults (nextstate up; user: "
             + ("opted in, X-Session-Id / X-Session-Done / X-NextState-Canary: 1" if config.opt_in
                else "a plain client, no nextstate headers") + "):"]
    for name, (value, reason) in changed_settings(config, "combined", 0).items():
        lines.append(f"  {name}={value if name != 'NEXTSTATE_SEED' else '<seed>'}: {reason}")
    return "\n".join(lines)


@dataclass
class RunResult:
    method: str
    persona: str
    seed: int
    points: list[dict[str, Any]]
    interactions: list[dict[str, Any]]
    progress: dict[str, Any]
    wall_s: float
    startup_s: float
    settle_timeouts: list[str]
    restarts: dict[str, int]


def run_one(config: BenchConfig, method: str, persona_name: str, seed: int, home: Path,
            on_line: Callable[[str], None] = print,
            on_interaction: Callable[[Interaction], None] = lambda i: None,
            on_progress: Callable[[Progress, int], None] = lambda p, n: None) -> RunResult:
    """One run on a fresh stack; ``on_progress`` sees the loop's state after every interaction."""
    if persona_name in PERSONAS:  # each seed corrects in another family of wordings
        wording = PERSONAS[persona_name].family_for(seed)
        persona = PERSONAS[persona_name].worded(wording)
    else:  # a free-text persona (personas_text) has one way of speaking
        wording, persona = "plain", TEXT_PERSONAS[persona_name]
    shutil.rmtree(home, ignore_errors=True)
    env, components = stack_env(config, method, seed)
    started = time.monotonic()
    stack = Stack(home, env=env, components=components, model_cache=config.model_cache).start()
    startup_s = time.monotonic() - started
    try:
        client = openai.OpenAI(base_url=stack.base_url, api_key="prefbench", timeout=120.0, max_retries=6)
        model = config.model or client.models.list().data[0].id
        pipeline = Pipeline(connect(stack.redis_url, socket_timeout=5), scope=USER_SCOPE)
        pools = split_pools(seed, config.eval_prompts, config.topics, config.questions)
        rng = random.Random(f"prefbench-{persona_name}-{seed}")  # the same user behaviour for every method
        user = SimulatedUser(client, model, persona, config.mix, rng, question_stream(pools, rng), f"{method}-{seed}",
                             opt_in=config.opt_in, max_tokens=config.max_tokens)
        timeouts: list[str] = []
        interactions: list[dict[str, Any]] = []
        points: list[dict[str, Any]] = []

        def settle() -> None:
            if busy := pipeline.settle(config.settle_timeout_s):
                timeouts.append(f"{busy} at interaction {user.count}")

        def pace() -> None:
            """Before each message: the user reads the answer; meanwhile its records reach Redis. The user who
            names its sessions also waits for the loop here (its session stays open meanwhile)."""
            if method == "none":
                return
            time.sleep(config.think_s)
            if config.opt_in:
                settle()

        def between_sessions() -> None:
            """A plain client's session ends by idleness: wait for the idle close, then for the loop."""
            if method == "none" or config.opt_in:
                return
            time.sleep(config.idle_timeout_s + SWEEP_S + 1.0)
            settle()

        def record(interaction: Interaction) -> None:
            interactions.append(asdict(interaction))
            on_interaction(interaction)
            on_progress(pipeline.refresh(), user.count)

        def checkpoint() -> None:
            if method != "none":
                settle()
            result = evaluate(client, model, persona, pools.evaluate, f"{method}-{seed}-c{user.count}",
                              max_tokens=config.max_tokens)
            progress = pipeline.refresh()
            points.append({"method": method, "persona": persona_name, "seed": seed, "wording": wording,
                           "interactions": user.count,
                           "satisfaction": result.satisfaction, "fact_accuracy": result.fact_accuracy,
                           "served_by": list(result.versions), "stable": progress.stable,
                           "satisfied": [int(x) for x in result.satisfied], "facts_ok": [int(x) for x in result.facts_ok],
                           "elapsed_s": round(time.monotonic() - started, 1)})
            on_line(f"[{method}/{persona_name}/{wording}/seed {seed}] eval satisfaction {result.satisfaction:.2f} "
                    f"(facts {result.fact_accuracy:.2f}, served by {','.join(result.versions)}) | "
                    + progress.line(user.count))

        if method != "none" and not pipeline.learner_ready(config.settle_timeout_s):
            timeouts.append("no learner consuming samples before the first interaction")
        checkpoint()
        while user.count < config.interactions:
            user.interact(min(config.every, config.interactions - user.count), before_each=pace, after_each=record,
                          after_session=between_sessions)
            checkpoint()
        progress = pipeline.refresh()
        summary = {"turns": progress.turns, "transitions": progress.transitions,
                   "with_next_state": progress.with_next_state, "samples": progress.samples,
                   "prefer": progress.prefer, "avoid": progress.avoid, "hints": progress.hints,
                   "events": dict(progress.events), "states": progress.states, "stable": progress.stable,
                   "decisions": progress.decisions}
        return RunResult(method, persona_name, seed, points, interactions, summary,
                         round(time.monotonic() - started, 1), round(startup_s, 1), timeouts, stack.restarts())
    finally:
        stack.stop()


def run_matrix(config: BenchConfig, out_dir: Path, on_line: Callable[[str], None] = print) -> dict[str, Any]:
    """Every (seed, persona, method), ``config.jobs`` at a time; ``results.json`` is rewritten after each run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"config": _jsonable(asdict(config)), "settings": settings_report(config),
                               "runs": [], "points": []}
    started = time.monotonic()
    lock = threading.Lock()
    cells = [(seed, persona, method) for seed in config.seeds for persona in config.personas for method in config.methods]

    def one(cell: tuple[int, str, str]) -> None:
        seed, persona, method = cell
        run = run_one(config, method, persona, seed, out_dir / "runs" / f"{method}-{persona}-s{seed}", on_line)
        with lock:
            results["points"].extend(run.points)
            results["runs"].append({k: v for k, v in asdict(run).items() if k != "points"})
            results["points"].sort(key=lambda p: (p["seed"], p["persona"], cells.index((p["seed"], p["persona"], p["method"])),
                                                  p["interactions"]))
            results["wall_s"] = round(time.monotonic() - started, 1)
            (out_dir / "results.json").write_text(json.dumps(results, indent=1))

    # in the matrix's own order, so a learning run mostly shares the cores with a lighter one (measured: the
    # longest runs first took 31 min instead of 29, two learning runs at once slowing each other down)
    with ThreadPoolExecutor(max(1, config.jobs), thread_name_prefix="prefbench-run") as pool:
        futures = [pool.submit(one, cell) for cell in cells]
        try:
            for future in futures:
                future.result()  # a run that failed fails the matrix
        except BaseException:  # Ctrl-C or a failed run: start nothing more; running runs stop their stacks
            for future in futures:
                future.cancel()
            raise
    return results


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
