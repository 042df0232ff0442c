"""Builds the registry's objects from its settings (Redis client, store, publisher, actions)."""

from __future__ import annotations

from contextlib import ExitStack

from proxy.embedded_redis import resolve_redis_url
from proxy.redis_connect import connect
from registry.actions import Control
from registry.canary import CanaryPolicy
from registry.personal_canary import PersonalPolicy
from registry.publisher import Publisher
from registry.settings import RegistrySettings
from registry.store import Registry


def canary_policy(settings: RegistrySettings) -> CanaryPolicy:
    return CanaryPolicy(
        steps=tuple(settings.canary_steps), step_samples=settings.canary_step_samples,
        step_seconds=settings.canary_step_seconds, min_samples=settings.canary_min_samples,
        margin=settings.canary_margin, alpha=settings.canary_alpha,
        deadline_seconds=settings.canary_deadline_seconds, max_error_rate=settings.canary_max_error_rate,
        max_p99_ms=settings.canary_max_p99_ms, health_min_requests=settings.canary_health_min_requests,
    )


def personal_policy(settings: RegistrySettings) -> PersonalPolicy:
    return PersonalPolicy(
        margin=settings.personal_canary_margin, confidence=settings.personal_canary_confidence,
        min_labeled=settings.personal_canary_min_labeled, rollback_run=settings.personal_canary_rollback_run,
        max_labeled=settings.personal_canary_max_labeled, deadline_seconds=settings.canary_deadline_seconds,
        max_error_rate=settings.canary_max_error_rate, health_min_requests=settings.canary_health_min_requests,
        fraction=settings.personal_canary_fraction, inherit_weight=settings.personal_canary_inherit_weight,
        stable_min=settings.personal_canary_stable_min, share_fraction=settings.personal_canary_share_fraction,
    )


def open_control(settings: RegistrySettings, stack: ExitStack) -> Control:
    """A ``Control`` whose Redis client and HTTP client are closed when ``stack`` closes."""
    url, server = resolve_redis_url(settings.redis_url, settings.home_dir())
    if server is not None:
        stack.callback(server.stop)
    client = connect(url, socket_timeout=10, socket_connect_timeout=10)
    stack.callback(client.close)
    registry = Registry(client, settings.adapters_path(), base_model=settings.served_base())
    publisher = Publisher(urls=settings.replicas(), drain_seconds=settings.drain_seconds,
                          timeout=settings.publish_timeout)
    stack.callback(publisher.close)
    return Control(registry, publisher)
