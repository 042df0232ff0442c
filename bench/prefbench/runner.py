"""Running PrefBench: one private stack per (method, persona, seed), the simulated user, evaluations.

Learning happens only through the real loop (proxy -> streams -> labeler -> samples -> learner ->
registry -> gate -> canary -> promotion); the bench only shortens the canary's evidence thresholds
and paces the simulated user so that what is in flight is labeled, trained and gated before the next
interaction. The simulated user opts in to canaries by header (``BenchConfig.opt_in``). Satisfaction is
measured on held-out prompts served as stable, never recorded.
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
import redis

from bench.prefbench.personas import PERSONAS
from bench.prefbench.personas_text import TEXT_PERSONAS
from bench.prefbench.questions import question_stream, split_pools
from bench.prefbench.simulator import FeedbackMix
from bench.prefbench.stack import Pipeline, Progress, Stack
from bench.prefbench.user import Interaction, SimulatedUser, evaluate

METHODS = ("none", "rl", "opd", "combined")


@dataclass(frozen=True)
class BenchConfig:
    methods: tuple[str, ...] = METHODS
    personas: tuple[str, ...] = ("terse", "quiet", "listy")
    seeds: tuple[int, ...] = (0, 1, 2)
    interactions: int = 24
    every: int = 4
    """Evaluate every ``every`` interactions (and before the first)."""
    eval_prompts: int = 16
    mix: FeedbackMix = field(default_factory=FeedbackMix)
    batch_size: int = 4
    """The learner's batch size (also used to tell a waiting learner from a training one)."""
    lr: float = 3e-3
    """Learner learning rate, with 3 steps per batch (DESIGN.md decision 8's library default is 2e-3 x 2). Measured
    with the retain set sampled from the base model and hint demonstrations, 3 personas, seed 0: 3e-3 x 2 reached
    0.73 at 24 interactions, 3e-3 x 3 0.83, facts kept (0.875-1.00 on fresh prompts) and no candidate failed the
    gate. Before those two, faster settings (5e-3 x 4, 3e-3 x 4) damaged facts and the gate rejected them."""
    steps_per_batch: int = 3
    opt_in: bool = True
    """The simulated user opts in to the canary (``X-NextState-Canary: 1``, as a user who volunteers for new
    versions does), so a candidate meets its evidence in the user's next turns instead of waiting for a
    session that lands in the traffic slice: with one simulated user and a 50 % slice, stable lagged the
    learner by two candidates (measured, 3 personas, seed 0: 0.54 at 24 interactions with the slice alone,
    0.81 opted in). The canary still decides (minimum evidence, rollback rules); the curve is still measured
    on stable, with ``X-NextState-Canary: 0``."""
    canary_min_samples: int = 2
    """Labeled canary turns before the controller may promote (shortened, never skipped)."""
    gate_samples: int = 4
    gate_replay_tolerance: float = 0.05
    """Sampled answers per sacred case and policy in the gate."""
    settle_timeout_s: float = 240.0
    think_s: float = 0.3
    """Pause before each message of the simulated user (reading time), so records reach the loop."""
    model: str | None = None
    """Model name clients send; unset = the first model the proxy lists."""
    model_cache: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    jobs: int = 2
    """Runs at once, each on its own stack: a run leaves a core idle while it starts, polls and waits for
    labels, so two at a time finish the matrix sooner on 2 cores. With more than one, every model process
    uses one thread (two runs' processes then share the cores instead of fighting over them)."""


