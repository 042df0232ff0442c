"""The registry's exceptions (none is retryable unless it says so).

    RegistryError                 the request itself is wrong
    ├── UnknownVersion (KeyError) no such version
    ├── NotLoadable               the version's directory cannot be served
    ├── IllegalTransition (ValueError)  the state machine refuses the change
    ├── CanaryRunning             a canary is running already (one at a time)
    └── PolicyServerError         a policy server refused or did not answer (retryable)
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base of the registry's errors."""


class UnknownVersion(RegistryError, KeyError):
    pass


class NotLoadable(RegistryError):
    """The version's directory lacks the files a policy server needs to load it."""


class IllegalTransition(RegistryError, ValueError):
    """A state change the state machine does not allow."""


class CanaryRunning(RegistryError):
    """A canary is running already; only one runs at a time."""


class PolicyServerError(RegistryError):
    """A policy server refused or did not answer a load/unload (retryable: try again later)."""
