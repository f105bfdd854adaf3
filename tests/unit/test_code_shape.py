"""The shape of the code: no function or method under src/ is longer than 80 lines (issue 20)."""

from __future__ import annotations

import ast
from pathlib import Path

MAX_LINES = 80
SRC = Path(__file__).resolve().parents[2] / "src"


def _long_functions(path: Path):
    """(qualified name, first line, length) of each function of ``path`` over ``MAX_LINES`` lines."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def walk(node, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    length = child.end_lineno - child.lineno + 1
                    if length > MAX_LINES:
                        yield name, child.lineno, length
                yield from walk(child, name + ".")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def test_src_is_found():
    assert len(list(SRC.rglob("*.py"))) > 10


def test_no_function_over_80_lines():
    long = [
        f"{path.relative_to(SRC.parent)}:{line} {name} ({length} lines)"
        for path in sorted(SRC.rglob("*.py"))
        for name, line, length in _long_functions(path)
    ]
    assert not long, f"functions over {MAX_LINES} lines (split them):\n" + "\n".join(long)
