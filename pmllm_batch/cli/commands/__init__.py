"""Subcommands, one module each (listed in :data:`pmllm_batch.cli.app.COMMAND_MODULES`), and small shared helpers."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import NotRequired, TypedDict, cast

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


def print_json(data: object) -> None:
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


class _SummaryCounts(TypedDict):
    """The part of ``RunSummary.to_dict()`` that :func:`summary_line` reads."""

    scanned: int
    new: int
    changed: int
    skipped: int
    failed: int
    missing: int
    encoded: int
    scored: int
    elapsed_s: float
    moved: NotRequired[int]


def summary_line(s: Mapping[str, object]) -> str:
    """The one-line summary of a rank or ``watch --once`` run (a :class:`RunSummary` as a dict).

    The parts after "scanned N files:" put each scanned file in exactly one bucket, so they add up to N: new, moved
    (here, from a path that left), changed, unchanged, and re-checked (unchanged, but read again because its skip
    state is stale, e.g. after ``[scan] min_side`` changed). Failed files are not a bucket of their own: a failed
    file is also new, changed or unchanged, so the count stands next to N ("scanned 108 files (3 failed): ...").
    Missing files are paths that left, not scanned ones.
    """
    c = cast(_SummaryCounts, s)  # a RunSummary's dict: these keys hold its counts
    scanned, new, changed, unchanged = c["scanned"], c["new"], c["changed"], c["skipped"]
    moved = c.get("moved", 0)
    rest = max(0, scanned - new - changed - unchanged)  # moves whose new path this scan found, and re-checked files
    moved_here = min(moved, rest)
    parts = [f"{new} new"] + ([f"{moved_here} moved"] if moved_here else []) + [
        f"{changed} changed", f"{unchanged} unchanged"]
    if rest > moved_here:
        parts.append(f"{rest - moved_here} re-checked")
    earlier = f", {moved - moved_here} moved (found at their new path earlier)" if moved > moved_here else ""
    return (f"scanned {plural(scanned, 'file')} ({c['failed']} failed): {', '.join(parts)}; "
            f"{c['missing']} missing{earlier}; vision encodes {c['encoded']}; "
            f"scored {plural(c['scored'], '(photo, profile) pair')} in {c['elapsed_s']:.1f}s")
