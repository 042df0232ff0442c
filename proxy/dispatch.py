"""Lazy sub-command dispatch shared by every package's ``__main__``."""

from __future__ import annotations

import importlib
import sys


def dispatch(prog: str, commands: dict[str, str], argv: list[str] | None = None) -> int:
    """Run ``commands[argv[0]].main(argv[1:])``, importing that module only now."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in commands:
        print(f"usage: {prog} {{{'|'.join(commands)}}} [options]", file=sys.stderr)
        return 2
    return int(importlib.import_module(commands[args[0]]).main(args[1:]) or 0)
