"""Train a PrefBench run's recorded rounds again, offline, as one batch or in batches, and gate each result.

A run directory (``<out>/runs/<method>-<persona>-s<seed>``) keeps its Redis (the samples) and its
adapters (each version's manifest: parent, samples, training settings). For each named version this
trains its samples again on top of its parent, with the manifest's settings under several seeds, in two
ways — ``batches``: ``batch_size`` samples per batch, ``steps_per_batch`` steps each (a round of eight
samples takes two batches' steps); ``one-batch``: every sample of the round in one batch (one batch's
steps, as the continuous learner trains a round) — then gates the result against its parent on the
sacred suite (4 answers per case, as PrefBench) and measures how often its unasked answers to 24 fresh
questions have the persona's style and state the right fact. Nothing of the run is changed: its Redis
is copied first. The tiny model's runs only (the style and the facts are the tiny corpus's).

    python -m bench.replay_rounds /tmp/prefbench/runs/combined-terse-s2 --versions v4,v5,v6,v7,v8 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis
import torch

from bench.prefbench.personas import PERSONAS
from labeler.records import SAMPLES_STREAM, SampleRecord
from learner.config import TrainConfig
from learner.data import Entry, build_item
from learner.demos import sample_demos
from learner.gate import TINY_SUITE, GateRun, sacred_scores
from learner.gate_policies import Policies
from learner.modeling import load_model, resolve_model, sample_answers
from learner.retain import load_prompts, sample_retain
from learner.serving_settings import ServeSettings
from learner.tinycorpus import FACTS, fact_correct
from learner.train import attach_adapter, train
from proxy.embedded_redis import EmbeddedRedis
from registry.sacred import load_suite
from registry.verdict import ReplayStats, gate_verdict

RETAIN_FILE = Path(__file__).resolve().parents[1] / "learner" / "retain" / "instructions.jsonl"
FRESH = FACTS[::3][:24]


def recorded_samples(run: Path) -> dict[str, SampleRecord]:
    """The newest record of every sample in the run's Redis (read from a copy)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "redis"
        shutil.copytree(run / "redis", copy, ignore=shutil.ignore_patterns("*.sock", "redis.log"))
        server = EmbeddedRedis(copy).start()
        try:
            client = redis.Redis.from_url(server.url)
            records = [SampleRecord.model_validate_json(f[b"record"]) for _, f in client.xrange(SAMPLES_STREAM)]
        finally:
            server.stop()
    return {s.sample_id: s for s in sorted(records, key=lambda s: s.revision)}


def unasked(base: Any, tokenizer: Any, adapter: Path | None, style: str) -> tuple[float, float]:
    """Share of answers to the fresh questions in ``style``, and share stating the right fact (2 answers each)."""
    model = attach_adapter(base, TrainConfig.tiny(), adapter) if adapter is not None else base
    conversations = [[{"role": "user", "content": fact.question(1)}] for fact in FRESH]
    with torch.inference_mode():
        ids = sample_answers(model.eval(), tokenizer, conversations, 2, 1.0, 96, 7)
    if adapter is not None:
        model.unload()
    texts = [tokenizer.decode(row, skip_special_tokens=True) for row in ids]
    persona = next(p for p in PERSONAS.values() if p.style == style)
    return (sum(map(persona.satisfied_by, texts)) / len(texts),
            sum(fact_correct(t, FRESH[i // 2]) for i, t in enumerate(texts)) / len(texts))


def replay(base: Any, tokenizer: Any, manifest: dict[str, Any], samples: dict[str, SampleRecord], parent_dir: Path | None,
           one_batch: bool, seed: int, style: str) -> dict[str, Any]:
    config = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in manifest["config"].items()})
    entries = [Entry(f"0-{i}", samples[sid]) for i, sid in enumerate(manifest["sample_ids"])]
    config = config.replace(seed=config.seed + 100 * seed,
                            batch_size=max(config.batch_size, len(entries)) if one_batch else config.batch_size)
    items = [build_item(e, tokenizer, method=config.method, parent_version=manifest["parent"], parent_scope=manifest["scope"],
                        max_prompt_tokens=config.max_prompt_tokens, max_response_tokens=config.max_response_tokens)
             for e in entries]
    model = attach_adapter(base, config, parent_dir)
    retain = sample_retain(model, tokenizer, load_prompts(RETAIN_FILE), config, config.seed + 1)
    demos = sample_demos(model, tokenizer, [e.sample for e in entries if e.sample], [it.prompt_ids for it in items],
                         config, config.seed + 1)
    result = train(model, items, config, pad_id=int(tokenizer.pad_token_id or 0), parent_dir=parent_dir,
                   retain=retain, demos=demos)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        model.unload()
        policies = Policies(base, tokenizer, Path(tmp), parent_dir)
        run = GateRun(samples=4)
        try:
            sacred = sacred_scores(policies, load_suite(TINY_SUITE), run)
        finally:
            policies.model.unload()
        verdict = gate_verdict(sacred.cases, ReplayStats(), None, run.thresholds, compared_to=manifest["parent"],
                               text=(sacred.text["candidate"], sacred.text["stable"]))
        style_share, facts = unasked(base, tokenizer, Path(tmp), style)
    return {"steps": int(result.metrics["steps"]), "passed": verdict.passed, "reasons": verdict.reasons,
            "style": style_share, "facts": facts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replay_rounds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a PrefBench run directory (its redis/ and adapters/)")
    parser.add_argument("--versions", required=True, help="versions to train again (comma-separated)")
    parser.add_argument("--scope", default="local")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--model", default="builtin:tiny-chat", help="the run's base model or its directory")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    parts = args.run.name.split("-")  # <method>-<persona>-s<seed>
    if len(parts) < 3 or parts[1] not in PERSONAS:
        parser.error(f"{args.run} is not a tiny-model PrefBench run directory (<method>-<persona>-s<seed>)")
    style = PERSONAS[parts[1]].style
    samples = recorded_samples(args.run)
    base, tokenizer = load_model(resolve_model(args.model, ServeSettings().home_dir()), device="cpu")
    root = args.run / "adapters" / "scopes" / args.scope
    passed = {False: 0, True: 0}
    for version in args.versions.split(","):
        manifest = json.loads((root / version / "manifest.json").read_text())
        parent_dir = root / manifest["parent"] if manifest["parent"] else None
        before = unasked(base, tokenizer, parent_dir, style)
        print(f"{version}: {len(manifest['sample_ids'])} samples on {manifest['parent'] or 'the base model'} "
              f"({style} {before[0]:.2f}, facts {before[1]:.2f})", flush=True)
        for one_batch in (False, True):
            for seed in range(args.seeds):
                out = replay(base, tokenizer, manifest, samples, parent_dir, one_batch, seed, style)
                passed[one_batch] += out["passed"]
                print(f"  {'one-batch' if one_batch else 'batches':9s} seed {seed}: {out['steps']} steps, "
                      f"{style} {out['style']:.2f}, facts {out['facts']:.2f}, gate {'pass' if out['passed'] else 'FAIL'} "
                      + "; ".join(out["reasons"][:2]), flush=True)
    trained = len(args.versions.split(",")) * args.seeds
    print(f"\npassed the gate: in batches {passed[False]} of {trained}, as one batch {passed[True]} of {trained}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
