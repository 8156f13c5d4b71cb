"""The code's shape, checked: no class in module_utils over 400 lines, no function over 80.

Long classes and functions in module_utils are where logic hides from tests; the limits are the ones
the core redesign (issue 11) set. Prints every offender with its size and exits 1 when there is one.

  python tools/shape.py plugins/module_utils
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_CLASS = 400
MAX_FUNCTION = 80


def sizes(path: Path) -> list[tuple[str, str, int, int]]:
    """(kind, qualified name, first line, number of lines) of every class and function in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                kind = "class" if isinstance(child, ast.ClassDef) else "function"
                name = f"{prefix}{child.name}"
                out.append((kind, name, child.lineno, child.end_lineno - child.lineno + 1))
                visit(child, name + ".")

    visit(tree, "")
    return out


def main(roots: list[str]) -> int:
    bad = []
    for root in roots:
        for path in sorted(Path(root).rglob("*.py")):
            for kind, name, line, length in sizes(path):
                limit = MAX_CLASS if kind == "class" else MAX_FUNCTION
                if length > limit:
                    bad.append(f"{path}:{line}: {kind} {name} has {length} lines (at most {limit})")
    print("\n".join(bad) or f"shape: every class <= {MAX_CLASS} lines, every function <= {MAX_FUNCTION} lines")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["plugins/module_utils"]))
