"""``nextstate demo``: start a private stack and watch a simulated user personalise the model.

PrefBench ``--quick`` for one persona and the combined method through the real loop, with a progress
bar, a live line per update of the loop (versions, gate verdicts, canary decisions), and at the end
the learning curve as a PNG and a terminal sparkline, plus where to look next. The simulated user is a
plain client on the product defaults (no nextstate headers; its conversations are linked by fingerprint
and closed by idleness; it learns in its personal scope under the personal canary), so the demo shows
what a user gets; the settings it changes are printed with their reasons. ``--model`` picks the
built-in model: ``tiny-chat`` (built here, follows its trained styles) or ``smollm2-135m`` (a real
pretrained chat model, converted from an installed wheel in seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time

from tqdm import tqdm

from bench.prefbench.personas import PERSONAS
from bench.prefbench.personas_text import TEXT_PERSONAS
from bench.prefbench.real_model import real_model_changes
from bench.prefbench.report import curve, plot, sparkline
from bench.prefbench.runner import USER_SCOPE, BenchConfig, run_one, settings_report
from bench.prefbench.simulator import FeedbackMix
from bench.prefbench.stack import Progress
from bench.prefbench.user import Interaction
from proxy.settings import CommonSettings


class DemoSettings(CommonSettings):
    """The demo reads only the common settings (its data goes under ``<home>/demo``)."""


MODELS = {"tiny-chat": "builtin:tiny-chat", "smollm2-135m": "builtin:smollm2-135m"}
# the tiny model's personas want its trained styles, a real model's are predicates on free text; on SmolLM2-135M the
# demo's user wants one-sentence answers to open questions, which the model rarely gives unasked and learns from a
# plain client's corrections (bench/README.md, PrefBench on a real model, run 18)
DEFAULT_PERSONA = {"tiny-chat": "terse", "smollm2-135m": "oneliner"}
PERSONAS_OF = {"tiny-chat": PERSONAS, "smollm2-135m": TEXT_PERSONAS}
# how long each runs by default: the real model learned one sentence within 8 to 16 interactions (run 18)
LENGTH = {"tiny-chat": (36, 6), "smollm2-135m": (24, 8)}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nextstate demo", description=__doc__)
    parser.add_argument("--model", default="tiny-chat", choices=sorted(MODELS), help="the built-in model to personalise")
    parser.add_argument("--persona", help="the simulated user: one of the tiny model's personas on tiny-chat (default "
                        f"terse: {', '.join(sorted(PERSONAS))}), one of the text personas on smollm2-135m (default "
                        f"oneliner: {', '.join(sorted(TEXT_PERSONAS))})")
    parser.add_argument("--method", default="combined", choices=("none", "rl", "opd", "combined"))
    parser.add_argument("--interactions", type=int, help="default 36 on tiny-chat, 24 on smollm2-135m")
    parser.add_argument("--every", type=int, help="evaluate every k interactions (default 6 on tiny-chat, 8 on smollm2-135m)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.persona = args.persona or DEFAULT_PERSONA[args.model]
    if args.persona not in PERSONAS_OF[args.model]:
        parser.error(f"persona {args.persona!r} is not one of {args.model}'s: {', '.join(sorted(PERSONAS_OF[args.model]))}")
    interactions, every = LENGTH[args.model]
    args.interactions = args.interactions or interactions
    args.every = args.every or every
    return args


def _updates(before: dict[str, int], progress: Progress) -> list[str]:
    """Human lines for the loop events that happened since ``before`` (mutated to the new counts)."""
    names = {"candidate_created": "new version", "gate_passed": "gate passed", "gate_failed": "gate failed",
             "canary_started": "canary started", "promoted": "promoted to stable", "rolled_back": "canary rolled back",
             "rejected": "canary rejected"}
    lines = []
    for kind, label in names.items():
        count = progress.events[kind]
        if count > before.get(kind, 0):
            lines.append(f"{label} (x{count - before.get(kind, 0)})")
            before[kind] = count
    return lines


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    settings = DemoSettings()
    root = settings.home_dir().resolve() / "demo"
    cache = settings.home_dir().resolve() / "models"
    print(f"nextstate demo: model {args.model}, persona '{args.persona}' (hidden preference: "
          f"{PERSONAS_OF[args.model][args.persona].style}), method {args.method}, {args.interactions} interactions")
    print(f"1/3 preparing the built-in model {args.model} (cached in {cache}) ...", flush=True)
    built = subprocess.run([sys.executable, "-m", "nextstate", "build-model", "--model", args.model, "--out", str(cache)],
                           check=False)
    if built.returncode != 0:
        print(f"could not prepare the built-in model {args.model}", file=sys.stderr)
        return 1
    config = BenchConfig(methods=(args.method,), personas=(args.persona,), seeds=(args.seed,),
                         interactions=args.interactions, every=args.every, eval_prompts=12,
                         mix=FeedbackMix(silent_p=0.1, noise_p=0.0), model_cache=cache, jobs=1)
    if args.model != "tiny-chat":  # PrefBench's real-model settings (its topics, token budget, idle timeout), printed
        config = dataclasses.replace(config, **real_model_changes(args.model, personas_chosen=True))  # type: ignore[arg-type]
    home = root / f"{args.model}-{args.method}-{args.persona}-s{args.seed}"
    print(settings_report(config), flush=True)
    print("2/3 starting the stack (redis, policy server, proxy, labeler, learner, controller) ...", flush=True)
    bar = tqdm(total=args.interactions, desc="interactions", unit="turn", dynamic_ncols=True)
    seen: dict[str, int] = {}
    satisfied: list[bool] = []

    def on_interaction(interaction: Interaction) -> None:
        satisfied.append(interaction.satisfied)
        bar.update(1)
        bar.set_postfix(arm=interaction.arm or "-", satisfied=f"{sum(satisfied[-8:])}/{len(satisfied[-8:])}")

    def on_progress(progress: Progress, interactions: int) -> None:
        for update in _updates(seen, progress):
            rate = f"{progress.reward_rate:.2f}" if progress.reward_rate is not None else "-"
            bar.write(f"{time.strftime('%H:%M:%S')} update: {update} | interactions {interactions} | "
                      f"reward rate {rate} | versions {progress.events['candidate_created']} | "
                      f"gate pass/fail {progress.events['gate_passed']}/{progress.events['gate_failed']} | "
                      f"stable {progress.stable or 'base'}")

    def on_line(line: str) -> None:
        bar.write(time.strftime("%H:%M:%S ") + line)

    started = time.monotonic()
    run = run_one(config, args.method, args.persona, args.seed, home, on_line, on_interaction, on_progress)
    bar.close()
    points = run.points
    png = plot(points, root / "curve.png", title=f"nextstate demo: {args.model} / {args.persona} / {args.method}")
    (root / "results.json").write_text(json.dumps(dataclasses.asdict(run), indent=1))
    line = curve(points, args.method)
    print(f"\n3/3 done in {time.monotonic() - started:.0f} s (stack start-up {run.startup_s:.0f} s)")
    print(f"satisfaction on fresh prompts: {sparkline([c.mean for c in line])}  "
          + " ".join(f"{c.mean:.2f}@{c.interactions}" for c in line))
    print(f"loop: {json.dumps(run.progress['events'])}; stable at the end: {run.progress['stable'] or 'base'}")
    print(f"curve: {png}")
    print("where to look next:")
    pointers = [(f"NEXTSTATE_HOME={home} nextstate registry history --scope {USER_SCOPE}",
                 "every decision with its evidence"),
                (f"{home}/logs/", "each component's log"),
                (f"{root / 'results.json'}", "every point and interaction"),
                ("python -m bench.prefbench", "all methods, 3 seeds x 3 personas")]
    width = max(len(where) for where, _ in pointers)
    for where, what in pointers:
        print(f"  {where.ljust(width)}  # {what}")
    return 0
