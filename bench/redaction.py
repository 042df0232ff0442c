"""What redaction costs per record, side by side with what the recorder already spends on one.

Builds recorder entries like a chat client's (a conversation of ``--turns`` exchanges of about
``--chars`` characters each, one secret in a tenth of them) and times, in one run and interleaved:
serialising the entry (the recorder does this for every record anyway), and scrubbing it with no
kinds, the default (``secrets``) and every kind. Runs on the recorder's task, never on the request path.

    .venv/bin/python -m bench.redaction [--records 2000] [--turns 4] [--chars 400] [--growing]
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time

from proxy.recorder import Entry
from proxy.records import TurnRecord, TurnRequest, TurnResponse
from proxy.redact import KINDS, Redactor

PROSE = ("the model answers in French when asked, and the user said thanks for the short reply while the "
         "report for order 12345 shipped on 2026-12-06 goes to the team at 10:30")
WORDS = PROSE.split(" ")


def _text(rng: random.Random, chars: int, secret: bool) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < chars:
        words.append(rng.choice(WORDS))
    if secret:
        words.insert(rng.randrange(len(words)), "sk-proj-" + "".join(rng.choices("abcdefXYZ0123456789", k=24)))
    return " ".join(words)


def make_entry(rng: random.Random, turns: int, chars: int) -> Entry:
    messages = [{"role": "system", "content": _text(rng, chars // 2, False)}]
    for _ in range(turns):
        messages.append({"role": "user", "content": _text(rng, chars, rng.random() < 0.1)})
        messages.append({"role": "assistant", "content": _text(rng, chars, False)})
    messages.pop()
    turn = TurnRecord(record_id="t", turn_id="t", session_id="s", turn_index=turns, request=TurnRequest(messages=messages),
                      response=TurnResponse(message={"role": "assistant", "content": _text(rng, chars, False)}))
    return Entry(kind="turn", turn=turn)


def grow(entries: list[Entry]) -> list[Entry]:
    """The same conversations as a client sends them: each request resends the history before it."""
    grown = []
    for entry in entries:
        assert entry.turn is not None
        messages = entry.turn.request.messages
        for end in range(2, len(messages) + 1, 2):
            turn = entry.turn.model_copy(update={"request": TurnRequest(messages=copy.deepcopy(messages[:end]))})
            grown.append(Entry(kind="turn", turn=turn))
    return grown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--turns", type=int, default=4, help="user/assistant exchanges per conversation")
    parser.add_argument("--chars", type=int, default=400, help="characters per message")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--growing", action="store_true",
                        help="records of growing conversations (each request resends its history), as clients send them")
    args = parser.parse_args()
    rng = random.Random(7)
    entries = [make_entry(rng, args.turns, args.chars) for _ in range(args.records)]
    if args.growing:
        entries = grow(entries)[: args.records]
    size = statistics.mean(len(e.model_dump_json()) for e in entries[:200])
    print(f"{len(entries)} records ({'growing conversations' if args.growing else 'each a new conversation'}), {args.turns} exchanges of ~{args.chars} chars each (~{size / 1000:.1f} kB as JSON), "
          f"median of {args.rounds} rounds, one process")
    timings: dict[str, list[float]] = {"serialise (reference)": [], "none": [], "secrets (default)": [], "all kinds": []}
    for _ in range(args.rounds):
        redactors = {"none": Redactor("none"), "secrets (default)": Redactor(), "all kinds": Redactor(",".join(KINDS))}
        copies = [copy.deepcopy(entries) for _ in redactors]
        start = time.perf_counter()
        for entry in entries:
            entry.model_dump_json()
        timings["serialise (reference)"].append((time.perf_counter() - start) / len(entries))
        for (name, redactor), batch in zip(redactors.items(), copies, strict=True):
            start = time.perf_counter()
            for entry in batch:
                redactor.entry(entry)
            timings[name].append((time.perf_counter() - start) / len(entries))
    reference = statistics.median(timings["serialise (reference)"])
    print(f"{'':24} {'µs/record':>10} {'÷ serialise':>12}")
    for name, values in timings.items():
        cost = statistics.median(values)
        print(f"{name:24} {cost * 1e6:10.1f} {cost / reference:12.2f}")


if __name__ == "__main__":
    main()
