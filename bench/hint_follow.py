"""``python -m bench.hint_follow``: what a model can be moved toward — how often it shows a preference unasked,
and how often it follows the correction a hint carries, as the learner's teacher gets it.

For each preference (a PrefBench text predicate) and its hint, fact questions are answered three ways:
unasked at the model's own sampling (its generation config), asked in one turn (the hint appended to the
question, the teacher's form, at the demonstrations' temperature), and asked after one earlier exchange.
Also the share of answers that name the asked fact, per topic, unasked. A preference the model never
shows and does not follow when asked cannot be taught by its own samples or its hinted teacher. Last,
how many of the asked answers the learner would keep as hint demonstrations (``learner.demos``): an
answer that does what the hint asks may still loop or list guesses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from bench.prefbench.personas_text import is_brief, is_list, is_lowercase, is_one_sentence
from bench.prefbench.questions import QUESTION_FORMS, ask
from learner.logprobs import HINT_SEPARATOR
from learner.tinycorpus import FACTS, TOPICS, Fact, fact_correct

_FIVE_WORDS = partial(is_brief, limit=5)
PREFERENCES: tuple[tuple[str, str, Callable[[str], bool]], ...] = (
    ("at most ten words", "Make it shorter.", is_brief),
    ("at most five words", "Make it shorter.", _FIVE_WORDS),
    ("at most five words", "Answer in one word.", _FIVE_WORDS),
    ("one sentence", "Just one sentence.", is_one_sentence),
    ("a list", "Use bullet points.", is_list),
    ("a list (other wording)", "Answer as a bullet list.", is_list),
    ("no capitals", "Answer in lowercase.", is_lowercase),
)
EARLIER = [{"role": "user", "content": "What is the capital of Italy?"},
           {"role": "assistant", "content": "The capital of Italy is Rome."}]


def answers(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], n: int,
            sampling: dict[str, float], seed: int, max_tokens: int) -> list[str]:
    """``n`` sampled answers per conversation, decoded (one left-padded batch)."""
    import torch

    from learner.modeling import render_prompt_ids

    prompts = [render_prompt_ids(tokenizer, c) for c in conversations]
    width = max(len(p) for p in prompts)
    pad = int(tokenizer.pad_token_id or 0)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, max_new_tokens=max_tokens,
                             num_return_sequences=n, pad_token_id=pad, **sampling)
    return [tokenizer.decode(row, skip_special_tokens=True) for row in out[:, width:].tolist()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hint_follow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:smollm2-135m", help="a built-in model or a model directory")
    parser.add_argument("--topics", default="capitals,opposites", help="question topics (comma-separated)")
    parser.add_argument("--questions", default="plain", choices=QUESTION_FORMS,
                        help="how the questions are asked (bench.prefbench.questions)")
    parser.add_argument("--answers", type=int, default=2, help="answers per question and way of asking")
    parser.add_argument("--asked-temperature", type=float, default=0.3, help="the hinted teacher's temperature")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from learner.modeling import load_model, resolve_model
    from learner.serving_sampling import SamplingDefaults
    from learner.serving_settings import ServeSettings

    model, tokenizer = load_model(resolve_model(args.model, ServeSettings().home_dir()), device="cpu")
    own = SamplingDefaults.from_generation_config(getattr(model, "generation_config", None))
    unasked_sampling = {"temperature": own.temperature, "top_p": own.top_p}
    asked_sampling = {"temperature": args.asked_temperature, "top_p": 1.0}
    topics = tuple(t for t in args.topics.split(",") if t) or tuple(TOPICS)
    facts: list[Fact] = [f for f in FACTS if f.topic in topics]
    questions = [ask(f, 0, args.questions) for f in facts]

    def run(conversations: list[list[dict[str, str]]], sampling: dict[str, float]) -> list[str]:
        return answers(model, tokenizer, conversations, args.answers, sampling, args.seed, 64)

    unasked = run([[{"role": "user", "content": q}] for q in questions], unasked_sampling)
    print(f"model {args.model}; unasked at its own sampling {unasked_sampling}, asked at {asked_sampling}; "
          f"{len(questions)} questions x {args.answers} answers; topics {','.join(topics)}, {args.questions} questions")
    per_answer = [f for f in facts for _ in range(args.answers)]
    for topic in topics:
        hits = [fact_correct(a, f) for a, f in zip(unasked, per_answer, strict=True) if f.topic == topic]
        print(f"  facts right, {topic}: {sum(hits) / len(hits):.2f}")
    print("\n| preference | hint | unasked | asked in one turn | asked after one earlier exchange |\n| --- | --- | --- | --- | --- |")
    kept: list[str] = []
    for name, hint, check in PREFERENCES:
        single = run([[{"role": "user", "content": f"{q}{HINT_SEPARATOR}{hint}"}] for q in questions], asked_sampling)
        later = run([[*EARLIER, {"role": "user", "content": f"{q}{HINT_SEPARATOR}{hint}"}] for q in questions],
                    asked_sampling)
        rate = [sum(map(check, texts)) / len(texts) for texts in (unasked, single, later)]
        print(f"| {name} | {hint} | {rate[0]:.2f} | {rate[1]:.2f} | {rate[2]:.2f} |", flush=True)
        kept.append(f"  {name} ({hint}): one turn {demonstrations(hint, single, unasked, questions, args.answers)}; "
                    f"after an exchange {demonstrations(hint, later, unasked, questions, args.answers)}")
    print("\nas hint demonstrations (learner.demos.worth_learning; the corrected answer is the unasked one):")
    print("\n".join(kept))
    return 0


def demonstrations(hint: str, asked: list[str], unasked: list[str], questions: list[str], n: int) -> str:
    """How many asked answers the learner would take as demonstrations, and why the others it reads as doing
    what the hint asks are not: loops and lists of guesses."""
    from labeler.styles import honours
    from learner.demos import worth_learning
    from registry.collapse import loops

    honoured = loop = guess = taken = 0
    for k, answer in enumerate(asked):
        question, before = questions[k // n], unasked[(k // n) * n]
        if honours(hint, answer, before, question) is False:
            continue
        honoured += 1
        kept, looped = worth_learning(hint, answer, before, question), loops(answer)
        taken += kept
        loop += looped
        guess += not looped and not kept
    return f"{taken} of {len(asked)} kept ({honoured} do what it asks: {loop} loops, {guess} guesses)"


if __name__ == "__main__":
    sys.exit(main())
