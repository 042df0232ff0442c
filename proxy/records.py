"""Records the proxy writes (turns, transitions, feedback) and the routing table it reads.

These are the contract between the proxy and everything downstream. They are versioned pydantic
models with stdlib + pydantic imports only, so any process can read them without pulling in the
proxy's web stack. Every record carries a ``record_id`` that makes writes idempotent: the writer
refuses a second copy of an id it has already stored (spool replay, retries).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 2  # 2: turns, samples and the routing table carry learning scopes

# Redis keys. Everything nextstate stores lives under the ``nextstate:`` prefix. On Redis Cluster the keys
# one script or transaction touches must share a slot, so every key the proxy's record writes touch
# carries the hash tag ``{rec}``: the three streams, the seen-markers, the turn copies, the session
# state, the idle set, the chain and response-context keys. (One script appends a turn, its session's
# previous transition and the new session state together; a stream is one key, so its slot is the one
# all of them share. docs/operations.md, "Redis Cluster".)
RECORDS_TAG = "{rec}"
TURNS_STREAM = "nextstate:{rec}:turns"
TRANSITIONS_STREAM = "nextstate:{rec}:transitions"
FEEDBACK_STREAM = "nextstate:{rec}:feedback"
ROUTING_KEY = "nextstate:routing"
# hash "<version>:ok" / "<version>:error" -> count of upstream calls per served version (canary health);
# "<version>:missing" counts the errors that were a 404 (the version's adapter is not loaded upstream)
UPSTREAM_OUTCOMES_KEY = "nextstate:upstream:outcomes"


def outcome_field(version_scope: str, version: str) -> str:
    """The ``UPSTREAM_OUTCOMES_KEY`` field prefix of a version: ``v3``, or ``<scope>.v3`` in a personal scope."""
    return version if version_scope == "global" else f"{version_scope}.{version}"


def turn_key(turn_id: str) -> str:
    """Key of the JSON copy of one turn record, so a consumer can load a turn by id."""
    return f"nextstate:{{rec}}:turn:{turn_id}"


def session_key(session_id: str) -> str:
    """Key of the per-session state hash (expires with the idle timeout)."""
    return f"nextstate:{{rec}}:session:{session_id}"


def response_context_key(response_id: str) -> str:
    """Key of what a Responses API request naming ``response_id`` as its previous response continues."""
    return f"nextstate:{{rec}}:response:{response_id}"


def record_seen_key(record_id: str) -> str:
    """Marker that a record id has been stored once already (idempotent writes)."""
    return f"nextstate:{{rec}}:seen:{record_id}"


TokenMethod = Literal["captured", "retokenized", "none"]
Arm = Literal["stable", "canary", "pinned", "base"]
TransitionReason = Literal["next_request", "session_done", "idle_timeout", "not_chosen"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    record_id: str
    created_at: float = Field(default_factory=time.time)


class TokenCapture(BaseModel):
    """Exact tokens of a turn as the policy server produced them, when it could give them."""

    model_config = ConfigDict(extra="allow")

    method: TokenMethod = "none"
    prompt_token_ids: list[int] | None = None
    response_token_ids: list[int] | None = None
    # log pi_old(a_t | s) for each response token, aligned with response_token_ids
    response_logprobs: list[float] | None = None


class TurnRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    # every sampling parameter the client sent (temperature, top_p, max_tokens, stop, seed, ...)
    params: dict[str, Any] = Field(default_factory=dict)


class TurnResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    # the assistant message as the client received it: role, content, tool_calls, reasoning_content
    message: dict[str, Any]
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None


class Serving(BaseModel):
    """Which policy produced the turn."""

    model_config = ConfigDict(extra="allow")

    upstream_model: str | None = None  # the name sent upstream, e.g. "tiny-chat@v3"
    version: str | None = None  # registry version ("v3") within ``scope``, None for the base model
    arm: Arm = "base"
    scope: str = "global"
    """The learning scope the turn belongs to (``proxy.scopes``); its version is that scope's (or, while
    the scope has no stable of its own, the global scope's: ``version_scope``)."""
    version_scope: str = "global"
    """The scope whose lineage ``version`` belongs to."""


