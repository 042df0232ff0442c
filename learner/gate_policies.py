"""The two policies the gate compares — the candidate adapter and the stable one on one base model — and
their sampled answers, the stable side's kept while the stable version stays the same."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from peft import PeftModel

from learner.modeling import sample_answers


class Policies:
    """One base model carrying the candidate adapter and (if any) the stable one; ``use`` picks a side."""

    def __init__(self, base: Any, tokenizer: Any, candidate: Path, stable: Path | None) -> None:
        self.tokenizer = tokenizer
        # what the stable side is: a version directory never changes, so its sampled answers can be reused
        if not hasattr(base, "_nextstate_gate_key"):
            base._nextstate_gate_key = uuid.uuid4().hex  # this loaded copy of the base model
        self.stable_key = (base._nextstate_gate_key, str(stable.resolve()) if stable is not None else None)
        self.base_key = (base._nextstate_gate_key, None)
        self.model = PeftModel.from_pretrained(base, str(candidate), adapter_name="candidate")
        self.has_stable = stable is not None
        if stable is not None:
            self.model.load_adapter(str(stable), adapter_name="stable")
        self.model.eval()

    @contextlib.contextmanager
    def use(self, side: str) -> Iterator[Any]:
        """``candidate``, ``stable`` or ``base`` (the base model itself, what a lineage started from)."""
        if side == "base" or (side == "stable" and not self.has_stable):
            with self.model.disable_adapter():  # stable is the base model
                yield self.model
            return
        self.model.set_adapter(side)
        yield self.model


def generate(policies: Policies, side: str, conversations: list[list[dict[str, Any]]], n: int, temperature: float,
             max_tokens: int, seed: int) -> list[list[int]]:
    """``n`` sampled answers (token ids) per conversation from one policy; both sides share the seed."""
    with policies.use(side) as model:
        return sample_answers(model, policies.tokenizer, conversations, n, temperature, max_tokens, seed)


# the stable side's (and the base model's) sampled answers per (policy, cases, sampling settings, seed): the
# learner gates candidate after candidate against the same stable version, whose answers are the same each time
_STABLE_ANSWERS: OrderedDict[tuple[Any, ...], list[list[int]]] = OrderedDict()
_STABLE_ANSWERS_KEPT = 12


def stable_answers(policies: Policies, conversations: list[list[dict[str, Any]]], n: int, temperature: float,
                   max_tokens: int, seed: int, side: str = "stable") -> list[list[int]]:
    """``generate`` on the stable side (or ``base``), reused while that policy and the request stay the same."""
    owner = policies.base_key if side == "base" else policies.stable_key
    key = (owner, json.dumps(conversations, sort_keys=True, default=str), n, temperature, max_tokens, seed)
    if key in _STABLE_ANSWERS:
        _STABLE_ANSWERS.move_to_end(key)
        return _STABLE_ANSWERS[key]
    ids = generate(policies, side, conversations, n, temperature, max_tokens, seed)
    _STABLE_ANSWERS[key] = ids
    while len(_STABLE_ANSWERS) > _STABLE_ANSWERS_KEPT:
        _STABLE_ANSWERS.popitem(last=False)
    return ids
