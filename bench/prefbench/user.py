"""The simulated user talking to the proxy with the unmodified ``openai`` SDK, in multi-turn sessions.

Each assistant answer the persona reacts to is one *interaction*. A session asks a few questions; an
unsatisfying answer draws a reaction and the same question is answered again.

By default the user is a plain client: it sends no nextstate header at all, and no sampling setting but
a seed and ``max_tokens`` (the served model's own defaults apply, as for an SDK user who sets none). Its conversations are
linked by fingerprint (each request carries the history), its last reaction goes out as one more
message whose answer it does not read, and the session is closed by the proxy's idle timeout. The
``opt_in`` user is the one that knows nextstate: it names its sessions (``X-Session-Id``), closes them
(``X-Session-Done``) and volunteers for candidates (``X-NextState-Canary: 1``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import openai

from bench.prefbench.personas import Persona
from bench.prefbench.questions import EvalPrompt
from bench.prefbench.reading import states_fact
from bench.prefbench.simulator import FeedbackMix, next_message, react
from learner.tinycorpus import Fact
from registry.collapse import loops

MAX_TOKENS = 96
"""What the user asks for at most: the tiny model's longest style, a detail answer, takes up to 83 tokens."""
TEXT_MAX_TOKENS = 64
"""The same for a real model: its answers to the bench's questions say the fact and start a list within 64
tokens, and every longer answer costs a busy CPU."""


@dataclass(frozen=True)
class Interaction:
    index: int
    session_id: str
    satisfied: bool
    reaction: str
    arm: str | None
    version: str | None


@dataclass(frozen=True)
class EvalResult:
    satisfaction: float
    fact_accuracy: float
    versions: tuple[str, ...]
    """Versions that answered the evaluation prompts (``x-nextstate-version``; "base" for none)."""
    satisfied: tuple[bool, ...] = ()
    """Per prompt, in the prompts' order: did the answer satisfy the persona?"""
    facts_ok: tuple[bool, ...] = ()
    """Per prompt: did the answer state the right fact?"""


def _chat(client: openai.OpenAI, model: str, messages: list[dict[str, str]], seed: int,
          headers: dict[str, str], max_tokens: int) -> tuple[str, dict[str, str]]:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages, max_tokens=max_tokens, seed=seed,  # type: ignore[arg-type]
        extra_headers=headers,
    )
    completion = raw.parse()
    return completion.choices[0].message.content or "", dict(raw.headers)


@dataclass
class SimulatedUser:
    """One persona's conversations through the proxy; ``interact`` runs until ``n`` interactions."""

    client: openai.OpenAI
    model: str
    persona: Persona
    mix: FeedbackMix
    rng: random.Random
    questions: Iterator[tuple[Fact, str]]
    run_id: str
    opt_in: bool = False
    """Send ``X-Session-Id``, ``X-Session-Done`` and ``X-NextState-Canary: 1`` (a user who knows nextstate and
    volunteers for candidates); False = a plain client with no nextstate header."""
    questions_per_session: int = 3
    max_attempts: int = 2
    max_tokens: int = MAX_TOKENS
    sessions: int = 0
    count: int = 0

    def interact(self, n: int, before_each: Callable[[], None] = lambda: None,
                 after_each: Callable[[Interaction], None] = lambda i: None,
                 after_session: Callable[[], None] = lambda: None) -> None:
        """Hold sessions until ``n`` more interactions happened; ``before_each`` and ``after_session`` pace them."""
        target = self.count + n
        while self.count < target:
            self._session(target, before_each, after_each)
            after_session()

    def _session(self, target: int, before_each: Callable[[], None], after_each: Callable[[Interaction], None]) -> None:
        self.sessions += 1
        session_id = f"{self.run_id}-s{self.sessions}"
        headers = {"X-Session-Id": session_id, "X-NextState-Canary": "1"} if self.opt_in else {}
        messages: list[dict[str, str]] = []
        fact, question = next(self.questions)
        pending = question
        asked, attempts = 1, 0
        while True:
            messages.append({"role": "user", "content": pending})
            before_each()
            answer, response_headers = _chat(self.client, self.model, messages, self.rng.randrange(2**31), headers,
                                             self.max_tokens)
            messages.append({"role": "assistant", "content": answer})
            self.count += 1
            attempts += 1
            reaction = react(self.persona, answer, question, self.rng, self.mix, fact)
            after_each(Interaction(self.count, response_headers.get("x-nextstate-session-id", session_id),
                                   reaction.satisfied, reaction.kind, response_headers.get("x-nextstate-arm"),
                                   response_headers.get("x-nextstate-version")))
            retry = reaction.retry and attempts < self.max_attempts
            last = self.count >= target or (not retry and asked >= self.questions_per_session)
            if last:
                if reaction.text:  # deliver the last reaction as the next state (its answer goes unread)
                    messages.append({"role": "user", "content": reaction.text})
                    done = {"X-Session-Done": "true"} if self.opt_in else {}  # a plain client just stops
                    _chat(self.client, self.model, messages, self.rng.randrange(2**31), {**headers, **done},
                          self.max_tokens)
                return
            if retry:
                pending = reaction.text
                continue
            fact, question = next(self.questions)
            asked, attempts = asked + 1, 0
            pending = next_message(reaction, question, self.rng)


def evaluate(client: openai.OpenAI, model: str, persona: Persona, prompts: tuple[EvalPrompt, ...],
             tag: str, concurrency: int = 8, max_tokens: int = MAX_TOKENS) -> EvalResult:
    """Fresh prompts, no hint, answered by what the proxy serves as stable; nothing is recorded.

    The prompts are sent ``concurrency`` at a time (the policy server decodes them in one batch); each
    has its own sampling seed, so the answers do not depend on the order they are served in.
    """

    def ask(item: tuple[int, EvalPrompt]) -> tuple[bool, bool, str]:
        i, prompt = item
        headers = {"X-NextState-Record": "off", "X-NextState-Canary": "0", "X-Session-Id": f"{tag}-e{i}"}
        answer, response_headers = _chat(client, model, [{"role": "user", "content": prompt.question}],
                                         prompt.seed, headers, max_tokens)
        return (persona.satisfied_by(answer) and not loops(answer), states_fact(answer, prompt.question, prompt.fact),
                response_headers.get("x-nextstate-version") or "base")

    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="prefbench-eval") as pool:
        answers = list(pool.map(ask, enumerate(prompts)))
    n = max(1, len(prompts))
    return EvalResult(sum(a[0] for a in answers) / n, sum(a[1] for a in answers) / n,
                      tuple(sorted({a[2] for a in answers})), tuple(a[0] for a in answers), tuple(a[1] for a in answers))