class Timings(BaseModel):
    model_config = ConfigDict(extra="allow")

    total_ms: float = 0.0
    upstream_ms: float = 0.0
    ttft_ms: float | None = None
    overhead_ms: float = 0.0


class TurnRecord(_Record):
    """One served main turn: what was asked, what was answered, by which policy."""

    turn_id: str
    session_id: str
    turn_index: int
    stream: bool = False
    request: TurnRequest
    response: TurnResponse
    tokens: TokenCapture = Field(default_factory=TokenCapture)
    serving: Serving = Field(default_factory=Serving)
    timings: Timings = Field(default_factory=Timings)
    client_key_hash: str | None = None  # sha256 prefix of the client's API key, never the key
    scope: str = "global"
    """The learning scope this turn teaches (``proxy.scopes``); also in ``serving.scope``."""
    # a request with n > 1 answers with several choices: each is a turn of its own; all but the first
    # have the id ``<first turn id>-c<index>`` and name the first one here
    choice_index: int = 0
    choice_of: str | None = None
    api: Literal["chat", "responses"] = "chat"
    """The API it was served on; a Responses API turn is recorded in the chat shape (proxy.items)."""


class TransitionRecord(_Record):
    """A turn and its next state: the user/tool messages that followed it (empty if none).

    When a request had several choices, the one the conversation went on with gets the next state and
    the others a transition with reason ``not_chosen``.
    """

    transition_id: str
    turn_id: str
    session_id: str
    turn_index: int
    next_state: list[dict[str, Any]] = Field(default_factory=list)
    has_next_state: bool = True
    reason: TransitionReason = "next_request"
    next_turn_id: str | None = None


class FeedbackRecord(_Record):
    """Explicit feedback from ``POST /v1/feedback``; it overrides the judge for its turn."""

    feedback_id: str
    turn_id: str
    rating: Literal[1, -1]
    comment: str | None = None
    client_key_hash: str | None = None
    scope: str | None = None
    """The learning scope of the request that gave it (``proxy.scopes``): feedback counts only for a turn of the
    same scope, so no one rates another scope's turns into its lineage. None on records written before it."""


class ResponseContext(BaseModel):
    """What a Responses API request naming a recorded response as ``previous_response_id`` continues."""

    response_id: str
    session_id: str
    messages: list[dict[str, Any]]
    """The conversation through that response's reply, its request's ``instructions`` left out."""
    scope: str = "global"
    """The learning scope it was recorded in: only a request of the same scope continues it."""


class ScopeRoute(BaseModel):
    """The arms of one personal learning scope: versions of that scope's own lineage."""

    model_config = ConfigDict(extra="allow")

    stable: str | None = None
    """None: the scope has no stable of its own yet and is served the global stable."""
    canary: str | None = None
    canary_fraction: float = 0.0
    versions: dict[str, str] = Field(default_factory=dict)


class RoutingTable(BaseModel):
    """Which upstream model name serves each arm; written by the registry, read by every proxy.

    ``versions`` maps every pinnable version (``"v3"``) to the model name the policy server knows it
    by (``"tiny-chat@v3"``). With no stable version the base model serves everything. The top level
    is the global scope; ``scopes`` holds the personal scopes that have a lineage of their own.
    """

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    revision: int = 0
    base_model: str | None = None
    stable: str | None = None
    canary: str | None = None
    canary_fraction: float = 0.0
    versions: dict[str, str] = Field(default_factory=dict)
    scopes: dict[str, ScopeRoute] = Field(default_factory=dict)
    updated_at: float = Field(default_factory=time.time)

    def has_canary(self) -> bool:
        """Does any scope run a canary slice (so requests need a sticky routing key)?"""
        return bool(self.canary and self.canary_fraction > 0) or any(
            s.canary and s.canary_fraction > 0 for s in self.scopes.values())
