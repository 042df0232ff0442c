"""Publishing versions to the policy servers through vLLM's runtime LoRA API, on every replica.

Each version is loaded under its own served name (``<base>@vN``) with ``POST /v1/load_lora_adapter``
and never reloaded in place. A name no alias references any more is unloaded with
``POST /v1/unload_lora_adapter`` only after a drain delay, so requests routed to it before the routing
table changed can finish. (vLLM needs ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``; these endpoints must
never be reachable from the public network.) vLLM answers an unload of a name it does not hold with
404 "cannot be found": that unload is done. A replica that lost its adapters (a restart) answers
requests for ``<base>@vN`` with 404; the proxy counts those as ``vN:missing`` (and as errors), and
``reload_missing`` loads such a version again as soon as it sees the count grow.

Only adapters some learning scope's routing entry references are kept loaded: a personal scope's
superseded versions are unloaded like the global ones, so a server holds one or two adapters per
active scope.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx
import structlog

from proxy.records import outcome_field
from registry.errors import PolicyServerError
from registry.names import check_served_name
from registry.records import RETIRED_KEY, UPSTREAM_OUTCOMES_KEY
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
    missing_seen: dict[str, int] = field(default_factory=dict)
    """The proxy's ``vN:missing`` counts (``<scope>.vN:missing`` in a personal scope) already acted on."""

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
        check_served_name(name)
        for url in self.urls:
            if name in self.loaded(url):
                continue
            self._post(url, "load_lora_adapter", {"lora_name": name, "lora_path": path}, ok_if="already")
            log.info("adapter_loaded", name=name, replica=url)

    def unload(self, name: str) -> None:
        for url in self.urls:
            if name not in self.loaded(url):
                continue
            # gone already (vLLM: 404 "cannot be found"; the embedded server: "not found"): done
            self._post(url, "unload_lora_adapter", {"lora_name": name}, ok_if="not found", ok_status=404)
            log.info("adapter_unloaded", name=name, replica=url)

    def reload_missing(self, registry: Registry) -> list[str]:
        """Load again, at once, every served version the proxy found missing upstream since the last call."""
        counts = {}
        for key, value in registry.redis.hgetall(UPSTREAM_OUTCOMES_KEY).items():
            field_name = key.decode() if isinstance(key, bytes) else str(key)
            if field_name.endswith(":missing"):
                counts[field_name.removesuffix(":missing")] = int(value)
        grown = [version for version, count in counts.items() if count > self.missing_seen.get(version, 0)]
        self.missing_seen.update(counts)
        if not grown or not self.urls:
            return []
        reloaded = []
        for name, key in referenced(desired_table(registry)).items():
            scope, _, version = key.partition(":")
            if outcome_field(scope, version) in grown:
                self.ensure_loaded(name, self._path(registry, scope, version))
                reloaded.append(name)
                log.warning("adapter_missing_reloaded", scope=scope, version=version, name=name)
        return reloaded

    @staticmethod
    def _path(registry: Registry, scope: str, version: str) -> str:
        """Where a referenced version's adapter is, checked to lie inside its scope's store."""
        scoped = registry.scoped(scope)
        return str(scoped.path_of(scoped.get(version)))

    def _post(self, url: str, endpoint: str, body: dict[str, str], ok_if: str, ok_status: int | None = None) -> None:
        try:
            response = self.client.post(f"{api_root(url)}/v1/{endpoint}", json=body, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise PolicyServerError(f"{endpoint} {body['lora_name']} on {url} failed: {exc}") from exc
        if ok_status is not None and response.status_code == ok_status:
            return
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
            self.ensure_loaded(name, self._path(registry, scope, version))
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