def stack_env(config: BenchConfig, method: str, seed: int) -> tuple[dict[str, str], str | None]:
    """Environment and components of the stack for one run (``none`` runs without a learner)."""
    env = {
        # proxy: refresh routing quickly; sessions are closed explicitly (X-Session-Done), never while a slow
        # evaluation or training pause keeps the simulated user waiting
        "NEXTSTATE_ROUTING_REFRESH_S": "0.5", "NEXTSTATE_SESSION_IDLE_TIMEOUT_S": "600",
        # labeler: one worker process on a 2-core machine
        "NEXTSTATE_WORKERS": "1",
        # canary: one step at half the traffic, a short minimum of labeled canary turns, frequent ticks.
        # A few labeled turns cannot make the anytime-valid interval narrower than the margin, so the
        # margin is widened: promotion then needs the minimum evidence with no rollback condition
        # (health breach, or worse than stable with confidence) -- shortened, not skipped.
        "NEXTSTATE_CANARY_STEPS": "[0.5]", "NEXTSTATE_CANARY_STEP_SAMPLES": str(config.canary_min_samples),
        "NEXTSTATE_CANARY_MIN_SAMPLES": str(config.canary_min_samples), "NEXTSTATE_CANARY_MARGIN": "1.5",
        "NEXTSTATE_CONTROLLER_INTERVAL": "1", "NEXTSTATE_DRAIN_SECONDS": "2",
        # gate: every check runs, with fewer sampled answers per sacred case; held-out replay over the
        # handful of samples a short run has moves by a few hundredths of a nat either way on noise
        # alone (measured in such runs: 0.0002 to 0.09), so a wrong-way move within the tolerance passes
        "NEXTSTATE_GATE_SAMPLES": str(config.gate_samples),
        "NEXTSTATE_GATE_REPLAY_TOLERANCE": str(config.gate_replay_tolerance),
        # learner
        "NEXTSTATE_METHOD": method if method != "none" else "combined", "NEXTSTATE_BATCH_SIZE": str(config.batch_size),
        "NEXTSTATE_LR": str(config.lr), "NEXTSTATE_STEPS_PER_BATCH": str(config.steps_per_batch),
        "NEXTSTATE_SEED": str(seed), "NEXTSTATE_LEARNER_METRICS_PORT": "0",
        **({"OMP_NUM_THREADS": "1"} if config.jobs > 1 else {}),
        **config.extra_env,
    }
    components = "redis,serve,proxy,worker" if method == "none" else None
    return env, components


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
    persona = PERSONAS.get(persona_name) or TEXT_PERSONAS[persona_name]
    shutil.rmtree(home, ignore_errors=True)
    env, components = stack_env(config, method, seed)
    started = time.monotonic()
    stack = Stack(home, env=env, components=components, model_cache=config.model_cache).start()
    startup_s = time.monotonic() - started
    try:
        client = openai.OpenAI(base_url=stack.base_url, api_key="prefbench", timeout=120.0, max_retries=6)
        model = config.model or client.models.list().data[0].id
        pipeline = Pipeline(redis.Redis.from_url(stack.redis_url, socket_timeout=5))
        pools = split_pools(seed, config.eval_prompts)
        rng = random.Random(f"prefbench-{persona_name}-{seed}")  # the same user behaviour for every method
        user = SimulatedUser(client, model, persona, config.mix, rng, question_stream(pools, rng), f"{method}-{seed}",
                             opt_in=config.opt_in)
        timeouts: list[str] = []
        interactions: list[dict[str, Any]] = []
        points: list[dict[str, Any]] = []

        def pace() -> None:
            if method == "none":
                return
            time.sleep(config.think_s)  # the user reads the answer; meanwhile its records reach Redis
            if busy := pipeline.settle(config.settle_timeout_s):
                timeouts.append(f"{busy} at interaction {user.count}")

        def record(interaction: Interaction) -> None:
            interactions.append(asdict(interaction))
            on_interaction(interaction)
            on_progress(pipeline.refresh(), user.count)

        def checkpoint() -> None:
            pace()
            result = evaluate(client, model, persona, pools.evaluate, f"{method}-{seed}-c{user.count}")
            progress = pipeline.refresh()
            points.append({"method": method, "persona": persona_name, "seed": seed, "interactions": user.count,
                           "satisfaction": result.satisfaction, "fact_accuracy": result.fact_accuracy,
                           "served_by": list(result.versions), "stable": progress.stable,
                           "elapsed_s": round(time.monotonic() - started, 1)})
            on_line(f"[{method}/{persona_name}/seed {seed}] eval satisfaction {result.satisfaction:.2f} "
                    f"(facts {result.fact_accuracy:.2f}, served by {','.join(result.versions)}) | "
                    + progress.line(user.count))

        if method != "none" and not pipeline.learner_ready(config.settle_timeout_s):
            timeouts.append("no learner consuming samples before the first interaction")
        checkpoint()
        while user.count < config.interactions:
            user.interact(min(config.every, config.interactions - user.count), before_each=pace, after_each=record)
            checkpoint()
        progress = pipeline.refresh()
        summary = {"turns": progress.turns, "transitions": progress.transitions, "samples": progress.samples,
                   "prefer": progress.prefer, "avoid": progress.avoid, "hints": progress.hints,
                   "events": dict(progress.events), "states": progress.states, "stable": progress.stable}
        return RunResult(method, persona_name, seed, points, interactions, summary,
                         round(time.monotonic() - started, 1), round(startup_s, 1), timeouts, stack.restarts())
    finally:
        stack.stop()


def run_matrix(config: BenchConfig, out_dir: Path, on_line: Callable[[str], None] = print) -> dict[str, Any]:
    """Every (seed, persona, method), ``config.jobs`` at a time; ``results.json`` is rewritten after each run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"config": _jsonable(asdict(config)), "runs": [], "points": []}
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
