"""The sacred gate: runs a candidate and the stable version side by side before any traffic.

Four measurements — sampled answers on the sacred suite, log-likelihood of held-out labeled samples,
per-token KL(candidate ‖ stable) on anchor prompts, and the answers the scope's users accepted that each side
still gives (``learner.gate_recall``) — feed ``registry.verdict.gate_verdict`` (pure),
and the registry records the verdict (Redis metadata + audit log; the version directory stays
immutable). ``nextstate gate vN`` runs it by hand; the learner calls ``run_gate_for_version``.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import torch

from labeler.records import SampleRecord
from learner.data import Entry, build_item, lineage_sample_ids
from learner.gate_policies import Policies, generate, stable_answers
from learner.gate_recall import recall, recall_requests, scope_samples
from learner.logprobs import batch_logprobs
from learner.modeling import load_model, render_prompt_ids, resolve_model
from learner.tiny import INFO_FILE as TINY_INFO_FILE
from proxy.logs import configure_logging
from registry.actions import Control
from registry.collapse import TextStats, text_stats
from registry.errors import RegistryError
from registry.lineage import pending_tip
from registry.records import GateVerdict
from registry.sacred import SacredCase, load_suite, score
from registry.settings import RegistrySettings
from registry.states import check_transition
from registry.store import Registry
from registry.verdict import CaseScore, GateThresholds, ReplayStats, gate_verdict
from registry.wiring import open_control

log = structlog.get_logger(__name__)

SUITES = Path(__file__).parent / "sacred"
TINY_SUITE, CHAT_SUITE = SUITES / "tiny.jsonl", SUITES / "chat.jsonl"
MAX_PROMPT_TOKENS, MAX_RESPONSE_TOKENS = 1024, 512


def suite_for(model_dir: Path | str) -> Path:
    """The sacred suite that fits a base model: the built-in tiny model's own (its five answer styles), or the
    general chat suite (instructions and facts a small instruction-tuned model keeps) for any other model."""
    return TINY_SUITE if (Path(model_dir) / TINY_INFO_FILE).exists() else CHAT_SUITE


@dataclass(frozen=True)
class GateRun:
    samples: int = 8
    temperature: float = 0.7
    max_tokens: int = 96
    replay_max: int = 200
    recall_max: int = 16
    recall_answers: int = 2
    recall_temperature: float = 0.3
    recall_max_tokens: int = 64
    seed: int = 0
    thresholds: GateThresholds = field(default_factory=GateThresholds)

    @classmethod
    def from_settings(cls, s: RegistrySettings) -> GateRun:
        return cls(samples=s.gate_samples, temperature=s.gate_temperature, max_tokens=s.gate_max_tokens,
                   replay_max=s.gate_replay_max, recall_max=s.gate_recall_max, seed=s.gate_seed,
                   thresholds=GateThresholds(sacred_tolerance=s.gate_sacred_tolerance, sacred_alpha=s.gate_sacred_alpha,
                                             suite_tolerance=s.gate_suite_tolerance,
                                             replay_tolerance=s.gate_replay_tolerance,
                                             replay_min_samples=s.gate_replay_min_samples, max_kl=s.gate_max_kl,
                                             recall_min_requests=s.gate_recall_min_requests))


@dataclass(frozen=True)
class SacredRun:
    """What the sacred suite measured: per-case pass rates, an example answer per case and side, and the
    text statistics of each side's answers (registry.collapse)."""

    cases: list[CaseScore]
    examples: dict[str, dict[str, str]]
    text: dict[str, TextStats]


def _capped(ids: list[int], max_tokens: int, end_ids: set[int]) -> bool:
    """Did sampling stop at the token cap rather than at an end-of-turn token?"""
    return len(ids) >= max_tokens and (not ids or ids[-1] not in end_ids)


