"""What PrefBench and ``nextstate demo`` change to run a real chat model instead of the tiny one, with reasons."""

from __future__ import annotations

from pathlib import Path

from bench.prefbench.user import MAX_TOKENS, TEXT_MAX_TOKENS

TEXT_DEFAULT_PERSONAS = ("brief", "skimmer", "oneliner")
SMOLLM2_TOPICS = ("capitals", "opposites")


def real_model_changes(model: str, *, personas_chosen: bool = False, topics_chosen: bool = False,
                       questions_chosen: bool = False) -> dict[str, object]:
    """What a real model changes from the tiny model's bench settings, each printed with its reason (the personas,
    topics and form of the questions only where the caller did not choose them)."""
    env = {"NEXTSTATE_BASE_MODEL": "builtin:smollm2-135m"}
    if model != "smollm2-135m":  # a directory: served under its folder's name (no slashes in version names)
        path = Path(model).expanduser().resolve()
        env = {"NEXTSTATE_BASE_MODEL": str(path), "NEXTSTATE_SERVED_MODEL_NAME": path.name,
               "NEXTSTATE_SERVED_BASE_MODEL": path.name}
    model_id = env["NEXTSTATE_BASE_MODEL"]
    changes: dict[str, object] = {"extra_env": env}
    reasons = [f"base model {model_id}: the real model under test (the learner takes its 'small' preset)"]
    if not personas_chosen:
        changes["personas"] = TEXT_DEFAULT_PERSONAS
        reasons.append(f"personas {','.join(TEXT_DEFAULT_PERSONAS)}: preferences on free text (personas_text.py); "
                       "the tiny model's personas want its trained styles")
    if not topics_chosen and model == "smollm2-135m":
        changes["topics"] = SMOLLM2_TOPICS
        reasons.append(f"questions on {','.join(SMOLLM2_TOPICS)} only: the topics whose facts SmolLM2-135M-Instruct "
                       "gets right at its own sampling (0.85 and 0.90 of answers; colors 0.33, animal sounds 0.02, "
                       "counts 0.05), so the user's reactions are about its preference, not about wrong facts")
    if not questions_chosen:
        changes["questions"] = "open"
        reasons.append("open questions (\"Tell me about the capital of Peru.\"), not the tiny model's plain ones: a "
                       "chat model answers a plain fact question in one short sentence, which already is what a user "
                       "who wants short answers likes (SmolLM2-135M-Instruct: at most ten words 0.56, one sentence "
                       "0.62 of its answers; asked openly 0.19 and 0.21, the facts still right in 0.98)")
    changes["max_tokens"] = TEXT_MAX_TOKENS
    reasons.append(f"the user asks for at most {TEXT_MAX_TOKENS} tokens instead of {MAX_TOKENS}: the real model's "
                   "answers to these questions say the fact and start a list within that, and longer answers cost the "
                   "busy CPU (the tiny model needs its detail answers whole, up to 83 tokens)")
    changes["idle_timeout_s"] = 20.0
    reasons.append("idle timeout 20 s instead of the tiny model's 6 s: an answer of the real model on a busy CPU takes "
                   "several seconds, and a conversation must not be closed between two of its messages")
    for line in reasons:
        print(f"setting: {line}")
    return changes
