"""Simulated error rates of the personal canary rule (``registry.personal_canary.decide``).

One simulated user per run: stable's true success rate ``p_stable``, the candidate's ``p_canary``; the
user's labeled turns arrive one at a time, each served by the candidate with the policy's
``fraction``; ``stable_prior`` labeled stable turns from before the canary are known at its start. The
rule decides after every turn. Prints, per candidate rate, how often it was promoted, rolled back and
rejected, and how many labeled turns that took. Product defaults only (``PersonalPolicy()``).

``--supersede-every K``: the learner publishes a version trained on top of the canary every K labeled
turns, which replaces the canary while it is undecided and inherits its turns (as ``registry.controller``
does); every version of the chain has the same true rate, so the rows show what inheritance costs.
``--step D`` with it: each newer version's rate is ``D`` above the one it replaces (a chain that learns
from the user's turns; the rows name the first version's rate).

    python -m bench.personal_canary_sim --runs 20000 [--supersede-every 4 [--step 0.2]]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from registry.personal_canary import Evidence, PersonalPolicy, decide


def one_run(rng: random.Random, policy: PersonalPolicy, p_stable: float, p_canary: float, stable_prior: int,
            max_turns: int, supersede_every: int = 0, step: float = 0.0) -> tuple[str, int]:
    stable = [1 if rng.random() < p_stable else -1 for _ in range(stable_prior)]
    canary: list[int] = []
    inherited: list[int] = []
    fraction = policy.fraction
    for turn in range(1, max_turns + 1):
        if rng.random() < fraction:
            canary.append(1 if rng.random() < p_canary else -1)
        else:
            stable.append(1 if rng.random() < p_stable else -1)
        action = decide(Evidence(tuple(canary), tuple(stable), tuple(inherited)), policy, 0.0).action
        if action == "share":  # stable's evidence is thin: it serves a share of the turns from now on
            fraction = min(fraction, policy.share_fraction)
        elif action != "continue":
            return action, turn
        if supersede_every and turn % supersede_every == 0:  # a newer version replaces the undecided canary
            inherited, canary = inherited + canary, []
            p_canary = min(1.0, p_canary + step)  # the newer version learned from the user's newer turns
    return "continue", max_turns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20000)
    parser.add_argument("--p-stable", type=float, default=0.3)
    parser.add_argument("--stable-prior", type=int, default=6)
    parser.add_argument("--max-turns", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--supersede-every", type=int, default=0,
                        help="a version trained on top of the canary replaces it every K labeled turns (0 = never)")
    parser.add_argument("--step", type=float, default=0.0,
                        help="with --supersede-every: each newer version's true rate is this much above the one it replaces")
    args = parser.parse_args(argv)
    policy = PersonalPolicy()
    print(f"policy (product defaults): {policy}")
    print(f"p_stable {args.p_stable}, {args.stable_prior} labeled stable turns before the canary, "
          f"{args.runs} runs per row, at most {args.max_turns} labeled turns"
          + (f", a newer version every {args.supersede_every} labeled turns" if args.supersede_every else "")
          + (f", each {args.step:+.2f} on the one before (rows: the first version's rate)" if args.step else "") + "\n")
    print(f"{'p_canary':>8} {'promote':>8} {'rollback':>9} {'reject':>7} {'undecided':>9} {'turns mean':>10} {'median':>6}")
    started = time.perf_counter()
    rng = random.Random(args.seed)
    for p_canary in (0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 0.9):
        outcomes = [one_run(rng, policy, args.p_stable, p_canary, args.stable_prior, args.max_turns,
                            args.supersede_every, args.step)
                    for _ in range(args.runs)]
        share = {a: sum(o == a for o, _ in outcomes) / args.runs for a in ("promote", "rollback", "reject", "continue")}
        turns = [t for _, t in outcomes]
        print(f"{p_canary:>8.1f} {share['promote']:>8.1%} {share['rollback']:>9.1%} {share['reject']:>7.1%} "
              f"{share['continue']:>9.1%} {statistics.mean(turns):>10.1f} {statistics.median(turns):>6.0f}")
    print(f"\n{time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