def sacred_scores(policies: Policies, cases: list[SacredCase], run: GateRun) -> SacredRun:
    """Pass rate of each checked case for both policies; cases sharing sampling settings share a batch.

    The stable side's answers are reused while the stable version stays the same (same seed, same answers).
    Where stable is an adapter, the base model answers too (once per gate process): a lineage's every step
    may lose a little within the tolerance against the stable before it, and only the base model shows
    what the steps lost together.
    """
    checked = [c for c in cases if not c.anchor]
    groups: dict[tuple[int, float, int], list[SacredCase]] = {}
    for case in checked:
        key = (case.samples or run.samples, case.temperature if case.temperature is not None else run.temperature,
               case.max_tokens or run.max_tokens)
        groups.setdefault(key, []).append(case)
    rates: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    examples: dict[str, dict[str, str]] = {}
    answers_by_side: dict[str, list[list[str]]] = {"candidate": [], "stable": []}
    capped_by_side: dict[str, list[list[bool]]] = {"candidate": [], "stable": []}
    tok = policies.tokenizer
    end_ids = {t for t in (tok.eos_token_id, tok.pad_token_id) if t is not None}
    sides = ("candidate", "stable", "base") if policies.has_stable else ("candidate", "stable")
    for index, ((n, temperature, max_tokens), group) in enumerate(groups.items()):
        for side in sides:
            if side != "candidate":
                ids = stable_answers(policies, [c.messages for c in group], n, temperature, max_tokens, run.seed + index,
                                     side=side)
            else:
                ids = generate(policies, side, [c.messages for c in group], n, temperature, max_tokens, run.seed + index)
            texts = policies.tokenizer.batch_decode(ids, skip_special_tokens=True)
            for k, case in enumerate(group):
                answers = texts[k * n:(k + 1) * n]
                rates.setdefault(case.id, {})[side] = score(answers, case)
                if side == "base":
                    continue
                answers_by_side[side].append(answers)
                capped_by_side[side].append([_capped(a, max_tokens, end_ids) for a in ids[k * n:(k + 1) * n]])
                counts[case.id] = n
                examples.setdefault(case.id, {})[side] = answers[0]
    scores = [CaseScore(c.id, rates[c.id]["candidate"], rates[c.id]["stable"], counts[c.id], rates[c.id].get("base"))
              for c in checked]
    text = {side: text_stats(answers_by_side[side], capped_by_side[side]) for side in answers_by_side}
    return SacredRun(scores, examples, text)


def held_out(registry: Registry, version: str, limit: int) -> list[SampleRecord]:
    """The newest labeled prefer/avoid samples (latest revision per turn) not in the version's lineage."""
    used = lineage_sample_ids(registry, version)
    return [s for s in scope_samples(registry, count=limit * 4)
            if s.cls != "observation" and s.sample_id not in used][:limit]


def mean_logprobs(policies: Policies, side: str, prompts: list[list[int]], responses: list[list[int]],
                  chunk: int = 16) -> list[float]:
    """Mean per-token log-likelihood of each response under one policy."""
    means: list[float] = []
    pad = int(policies.tokenizer.pad_token_id or 0)
    for start in range(0, len(prompts), chunk):
        with policies.use(side) as model, torch.no_grad():
            out = batch_logprobs(model, prompts[start:start + chunk], responses[start:start + chunk], pad_id=pad)
        means += (out.logp_B_T.sum(-1) / out.mask_B_T.sum(-1).clamp(min=1)).tolist()
    return means


