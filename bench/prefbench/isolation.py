"""``python -m bench.prefbench.isolation``: two users with opposite preferences on one stack, personal scopes.

User A wants one-word answers (``terse``), user B detailed ones (``curious``). Both are plain clients
with their own API key, taking turns session by session on one stack whose proxy keys learning scopes
by API key (``NEXTSTATE_SCOPE_BY=key``: compose.yaml's many-users default). At every checkpoint each
user's served model (its stable, asked with its own key) is scored on both preferences: each should
reach >= 0.8 on its own, and stay at the base model's level on the other user's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai

from bench.prefbench.personas import PERSONAS
from bench.prefbench.questions import question_stream, split_pools
from bench.prefbench.runner import SWEEP_S, BenchConfig, changed_settings, stack_env
from bench.prefbench.stack import Pipeline, Stack, stop_stacks_on_termination
from bench.prefbench.user import SimulatedUser, evaluate
from labeler.records import SAMPLES_STREAM, SampleRecord
from proxy.redis_connect import connect
from registry.store import Registry

USERS = (("A", "terse", "sk-prefbench-user-a"), ("B", "curious", "sk-prefbench-user-b"))
SCOPE_SETTINGS = {"NEXTSTATE_SCOPE_BY": ("key", "two users on one stack: each API key learns in its own scope "
                                          "(compose.yaml's many-users default; nextstate up's is one person)"),
                  "NEXTSTATE_SCOPE_UNKEYED": ("global", "compose.yaml's default, with the line above")}


def scope_of(key: str) -> str:
    return f"k-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def trained_samples(stack: Stack, scopes: dict[str, str]) -> dict[str, dict[str, int]]:
    """Per user: how many samples its scope's versions were trained on, by the scope those samples came from
    (another user's samples in a user's versions would be a leak)."""
    client = connect(stack.redis_url, socket_timeout=5)
    try:
        origin = {}
        for _, fields in client.xrange(SAMPLES_STREAM):
            sample = SampleRecord.model_validate_json(fields[b"record"])
            origin[sample.sample_id] = sample.scope
        counts: dict[str, dict[str, int]] = {}
        for name, scope in scopes.items():
            registry = Registry(client, stack.home / "adapters").scoped(scope)
            by_origin: Counter[str] = Counter()
            for info in registry.versions():
                by_origin.update(origin.get(i, "forgotten") for i in registry.manifest(info.version).sample_ids)
            owner = {s: n for n, s in scopes.items()}
            counts[name] = {owner.get(k, k): v for k, v in by_origin.items()}
        return counts
    finally:
        client.close()


def run(config: BenchConfig, seed: int, home: Path, rounds: int) -> dict[str, Any]:
    shutil.rmtree(home, ignore_errors=True)
    env, _ = stack_env(config, "combined", seed)
    env.update({name: value for name, (value, _) in SCOPE_SETTINGS.items()})
    started = time.monotonic()
    stack = Stack(home, env=env, model_cache=config.model_cache).start()
    points: list[dict[str, Any]] = []
    try:
        users, clients, pipelines = {}, {}, {}
        pools = split_pools(seed, config.eval_prompts, config.topics, config.questions)
        for name, persona, key in USERS:
            clients[name] = openai.OpenAI(base_url=stack.base_url, api_key=key, timeout=120.0, max_retries=6)
            rng = random.Random(f"isolation-{name}-{seed}")
            model = config.model or clients[name].models.list().data[0].id
            users[name] = SimulatedUser(clients[name], model, PERSONAS[persona], config.mix, rng,
                                        question_stream(pools, rng), f"{name}-{seed}", max_tokens=config.max_tokens)
            pipelines[name] = Pipeline(connect(stack.redis_url, socket_timeout=5), scope=scope_of(key))

        def settle() -> None:
            for pipeline in pipelines.values():
                pipeline.settle(config.settle_timeout_s)

        def checkpoint() -> None:
            settle()
            for name, _, _ in USERS:
                for _, persona, _ in USERS:
                    result = evaluate(clients[name], users[name].model, PERSONAS[persona], pools.evaluate,
                                      f"{name}-{persona}-{users[name].count}", max_tokens=config.max_tokens)
                    points.append({"user": name, "preference": persona, "interactions": users[name].count,
                                   "satisfaction": result.satisfaction, "served_by": list(result.versions),
                                   "stable": pipelines[name].refresh().stable})
            line = " | ".join(f"{p['user']} on {p['preference']} {p['satisfaction']:.2f}"
                              for p in points[-4:])
            print(f"[isolation seed {seed}] after {users['A'].count}/{users['B'].count}: {line}", flush=True)

        checkpoint()
        for _ in range(rounds):
            for name, _, _ in USERS:  # one batch of interactions each, in turn
                def pause() -> None:
                    time.sleep(config.think_s)

                def between() -> None:
                    time.sleep(config.idle_timeout_s + SWEEP_S + 1.0)
                    settle()

                users[name].interact(config.every, before_each=pause, after_session=between)
            checkpoint()
        return {"seed": seed, "points": points, "wall_s": round(time.monotonic() - started, 1),
                "events": {name: dict(p.refresh().events) for name, p in pipelines.items()},
                "trained": trained_samples(stack, {name: scope_of(key) for name, _, key in USERS})}
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prefbench.isolation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interactions", type=int, default=24, help="interactions per user")
    parser.add_argument("--every", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/out/isolation"))
    parser.add_argument("--model-cache", type=Path)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    stop_stacks_on_termination()
    config = replace(BenchConfig(), every=args.every, eval_prompts=12, jobs=1,
                     model_cache=args.model_cache or args.out / "models")
    print("settings changed from the product defaults (a plain client per user):")
    for name, (value, reason) in {**changed_settings(config, "combined", args.seed), **SCOPE_SETTINGS}.items():
        print(f"  {name}={value}: {reason}")
    result = run(config, args.seed, args.out / f"run-s{args.seed}", max(1, args.interactions // args.every))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    final = {(p["user"], p["preference"]): p["satisfaction"] for p in result["points"]
             if p["interactions"] == max(q["interactions"] for q in result["points"])}
    first = {(p["user"], p["preference"]): p["satisfaction"] for p in result["points"] if p["interactions"] == 0}
    print("\nuser  preference  start -> end")
    for key in sorted(final):
        print(f"{key[0]:<5} {key[1]:<10} {first.get(key, 0):.2f} -> {final[key]:.2f}")
    print(f"samples trained into each user's versions, by whose they were: {json.dumps(result['trained'])}")
    print(f"wall time {result['wall_s']:.0f} s; events {json.dumps(result['events'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
