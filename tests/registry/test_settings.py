"""Registry settings from the environment: lists as JSON or comma-separated."""

from __future__ import annotations

import pytest

from registry.settings import RegistrySettings


@pytest.mark.parametrize(("urls", "expected"), [
    ('["http://a:8000/v1", "http://b:8000"]', ["http://a:8000/v1", "http://b:8000"]),
    ("http://a:8000/v1, http://b:8000", ["http://a:8000/v1", "http://b:8000"]),
    ("", []),
])
def test_policy_urls_from_env(monkeypatch: pytest.MonkeyPatch, urls: str, expected: list[str]) -> None:
    monkeypatch.setenv("NEXTSTATE_POLICY_URLS", urls)
    monkeypatch.setenv("NEXTSTATE_CANARY_STEPS", "0.1,0.5")
    settings = RegistrySettings()
    assert settings.policy_urls == expected and settings.canary_steps == [0.1, 0.5]


def test_replicas_fall_back_to_the_upstream_url() -> None:
    assert RegistrySettings(upstream_url="http://u:8000/v1").replicas() == ["http://u:8000/v1"]
    assert RegistrySettings(policy_urls=["http://a"], upstream_url="http://u").replicas() == ["http://a"]
    assert RegistrySettings(base_model="builtin:tiny-chat").served_base() == "tiny-chat"
