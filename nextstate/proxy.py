"""``nextstate proxy``: the recording proxy with the registry's admin routes and the dashboard mounted.

The proxy package cannot import the registry (imports point one way), so this composition root
builds the admin app and the dashboard and hands them to the proxy's app factory. Both are served
behind ``NEXTSTATE_ADMIN_TOKEN`` and are absent (404) when no token is set.
"""

from __future__ import annotations

from starlette.types import ASGIApp

from proxy.server import app_from_env as _proxy_app_from_env
from proxy.server import main as _proxy_main
from proxy.settings import ProxySettings


def mounts(settings: ProxySettings) -> list[tuple[str, ASGIApp]]:
    if not settings.admin_token:
        return []
    from registry.admin import create_admin_app
    from registry.dashboard import dashboard_for
    from registry.settings import RegistrySettings

    # the proxy's own guard checks the token in front of both mounts
    return [("/admin", create_admin_app(RegistrySettings())), ("/dashboard", dashboard_for(settings))]


def app_from_env() -> ASGIApp:
    """Per-worker factory (``nextstate proxy --workers N``)."""
    return _proxy_app_from_env(mounts)


def main(argv: list[str]) -> int:
    return _proxy_main(argv, mounts=mounts, factory="nextstate.proxy:app_from_env")
