"""``python -m learner <command>``: the learner's entry points, imported lazily per command."""

from __future__ import annotations

import sys

from proxy.dispatch import dispatch

# command -> module whose ``main(argv) -> int`` implements it
COMMANDS = {
    "serve": "learner.serve",  # embedded OpenAI-compatible policy server
    "build-model": "learner.buildmodel",  # build (tiny-chat) or convert (smollm2-135m) a built-in model
    "learn": "learner.learn",  # train candidates from labeled samples
    "gate": "learner.gate",  # run the sacred gate on a version
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("python -m learner", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
