"""``python -m proxy``: run the recording proxy (implemented in proxy.server)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from proxy.server import main as serve

    return int(serve(list(sys.argv[1:] if argv is None else argv)) or 0)


if __name__ == "__main__":
    sys.exit(main())
