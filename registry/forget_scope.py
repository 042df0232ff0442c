"""``nextstate forget --scope NAME`` (through ``registry.forget``): remove a personal learning scope — its versions, samples and records.

What goes: the scope's version directories and its registry keys (versions, aliases, canary, audit
trail), its adapters on the policy servers, every turn recorded in the scope (stream entries and the
JSON copies), the transitions and feedback of those turns, every sample labeled in the scope (stream
entries and current copies), and the proxy's state of the scope's conversations (session keys,
fingerprint chains, Responses API contexts). The routing table is rewritten first, so no request is routed to an
adapter that is being removed. The global scope cannot be forgotten this way (it holds everyone's
shared lineage). Prints what it removed.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import redis
from pydantic import ValidationError

from labeler.records import SAMPLES_STREAM, SampleRecord, sample_key
from proxy.logs import configure_logging
from proxy.records import FEEDBACK_STREAM, TRANSITIONS_STREAM, TURNS_STREAM, TurnRecord, turn_key
from proxy.scopes import valid_scope
from registry.actions import Control
from registry.errors import PolicyServerError, RegistryError
from registry.forget import forget_sessions
from registry.records import GLOBAL_SCOPE, RETIRED_KEY, SCOPES_KEY, AuditEvent
from registry.settings import RegistrySettings
from registry.wiring import open_control


@dataclass
class Forgotten:
    """What ``forget_scope`` removed, by kind."""

    scope: str
    versions: list[str] = field(default_factory=list)
    adapters_unloaded: list[str] = field(default_factory=list)
    turns: int = 0
    transitions: int = 0
    feedback: int = 0
    samples: int = 0
    registry_keys: int = 0
    conversation_keys: int = 0

    def lines(self) -> list[str]:
        return [
            f"forgot scope {self.scope}:",
            f"  versions          {len(self.versions)} ({', '.join(self.versions) or 'none'})",
            f"  adapters unloaded {len(self.adapters_unloaded)}",
            f"  turns             {self.turns}",
            f"  transitions       {self.transitions}",
            f"  feedback          {self.feedback}",
            f"  samples           {self.samples} (stream entries, every revision)",
            f"  registry keys     {self.registry_keys} (aliases, canary, counter, audit trail, ...)",
            f"  conversation keys {self.conversation_keys} (sessions, fingerprint chains, Responses API contexts)",
        ]


def _delete_entries(client: redis.Redis, stream: str, match: Callable[[bytes], bool], batch: int = 1000) -> int:
    """XDEL every entry of ``stream`` whose ``record`` field ``match`` accepts; returns how many."""
    removed, cursor = 0, "-"
    while True:
        entries: Any = client.xrange(stream, min=cursor, count=batch)
        if not entries:
            return removed
        doomed = [entry_id for entry_id, fields in entries if match(fields.get(b"record") or b"")]
        if doomed:
            removed += int(client.xdel(stream, *doomed))
        cursor = "(" + (entries[-1][0].decode() if isinstance(entries[-1][0], bytes) else entries[-1][0])


def forget_scope(control: Control, scope: str) -> Forgotten:
    """Remove everything ``scope`` owns (see the module docstring); raise RegistryError for a bad scope."""
    if scope == GLOBAL_SCOPE or not valid_scope(scope):
        raise RegistryError(f"{scope!r} is not a personal scope (the global scope cannot be forgotten)")
    shared = control.registry.scoped(GLOBAL_SCOPE)
    registry = shared.scoped(scope)
    client = shared.redis
    done = Forgotten(scope)
    infos = registry.versions()
    done.versions = [info.version for info in infos]
    with registry.lock():
        client.srem(SCOPES_KEY, scope)  # leaves the routing table at the next sync
        keys = [k for k in registry.keys if k != registry.keys.lock and client.exists(k)]
        done.registry_keys = int(client.delete(*keys)) if keys else 0
    control.scoped(GLOBAL_SCOPE).sync()  # no proxy routes to the scope's adapters any more
    for info in infos:
        try:
            control.publisher.unload(info.served_name)
            done.adapters_unloaded.append(info.served_name)
        except PolicyServerError:
            pass  # a replica that is down loads nothing of this scope when it comes back: nothing names it
        client.hdel(RETIRED_KEY, info.served_name)
    shutil.rmtree(registry.root, ignore_errors=True)

    turn_ids: set[str] = set()
    sessions: set[str] = set()

    def in_scope(model: type[TurnRecord] | type[SampleRecord]) -> Callable[[bytes], bool]:
        """A stream filter: the record is of ``scope`` (its turn and session ids are kept, to find what names them)."""
        def check(raw: bytes) -> bool:
            try:
                record = model.model_validate_json(raw)
            except ValidationError:
                return False
            if record.scope == scope:
                turn_ids.add(record.turn_id)
                sessions.add(record.session_id)
                return True
            return False
        return check

    turn_in_scope, sample_in_scope = in_scope(TurnRecord), in_scope(SampleRecord)

    def names_turn(raw: bytes) -> bool:
        return _turn_of(raw) in turn_ids

    done.turns = _delete_entries(client, TURNS_STREAM, turn_in_scope)
    done.samples = _delete_entries(client, SAMPLES_STREAM, sample_in_scope)
    done.transitions = _delete_entries(client, TRANSITIONS_STREAM, names_turn)
    done.feedback = _delete_entries(client, FEEDBACK_STREAM, names_turn)
    for turn_id in turn_ids:
        client.delete(turn_key(turn_id), sample_key(turn_id))
    session_keys, linked = forget_sessions(client, sessions)
    done.conversation_keys = session_keys + linked
    return done


def _turn_of(raw: bytes) -> str | None:
    """The ``turn_id`` a transition or feedback record is about."""
    try:
        value = json.loads(raw).get("turn_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def run(scope: str, settings: RegistrySettings | None = None) -> int:
    """Forget ``scope``, print what went, and log the request (never the content) in the global audit trail."""
    settings = settings or RegistrySettings()
    configure_logging(settings.log_level, settings.log_json)
    with ExitStack() as stack:
        control = open_control(settings, stack)
        try:
            done = forget_scope(control, scope)
        except RegistryError as exc:
            print(f"nextstate forget: {exc}", file=sys.stderr)
            return 1
        control.registry.scoped(GLOBAL_SCOPE).log(AuditEvent(
            kind="data_forgotten", actor="operator", reason="forget request",
            evidence={"by": "scope", "scope": scope, "versions": done.versions, "turns": done.turns,
                      "samples": done.samples},
        ))
    print("\n".join(done.lines()))
    return 0
