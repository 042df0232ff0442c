"""Publishing versions to the policy servers through vLLM's runtime LoRA API, on every replica.

Each version is loaded under its own served name (``<base>@vN``) with ``POST /v1/load_lora_adapter``
and never reloaded in place. A name no alias references any more is unloaded with
``POST /v1/unload_lora_adapter`` only after a drain delay, so requests routed to it before the routing
table changed can finish. (vLLM needs ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``; these endpoints must
never be reachable from the public network.)

Only adapters some learning scope's routing entry references are kept loaded: a personal scope's
superseded versions are unloaded like the global ones, so a server holds one or two adapters per
active scope.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx
import structlog

from registry.errors import PolicyServerError
from registry.records import RETIRED_KEY
from registry.routing import desired_table, referenced
from registry.store import Registry

log = structlog.get_logger(__name__)
__all__ = ["PolicyServerError", "Publisher", "api_root"]


def api_root(url: str) -> str:
    """``http://host:8000/v1`` and ``http://host:8000`` both name the server at ``http://host:8000``."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


@dataclass
class Publisher:
    """Loads and unloads adapters on ``urls`` (one per replica); a no-op when no replica is configured."""

    urls: list[str]
    drain_seconds: float = 30.0
    timeout: float = 120.0  # loading a large adapter on a busy GPU server can take a while
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=120.0))

    def close(self) -> None:
        self.client.close()

    def loaded(self, url: str) -> set[str]:
        """Adapter names loaded on one replica (``/v1/models`` entries that have a parent)."""
        try:
            response = self.client.get(f"{api_root(url)}/v1/models", timeout=self.timeout)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise PolicyServerError(f"cannot list models on {url}: {exc}") from exc
        return {m["id"] for m in response.json().get("data", []) if m.get("parent")}

    def ensure_loaded(self, name: str, path: str) -> None:
        """Load ``name`` from ``path`` on every replica that does not have it yet."""
        for url in self.urls:
            if name in self.loaded(url):
                continue
            self._post(url, "load_lora_adapter", {"lora_name": name, "lora_path": path}, ok_if="already")
            log.info("adapter_loaded", name=name, replica=url)

    def unload(self, name: str) -> None:
        for url in self.urls:
            if name not in self.loaded(url):
                continue
            self._post(url, "unload_lora_adapter", {"lora_name": name}, ok_if="not found")
            log.info("adapter_unloaded", name=name, replica=url)

    def _post(self, url: str, endpoint: str, body: dict[str, str], ok_if: str) -> None:
        try:
            response = self.client.post(f"{api_root(url)}/v1/{endpoint}", json=body, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise PolicyServerError(f"{endpoint} {body['lora_name']} on {url} failed: {exc}") from exc
        if response.status_code >= 400 and ok_if not in response.text.lower():
            raise PolicyServerError(
                f"{endpoint} {body['lora_name']} on {url}: {response.status_code} {response.text[:300]}"
            )

    def reconcile(self, registry: Registry, now: float | None = None) -> dict[str, list[str]]:
        """Load every referenced version; unload our versions unreferenced for ``drain_seconds``."""
        if not self.urls:
            return {"loaded": [], "unloaded": [], "draining": []}
        now = time.time() if now is None else now
        wanted = referenced(desired_table(registry))
        for name, key in wanted.items():
            scope, _, version = key.partition(":")
            self.ensure_loaded(name, registry.scoped(scope).get(version).path)
        ours = {info.served_name for scope in registry.scopes() for info in registry.scoped(scope).versions()}
        present = set().union(*(self.loaded(url) for url in self.urls)) & ours
        unloaded, draining = [], []
        for name in present - set(wanted):
            raw = registry.redis.hget(RETIRED_KEY, name)
            retired_at = float(raw) if raw else None
            if retired_at is None:
                registry.redis.hset(RETIRED_KEY, name, now)
                draining.append(name)
            elif now - retired_at >= self.drain_seconds:
                self.unload(name)
                registry.redis.hdel(RETIRED_KEY, name)
                unloaded.append(name)
            else:
                draining.append(name)
        for name in wanted:
            registry.redis.hdel(RETIRED_KEY, name)
        return {"loaded": sorted(wanted), "unloaded": sorted(unloaded), "draining": sorted(draining)}
