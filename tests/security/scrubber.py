"""A custom scrubber, named by dotted path in the redaction tests (as an operator's would be)."""

from __future__ import annotations

import re

NOT_CALLABLE = "a string"


def no_names(text: str) -> str:
    return re.sub(r"\bAlice\b", "[NAME]", text)
