"""Records of the control plane: version manifests, states, gate verdicts and audit events.

Stdlib + pydantic imports only. The manifest is written as ``manifest.json`` next to the PEFT files
of each immutable version directory; audit events go to an append-only Redis stream. The gate runs
after the directory is sealed, so its verdict is kept in the version's Redis metadata
(``VersionInfo.gate``) and the audit log, and ``Registry.manifest()`` returns it in ``Manifest.gate``.
"""

from __future__ import annotations

import time
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from proxy.records import UPSTREAM_OUTCOMES_KEY as UPSTREAM_OUTCOMES_KEY  # written by the proxy

SCHEMA_VERSION = 2  # 2: versions, manifests and events name their learning scope

# Every registry key carries the samples' hash tag ``{learn}`` (labeler.records): a registry action writes
# states, aliases, canary and audit events in one transaction, and the learner's publish adds the ack of
# the samples it trained on to it, so on Redis Cluster all of them must be in one slot.
EVENTS_STREAM = "nextstate:{learn}:registry:events"
VERSIONS_KEY = "nextstate:{learn}:registry:versions"  # hash: version -> VersionInfo JSON
ALIASES_KEY = "nextstate:{learn}:registry:aliases"  # hash: alias -> version
COUNTER_KEY = "nextstate:{learn}:registry:counter"  # INCR gives the next version number
CANARY_KEY = "nextstate:{learn}:registry:canary"  # JSON CanaryState of the running canary (absent = none)
FROZEN_KEY = "nextstate:{learn}:registry:frozen"  # set by `registry pin`: the controller takes no automatic action
STABLE_HISTORY_KEY = "nextstate:{learn}:registry:stable-history"  # list of versions that were stable, newest last
RETIRED_KEY = "nextstate:{learn}:registry:retired"  # hash: served name -> time it stopped being referenced
LOCK_KEY = "nextstate:{learn}:registry:lock"  # one registry action at a time, across processes
SCOPES_KEY = "nextstate:{learn}:registry:scopes"  # set of the personal learning scopes that have a lineage
GLOBAL_SCOPE = "global"


class ScopeKeys(NamedTuple):
    """The Redis keys of one learning scope's lineage (the global scope keeps the unscoped names)."""

    versions: str
    aliases: str
    counter: str
    canary: str
    frozen: str
    stable_history: str
    lock: str
    events: str


def scope_keys(scope: str) -> ScopeKeys:
    """Keys of ``scope``'s lineage; every scope's keys share the hash tag ``{learn}`` (one Cluster slot)."""
    if scope == GLOBAL_SCOPE:
        return ScopeKeys(VERSIONS_KEY, ALIASES_KEY, COUNTER_KEY, CANARY_KEY, FROZEN_KEY, STABLE_HISTORY_KEY,
                         LOCK_KEY, EVENTS_STREAM)
    prefix = f"nextstate:{{learn}}:registry:scope:{scope}"
    return ScopeKeys(*(f"{prefix}:{name}" for name in (
        "versions", "aliases", "counter", "canary", "frozen", "stable-history", "lock", "events")))

# Upstream outcome counters per served version, maintained by the proxy: hash fields
# "<version>:ok" / "<version>:error" (HINCRBY). The controller reads them for the error-rate bound;
# "<version>:missing" (also counted in error: a 404, the adapter not loaded) makes the publisher reload it.

VersionState = Literal[
    "candidate", "gated_pass", "gated_fail", "canary", "promoted", "rolled_back", "rejected"
]
Alias = Literal["stable", "canary", "previous"]


def stream_id(entry_id: str) -> tuple[int, int]:
    """A Redis stream entry id (``"<ms>-<seq>"``) as a pair that orders ids as the stream does."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def learner_state_key(consumer: str) -> str:
    """Key of what one continuous learner (a consumer of the samples stream) is doing: a LearnerState."""
    return f"nextstate:learner:{{{consumer}}}"


class GateVerdict(BaseModel):
    model_config = ConfigDict(extra="allow")

    passed: bool
    reasons: list[str] = Field(default_factory=list)
    # per-check numbers: sacred suite per case, replay deltas, drift KL
    metrics: dict[str, Any] = Field(default_factory=dict)
    compared_to: str | None = None  # stable version at gate time (None = base model)
    created_at: float = Field(default_factory=time.time)


class Manifest(BaseModel):
    """Everything needed to reproduce and judge one adapter version."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    version: str  # "v3"
    parent: str | None = None  # version trained from; None = base model (or, in a personal scope, ``started_from``)
    scope: str = GLOBAL_SCOPE  # the learning scope whose lineage it belongs to
    started_from: str | None = None  # a personal lineage's first version: the global version it was trained from
    base_model: str  # model id or path of the base
    base_revision: str | None = None
    method: str  # rl | opd | combined
    config: dict[str, Any] = Field(default_factory=dict)
    sample_ids: list[str] = Field(default_factory=list)
    stream_offsets: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    gate: GateVerdict | None = None  # None in the file; filled from VersionInfo.gate when read through the registry
    created_at: float = Field(default_factory=time.time)


class VersionInfo(BaseModel):
    """Mutable metadata of a version kept in Redis (the directory itself never changes)."""

    model_config = ConfigDict(extra="allow")

    version: str
    state: VersionState = "candidate"
    path: str
    served_name: str  # "<base>@vN" ("<base>@<scope>-vN" in a personal scope): the name the policy server loads it under
    parent: str | None = None
    scope: str = GLOBAL_SCOPE
    started_from: str | None = None  # see Manifest.started_from
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    # the sacred gate's verdict (the directory is immutable, so the verdict lives here and in the log)
    gate: GateVerdict | None = None
    imported_from: str | None = None  # "<origin>:<version>" when the version came in through import


class CanaryState(BaseModel):
    """The canary in progress: which version, the current traffic fraction and step of the schedule."""

    model_config = ConfigDict(extra="allow")

    version: str
    fraction: float
    step: int = 0
    started_at: float = Field(default_factory=time.time)
    step_started_at: float = Field(default_factory=time.time)
    stable_at_start: str | None = None  # the version it is compared against (None = base model)
    inherited: list[int] = Field(default_factory=list)
    """A personal canary's inherited evidence: the labeled turns (+1/-1, oldest first) of the canaries it replaced
    since stable, each trained into it (``registry.personal_canary``)."""


class AuditEvent(BaseModel):
    """One entry of the append-only decision log."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    kind: str  # candidate_created, gate_verdict, canary_started, promoted, rolled_back, rejected, ...
    version: str | None = None
    scope: str = GLOBAL_SCOPE
    actor: str  # learner, gate, controller, operator, batch
    reason: str = ""
    evidence: dict[str, Any] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)


class LearnerState(BaseModel):
    """What a continuous learner is doing, written on every poll: for operators, and for whatever paces
    itself on the loop (PrefBench, the demo) without guessing from the stream's consumer counters."""

    consumer: str
    state: Literal["waiting", "training"]
    held: int = 0
    """Trainable samples delivered to it, waiting for a full batch."""
    seen: str = "0-0"
    """Id of the newest samples-stream entry it has read and classified."""
    at: float = Field(default_factory=time.time)

    def behind(self, delivered: str) -> bool:
        """True while samples delivered to its group (up to id ``delivered``) are not all read and classified."""
        return stream_id(self.seen) < stream_id(delivered)
