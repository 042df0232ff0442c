"""Calibrate a sacred suite on a base model: which cases it passes reliably, and its own text noise.

Samples the suite's checked cases with the gate's settings under several seeds and prints, per case, the
pass rate under each seed (a case belongs in the suite only when the base model passes it reliably);
then the text statistics of ``registry.collapse`` per seed and their largest seed-to-seed difference
(the noise the collapse bounds must sit above), and the spread of the model's mean per-token
log-likelihood over its own sampled anchor answers (the scale of the anchor log-prob bound).

    python -m bench.sacred_calibrate --model builtin:smollm2-135m --suite learner/sacred/chat.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from learner.gate import suite_for
from learner.logprobs import batch_logprobs
from learner.modeling import load_model, render_prompt_ids, resolve_model, sample_answers
from registry.collapse import text_stats
from registry.sacred import SacredCase, load_suite, score
from registry.settings import RegistrySettings


def sample_suite(model: Any, tokenizer: Any, cases: list[SacredCase], defaults: RegistrySettings,
                 seed: int) -> tuple[dict[str, float], list[list[str]], list[list[bool]]]:
    """Pass rate per case, the answers grouped by case, and whether each answer hit the token cap."""
    groups: dict[tuple[int, float, int], list[SacredCase]] = {}
    for case in cases:
        key = (case.samples or defaults.gate_samples,
               case.temperature if case.temperature is not None else defaults.gate_temperature,
               case.max_tokens or defaults.gate_max_tokens)
        groups.setdefault(key, []).append(case)
    rates: dict[str, float] = {}
    answers: list[list[str]] = []
    capped: list[list[bool]] = []
    end_ids = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
    for index, ((n, temperature, max_tokens), group) in enumerate(groups.items()):
        ids = sample_answers(model, tokenizer, [c.messages for c in group], n, temperature, max_tokens, seed + index)
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        for k, case in enumerate(group):
            rates[case.id] = score(texts[k * n:(k + 1) * n], case)
            answers.append(texts[k * n:(k + 1) * n])
            capped.append([len(a) >= max_tokens and a[-1] not in end_ids for a in ids[k * n:(k + 1) * n]])
    return rates, answers, capped


def anchor_spread(model: Any, tokenizer: Any, anchors: list[SacredCase], max_tokens: int, seed: int) -> list[float]:
    """Mean per-token log-likelihood of each of the model's own sampled anchor answers (2 per anchor, T=1)."""
    answers = sample_answers(model, tokenizer, [a.messages for a in anchors], 2, 1.0, max_tokens, seed)
    prompts = [render_prompt_ids(tokenizer, anchors[i // 2].messages) for i in range(len(answers))]
    kept = [(p, r) for p, r in zip(prompts, answers, strict=True) if r]
    with torch.no_grad():
        out = batch_logprobs(model, [p for p, _ in kept], [r for _, r in kept], pad_id=int(tokenizer.pad_token_id or 0))
    return (out.logp_B_T.sum(-1) / out.mask_B_T.sum(-1).clamp(min=1)).tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sacred_calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-chat")
    parser.add_argument("--suite", type=Path, default=None, help="default: the suite the gate picks for the model")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first..first+n-1 (split a run over processes)")
    parser.add_argument("--no-anchors", action="store_true", help="skip the anchor log-prob spread")
    parser.add_argument("--keep", type=float, default=0.875, help="lowest pass rate (every seed) of a reliable case")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    settings = RegistrySettings(base_model=args.model)
    suite_path = args.suite or suite_for(args.model)
    suite = load_suite(suite_path)
    checked, anchors = [c for c in suite if not c.anchor], [c for c in suite if c.anchor]
    started = time.perf_counter()
    model, tokenizer = load_model(resolve_model(args.model, settings.home_dir()), device="cpu")
    model.eval()
    print(f"model {args.model}, suite {suite_path}, gate defaults: {settings.gate_samples} samples, "
          f"temperature {settings.gate_temperature}, {settings.gate_max_tokens} tokens; seeds {args.seeds}")
    runs = []
    for s in tqdm(range(args.first_seed, args.first_seed + args.seeds), desc="seeds", unit="seed"):
        runs.append(sample_suite(model, tokenizer, checked, settings, 1000 * s))
    print(f"\n{'case':<24}" + "".join(f"  seed{s}" for s in range(args.seeds)) + "  verdict")
    reliable: list[str] = []
    for case in checked:
        rates = [r[0][case.id] for r in runs]
        keep = min(rates) >= args.keep
        reliable += [case.id] if keep else []
        print(f"{case.id:<24}" + "".join(f"  {x:5.2f}" for x in rates) + ("  keep" if keep else "  drop"))
    stats = [text_stats(r[1], r[2]) for r in runs]
    print("\ntext statistics per seed (registry.collapse):")
    for s, st in enumerate(stats):
        print(f"  seed{s}: repetition {st.repetition:.3f}  self-similarity {st.self_similarity:.3f}  "
              f"degenerate {st.degenerate:.3f}  mean words {st.mean_words:.1f}")
    noise = {key: max((abs(getattr(a, key) - getattr(b, key)) for a, b in itertools.combinations(stats, 2)), default=0.0)
             for key in ("repetition", "self_similarity", "degenerate")}
    print("  largest seed-to-seed difference: " + ", ".join(f"{k} {v:.3f}" for k, v in noise.items()))
    spread = anchor_spread(model, tokenizer, anchors, settings.gate_max_tokens, 7) if anchors and not args.no_anchors else []
    sd = statistics.stdev(spread) if len(spread) > 1 else 0.0
    if spread:
        print(f"\nanchor answers ({len(spread)}): mean per-token log-prob {statistics.mean(spread):.3f}, sd {sd:.3f}")
    seconds = time.perf_counter() - started
    print(f"\n{len(reliable)}/{len(checked)} cases reliable; {seconds:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "suite": str(suite_path), "reliable": reliable,
                                         "rates": {c.id: [r[0][c.id] for r in runs] for c in checked},
                                         "stats": [dataclasses.asdict(st) for st in stats], "noise": noise,
                                         "anchor_sd": sd, "anchor_logp": spread, "seconds": seconds}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
