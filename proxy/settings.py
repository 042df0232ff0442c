"""Settings shared by every nextstate process, and the proxy's own.

One settings object per process, read once from the environment (``NEXTSTATE_`` prefix) in the
process's ``__main__`` and passed down; tests build it with keyword arguments.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
