"""Imports point one way: proxy <- labeler <- registry <- learner; only the learner imports torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["proxy", "labeler", "registry", "learner"]
HEAVY = {"torch", "transformers", "peft", "accelerate"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", ORDER)
def test_imports_point_upstream(package: str) -> None:
    allowed = set(ORDER[: ORDER.index(package) + 1])
    forbidden = (set(ORDER) | {"nextstate"}) - allowed
    for path in (ROOT / package).rglob("*.py"):
        bad = _imports(path) & forbidden
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
        if package != "learner":
            heavy = _imports(path) & HEAVY
            assert not heavy, f"{path.relative_to(ROOT)} imports {sorted(heavy)}"


@pytest.mark.parametrize("package", [*ORDER, "nextstate"])
def test_init_files_are_empty(package: str) -> None:
    for init in (ROOT / package).rglob("__init__.py"):
        assert init.read_text().strip() == "", f"{init.relative_to(ROOT)} must stay empty"


# the learner writes the registry's records (manifests), so it has no records module of its own
@pytest.mark.parametrize("package", [p for p in ORDER if (ROOT / p / "records.py").exists()])
def test_records_import_only_stdlib_and_pydantic(package: str) -> None:
    records = ROOT / package / "records.py"
    allowed = {"__future__", "time", "typing", "pydantic", "enum", "uuid", "hashlib", "datetime", *ORDER[: ORDER.index(package) + 1]}
    assert _imports(records) <= allowed, f"{records.name} imports {_imports(records) - allowed}"
