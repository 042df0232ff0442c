"""``python -m bench.prefbench``: simulated users personalise the model through the real loop.

Writes ``results.json`` (every point), ``table.md`` and ``curve.png`` under ``--out``; prints the
table and the interactions each method needed to reach 0.8 satisfaction on fresh prompts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.prefbench.personas import PERSONAS
from bench.prefbench.personas_text import TEXT_PERSONAS
from bench.prefbench.questions import QUESTION_FORMS
from bench.prefbench.real_model import real_model_changes
from bench.prefbench.report import curve, interactions_to, markdown_table, plot, sparkline
from bench.prefbench.runner import METHODS, BenchConfig, run_matrix, settings_report
from bench.prefbench.simulator import FeedbackMix
from bench.prefbench.stable_steps import stable_step_lines
from bench.prefbench.stack import stop_stacks_on_termination
from bench.prefbench.streak import sessions_to_streak

DEFAULT_OUT = Path("bench/out/prefbench")
def _csv(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def config_from_args(argv: list[str]) -> tuple[BenchConfig, Path]:
    parser = argparse.ArgumentParser(prog="python -m bench.prefbench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI size: 1 seed, none and combined, 1 persona, 36 interactions")
    parser.add_argument("--methods", type=_csv, help=f"subset of {','.join(METHODS)}")
    parser.add_argument("--personas", type=_csv, help=f"subset of {','.join(PERSONAS)}")
    parser.add_argument("--seeds", type=int, help="number of seeds (first..first+n-1)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed (split a matrix over machines)")
    parser.add_argument("--interactions", type=int, help="interactions per run")
    parser.add_argument("--every", type=int, help="evaluate every k interactions")
    parser.add_argument("--eval-prompts", type=int, help="fresh prompts per evaluation")
    parser.add_argument("--topics", type=_csv, help="question topics (default: all; capitals,opposites for smollm2-135m)")
    parser.add_argument("--questions", choices=QUESTION_FORMS,
                        help="how questions are asked: plain (default) or open (inviting a fuller answer; default for "
                        "smollm2-135m)")
    parser.add_argument("--noise", type=float, default=0.0, help="share of misleading reactions")
    parser.add_argument("--silent", type=float, default=0.1, help="share of answers that get no feedback")
    parser.add_argument("--opt-in", action=argparse.BooleanOptionalAction, dest="opt_in",
                        help="the simulated user names and closes its sessions and opts in to the canary "
                        "(X-Session-Id, X-Session-Done, X-NextState-Canary: 1); default: a plain client")
    parser.add_argument("--lr", type=float, help="learner learning rate")
    parser.add_argument("--steps-per-batch", type=int, help="learner optimiser steps per batch")
    parser.add_argument("--batch-size", type=int, help="learner batch size")
    parser.add_argument("--jobs", type=int, help="runs at once, each on its own stack (default 2; 1 for --quick)")
    parser.add_argument("--model-cache", type=Path, help="shared model cache (default: <out>/models)")
    parser.add_argument("--base-model", help="a local model directory instead of builtin:tiny-chat (served as tiny-chat)")
    parser.add_argument("--model", default="tiny-chat",
                        help="tiny-chat (default), smollm2-135m or a model directory: a real model with text personas")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="settings",
                        help="another product setting for every stack (NEXTSTATE_...=...; printed in the report)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    base = BenchConfig(methods=("none", "combined"), personas=("terse",), seeds=(0,), interactions=36, every=12,
                       eval_prompts=12, jobs=1) \
        if args.quick else BenchConfig()
    changes: dict[str, object] = {"mix": FeedbackMix(silent_p=args.silent, noise_p=args.noise),
                                  "model_cache": args.model_cache or args.out / "models"}
    for name in ("methods", "personas", "topics", "questions", "interactions", "every", "eval_prompts", "opt_in", "lr",
                 "steps_per_batch", "batch_size", "jobs"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.model != "tiny-chat":
        changes.update(real_model_changes(args.model, personas_chosen=args.personas is not None,
                                          topics_chosen=args.topics is not None,
                                          questions_chosen=args.questions is not None))
    if args.base_model:
        changes["extra_env"] = {"NEXTSTATE_BASE_MODEL": str(Path(args.base_model).resolve()),
                                "NEXTSTATE_SERVED_MODEL_NAME": "tiny-chat", "NEXTSTATE_SERVED_BASE_MODEL": "tiny-chat"}
    for item in args.settings:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("NEXTSTATE_"):
            parser.error(f"--set takes NEXTSTATE_NAME=VALUE, got {item!r}")
        changes["extra_env"] = {**changes.get("extra_env", {}), name: value}  # type: ignore[dict-item]
    if args.seeds is not None or args.first_seed:
        count = args.seeds if args.seeds is not None else len(base.seeds)
        changes["seeds"] = tuple(range(args.first_seed, args.first_seed + count))
    unknown = (set(changes.get("personas", ())) - set(PERSONAS) - set(TEXT_PERSONAS)  # type: ignore[arg-type]
               | set(changes.get("methods", ())) - set(METHODS))  # type: ignore[arg-type]
    if unknown:
        parser.error(f"unknown persona or method: {sorted(unknown)}")
    import dataclasses

    return dataclasses.replace(base, **changes), args.out  # type: ignore[arg-type]


def summary(points: list[dict[str, object]], threshold: float = 0.8) -> str:
    lines = [markdown_table(points, threshold), ""]
    for method in sorted({str(p["method"]) for p in points}):
        line = curve(points, method)
        reached = interactions_to(points, method, threshold)
        lines.append(f"{method:>9} {sparkline([c.mean for c in line])}  "
                     f"{line[0].mean:.2f} -> {line[-1].mean:.2f}   to {threshold:g}: "
                     f"{reached if reached is not None else 'not reached'}")
    return "\n".join(lines)


def wording_table(points: list[dict[str, object]]) -> str:
    """Final satisfaction per method and wording family ("plain": the persona's plain directives; the
    others: the same corrections in the persona's own words), mean over the runs of that family."""
    last = max(int(p["interactions"]) for p in points)  # type: ignore[call-overload]
    cells: dict[tuple[str, str], list[float]] = {}
    for p in points:
        if p["interactions"] == last:
            family = "plain" if p.get("wording", "plain") == "plain" else f"{p['persona']}: {p['wording']}"
            cells.setdefault((str(p["method"]), family), []).append(float(p["satisfaction"]))  # type: ignore[arg-type]
    lines = [f"satisfaction at {last} interactions per wording family", "", "| method | wording | runs | mean |",
             "| --- | --- | --- | --- |"]
    for (method, family), values in sorted(cells.items()):
        lines.append(f"| {method} | {family} | {len(values)} | {sum(values) / len(values):.2f} |")
    return "\n".join(lines)


def next_state_line(runs: list[dict[str, object]]) -> str:
    """How many of the user's recorded turns got a next state (linked, or closed with the user's last words)."""
    turns = sum(int(r["progress"].get("turns", 0)) for r in runs if r["method"] != "none")  # type: ignore[union-attr]
    linked = sum(int(r["progress"].get("with_next_state", 0)) for r in runs if r["method"] != "none")  # type: ignore[union-attr]
    share = f"{linked / turns:.2f}" if turns else "-"
    return f"turns with a next state (learning runs): {linked} of {turns} ({share})"


def streak_lines(runs: list[dict[str, object]], streak: int = 3) -> list[str]:
    """Per method: sessions until ``streak`` consecutive satisfying first replies, per run (OpenClaw-RL v2)."""
    by_method: dict[str, list[str]] = {}
    for run in runs:
        n = sessions_to_streak(run["interactions"], streak)  # type: ignore[arg-type]
        by_method.setdefault(str(run["method"]), []).append(f"{run['persona']}/s{run['seed']}: {n if n else '-'}")
    return [f"{method:>9} sessions to {streak} satisfying first replies in a row: {', '.join(cells)}"
            for method, cells in sorted(by_method.items())]


def main(argv: list[str] | None = None) -> int:
    config, out = config_from_args(list(sys.argv[1:] if argv is None else argv))
    stop_stacks_on_termination()
    started = time.monotonic()
    print(settings_report(config), flush=True)
    results = run_matrix(config, out)
    points = results["points"]
    table = summary(points) + "\n\n" + "\n".join(streak_lines(results["runs"]))
    (out / "table.md").write_text(settings_report(config) + "\n\n" + table + "\n")
    png = plot(points, out / "curve.png", title=f"PrefBench ({len(config.seeds)} seeds x {len(config.personas)} personas)")
    print(table)
    words = wording_table(points)
    print("\n" + words)
    steps = "\n".join(stable_step_lines(points))
    with (out / "table.md").open("a") as md:
        md.write("\n" + words + "\n\n" + next_state_line(results["runs"]) + "\n\n" + steps + "\n")
    print(next_state_line(results["runs"]))
    print(steps)
    print(f"\nwall time {time.monotonic() - started:.0f} s; results {out / 'results.json'}; plot {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
