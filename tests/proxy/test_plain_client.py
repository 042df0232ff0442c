"""A plain client (the unmodified SDK, no nextstate header, no ``user``): its interleaved conversations are
linked by fingerprint and closed by idleness, and every turn gets a transition; prints how many got a
next state."""

from __future__ import annotations

import time

import openai

from tests.proxy.conftest import transitions, turns

CONVERSATIONS = 4
TURNS = 4  # per conversation: the user answers the first three replies, then leaves


def test_plain_client_turns_get_their_next_state(start_proxy, redis_client) -> None:
    url = start_proxy(session_idle_timeout_s=0.5)
    histories: list[list[dict[str, str]]] = [[{"role": "user", "content": f"question {c}"}] for c in range(CONVERSATIONS)]
    with openai.OpenAI(base_url=f"{url}/v1", api_key="sk-plain", max_retries=0, timeout=10) as client:
        for step in range(TURNS):  # round-robin: every conversation is open while the others go on
            for c, history in enumerate(histories):
                reply = client.chat.completions.create(model="m", messages=history)  # type: ignore[arg-type]
                if step < TURNS - 1:
                    history += [{"role": "assistant", "content": reply.choices[0].message.content or ""},
                                {"role": "user", "content": f"reaction {c}.{step}"}]
    records = turns(redis_client, CONVERSATIONS * TURNS)
    assert len(records) == CONVERSATIONS * TURNS and len({r["session_id"] for r in records}) == CONVERSATIONS
    time.sleep(0.5 + 0.5)  # the idle timeout, then a sweep (every 0.1 s in tests)
    links = transitions(redis_client, CONVERSATIONS * TURNS, timeout=10)
    assert sorted(t["turn_id"] for t in links) == sorted(r["turn_id"] for r in records)  # none lost, none twice
    with_next = [t for t in links if t["next_state"]]
    assert all(t["reason"] == "next_request" for t in with_next)
    assert sorted(t["next_state"][0]["content"] for t in with_next) == sorted(
        f"reaction {c}.{s}" for c in range(CONVERSATIONS) for s in range(TURNS - 1))
    assert {t["reason"] for t in links if not t["next_state"]} == {"idle_timeout"}
    share = len(with_next) / len(records)
    print(f"plain client: {len(with_next)} of {len(records)} turns got a next state ({share:.2f}); "
          f"the other {len(records) - len(with_next)} are each conversation's last, closed by idleness")
    assert share == (TURNS - 1) / TURNS
