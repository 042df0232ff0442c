"""The proxy under a generated attack from its own OpenAPI document (CI-sized; bench/fuzz_proxy.py runs
the full count), and Hypothesis properties of the SSE accumulator and the history fingerprint."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.accumulate import Accumulator, SSESplitter
from proxy.sessions import chain_hash, message_digest, prefix_hash
from tests.support import fuzz


def test_the_openapi_document_describes_the_proxy_s_own_routes(proxy_url, http) -> None:
    document = http.get(f"{proxy_url}/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert {"/v1/chat/completions", "/v1/responses", "/v1/feedback", "/v1/models", "/healthz"} <= document["paths"].keys()


def test_a_generated_attack_gets_no_undocumented_5xx_and_only_openai_shaped_errors(proxy_url) -> None:
    report = fuzz.run(proxy_url, examples_per_operation=15, seed=19)
    assert report.requests >= 100
    assert report.violation_count == 0, report.violations
    assert any(400 <= status < 500 for status in report.statuses)  # the attack did reach the limits


TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
DELTA = st.fixed_dictionaries({}, optional={"content": TEXT, "reasoning_content": TEXT})


def _event(delta: dict, index: int = 0, token_ids: list[int] | None = None) -> bytes:
    choice: dict = {"index": index, "delta": delta}
    if token_ids is not None:
        choice["token_ids"] = token_ids
    return b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"


@settings(max_examples=200, deadline=None)
@given(deltas=st.lists(DELTA, min_size=1, max_size=12), cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=10))
def test_the_accumulator_reads_the_same_answer_however_the_stream_is_cut(deltas, cuts) -> None:
    stream = b"".join(_event(d, token_ids=[len(d.get("content", ""))]) for d in deltas) + b"data: [DONE]\n\n"
    whole = Accumulator()
    whole.feed_sse(stream)
    pieces, last = [], 0
    for cut in sorted(c % (len(stream) + 1) for c in cuts):
        pieces.append(stream[last:cut])
        last = cut
    pieces.append(stream[last:])
    splitter, cut_up = SSESplitter(), Accumulator()
    events = [event for piece in pieces for event in splitter.feed(piece)]
    if rest := splitter.rest():
        events.append(rest)
    cut_up.feed_sse(b"".join(event + b"\n\n" for event in events))
    expected = "".join(d.get("content", "") for d in deltas)
    assert whole.message() == cut_up.message()
    assert (whole.message().get("content") or "") == expected
    assert whole.choices[0].token_ids == [len(d.get("content", "")) for d in deltas]


MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": TEXT},
    optional={"name": TEXT, "tool_call_id": TEXT, "refusal": TEXT},
)


@settings(max_examples=300, deadline=None)
@given(history=st.lists(MESSAGE, min_size=1, max_size=6), extra=MESSAGE)
def test_the_history_fingerprint_ignores_only_what_clients_drop(history, extra) -> None:
    digests = [message_digest(m) for m in history]
    # fields a client adds or drops on the way back (refusal, key order) leave the digest alone
    assert digests == [message_digest({k: m[k] for k in reversed(m) if k != "refusal"}) for m in history]
    assert chain_hash(digests) == prefix_hash(digests)
    # what the model or the user said does not: a changed content, role or appended message is another history
    changed = {**history[-1], "content": history[-1]["content"] + "x"}
    assert message_digest(changed) != digests[-1]
    assert prefix_hash([*digests, message_digest(extra)]) != prefix_hash(digests)
