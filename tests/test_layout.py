"""The README's layout block names every top-level part of the package, and nothing that is gone."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _layout_block() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"- Layout \(arrows point down only.*?```\n(.*?)```", text, re.S)
    assert match, "README has no layout block"
    return match.group(1)


def test_the_readme_layout_lists_exactly_the_packages_and_ground_modules() -> None:
    block = _layout_block()
    listed_dirs = set(re.findall(r"^    ([a-z_]+)/", block, re.M))
    listed_modules = set(re.findall(r"\b([a-z_]+\.py)\b", block))
    pkg = REPO / "pmllm_batch"
    dirs = {p.name for p in pkg.iterdir() if p.is_dir() and p.name != "__pycache__"}
    modules = {p.name for p in pkg.glob("*.py")} - {"__init__.py", "__main__.py"}
    assert listed_dirs == dirs
    assert listed_modules == modules
    top = set(re.findall(r"^  ([a-z_]+)/", block, re.M)) - {"pmllm_batch"}
    assert top == {"export", "scripts"} and all((REPO / t).is_dir() for t in top)
