"""The learner's hyperparameters: one frozen ``TrainConfig``, serialised into every manifest.

Three presets: ``tiny()`` for the built-in tiny CPU model, ``small()`` for a real small chat model on CPU
(``builtin:smollm2-135m``) and ``gpu()`` for a 4–8B model on one GPU (bf16, gradient checkpointing).
``for_device`` picks tiny or gpu; the learner picks by model too; any field can be overridden with ``replace``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Method = Literal["rl", "opd", "combined"]
METHODS: tuple[Method, ...] = ("rl", "opd", "combined")


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of one training run. Field comments give the unit or meaning."""

    method: Method = "combined"
    w_rl: float = 1.0  # weight of the binary reward r in the advantage
    w_opd: float = 1.0  # weight of the teacher-minus-student log-ratio in the advantage
    rl_baseline: bool = False  # subtract the batch-mean reward of the RL samples
    topk: int = 0  # > 0: top-K distillation (teacher top-K + tail bin, reverse KL) replaces the OPD advantage

    # LoRA
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    # empty: every linear layer of the decoder under the architecture's own names (learner.train.lora_target_modules)
    target_modules: tuple[str, ...] = ()

    # optimisation
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 4  # samples per optimiser batch
    micro_batch_size: int = 4  # samples per forward pass (gradient accumulation up to batch_size)
    steps_per_batch: int = 2  # PPO epochs over each batch against the same pi_old
    max_grad_norm: float = 1.0
    max_prompt_tokens: int = 512  # prompts are cut from the left (the latest messages stay)
    max_response_tokens: int = 256  # responses are cut from the right
    seed: int = 0

    # PPO clipped surrogate and regularisation
    eps_low: float = 0.2
    eps_high: float = 0.28
    kl_coef: float = 0.0  # weight of the k3 KL(pi_theta || pi_base) penalty per token

    # retain set (learner.retain): the base model's (or the parent's) answers to explicit instructions stay likely
    w_retain: float = 1.0  # weight of their mean per-token NLL in every step (0 = off)
    retain_from: Literal["base", "parent"] = "base"
    retain_samples: int = 32  # answers sampled per round
    retain_temperature: float = 1.0
    retain_max_tokens: int = 64

    # hint demonstrations (learner.demos): the hinted teacher answers every context of a hinted conversation
    hint_demos: int = 0  # teacher answers sampled per context (0 = off)
    w_demo: float = 1.0  # weight of their mean per-token NLL in every step
    demo_temperature: float = 1.0
    demo_max_tokens: int = 64
    demo_scope: Literal["conversation", "batch"] = "conversation"  # which contexts a hint is demonstrated on
    # keep only answers that do what the hint asks, where labeler.styles can read it (a list, lowercase, shorter…),
    # and never one that loops or guesses (learner.demos.worth_learning)
    demo_honoured_only: bool = True

    # collapse guard: a candidate outside these bounds is not published
    # nats per token, mean over response tokens after training (the tiny model sits near 0.05-0.1)
    min_entropy: float = 0.005
    # exact KL per response token of the batch, where avoided responses are meant to move
    max_kl_base: float = 4.0  # nats per token
    max_kl_parent: float = 2.0  # nats per token

    # devices
    dtype: Literal["float32", "bfloat16"] = "float32"
    gradient_checkpointing: bool = False

    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried into the manifest

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.batch_size < 1 or self.micro_batch_size < 1 or self.steps_per_batch < 1:
            raise ValueError("batch_size, micro_batch_size and steps_per_batch must be >= 1")
        if not (0 <= self.eps_low < 1 and self.eps_high >= 0):
            raise ValueError("eps_low must be in [0, 1) and eps_high >= 0")

    @property
    def uses_rl(self) -> bool:
        return self.method in ("rl", "combined") and self.w_rl != 0

    @property
    def uses_opd(self) -> bool:
        return self.method in ("opd", "combined") and self.w_opd != 0

    @classmethod
    def tiny(cls, **overrides: Any) -> TrainConfig:
        """CPU defaults for the built-in tiny model: lr 3e-3, 3 steps per batch (DESIGN.md decision 8's 2e-3 x 2,
        raised on measurement: with the retain set and hint demonstrations, PrefBench over 3 personas reached 0.83
        satisfaction at 24 interactions with 3e-3 x 3 against 0.73 with 3e-3 x 2, facts kept; 5e-3 x 4 and 3e-3 x 4
        damaged facts and the gate refused them; on the product defaults, a one-word persona went 0.08 -> 0.83 at
        30 interactions with 3e-3 x 3 and stayed at 0.08 with 2e-3 x 2 for the same seed).

        Top-8 distillation: the teacher's distribution at each position, not only the log-ratio of the
        sampled token, so a hint says which answer to give, not only which one not to (measured: 8 avoid
        samples, most with a hint, moved held-out bullet answers 0.25 -> 0.88; the log-ratio alone 0.25 -> 0.19).
        Hint demonstrations (learner.demos): two hinted-teacher answers per context of the batch (``batch``
        scope: in a personal scope every conversation is the one user's; the learner keeps the shared scope's
        demonstrations to the conversation that gave the hint). The retain set is sampled from the base
        model with weight 2 (learner.retain). Both are sampled up to 96 tokens: the model's detail answers take
        50 to 83, and cut at 64 (40 of its 56 facts) they taught a detail answer without its end.
        """
        return cls(**{"lr": 3e-3, "steps_per_batch": 3, "topk": 8, "hint_demos": 2, "demo_scope": "batch",
                      "w_retain": 2.0, "demo_max_tokens": 96, "retain_max_tokens": 96, **overrides})

    @classmethod
    def small(cls, **overrides: Any) -> TrainConfig:
        """CPU defaults for a real small instruction-tuned model (``builtin:smollm2-135m``, 135 M parameters).

        Learning rate by a one-off measurement on SmolLM2-135M-Instruct: 16 hinted-teacher answers ("Use bullet points.",
        temperature 0.3, 0.81 of them lists) learned as a round does, two full-batch steps: held-out answers
        without the hint were lists in 0.00 after lr 5e-4 (the first preset's, from a policy-gradient
        calibration with more, smaller steps), 0.04 after 1e-3 and 1.00 after 2e-3 (the asked fact kept in
        0.71, against 0.96). A smaller retain round than the tiny preset's: sampling costs far more per token.

        The hints the model follows make the teacher (``bench/hint_follow.py``, capitals and opposites): with the
        correction after the question at temperature 0.3 it keeps to at most ten words in 1.00 of answers (0.56
        unasked at its own 0.2 / 0.9), one sentence in 1.00 (0.62) and writes a list in 0.58 (0.00; 0.04 after
        an earlier exchange); it does not follow "no capitals" (0.00). So, as on the tiny model, top-8
        distillation to the hinted teacher and two hint demonstrations per context (``batch`` scope) at 0.3.

        No reward baseline, measured both ways (PrefBench ``skimmer``, seeds 0 and 1, 24 interactions): a user
        whose preference the model never shows unasked (lists) rejects nearly every answer, and without a
        baseline a batch of rejected answers only pushes the model's own answers down: a candidate trained on
        four of them and no hint answered capital questions in Spanish and Italian (37 of 48 sacred answers
        against 47), and 6 of 11 candidates were refused by the gate, but seed 0 learned the lists (0.00 ->
        1.00). With ``rl_baseline`` 3 of 10 were refused and none learned the lists in 24 interactions (0.00
        on both seeds: the passing candidates were rejected by the personal canary as not better). The gate
        keeps the drifted candidates from the user either way, so the preset keeps what learned.

        The retain set is sampled at 0.3, not at 1.0 as for the tiny model: at 1.0 SmolLM2-135M's answers are
        often incoherent, and learning them breaks the model. The retain term alone (8 answers, four steps at
        2e-3, nothing else trained) took the sacred chat suite from 142 to 103 of 144 answers sampled at 1.0
        and to 137 at 0.3. A list-wanting user's candidates still lose facts at 0.3, and the gate refuses them
        (``bench/README.md``, PrefBench on a real model, run 17).

        Where the teacher is clean the preset learns: users who want at most ten words or one sentence, asked
        open questions, 0.00 -> 0.81 on fresh prompts at 24 interactions over 3 seeds each, facts kept (run 18).
        """
        base: dict[str, Any] = dict(lr=2e-3, retain_samples=8, retain_max_tokens=48, retain_temperature=0.3,
                                    demo_max_tokens=48, topk=8, hint_demos=2, demo_temperature=0.3, demo_scope="batch")
        base.update(overrides)
        return cls(**base)

    @classmethod
    def gpu(cls, **overrides: Any) -> TrainConfig:
        """One-GPU defaults for a 4–8B model: bf16, gradient checkpointing, rank 16, small micro-batches.

        Hint demonstrations stay off (not measured on a GPU); a shared deployment that turns them on should
        keep the ``conversation`` scope, so one user's hint is never demonstrated on another user's question.
        """
        base: dict[str, Any] = dict(
            lora_r=16, lora_alpha=32, lr=1e-4, batch_size=16, micro_batch_size=2, steps_per_batch=2, retain_samples=16,
            max_prompt_tokens=4096, max_response_tokens=1024, dtype="bfloat16", gradient_checkpointing=True,
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def for_device(cls, device: str, **overrides: Any) -> TrainConfig:
        return cls.gpu(**overrides) if device.startswith("cuda") else cls.tiny(**overrides)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the manifest (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["target_modules"] = list(self.target_modules)  # empty: the architecture's linear layers
        return out
