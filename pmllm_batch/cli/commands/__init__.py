"""Subcommands, one module each (listed in :data:`pmllm_batch.cli.app.COMMAND_MODULES`), and small shared helpers."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pmllm_batch.outputs.files import write_text_atomic

__all__ = ["human_bytes", "plural", "positive_int", "print_json", "summary_line", "write_text_atomic"]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def print_json(data: Any) -> None:
    """Pretty JSON on stdout (non-JSON values such as datetimes as text)."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def plural(n: int, word: str, words: str | None = None) -> str:
    """'1 photo', '2 photos' (``words`` for an irregular plural)."""
    return f"{n} {word}" if n == 1 else f"{n} {words or word + 's'}"


def summary_line(s: dict[str, Any]) -> str:
    """The one-line summary of a rank or ``watch --once`` run (a :class:`RunSummary` as a dict)."""
    moved = f"{s.get('moved', 0)} moved, " if s.get("moved") else ""
    return (f"scanned {plural(s['scanned'], 'file')}: {s['new']} new, {moved}{s['changed']} changed, "
            f"{s['skipped']} unchanged, {s['missing']} missing, {s['failed']} failed; "
            f"vision encodes {s['encoded']}; scored {plural(s['scored'], '(photo, profile) pair')} "
            f"in {s['elapsed_s']:.1f}s")
