"""``python -m registry <command>``: the registry's entry points, imported lazily per command."""

from __future__ import annotations

import sys

from proxy.dispatch import dispatch

# command -> module whose ``main(argv) -> int`` implements it
COMMANDS = {
    "registry": "registry.cli",  # ls | show | promote | rollback | reject | pin | history | export | import
    "controller": "registry.controller",  # the canary controller loop
    "exporter": "registry.exporter",  # Prometheus metrics read from Redis (streams, queues, canary)
    "forget": "registry.forget",  # delete one person's data: --session | --key | --user
    "migrate-keys": "registry.migrate_keys",  # rename keys written before they carried cluster hash tags
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("python -m registry", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
