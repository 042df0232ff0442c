"""The ``nextstate`` command: the composition root.

Each subcommand names the module that implements it; the module is imported only when that
subcommand runs, so ``nextstate proxy`` never imports torch. Every entry point is a
``main(argv: list[str]) -> int``. Nothing imports this module.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, argv prefix passed to its main, one-line help)
COMMANDS: dict[str, tuple[str, list[str], str]] = {
    "proxy": ("nextstate.proxy", [], "run the recording proxy (with /admin and /dashboard)"),
    "serve": ("learner.__main__", ["serve"], "run the embedded CPU/GPU policy server"),
    "build-model": ("learner.__main__", ["build-model"], "build or convert a built-in model (--model tiny-chat|smollm2-135m)"),
    "worker": ("labeler.__main__", ["worker"], "run labeler RQ workers"),
    "label": ("labeler.__main__", ["label"], "labeling batch jobs (e.g. `label hard-cases`)"),
    "export": ("labeler.__main__", ["export"], "export labeled data as JSONL"),
    "learn": ("learner.__main__", ["learn"], "train LoRA candidates from labeled samples"),
    "gate": ("learner.__main__", ["gate"], "run the sacred gate on a version"),
    "registry": ("registry.__main__", ["registry"], "inspect and change adapter versions"),
    "controller": ("registry.__main__", ["controller"], "run the canary controller"),
    "exporter": ("registry.__main__", ["exporter"], "serve Prometheus metrics on streams, queues and the canary"),
    "forget": ("registry.__main__", ["forget"], "delete one person's data (--session, --key or --user) or a learning scope (--scope)"),
    "migrate-keys": ("registry.__main__", ["migrate-keys"], "rename keys written by a version before cluster hash tags (once, on upgrade)"),
    "up": ("nextstate.up", [], "start the whole local stack"),
    "demo": ("nextstate.demo", [], "start the stack and show the model learning"),
}


def _usage() -> str:
    lines = ["usage: nextstate <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"nextstate: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, prefix, _ = COMMANDS[name]
    module = importlib.import_module(module_name)
    return int(module.main(prefix + rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
