"""Longest classes and functions per package, and `Any` annotations outside bench/ (issue 21's limits).

    python scripts/code_size.py [PACKAGE_DIR ...]   # default: pmllm_batch/scorer pmllm_batch/daemon

Prints every class over 250 lines and every function over 60 lines (exit 1 if any), then the count of lines that
use ``Any`` outside ``pmllm_batch/bench`` (imports excluded).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

CLASS_MAX, FUNC_MAX = 250, 60


def sizes(path: Path) -> list[tuple[str, str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            kind = "class" if isinstance(node, ast.ClassDef) else "def"
            out.append((kind, f"{path}:{node.lineno} {node.name}", (node.end_lineno or node.lineno) - node.lineno + 1))
    return out


def any_lines(root: Path) -> int:
    n = 0
    for f in root.rglob("*.py"):
        if "bench" in f.relative_to(root).parts:
            continue
        for line in f.read_text(encoding="utf-8").splitlines():
            if re.search(r"\bAny\b", line) and not re.match(r"\s*(from|import)\s", line):
                n += 1
    return n


def main(argv: list[str]) -> int:
    dirs = [Path(a) for a in argv] or [Path("pmllm_batch/scorer"), Path("pmllm_batch/daemon")]
    bad = 0
    for d in dirs:
        items = [s for f in sorted(d.rglob("*.py")) for s in sizes(f)]
        biggest = {k: max((s for s in items if s[0] == k), key=lambda s: s[2], default=None) for k in ("class", "def")}
        for kind, name, n in items:
            if (kind == "class" and n > CLASS_MAX) or (kind == "def" and n > FUNC_MAX):
                print(f"too long: {kind} {name}: {n} lines")
                bad += 1
        for kind, item in biggest.items():
            if item:
                print(f"{d}: longest {kind}: {item[1]} ({item[2]} lines)")
    print(f"Any annotations outside bench/: {any_lines(Path('pmllm_batch'))}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
