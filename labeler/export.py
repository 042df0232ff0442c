"""``nextstate export``: labeled samples as JSONL for other trainers.

Kinds: ``sft`` (OpenAI fine-tuning chat format, prefer samples only), ``preference`` (OpenAI preference
format: a prefer and an avoid answer to the same prompt make a pair) and ``kto`` (unpaired
prompt/completion/label lines, every prefer and avoid sample). The latest revision of each turn wins.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

import redis

from labeler.records import SAMPLES_STREAM, SampleRecord
from proxy.redis_connect import connect

KINDS = ("sft", "preference", "kto")
# keys an OpenAI chat fine-tuning message may carry; everything else (reasoning, logprobs) is dropped
MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")


class ExportError(ValueError):
    """A bad argument (``--since`` that is neither a date nor a stream id)."""


def parse_since(text: str | None) -> str:
    """``--since`` as an XRANGE start: a stream id (``1700000000000-0``), epoch ms, or an ISO date/time (UTC if naive)."""
    if not text:
        return "-"
    text = text.strip()
    head, _, tail = text.partition("-")
    if head.isdigit() and (not tail or tail.isdigit()) and len(head) >= 10:
        return text if tail else f"{text}-0"
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ExportError(f"--since must be an ISO date/time or a stream id, got {text!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return f"{int(moment.timestamp() * 1000)}-0"


def latest_revisions(samples: Iterable[SampleRecord]) -> list[SampleRecord]:
    """Keep the highest revision of each turn, in order of each turn's first appearance."""
    latest: dict[str, SampleRecord] = {}
    for sample in samples:
        current = latest.get(sample.turn_id)
        if current is None or sample.revision >= current.revision:
            latest[sample.turn_id] = sample
    return list(latest.values())


def clean_message(message: dict[str, Any]) -> dict[str, Any]:
    return {k: message[k] for k in MESSAGE_KEYS if message.get(k) is not None}


def prompt_of(sample: SampleRecord) -> dict[str, Any]:
    prompt: dict[str, Any] = {"messages": [clean_message(m) for m in sample.messages]}
    if sample.tools:
        prompt["tools"] = sample.tools
    return prompt


def answer_of(sample: SampleRecord) -> dict[str, Any]:
    return clean_message({"role": "assistant", **sample.response})


def to_sft(sample: SampleRecord) -> dict[str, Any] | None:
    """One OpenAI chat fine-tuning line for a prefer sample; ``None`` for anything else."""
    if sample.cls != "prefer":
        return None
    line = prompt_of(sample)
    line["messages"] = [*line["messages"], answer_of(sample)]
    return line


def to_kto(sample: SampleRecord) -> dict[str, Any] | None:
    """One unpaired preference line (prompt, completion, desirable or not); ``None`` for observations."""
    if sample.cls == "observation":
        return None
    prompt = prompt_of(sample)
    line: dict[str, Any] = {"prompt": prompt["messages"], "completion": [answer_of(sample)], "label": sample.cls == "prefer"}
    if "tools" in prompt:
        line["tools"] = prompt["tools"]
    if sample.hint:
        line["hint"] = sample.hint
    return line


def prompt_key(sample: SampleRecord) -> str:
    """Identity of a prompt: its cleaned messages and tools, canonical JSON, hashed."""
    canonical = json.dumps(prompt_of(sample), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def preference_pairs(samples: Iterable[SampleRecord], max_pairs_per_prompt: int = 4) -> list[dict[str, Any]]:
    """OpenAI preference lines: each prefer answer against each avoid answer to the same prompt.

    Identical answers never make a pair; at most ``max_pairs_per_prompt`` pairs per prompt, taken in
    the order the samples were labeled.
    """
    groups: dict[str, dict[str, list[SampleRecord]]] = {}
    for sample in samples:
        if sample.cls != "observation":
            groups.setdefault(prompt_key(sample), {"prefer": [], "avoid": []})[sample.cls].append(sample)
    lines = []
    for group in groups.values():
        made = 0
        for good in group["prefer"]:
            for bad in group["avoid"]:
                if made >= max_pairs_per_prompt or answer_of(good) == answer_of(bad):
                    continue
                lines.append({
                    "input": prompt_of(good),
                    "preferred_output": [answer_of(good)],
                    "non_preferred_output": [answer_of(bad)],
                })
                made += 1
    return lines


def read_samples(client: redis.Redis, start: str = "-", end: str = "+", chunk: int = 1000) -> Iterator[SampleRecord]:
    """Every sample of the stream from ``start`` (inclusive), read in chunks."""
    cursor = start
    while True:
        entries = client.xrange(SAMPLES_STREAM, min=cursor, max=end, count=chunk)
        for _, fields in entries:
            yield SampleRecord.model_validate_json(fields[b"record"])
        if len(entries) < chunk:
            return
        cursor = "(" + entries[-1][0].decode()


def export(samples: Iterable[SampleRecord], kind: str, out: TextIO, max_pairs_per_prompt: int = 4) -> dict[str, int]:
    """Write the JSONL lines of ``kind``; return counts for the summary."""
    latest = latest_revisions(samples)
    if kind == "preference":
        lines = preference_pairs(latest, max_pairs_per_prompt)
    else:
        convert = to_sft if kind == "sft" else to_kto
        lines = [line for line in map(convert, latest) if line is not None]
    for line in lines:
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
    counts = {"turns": len(latest), "lines": len(lines)}
    for cls in ("prefer", "avoid", "observation"):
        counts[cls] = sum(1 for s in latest if s.cls == cls)
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nextstate export", description=__doc__)
    parser.add_argument("--since", help="ISO date/time (UTC if no zone) or samples-stream id; default: everything")
    parser.add_argument("--until", help="same forms as --since; default: now")
    parser.add_argument("--format", default="jsonl", choices=["jsonl"], help="output format")
    parser.add_argument("--kind", default="sft", choices=KINDS,
                        help="sft: chat fine-tuning lines; preference: prefer/avoid pairs; kto: unpaired labels")
    parser.add_argument("--max-pairs-per-prompt", type=int, default=4)
    parser.add_argument("--output", "-o", help="file to write; default: stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    from labeler.settings import LabelerSettings
    from proxy.embedded_redis import resolve_redis_url

    args = build_parser().parse_args(argv)
    try:
        start = parse_since(args.since)
        end = "+" if not args.until else parse_since(args.until)
    except ExportError as exc:
        print(f"nextstate export: {exc}", file=sys.stderr)
        return 2
    settings = LabelerSettings()
    url, _ = resolve_redis_url(settings.redis_url, settings.home_dir())
    client = connect(url, socket_timeout=30)
    try:
        if args.output:
            with open(args.output, "w", encoding="utf-8") as out:
                counts = export(read_samples(client, start, end), args.kind, out, args.max_pairs_per_prompt)
        else:
            counts = export(read_samples(client, start, end), args.kind, sys.stdout, args.max_pairs_per_prompt)
    finally:
        client.close()
    summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    print(f"exported {args.kind}: {summary}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
