"""What the app's lifespan owns and every handler reads from ``request.state.proxy``."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from proxy.metrics import Metrics
from proxy.recorder import Recorder
from proxy.routing import RoutingRefresher
from proxy.settings import ProxySettings
from proxy.store import Store
from proxy.upstream import Upstream


@dataclass
class ProxyState:
    settings: ProxySettings
    upstream: Upstream
    redis: aioredis.Redis
    store: Store
    recorder: Recorder
    routing: RoutingRefresher
    metrics: Metrics
    capture_supported: bool | None = None
    """None until the upstream has answered a capture request; False once it refused one."""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    failed_tasks: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    """Upstream outcomes per served version (``"v3:ok"``, ``"v3:error"``) not yet added to Redis."""
