"""The ``llm`` judge: m PRM votes and hint votes in parallel through litellm (any provider).

By default it talks to the policy server itself (``NEXTSTATE_UPSTREAM_URL``) and asks for the base
model's name, so the base model judges its own turns with no adapter. Every call has a timeout and
no client-side retries: retries belong to the queue, which sees the job fail with JudgeUnavailable.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from labeler.judges import JudgeMisconfigured, JudgeUnavailable, Verdict
from labeler.prompting import JudgeInput, Prompt, build_input, fill, load_prompt
from labeler.settings import LabelerSettings
from labeler.tally import extract_hint, parse_vote

log = structlog.get_logger("labeler.llm_judge")


def base_model_name(api_base: str, api_key: str | None = None, timeout: float = 5.0) -> str:
    """The policy server's base model: the first model it lists whose name carries no ``@version``."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{api_base.rstrip('/')}/models", headers=headers, timeout=timeout)
        response.raise_for_status()
        ids = [str(m["id"]) for m in response.json().get("data", [])]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise JudgeUnavailable(f"cannot list models at {api_base}: {exc}") from exc
    for model_id in ids:
        if "@" not in model_id:
            return model_id
    if ids:
        return ids[0].split("@")[0]
    raise JudgeMisconfigured(f"{api_base} serves no model")


_loop_lock = threading.Lock()
_loop: tuple[int, asyncio.AbstractEventLoop] | None = None


def _judge_loop() -> asyncio.AbstractEventLoop:
    """The one event loop (in a daemon thread) that runs every judge call of this process.

    litellm caches its HTTP clients per event loop: a loop per call (``asyncio.run``) left a set of open
    connections bound to each dead loop, unclosed until the cache evicted them. A forked work horse
    starts its own loop (the parent's thread does not survive the fork).
    """
    global _loop
    with _loop_lock:
        if _loop is None or _loop[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="llm-judge-loop", daemon=True).start()
            _loop = (os.getpid(), loop)
        return _loop[1]


def _litellm() -> Any:
    """litellm, imported once and outside any timed call (its import takes seconds)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch a price list at run time
    import litellm

    return litellm


@dataclass
class LLMJudge:
    """PRM judge with ``votes`` parallel samples and ``hint_votes`` hint samples per transition."""

    model: str
    api_base: str | None
    api_key: str | None
    prm: Prompt
    hint_prompt: Prompt
    votes: int = 3
    hint_votes: int = 1
    temperature: float = 0.7
    max_tokens: int = 512
    timeout_s: float = 30.0
    rubric: str | None = None
    budgets: tuple[int, int, int] = (4000, 4000, 4000)

    @classmethod
    def from_settings(cls, settings: LabelerSettings, *, model: str | None = None, api_base: str | None = None,
                      api_key: str | None = None) -> LLMJudge:
        api_base = api_base or (None if model else settings.judge_api_base)
        api_key = api_key or settings.judge_api_key
        model = model or settings.judge_model
        if not model:
            if not api_base:
                raise JudgeMisconfigured("the llm judge needs NEXTSTATE_JUDGE_MODEL or a policy server URL")
            model = f"openai/{base_model_name(api_base, api_key)}"
        rubric = settings.rubric_file.read_text(encoding="utf-8") if settings.rubric_file else None
        _litellm()
        return cls(
            model=model, api_base=api_base, api_key=api_key,
            prm=load_prompt("prm", settings.prompt_version), hint_prompt=load_prompt("hint", settings.prompt_version),
            votes=settings.judge_votes, hint_votes=settings.hint_votes, temperature=settings.judge_temperature,
            max_tokens=settings.judge_max_tokens, timeout_s=settings.judge_timeout_s, rubric=rubric,
            budgets=(settings.request_budget_chars, settings.response_budget_chars, settings.next_state_budget_chars),
        )

    @property
    def prompt_version(self) -> str:
        return f"{self.prm.label}+{self.hint_prompt.label}"

    def judge(self, messages: Sequence[Mapping[str, Any]], response: Mapping[str, Any],
              next_state: Sequence[Mapping[str, Any]], extra_next_state: str | None = None) -> Verdict:
        """Votes and hints for one transition; raises JudgeUnavailable when no call succeeded."""
        data = build_input(messages, response, next_state, request_budget=self.budgets[0],
                           response_budget=self.budgets[1], next_state_budget=self.budgets[2])
        if extra_next_state:
            data = JudgeInput(data.request, data.response, f"{data.next_state}\n\n{extra_next_state}",
                              True, data.truncated)
        future = asyncio.run_coroutine_threadsafe(self._judge(data), _judge_loop())
        try:
            return future.result()
        except BaseException:  # e.g. the job's timeout: the calls are not left running
            future.cancel()
            raise

    async def _judge(self, data: JudgeInput) -> Verdict:
        started = time.perf_counter()
        prm_calls = [self._call(fill(self.prm, data, self.rubric)) for _ in range(self.votes)]
        hint_calls = [self._call(fill(self.hint_prompt, data, self.rubric)) for _ in range(self.hint_votes)]
        results = await asyncio.gather(*prm_calls, *hint_calls)
        errors = [r for r in results if isinstance(r, Exception)]
        prm_errors = [r for r in results[: self.votes] if isinstance(r, Exception)]
        if len(prm_errors) == self.votes:
            raise JudgeUnavailable(f"all {self.votes} votes of {self.model} failed: {prm_errors[0]}") from prm_errors[0]
        texts = [None if isinstance(r, Exception) else r for r in results]
        return Verdict(
            votes=[parse_vote(t) for t in texts[: self.votes]],
            hints=[extract_hint(t) for t in texts[self.votes:]],
            model=self.model, prompt_version=self.prompt_version, truncated=data.truncated,
            timings={"judge_ms": (time.perf_counter() - started) * 1000},
            errors=[f"{type(e).__name__}: {e}"[:300] for e in errors],
        )

    async def _call(self, prompt: str) -> str | Exception:
        """One judge call with a hard timeout; failures are returned, not raised, so votes stay independent."""
        litellm = _litellm()
        try:
            reply = await asyncio.wait_for(
                litellm.acompletion(
                    model=self.model, messages=[{"role": "user", "content": prompt}], api_base=self.api_base,
                    api_key=self.api_key or "none", temperature=self.temperature, max_tokens=self.max_tokens,
                    timeout=self.timeout_s, num_retries=0, max_retries=0,
                ),
                timeout=self.timeout_s,
            )
            return str(reply.choices[0].message.content or "")
        except Exception as exc:  # a failed vote is an invalid vote; the error is kept for the record
            log.warning("judge_call_failed", model=self.model, error=f"{type(exc).__name__}: {exc}"[:300])
            return exc
