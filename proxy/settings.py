"""Settings shared by every nextstate process, and the proxy's own.

One settings object per process, read once from the environment (``NEXTSTATE_`` prefix) in the
process's ``__main__`` and passed down; tests build it with keyword arguments.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from proxy.scopes import parse_sources, valid_scope


class CommonSettings(BaseSettings):
    """Fields every component reads. Subclass per process."""

    model_config = SettingsConfigDict(env_prefix="NEXTSTATE_", extra="ignore")

    home: Path = Field(default=Path("~/.nextstate"), description="Data directory (embedded Redis, spool, adapters, model cache).")
    redis_url: str | None = Field(default=None, description="Redis URL (redis://, rediss://, unix://, or redis+cluster://host:port[,host:port...] for Redis Cluster); unset = start an embedded Redis under home.")
    queue_url: str | None = Field(default=None, description="Single-node Redis URL of the labeler's RQ queues; unset = NEXTSTATE_REDIS_URL. Required with a Redis Cluster (RQ does not run on one).")
    log_level: str = Field(default="info", description="Log level.")
    log_json: bool | None = Field(default=None, description="JSON logs; unset = JSON when stderr is not a TTY.")
    retention_days: float = Field(default=0.0, ge=0, description="Turns, transitions, feedback and samples older than this are deleted (streams and the spool); 0 = kept.")

    def home_dir(self) -> Path:
        path = self.home.expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path


class ProxySettings(CommonSettings):
    """The recording proxy's settings (``nextstate proxy``)."""

    host: str = Field(default="127.0.0.1", description="Address the proxy listens on.")
    port: int = Field(default=8080, description="Port the proxy listens on.")
    workers: int = Field(default=1, description="Proxy processes sharing the port (each with its own spool slot).")
    upstream_url: str = Field(default="http://127.0.0.1:8000/v1", description="Base URL of the OpenAI-compatible policy server (…/v1).")
    upstream_api_key: str | None = Field(default=None, description="Key sent upstream; unset = pass the client's Authorization through.")
    upstream_model: str | None = Field(default=None, description="Base model name sent upstream when no routing table applies; unset = the client's model.")
    admin_token: str | None = Field(default=None, description="Bearer token for /admin and /dashboard; unset = those mounts answer 404.")
    api_keys: str = Field(default="", description="Client keys the API accepts (comma-separated; a key or sha256:<hex>, each with optional ;rpm=N;burst=N;record=on|off;scope=NAME); empty = no key needed.")
    api_key_rpm: float = Field(default=0.0, description="Requests per minute per client key when its entry sets no rpm (0 = unlimited).")
    connect_timeout_s: float = Field(default=5.0, description="Upstream connect timeout.")
    read_timeout_s: float = Field(default=300.0, description="Upstream read timeout (first byte and between stream chunks).")
    upstream_connections: int = Field(default=256, description="Upstream connection pool size.")
    pool_timeout_s: float = Field(default=10.0, description="Longest wait for a free upstream connection when all are busy (503 with Retry-After after it).")
    write_timeout_s: float = Field(default=30.0, description="Longest wait for the upstream to take a request's bytes (504 after it).")
    upstream_ca_bundle: str | None = Field(default=None, description="CA bundle (PEM file or directory) that verifies an https upstream; unset = the system's.")
    upstream_client_cert: str | None = Field(default=None, description="Client certificate (PEM, may hold the key too) presented to an https upstream.")
    upstream_client_key: str | None = Field(default=None, description="Private key of the client certificate, when not in the certificate file.")
    upstream_proxy: str | None = Field(default=None, description="HTTP proxy (http://[user:pass@]host:port) to reach the upstream through; unset = HTTPS_PROXY/HTTP_PROXY/ALL_PROXY and NO_PROXY from the environment; empty = none. The environment's proxy is never used for a loopback upstream.")
    cors_origins: str = Field(default="", description="Comma-separated origins that may call the proxy from a browser ('*' for any); empty = no CORS headers.")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, description="Largest request body accepted, as sent and once decoded (413 above).")
    max_json_depth: int = Field(default=64, description="Deepest nesting of arrays and objects in a JSON request body (400 above).")
    max_messages: int = Field(default=4096, description="Most messages (chat) or input items (Responses) in one request (400 above).")
    max_message_chars: int = Field(default=4_000_000, description="Longest text of one message, its text parts together (400 above).")
    max_tools: int = Field(default=512, description="Most tools one request may offer (400 above).")
    max_header_bytes: int = Field(default=64 * 1024, description="Largest total size of a request's headers, names and values (431 above).")
    max_response_bytes: int = Field(default=256 * 1024 * 1024, description="Largest upstream answer relayed or read, once decoded (a stream is cut off there with an error event; 502 for a whole answer).")
    passthrough_extra_paths: str = Field(default="", description="Comma-separated paths under /v1 beyond the OpenAI API's resources that are passed through to the upstream (a provider's own, e.g. 'rerank,score').")
    capture_tokens: bool = Field(default=True, description="Ask the upstream for logprobs and token ids (vLLM) to store on each turn.")
    record: bool = Field(default=True, description="Record turns at all (requests may still opt out with X-NextState-Record: off).")
    redact: str = Field(default="secrets", description="What is redacted from records before storage: comma-separated kinds of secrets, email, phone, card, token; 'none' = nothing.")
    redact_hook: str | None = Field(default=None, description="A custom scrubber applied after the patterns: dotted path of a str -> str function (package.module:function).")
    session_idle_timeout_s: float = Field(default=1800.0, description="A session with no request for this long is closed.")
    session_ttl_s: int = Field(default=7 * 24 * 3600, description="TTL of per-session state in Redis.")
    turn_ttl_s: int = Field(default=7 * 24 * 3600, description="TTL of the JSON copy of each turn and of record-id markers.")
    sweep_interval_s: float = Field(default=5.0, description="How often idle sessions are looked for.")
    routing_refresh_s: float = Field(default=1.0, description="How often the routing table is reloaded from Redis.")
    redis_timeout_s: float = Field(default=1.0, description="Timeout of every Redis call the proxy makes.")
    record_gather_ms: float = Field(default=2.0, description="Records are written this long after the first of a batch arrives (the client's answer goes first; one Redis round trip serves what arrives meanwhile).")
    replay_interval_s: float = Field(default=1.0, description="How often replaying the spool is retried while Redis is down.")
    spool_dir: Path | None = Field(default=None, description="Spool directory; unset = <home>/spool.")
    scope_by: str = Field(default="", description="Where a request's personal learning scope comes from, tried in order: 'header' (X-NextState-Scope), 'key' (the API key, hashed), 'user' (the body's user, hashed); empty = every request learns in the global scope.")
    scope_unkeyed: str = Field(default="global", description="Scope of a request none of scope_by names: 'global' (the shared lineage) or a personal scope name (e.g. 'local': the one person on this machine, the default of nextstate up).")

    @field_validator("scope_by")
    @classmethod
    def _known_sources(cls, value: str) -> str:
        parse_sources(value)
        return value

    @field_validator("scope_unkeyed")
    @classmethod
    def _scope_name(cls, value: str) -> str:
        if not valid_scope(value):
            raise ValueError(f"{value!r} is not a scope name ([a-z0-9-], at most 48 characters)")
        return value

    def spool_path(self) -> Path:
        path = (self.spool_dir or self.home_dir() / "spool").expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
