"""``python -m labeler <command>``: the labeler's entry points, imported lazily per command."""

from __future__ import annotations

import sys

from proxy.dispatch import dispatch

# command -> module whose ``main(argv) -> int`` implements it
COMMANDS = {
    "worker": "labeler.worker",  # RQ workers + the transition dispatcher
    "label": "labeler.hardcases",  # `label hard-cases --model ...`: strong judge, offline batch
    "export": "labeler.export",  # labeled data as JSONL for other trainers
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("python -m labeler", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
