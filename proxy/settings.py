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
    redis_url: str | None = Field(default=None, description="Redis URL; unset = start an embedded Redis under home.")
    log_level: str = Field(default="info", description="Log level.")
    log_json: bool | None = Field(default=None, description="JSON logs; unset = JSON when stderr is not a TTY.")

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
    connect_timeout_s: float = Field(default=5.0, description="Upstream connect timeout.")
    read_timeout_s: float = Field(default=300.0, description="Upstream read timeout (first byte and between stream chunks).")
    upstream_connections: int = Field(default=256, description="Upstream connection pool size.")
    cors_origins: str = Field(default="", description="Comma-separated origins that may call the proxy from a browser ('*' for any); empty = no CORS headers.")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, description="Largest request body accepted (413 above).")
    capture_tokens: bool = Field(default=True, description="Ask the upstream for logprobs and token ids (vLLM) to store on each turn.")
    record: bool = Field(default=True, description="Record turns at all (requests may still opt out with X-NextState-Record: off).")
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