def replay_stats(policies: Policies, samples: list[SampleRecord]) -> ReplayStats:
    """Mean over samples of (candidate - stable) mean per-token log-likelihood, per class."""
    items = [build_item(Entry("", s), policies.tokenizer, method="rl", parent_version=None,
                        max_prompt_tokens=MAX_PROMPT_TOKENS, max_response_tokens=MAX_RESPONSE_TOKENS) for s in samples]
    kept = [(s, i) for s, i in zip(samples, items, strict=True) if i.prompt_ids and i.response_ids]
    prompts, responses = [i.prompt_ids for _, i in kept], [i.response_ids for _, i in kept]
    candidate = mean_logprobs(policies, "candidate", prompts, responses)
    stable = mean_logprobs(policies, "stable", prompts, responses)
    deltas: dict[str, list[float]] = {"prefer": [], "avoid": []}
    for (sample, _), c, s in zip(kept, candidate, stable, strict=True):
        deltas[sample.cls].append(c - s)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    def se(values: list[float]) -> float:  # standard error of the mean; 0 when it cannot be estimated
        if len(values) < 2:
            return 0.0
        m = mean(values)
        return (sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values)) ** 0.5

    p, a = deltas["prefer"], deltas["avoid"]
    return ReplayStats(len(p), mean(p), len(a), mean(a), prefer_se=se(p), avoid_se=se(a))


def drift_kl(policies: Policies, anchors: list[SacredCase], run: GateRun) -> float | None:
    """Mean per-token KL(candidate ‖ stable) over the candidate's own answers to the anchor prompts.

    Exact KL over the vocabulary at every position of a sampled answer: a Monte-Carlo estimate of the
    sequence-level KL divided by its length.
    """
    if not anchors:
        return None
    prompts = [render_prompt_ids(policies.tokenizer, a.messages) for a in anchors]
    answers = generate(policies, "candidate", [a.messages for a in anchors], 1, 1.0, run.max_tokens, run.seed + 1000)
    kept = [(p, r) for p, r in zip(prompts, answers, strict=True) if r]
    if not kept:
        return None
    pad = int(policies.tokenizer.pad_token_id or 0)
    logp = {}
    for side in ("candidate", "stable"):
        with policies.use(side) as model, torch.no_grad():
            out = batch_logprobs(model, [p for p, _ in kept], [r for _, r in kept], keep_logits=True, pad_id=pad)
        assert out.logits_B_T_V is not None
        logp[side] = torch.log_softmax(out.logits_B_T_V, dim=-1)  # (B, T, V)
        mask_B_T = out.mask_B_T
    kl_B_T = (logp["candidate"].exp() * (logp["candidate"] - logp["stable"])).sum(-1)
    return float((kl_B_T * mask_B_T).sum() / mask_B_T.sum())


