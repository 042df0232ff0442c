"""``nextstate forget``: delete one person's data — by session, client key or ``user`` — everywhere it is kept
(``--scope``: a whole personal learning scope, see ``registry.forget_scope``).

Turns, transitions, feedback, per-turn and per-session state, Responses API contexts, fingerprint
chains and a client key's rate-limit bucket (the proxy's), samples, per-turn sample copies and queued label and hard-case jobs (the
labeler's). The request (what was asked for and the counts, never the content) is appended to the
registry's audit log. A learner trains only on samples still in the stream (``learner.data``), so a
round after this never sees them; adapter manifests keep sample ids (the lineage), never text.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from labeler.records import HARD_QUEUE, LABEL_QUEUE, SAMPLES_STREAM, sample_key
from proxy.ratelimit import bucket_key
from proxy.records import (
    FEEDBACK_STREAM,
    TRANSITIONS_STREAM,
    TURNS_STREAM,
    response_context_key,
    session_key,
    turn_key,
)
from proxy.redis_connect import connect, connect_queues, queue_settings_problem
from proxy.store import IDLE_SESSIONS_KEY, chain_key
from registry.records import EVENTS_STREAM, AuditEvent

_HEX16 = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class Who:
    """Whose data: exactly one of a session id, a client key's short hash, a body ``user``."""

    session: str | None = None
    key_hash: str | None = None
    user: str | None = None

    def matches(self, turn: dict[str, Any]) -> bool:
        if self.session is not None:
            return turn.get("session_id") == self.session
        if self.key_hash is not None:
            return turn.get("client_key_hash") == self.key_hash
        params = (turn.get("request") or {}).get("params") or {}
        return params.get("user") == self.user or turn.get("session_id") == f"user:{self.user}"

    def described(self) -> dict[str, str]:
        """What the audit log keeps of the request (a user name or session id is hashed, a key is a hash)."""
        if self.key_hash is not None:
            return {"by": "key", "key_hash": self.key_hash}
        value = self.session if self.session is not None else self.user
        return {"by": "session" if self.session is not None else "user",
                "sha256": hashlib.sha256(str(value).encode()).hexdigest()[:16]}


def key_hash_of(key: str) -> str:
    """A client key, ``sha256:<hex>`` or the 16-hex hash stored on records, as the stored hash."""
    if key.startswith("sha256:"):
        return key.removeprefix("sha256:").lower()[:16]
    if _HEX16.match(key):
        return key
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class Removed:
    """Counts of what was deleted, by kind."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, amount: int) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + amount


def _records(client: redis.Redis, stream: str, batch: int = 1000) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Every entry of a stream with its JSON record, oldest first, read in batches."""
    start = "-"
    while entries := client.xrange(stream, min=start, count=batch):
        for entry_id, fields in entries:
            raw = fields.get(b"record")
            try:
                record = json.loads(raw) if raw is not None else {}
            except ValueError:
                record = {}
            yield entry_id, record if isinstance(record, dict) else {}
        last = entries[-1][0].decode()
        ms, _, seq = last.partition("-")
        start = f"{ms}-{int(seq) + 1}"


def _xdel(client: redis.Redis, stream: str, ids: list[bytes]) -> int:
    deleted = 0
    for at in range(0, len(ids), 500):
        deleted += int(client.xdel(stream, *ids[at:at + 500]))
    return deleted


def _scan_values(client: redis.Redis, pattern: str, keep: Callable[[bytes], bool]) -> list[bytes]:
    """Keys matching ``pattern`` whose string value satisfies ``keep``."""
    found = []
    batch: list[bytes] = []

    def flush() -> None:
        for key, value in zip(batch, client.mget(batch), strict=True):
            if value is not None and keep(value):
                found.append(key)
        batch.clear()

    for key in client.scan_iter(match=pattern, count=1000, _type="string"):
        batch.append(key)
        if len(batch) >= 500:
            flush()
    if batch:
        flush()
    return found


def _jobs(client: redis.Redis, queue_name: str, wanted: Callable[[list[Any]], bool]) -> int:
    queue = Queue(queue_name, connection=client, serializer=JSONSerializer)
    removed = 0
    for job_id in queue.get_job_ids():
        try:
            job = Job.fetch(job_id, connection=client, serializer=JSONSerializer)
            args = list(job.args or [])
        except Exception:  # a job that cannot be read (gone meanwhile, damaged) is left to its queue
            continue
        if wanted(args):
            queue.remove(job_id)
            job.delete()
            removed += 1
    return removed


def _delete(client: redis.Redis, keys: list[str] | list[bytes]) -> int:
    return sum(int(client.delete(*keys[at:at + 500])) for at in range(0, len(keys), 500))


