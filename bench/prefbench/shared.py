"""``python -m bench.prefbench.shared``: many users in one shared (global) lineage, the statistical canary deciding.

Six simulated users talk to one stack at once, one conversation each at the same time, then the loop
catches up (labels, training, gate, canary) before the next conversations. By default five want bullet
lists (``listy``) and one wants lowercase (``quiet``): a version that writes lists helps most of them
and the canary should find it; ``--users listy:4,quiet:2`` is the mix where a third of the users want
the opposite. Every other user opts in to candidates. Every request learns in the global scope (``NEXTSTATE_SCOPE_BY`` empty:
``nextstate proxy``'s default, one lineage for everyone), so a candidate meets the shared canary of
``registry.canary``: a slice of the conversations (5 %, then 25 %, then 50 %), users who opted in
(``X-NextState-Canary: 1``; here half of them) always, and an anytime-valid sequential test that
promotes only when the candidate is not worse than stable beyond the margin with 95 % confidence.
Every ``--every-s`` seconds the global stable is scored on fresh prompts for both preferences.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai

from bench.prefbench.personas import PERSONAS
from bench.prefbench.questions import question_stream, split_pools
from bench.prefbench.runner import BenchConfig, changed_settings
from bench.prefbench.stack import Pipeline, Stack, stop_stacks_on_termination
from bench.prefbench.user import SimulatedUser, evaluate
from proxy.redis_connect import connect

DEFAULT_USERS = "listy:5,quiet:1"


def users_of(spec: str) -> list[tuple[str, str, bool]]:
    """(name, persona, opted in) per user from "persona:count,..."; every other user opts in to candidates."""
    users: list[tuple[str, str, bool]] = []
    for part in spec.split(","):
        persona, _, count = part.strip().partition(":")
        if persona not in PERSONAS or not count.isdigit() or int(count) < 1:
            raise ValueError(f"--users wants persona:count pairs of {sorted(PERSONAS)}, got {part!r}")
        users += [(f"u{len(users) + i + 1}", persona, (len(users) + i) % 2 == 0) for i in range(int(count))]
    return users


SCOPE_SETTINGS = {"NEXTSTATE_SCOPE_BY": ("", "one shared lineage for every user (nextstate proxy's default; "
                                         "nextstate up's is one person's scope)"),
                  "NEXTSTATE_SCOPE_UNKEYED": ("global", "every request learns in the shared scope")}


def settings(config: BenchConfig, seed: int) -> dict[str, tuple[str, str]]:
    """Every setting this run changes from the product defaults, with its reason."""
    changed = {**changed_settings(config, "combined", seed), **SCOPE_SETTINGS}
    changed.pop("NEXTSTATE_CONTROLLER_INTERVAL", None)  # many users at once: nobody waits on a decision
    changed["OMP_NUM_THREADS"] = ("1", "the stack's model processes share 2 cores instead of fighting over them")
    return changed


def run(config: BenchConfig, seed: int, home: Path, interactions: int, every_s: float,
        users_spec: str = DEFAULT_USERS) -> dict[str, Any]:
    mix = users_of(users_spec)
    shutil.rmtree(home, ignore_errors=True)
    env = {name: value for name, (value, _) in settings(config, seed).items()}
    started = time.monotonic()
    stack = Stack(home, env=env, model_cache=config.model_cache).start()
    points: list[dict[str, Any]] = []
    try:
        client = openai.OpenAI(base_url=stack.base_url, api_key="shared", timeout=120.0, max_retries=6)
        model = config.model or client.models.list().data[0].id
        pools = split_pools(seed, config.eval_prompts, config.topics, config.questions)
        pipeline = Pipeline(connect(stack.redis_url, socket_timeout=5))
        users = [SimulatedUser(client, model, PERSONAS[persona], config.mix, random.Random(f"shared-{name}-{seed}"),
                               question_stream(pools, random.Random(f"shared-q-{name}-{seed}")), f"{name}-{seed}",
                               opt_in=opt_in, max_tokens=config.max_tokens) for name, persona, opt_in in mix]
        errors: list[str] = []
        timeouts: list[str] = []

        def session(user: SimulatedUser) -> None:
            try:
                user.interact(3, before_each=lambda: time.sleep(config.think_s))  # one conversation (3 answers)
            except Exception as exc:  # reported in the results, never hidden
                errors.append(f"{user.run_id}: {type(exc).__name__}: {exc}")

        def checkpoint() -> None:
            progress = pipeline.refresh()
            done = sum(u.count for u in users)
            preferences = sorted({p for _, p, _ in mix})
            for persona in preferences:
                result = evaluate(client, model, PERSONAS[persona], pools.evaluate, f"shared-{persona}-{done}",
                                  max_tokens=config.max_tokens)
                points.append({"preference": persona, "interactions": done, "satisfaction": result.satisfaction,
                               "facts": result.fact_accuracy, "served_by": list(result.versions),
                               "stable": progress.stable, "elapsed_s": round(time.monotonic() - started, 1)})
            line = " | ".join(f"{p['preference']} {p['satisfaction']:.2f}" for p in points[-len(preferences):])
            print(f"[shared seed {seed}] {done} interactions, stable {progress.stable or 'base'}: {line} | "
                  + progress.line(done), flush=True)

        checkpoint()
        last = time.monotonic()
        while min(u.count for u in users) < interactions:
            # every user holds one conversation at the same time; then the idle close, then the loop catches up
            threads = [threading.Thread(target=session, args=(u,), daemon=True) for u in users
                       if u.count < interactions]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=600)
            time.sleep(config.idle_timeout_s + 2.0)
            if busy := pipeline.settle(config.settle_timeout_s):
                timeouts.append(f"{busy} at {sum(u.count for u in users)}")
            if time.monotonic() - last >= every_s:
                checkpoint()
                last = time.monotonic()
        checkpoint()
        progress = pipeline.refresh()
        return {"seed": seed, "users": users_spec, "points": points, "errors": errors, "settle_timeouts": timeouts,
                "wall_s": round(time.monotonic() - started, 1),
                "events": dict(progress.events), "decisions": [d for d in progress.decisions
                                                                if d["kind"] not in ("alias_changed", "gate_passed")]}
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prefbench.shared", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interactions", type=int, default=40, help="interactions per user")
    parser.add_argument("--every-s", type=float, default=90.0, help="seconds between evaluations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--users", default=DEFAULT_USERS, help="persona:count pairs (default %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/shared"))
    parser.add_argument("--model-cache", type=Path)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    stop_stacks_on_termination()
    config = replace(BenchConfig(), eval_prompts=16, jobs=1, model_cache=args.model_cache or args.out / "models")
    print(f"users: {args.users} (every other one opted in to the canary)")
    print("settings changed from the product defaults (several users at once):")
    for name, (value, reason) in settings(config, args.seed).items():
        print(f"  {name}={value!r}: {reason}")
    users_of(args.users)  # a bad mix fails before a stack starts
    result = run(config, args.seed, args.out / f"run-s{args.seed}", args.interactions, args.every_s, args.users)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    for decision in result["decisions"]:
        if decision["kind"] in ("canary_started", "canary_step", "promoted", "rolled_back", "rejected"):
            evidence = {k: decision["evidence"].get(k) for k in ("canary", "stable", "lo", "hi", "fraction", "to")
                        if k in decision["evidence"]}
            print(f"  {decision['kind']:<14} {decision['version']}: {decision['reason']} {json.dumps(evidence)}")
    print(f"errors: {result['errors'] or 'none'}; settle timeouts: {result['settle_timeouts'] or 'none'}; wall time {result['wall_s']:.0f} s; events {json.dumps(result['events'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
