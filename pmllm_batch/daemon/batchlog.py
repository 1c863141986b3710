"""The service's one log line per batch, the run totals it adds up, and the line that ends a stopped run.

Log readers parse the line (README, tests): "N files" and "N pairs" stay as they are whatever N.
"""

from __future__ import annotations

from pmllm_batch.log import get_logger
from pmllm_batch.scorer import RunSummary

log = get_logger("daemon")

_COUNTERS = ("scanned", "new", "changed", "skipped", "failed", "missing", "encoded", "scored", "moved")
MAX_NAMED_FAILURES = 20  # failed files named in the log per batch


def plural(n: int, word: str) -> str:
    """``1 file``, ``2 files``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def add_summary(total: RunSummary, part: RunSummary) -> None:
    """Add ``part``'s counters to ``total`` (the model it names, if any, wins)."""
    for name in _COUNTERS:
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.model = part.model or total.model
    total.demo = part.demo or total.demo


def log_batch(head: str, summary: RunSummary, *, files: int | None, profiles: int, elapsed: float,
              stopped: bool) -> None:
    """Log what one batch did (``head`` names it), then the files it failed to read, by name.

    Args:
        head: "batch 3:", "reconcile (periodic):" ...
        summary: The batch's counts.
        files: How many files the batch looked at (None: say nothing about files).
        profiles: How many profiles it scored for.
        elapsed: Its seconds.
        stopped: A stop request cut it short.
    """
    counts = (f"{files} files, " if files is not None else "") + (
        f"{summary.new} new, {summary.changed} changed, {summary.missing} missing, {summary.failed} failed; "
        f"vision {summary.encoded}; scored {summary.scored} pairs for {plural(profiles, 'profile')} "
        f"in {elapsed:.2f}s"
    )
    moved = f"; {summary.moved} moved or renamed (scores kept)" if summary.moved else ""
    cut = " (stopped mid-way; the rest is picked up by the next scan)" if stopped else ""
    log.info("%s %s%s%s", head, counts, moved, cut)
    fresh = summary.fresh_failures
    for item in fresh[:MAX_NAMED_FAILURES]:
        log.warning("failed: %s: %s — %s", item["path"], item["reason"] or "unknown", item["message"])
    if len(fresh) > MAX_NAMED_FAILURES:
        log.warning("... and %d more failed files (`pmllm-batch status` lists every one with its reason)",
                    len(fresh) - MAX_NAMED_FAILURES)


def log_stopped(reason: str, batches: int, totals: RunSummary) -> None:
    """The service's last line after a stop request: why, and what the whole run did."""
    log.info("stopped (%s) after %d batches: %d new, %d missing, vision %d, scored %d pairs",
             reason, batches, totals.new, totals.missing, totals.encoded, totals.scored)


__all__ = ["MAX_NAMED_FAILURES", "add_summary", "log_batch", "log_stopped", "plural"]
