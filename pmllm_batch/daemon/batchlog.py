r"""The service's one log line per batch, the run totals it adds up, and the line that ends a stopped run.

Log readers parse the line (README, tests): its parts keep their order and words, in the singular for 1
("1 file", "1 pair"), so a reader matches ``(\d+) files?,`` and ``scored (\d+) pairs?``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pmllm_batch.log import get_logger
from pmllm_batch.scorer import RunSummary

log = get_logger("daemon")

_COUNTERS = ("scanned", "new", "changed", "skipped", "failed", "missing", "encoded", "scored", "moved")
MAX_NAMED_FAILURES = 20  # failed files named in the log per batch


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 file``, ``2 files`` (``words`` for an irregular plural: ``1 batch``, ``2 batches``)."""
    return f"{n} {word}" if n == 1 else f"{n} {words or word + 's'}"


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
    counts = (f"{plural(files, 'file')}, " if files is not None else "") + (
        f"{summary.new} new, {summary.changed} changed, {summary.missing} missing, {summary.failed} failed; "
        f"vision {summary.encoded}; scored {plural(summary.scored, 'pair')} for {plural(profiles, 'profile')} "
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


@dataclass
class RunCounts:
    """What a watch run did, by kind: event batches (numbered from 1 in the log), reconcile scans, profile updates,
    and the ratings learned from sidecars (:mod:`pmllm_batch.daemon.sidecars`: new or changed verdicts stored, and
    verdicts forgotten because the person cleared the stars)."""

    batches: int = 0
    scans: int = 0
    profile_updates: int = 0
    ratings_learned: int = 0
    ratings_forgotten: int = 0

    def record(self, what: str) -> str:
        """Count one piece of work; its log line's head ("batch 3:", "reconcile (initial scan):")."""
        if what == "batch":  # only event batches are numbered: the first photo's batch is "batch 1"
            self.batches += 1
            return f"batch {self.batches}:"
        if what.startswith("reconcile"):
            self.scans += 1
        else:
            self.profile_updates += 1
        return f"{what}:"

    def as_dict(self) -> dict[str, int]:
        return {"batches": self.batches, "scans": self.scans, "profile_updates": self.profile_updates,
                "ratings_learned": self.ratings_learned, "ratings_forgotten": self.ratings_forgotten}


def log_stopped(
    reason: str, totals: RunSummary, *, scans: int, batches: int, profile_updates: int = 0, learned: int = 0
) -> None:
    """The service's last line after a stop request: why, and what the whole run did.

    Args:
        reason: Why it stopped ("SIGTERM received" ...).
        totals: The run's counts.
        scans: Reconcile scans run (the initial one included).
        batches: Event batches run (the ones numbered "batch N").
        profile_updates: Profile changes scored.
        learned: Ratings learned from sidecars (said only when some were).
    """
    parts = [plural(scans, "scan"), plural(batches, "batch", "batches")]
    if profile_updates:
        parts.append(plural(profile_updates, "profile update"))
    done = ", ".join(parts[:-1]) + " and " + parts[-1]
    stars = f"; learned {plural(learned, 'rating')} from sidecars" if learned else ""
    log.info("stopped (%s) after %s: %d new, %d missing, vision %d, scored %s%s",
             reason, done, totals.new, totals.missing, totals.encoded, plural(totals.scored, "pair"), stars)


__all__ = ["MAX_NAMED_FAILURES", "RunCounts", "add_summary", "log_batch", "log_stopped", "plural"]
