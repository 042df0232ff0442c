"""Mechanics of the learner on a tiny random Qwen2-style model: items, selection, logprobs, a train run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from labeler.records import SampleRecord
from learner.config import TrainConfig
from learner.data import Entry, TrainItem, build_item, select
from learner.logprobs import adapter_disabled, append_hint, batch_logprobs, sequence_logprobs
from learner.modeling import render_prompt_ids
from learner.tiny import build_tokenizer
from learner.train import attach_adapter, collapse_reason, compute_fixed, train
from proxy.records import TokenCapture


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return build_tokenizer()


def random_model(tokenizer) -> Qwen2ForCausalLM:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2ForCausalLM(config).eval()


def sample(turn: str, cls: str = "prefer", reward: int = 1, revision: int = 0, hint: str | None = None,
           tokens: TokenCapture | None = None, serving_version: str | None = None) -> SampleRecord:
    return SampleRecord(
        record_id=f"{turn}:r{revision}", sample_id=turn, revision=revision, turn_id=turn, session_id="s",
        cls=cls, reward=reward, hint=hint, serving_version=serving_version,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": f"What is {turn}?"}],
        response={"role": "assistant", "content": f"It is {turn}."}, tokens=tokens or TokenCapture(),
    )


def test_select_keeps_latest_revision_and_drops_what_takes_no_slot() -> None:
    entries = [
        Entry("1-0", sample("a", revision=0)),
        Entry("2-0", sample("b", cls="observation", reward=0)),
        Entry("3-0", sample("a", cls="avoid", reward=-1, revision=1)),  # newer label of a
        Entry("4-0", sample("c")),  # already trained into the lineage
        Entry("5-0", sample("d", cls="avoid", reward=-1, hint="Answer in lowercase.")),
        Entry("6-0", sample("e", revision=0)),  # the labeler already holds revision 2 of e
        Entry("7-0", None),
        Entry("8-0", sample("f", cls="prefer", reward=0)),  # no reward and no hint
    ]
    sel = select(entries, method="combined", lineage_ids={"c"}, stored_revisions={"e": 2, "a": 1})
    assert [e.entry_id for e in sel.train] == ["3-0", "5-0"]
    assert sel.skipped == {"superseded": ["1-0", "6-0"], "observation": ["2-0"], "already_trained": ["4-0"],
                           "unreadable": ["7-0"], "no_signal": ["8-0"]}
    assert sorted(sel.entry_ids) == sorted(e.entry_id for e in entries)


@pytest.mark.parametrize(
    ("method", "trained"),
    [("rl", ["r", "rh"]), ("opd", ["h", "rh"]), ("combined", ["r", "h", "rh"])],
)
def test_select_by_method(method: str, trained: list[str]) -> None:
    entries = [Entry("r", sample("r")), Entry("h", sample("h", cls="observation", reward=0, hint="Be brief.")),
               Entry("rh", sample("rh", cls="avoid", reward=-1, hint="Be brief."))]
    # an observation with a hint is still observation-only: never trained
    assert [e.entry_id for e in select(entries, method=method).train] == [t for t in trained if t != "h"]


def test_build_item_captured_and_retokenized(tokenizer) -> None:  # type: ignore[no-untyped-def]
    plain = build_item(Entry("1-0", sample("a", hint="Answer in lowercase.")), tokenizer, method="combined",
                       parent_version=None, max_prompt_tokens=512, max_response_tokens=256)
    prompt = render_prompt_ids(tokenizer, [{"role": "user", "content": "What is a?"}])
    assert plain.token_method == "retokenized"
    assert plain.prompt_ids == prompt
    assert tokenizer.decode(plain.response_ids) == "It is a.<|im_end|>"  # not the template's newline after it
    assert plain.teacher_prompt_ids is not None
    assert "What is a?\n\nAnswer in lowercase." in tokenizer.decode(plain.teacher_prompt_ids)
    assert plain.captured_logprobs is None and plain.has_reward and plain.reward == 1.0

    cap = TokenCapture(method="captured", prompt_token_ids=[5, 6, 7], response_token_ids=[8, 9],
                       response_logprobs=[-0.5, -1.5])
    same = build_item(Entry("2-0", sample("b", tokens=cap, serving_version="v3")), tokenizer, method="rl",
                      parent_version="v3", max_prompt_tokens=2, max_response_tokens=1)
    assert (same.token_method, same.prompt_ids, same.response_ids) == ("captured", [6, 7], [8])
    assert same.captured_logprobs == [-0.5]
    other = build_item(Entry("3-0", sample("b", tokens=cap, serving_version="v2")), tokenizer, method="rl",
                       parent_version="v3", max_prompt_tokens=8, max_response_tokens=8)
    assert other.captured_logprobs is None  # served by another version: pi_old must be recomputed
    opd_only = build_item(Entry("4-0", sample("c", cls="avoid", reward=-1, hint="Be brief.")), tokenizer,
                          method="opd", parent_version=None, max_prompt_tokens=512, max_response_tokens=256)
    assert not opd_only.has_reward and opd_only.reward == 0.0 and opd_only.teacher_prompt_ids is not None


def test_append_hint_goes_to_the_last_user_message() -> None:
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
                {"role": "user", "content": "second"}, {"role": "tool", "content": "result"}]
    out = append_hint(messages, "Answer in lowercase.")
    assert out[2]["content"] == "second\n\nAnswer in lowercase." and messages[2]["content"] == "second"
    assert append_hint([{"role": "user", "content": [{"type": "text", "text": "q"}]}], "h")[0]["content"][-1] == {
        "type": "text", "text": "h"}
    assert append_hint([{"role": "system", "content": "s"}], "h")[-1] == {"role": "user", "content": "h"}


def test_batched_logprobs_match_single_full_forward(tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = random_model(tokenizer)
    prompts, responses = [[1, 2, 3, 4], [5, 6]], [[7, 8], [9, 10, 11, 12]]
    out = batch_logprobs(model, prompts, responses)
    for b in range(2):
        ids = torch.tensor([prompts[b] + responses[b]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
        expected = [logp[len(prompts[b]) - 1 + t, r].item() for t, r in enumerate(responses[b])]
        assert out.logp_B_T[b, : len(responses[b])].tolist() == pytest.approx(expected, abs=1e-5)
        assert sequence_logprobs(model, prompts[b], responses[b]).tolist() == pytest.approx(expected, abs=1e-5)
    assert out.mask_B_T.tolist() == [[True, True, False, False], [True, True, True, True]]


def items_for(tokenizer, n: int = 4) -> list[TrainItem]:  # type: ignore[no-untyped-def]
    entries = [Entry(f"{i}-0", sample(f"t{i}", cls="prefer" if i % 2 == 0 else "avoid", reward=1 if i % 2 == 0 else -1,
                                      hint="Answer in lowercase." if i == 1 else None)) for i in range(n)]
    return [build_item(e, tokenizer, method="combined", parent_version=None, max_prompt_tokens=64,
                       max_response_tokens=32) for e in entries]


def test_fixed_quantities_and_a_train_run(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = attach_adapter(random_model(tokenizer), TrainConfig.tiny(), None)
    items = items_for(tokenizer)
    config = TrainConfig.tiny(lr=1e-2, min_entropy=0.0)
    fixed, sources = compute_fixed(model, items, config, tokenizer.pad_token_id)
    assert sources == {"recomputed": 4}
    # a fresh LoRA adapter starts as the identity: pi_old == base; the teacher differs (hinted prompt)
    assert torch.allclose(fixed[0].old_logp, fixed[0].base_logp, atol=1e-6)
    assert fixed[0].teacher_logp is None and fixed[1].teacher_logp is not None
    assert not torch.allclose(fixed[1].teacher_logp, fixed[1].old_logp)

    steps: list[int] = []
    result = train(model, items, config, pad_id=tokenizer.pad_token_id, progress=lambda n, _: steps.append(n))
    m = result.metrics
    assert steps == [1, 2, 3]  # one batch of 4, 3 steps per batch (the tiny preset)
    assert result.refused is None
    assert all(math.isfinite(v) for v in m.values())
    assert m["kl_parent"] > 0 and m["kl_base"] == pytest.approx(m["kl_parent"], rel=1e-4)
    assert m["logp_delta_prefer"] > 0 > m["logp_delta_avoid"]
    assert m["reward_mean"] == 0.0 and m["samples"] == 4 and m["opd_samples"] == 1
    # the base model stays untouched under the adapter
    with torch.no_grad(), adapter_disabled(model):
        again = batch_logprobs(model, [items[0].prompt_ids], [items[0].response_ids]).logp_B_T[0]
    assert torch.allclose(again, fixed[0].base_logp, atol=1e-5)
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    reloaded = attach_adapter(random_model(tokenizer), config, tmp_path / "adapter")
    with torch.no_grad():
        a = batch_logprobs(model, [items[0].prompt_ids], [items[0].response_ids]).logp_B_T
        b = batch_logprobs(reloaded, [items[0].prompt_ids], [items[0].response_ids]).logp_B_T
    assert torch.allclose(a, b, atol=1e-5)


def test_captured_logprobs_are_pi_old_when_the_parent_served(tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = attach_adapter(random_model(tokenizer), TrainConfig.tiny(), None)
    cap = TokenCapture(method="captured", prompt_token_ids=[1, 2, 3], response_token_ids=[4, 5],
                       response_logprobs=[-0.25, -0.75])
    item = build_item(Entry("1-0", sample("x", tokens=cap)), tokenizer, method="rl", parent_version=None,
                      max_prompt_tokens=8, max_response_tokens=8)
    fixed, sources = compute_fixed(model, [item], TrainConfig.tiny(), 0)
    assert sources == {"captured": 1}
    assert fixed[0].old_logp.tolist() == [-0.25, -0.75]


def test_topk_variant_trains(tokenizer) -> None:  # type: ignore[no-untyped-def]
    model = attach_adapter(random_model(tokenizer), TrainConfig.tiny(), None)
    config = TrainConfig.tiny(topk=4, min_entropy=0.0)
    result = train(model, items_for(tokenizer), config, pad_id=tokenizer.pad_token_id)
    assert result.refused is None and math.isfinite(result.metrics["loss"])


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"loss": 0.1, "entropy": 1.0, "kl_base": 0.1, "kl_parent": 0.1}, None),
        ({"loss": float("nan"), "entropy": 1.0}, "loss is not finite"),
        ({"loss": 0.1, "entropy": float("inf")}, "entropy is not finite"),
        ({"loss": 0.1, "entropy": 0.001}, "entropy 0.0010 below the bound 0.005"),
        ({"loss": 0.1, "entropy": 1.0, "kl_base": 4.5}, "KL to base 4.5000 above the bound 4.0"),
        ({"loss": 0.1, "entropy": 1.0, "kl_base": 1.5, "kl_parent": 2.2}, "KL to parent 2.2000 above the bound 2.0"),
    ],
)
def test_collapse_guard(metrics: dict[str, float], reason: str | None) -> None:
    got = collapse_reason(metrics, TrainConfig.tiny())
    assert got == reason if reason is None else (got is not None and got.startswith(reason))


def test_training_on_top_of_a_parent_measures_kl_to_parent_and_base(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = TrainConfig.tiny(lr=1e-2, min_entropy=0.0)
    first = attach_adapter(random_model(tokenizer), config, None)
    train(first, items_for(tokenizer), config, pad_id=tokenizer.pad_token_id)
    first.save_pretrained(tmp_path / "v1")
    child = attach_adapter(random_model(tokenizer), config, tmp_path / "v1")
    m = train(child, items_for(tokenizer), config, pad_id=tokenizer.pad_token_id, parent_dir=tmp_path / "v1").metrics
    assert 0 < m["kl_parent"] < m["kl_base"]  # the child starts from the parent, which already moved from base
    child.save_pretrained(tmp_path / "v2")
    assert sorted(p.name for p in (tmp_path / "v2").iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors"]  # the parent was not saved with it