def forget_sessions(client: redis.Redis, sessions: set[str]) -> tuple[int, int]:
    """Delete the proxy's state of ``sessions``: their session keys and idle entries, then the fingerprint chains
    and Responses API contexts that name them. Returns (session keys deleted, chains and contexts deleted)."""
    if not sessions:
        return 0, 0
    deleted = _delete(client, [session_key(s) for s in sessions])
    client.zrem(IDLE_SESSIONS_KEY, *sessions)
    session_values = {s.encode() for s in sessions}

    def in_session(value: bytes) -> bool:
        if value in session_values:
            return True
        try:
            return json.loads(value).get("session_id") in sessions  # a Responses API context
        except (ValueError, AttributeError):
            return False

    linked = _scan_values(client, chain_key("*"), in_session)
    linked += _scan_values(client, response_context_key("*"), in_session)
    return deleted, _delete(client, linked)


def forget(client: redis.Redis, who: Who, *, actor: str = "operator", queues: redis.Redis | None = None) -> dict[str, int]:
    """Delete everything kept of ``who``; the counts of what was deleted, by kind."""
    removed = Removed()
    turn_ids: set[str] = set()
    sessions: set[str] = set()
    ids: list[bytes] = []
    for entry_id, turn in _records(client, TURNS_STREAM):
        if who.matches(turn):
            ids.append(entry_id)
            turn_ids.add(str(turn.get("turn_id")))
            sessions.add(str(turn.get("session_id")))
    if who.session is not None:
        sessions.add(who.session)
    removed.add("turns", _xdel(client, TURNS_STREAM, ids))

    def ours(record: dict[str, Any]) -> bool:
        return record.get("turn_id") in turn_ids or (who.key_hash is None and record.get("session_id") in sessions)

    transitions: set[str] = set()
    for stream, kind in ((TRANSITIONS_STREAM, "transitions"), (FEEDBACK_STREAM, "feedback"), (SAMPLES_STREAM, "samples")):
        ids = []
        for entry_id, record in _records(client, stream):
            if ours(record) or (stream == FEEDBACK_STREAM and who.key_hash and record.get("client_key_hash") == who.key_hash):
                ids.append(entry_id)
                if stream == TRANSITIONS_STREAM:
                    transitions.add(str(record.get("transition_id")))
                    turn_ids.add(str(record.get("turn_id")))
        removed.add(kind, _xdel(client, stream, ids))

    keys = [turn_key(t) for t in turn_ids] + [sample_key(t) for t in turn_ids]
    session_keys, linked = forget_sessions(client, sessions)
    removed.add("turn_and_session_keys", _delete(client, keys) + session_keys)
    removed.add("chains_and_contexts", linked)
    if who.key_hash is not None:  # the key's rate-limit bucket (it would expire on its own)
        removed.add("rate_limit_buckets", int(client.delete(bucket_key(who.key_hash))))
    queues = queues if queues is not None else client  # RQ's Redis (NEXTSTATE_QUEUE_URL), else the data's
    removed.add("hard_cases", _jobs(queues, HARD_QUEUE, lambda args: bool(args) and args[0] in turn_ids))
    removed.add("label_jobs", _jobs(queues, LABEL_QUEUE, lambda args: len(args) > 1 and args[1] in transitions))
    counts = dict(removed.counts)
    client.xadd(EVENTS_STREAM, {"event": AuditEvent(
        kind="data_forgotten", actor=actor, reason="forget request", evidence={**who.described(), "removed": counts},
    ).model_dump_json()})
    return counts


def main(argv: list[str] | None = None) -> int:
    from proxy.embedded_redis import resolve_redis_url
    from registry.settings import RegistrySettings

    parser = argparse.ArgumentParser(prog="nextstate forget", description=__doc__.splitlines()[0])
    whom = parser.add_mutually_exclusive_group(required=True)
    whom.add_argument("--session", help="a session id as x-nextstate-session-id and the turns show it (<name>@<scope> for one named in a personal scope)")
    whom.add_argument("--key", help="a client API key, sha256:<hex> of it, or the 16-hex hash on records")
    whom.add_argument("--user", help="the body 'user' field the client sent")
    whom.add_argument("--scope", help="a personal learning scope, with its versions and adapters (as `nextstate "
                      "registry scopes` lists it)")
    args = parser.parse_args(argv)
    if args.scope is not None:
        from registry.forget_scope import run

        return run(args.scope)
    who = Who(session=args.session, key_hash=key_hash_of(args.key) if args.key else None, user=args.user)
    settings = RegistrySettings()
    if problem := queue_settings_problem(settings.redis_url, settings.queue_url):
        print(f"nextstate forget: {problem}", file=sys.stderr)
        return 2
    url, embedded = resolve_redis_url(settings.redis_url, settings.home_dir())
    client = connect(url, socket_timeout=30)
    queues = connect_queues(url, settings.queue_url, socket_timeout=30)
    try:
        counts = forget(client, who, queues=queues)
    finally:
        client.close()
        queues.close()
        if embedded is not None:
            embedded.stop()
    print(json.dumps({"forgotten": who.described(), "removed": counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