def anchor_logp_drop(policies: Policies, anchors: list[SacredCase], run: GateRun) -> float | None:
    """How far stable's own answers to the anchor prompts fall in mean per-token log-likelihood under the
    candidate (stable minus candidate, nats per token; a Monte-Carlo estimate of KL(stable || candidate)).

    Complements ``drift_kl``: a candidate that keeps only some of stable's answers looks close to stable
    on its own answers and far from it on the ones it dropped.
    """
    if not anchors:
        return None
    prompts = [render_prompt_ids(policies.tokenizer, a.messages) for a in anchors]
    answers = stable_answers(policies, [a.messages for a in anchors], 2, 1.0, run.max_tokens, run.seed + 2000)
    pairs = [(prompts[i // 2], r) for i, r in enumerate(answers) if r]
    if not pairs:
        return None
    candidate = mean_logprobs(policies, "candidate", [p for p, _ in pairs], [r for _, r in pairs])
    stable = mean_logprobs(policies, "stable", [p for p, _ in pairs], [r for _, r in pairs])
    return sum(s - c for s, c in zip(stable, candidate, strict=True)) / len(pairs)


def evaluate(registry: Registry, version: str, base: Any, tokenizer: Any, suite: list[SacredCase],
             run: GateRun) -> GateVerdict:
    """Measure the candidate against the current stable version and return the verdict (not recorded)."""
    serving = registry.effective_stable()  # a personal scope without a stable is served the global one
    stable = serving.version if serving is not None else None
    stable_path = registry.scoped(serving.scope).path_of(serving) if serving is not None else None
    policies = Policies(base, tokenizer, registry.path_of(registry.get(version)), stable_path)
    try:
        sacred = sacred_scores(policies, suite, run)
        replay = replay_stats(policies, held_out(registry, version, run.replay_max))
        anchors = [c for c in suite if c.anchor]
        kl = drift_kl(policies, anchors, run)
        drop = anchor_logp_drop(policies, anchors, run)
        requests = recall_requests(registry, tokenizer, run.recall_max, MAX_PROMPT_TOKENS) if run.recall_max else []
        kept = recall(policies, requests, run.recall_answers, run.recall_temperature, run.recall_max_tokens,
                      run.seed + 3000)
    finally:
        policies.model.unload()  # take the adapters out again: a lent base model goes back as it came
    verdict = gate_verdict(sacred.cases, replay, kl, run.thresholds, compared_to=stable,
                           text=(sacred.text["candidate"], sacred.text["stable"]), anchor_logp_drop=drop, recall=kept)
    verdict.metrics["examples"] = sacred.examples
    return verdict


def run_gate_for_version(version: str, settings: RegistrySettings | None = None, registry: Registry | None = None,
                         control: Control | None = None, base: Any = None, tokenizer: Any = None) -> GateVerdict:
    """Gate ``version``, record the verdict, and (when it passes, and allowed) start its canary."""
    settings = settings or RegistrySettings()
    with ExitStack() as stack:
        if control is None:
            control = open_control(settings, stack)
            if registry is not None:  # the caller's Redis connection and store, named as the proxies know it
                control.registry = Registry(registry.redis, registry.store_root, base_model=settings.served_base(),
                                            scope=registry.scope)
        registry = control.registry
        check_transition(version, registry.get(version).state, "gated_pass")  # refuse early: gate a candidate once
        if base is None:
            model_dir = resolve_model(registry.manifest(version).base_model or settings.base_model, settings.home_dir())
            base, tokenizer = load_model(model_dir, device="cpu" if not torch.cuda.is_available() else None)
        suite = load_suite(settings.gate_suite or suite_for(getattr(base, "name_or_path", "")))
        verdict = evaluate(registry, version, base, tokenizer, suite, GateRun.from_settings(settings))
        registry.record_gate(version, verdict)
        log.info("gate_verdict", version=version, passed=verdict.passed, reasons=verdict.reasons,
                 recall=verdict.metrics.get("recall"))
        next_up = pending_tip(registry.versions(), registry.alias("stable")) == version  # what the controller picks
        if (verdict.passed and settings.gate_auto_canary and next_up and registry.canary_state() is None
                and not registry.frozen()):
            try:
                fraction = settings.canary_steps[0] if registry.scope == "global" else settings.personal_canary_fraction
                control.start_canary(version, fraction, "gate", "passed the sacred gate")
            except RegistryError as exc:  # e.g. a replica is down: the controller starts it on a later tick
                log.warning("canary_not_started", version=version, error=str(exc))
        return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nextstate gate", description="Run the sacred gate on a candidate version.")
    parser.add_argument("version")
    parser.add_argument("--suite", type=Path, default=None, help="sacred suite JSONL (default: settings)")
    parser.add_argument("--no-canary", action="store_true", help="record the verdict only; start no canary")
    args = parser.parse_args(argv)
    settings = RegistrySettings()
    configure_logging(settings.log_level, settings.log_json)
    updates: dict[str, Any] = {"gate_auto_canary": settings.gate_auto_canary and not args.no_canary}
    if args.suite is not None:
        updates["gate_suite"] = args.suite
    try:
        verdict = run_gate_for_version(args.version, settings.model_copy(update=updates))
    except RegistryError as exc:
        print(f"nextstate gate: {exc}", file=sys.stderr)
        return 1
    summary = {k: verdict.metrics.get(k) for k in ("sacred_mean", "replay", "kl", "notes")}
    print(json.dumps({"version": args.version, "passed": verdict.passed, "reasons": verdict.reasons, **summary},
                     indent=2, default=str))
    return 0 if verdict.passed else 5


if __name__ == "__main__":
    sys.exit(main())
