"""``python -m labeler.evaluate``: accuracy and per-class precision/recall of a judge.

Runs the embedded judge (default) or the ``llm`` judge (``--judge llm``: the labeler's settings say
which model, e.g. the policy server's base model as a self-judge) on the labeled next-state set in
``labeler/data`` and prints a table: accuracy, how many transitions got no label where one was
expected, how many got the wrong sign (the costly mistake: it trains the wrong way) and the seconds
per label. The embedded judge's numbers are asserted by the tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labeler.embedded import EmbeddedJudge
from labeler.judges import Judge, JudgeError, Verdict
from labeler.styles import plain_hint
from labeler.tally import select_hint

DATA_DIR = Path(__file__).resolve().parent / "data"
# the first set was written with the rules; each held-out set was written later and first scored
# untouched (see docs in labeler/data/README.md)
DATA = sorted(DATA_DIR.glob("next_states*_v1.jsonl"))
CLASSES = (1, -1, 0)


@dataclass(frozen=True)
class Report:
    total: int
    correct: int
    confusion: dict[tuple[int, int], int]
    """(expected, predicted) -> count"""
    by_category: dict[str, tuple[int, int]]
    """category -> (correct, total)"""
    hints_expected: int
    hints_found: int
    mistakes: list[dict[str, Any]]
    seconds: float = 0.0
    judge: str = "embedded"

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def unlabeled(self) -> int:
        """Transitions with a +1/-1 label that the judge left at 0 (no label: nothing trained)."""
        return sum(n for (e, p), n in self.confusion.items() if e != 0 and p == 0)

    @property
    def wrong_sign(self) -> int:
        """Transitions labeled the opposite way (trained the wrong way)."""
        return sum(n for (e, p), n in self.confusion.items() if e * p < 0)

    def precision(self, cls: int) -> float:
        predicted = sum(n for (_, p), n in self.confusion.items() if p == cls)
        return self.confusion.get((cls, cls), 0) / predicted if predicted else 0.0

    def recall(self, cls: int) -> float:
        actual = sum(n for (e, _), n in self.confusion.items() if e == cls)
        return self.confusion.get((cls, cls), 0) / actual if actual else 0.0


def load(paths: list[Path] | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in paths or DATA:
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows


def evaluate(rows: list[dict[str, Any]], judge: Judge | None = None, name: str = "embedded") -> Report:
    judge = judge or EmbeddedJudge()
    started = time.perf_counter()
    confusion: Counter[tuple[int, int]] = Counter()
    categories: dict[str, list[int]] = {}
    mistakes = []
    hints_expected = hints_found = 0
    for row in rows:
        try:
            verdict = judge.judge(row["messages"], row["response"], row["next_state"])
        except JudgeError as exc:  # as in the labeler: no label (the queue would retry it later)
            verdict = Verdict(votes=[], hints=[], model=judge.model, prompt_version="", errors=[str(exc)])
        predicted = verdict.tally().reward
        confusion[(row["label"], predicted)] += 1
        stats = categories.setdefault(row["category"], [0, 0])
        stats[0] += predicted == row["label"]
        stats[1] += 1
        if predicted != row["label"]:
            mistakes.append({"id": row["id"], "expected": row["label"], "predicted": predicted, "votes": verdict.votes,
                             "text": row["next_state"][-1]["content"][:120]})
        if row.get("hint"):
            hints_expected += 1
            hint = (select_hint(verdict.hints) or "").lower()
            # the user's directive, or the plain instruction it means (labeler.styles)
            hints_found += any(form.lower().rstrip(".") in hint for form in (row["hint"], plain_hint(row["hint"])))
    return Report(total=len(rows), correct=sum(n for (e, p), n in confusion.items() if e == p), confusion=dict(confusion),
                  by_category={k: (v[0], v[1]) for k, v in sorted(categories.items())},
                  hints_expected=hints_expected, hints_found=hints_found, mistakes=mistakes,
                  seconds=time.perf_counter() - started, judge=name)


def format_report(report: Report) -> str:
    per_label = report.seconds / report.total if report.total else 0.0
    lines = [f"{report.judge} judge on {report.total} labeled next states: accuracy {report.accuracy:.3f}",
             f"no label where one was expected: {report.unlabeled}; wrong sign: {report.wrong_sign}; "
             f"{per_label:.2f} s per label", "", "class  precision  recall  support"]
    for cls in CLASSES:
        support = sum(n for (e, _), n in report.confusion.items() if e == cls)
        lines.append(f"{cls:>+5}  {report.precision(cls):>9.3f}  {report.recall(cls):>6.3f}  {support:>7}")
    lines += ["", "category         correct/total"]
    lines += [f"{name:<16} {ok:>3}/{total:<3}" for name, (ok, total) in report.by_category.items()]
    lines += ["", f"directive hints recovered: {report.hints_found}/{report.hints_expected}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labeler.evaluate", description=__doc__)
    parser.add_argument("--data", type=Path, action="append", help="labeled JSONL, repeatable (default: every bundled set)")
    parser.add_argument("--mistakes", action="store_true", help="also list every misjudged message")
    parser.add_argument("--judge", choices=("embedded", "llm"), default="embedded",
                        help="llm: the labeler settings' LLM judge (NEXTSTATE_JUDGE_MODEL / NEXTSTATE_JUDGE_API_BASE)")
    parser.add_argument("--every", type=int, default=1, help="judge every k-th row only (a slow judge on a sample)")
    args = parser.parse_args(argv)
    judge: Judge | None = None
    if args.judge == "llm":
        from labeler.llm_judge import LLMJudge
        from labeler.settings import LabelerSettings

        judge = LLMJudge.from_settings(LabelerSettings())
    report = evaluate(load(args.data)[::max(1, args.every)], judge, args.judge)
    print(format_report(report))
    if args.mistakes:
        for m in report.mistakes:
            print(json.dumps(m, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
