"""What a run did: :class:`RunSummary` (counts, failures) and its sentences."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pmllm_batch.contracts import JSONDict

__all__ = ["RunSummary", "plural", "saved_text"]


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass
class RunSummary:
    scanned: int = 0  # files found under the roots
    new: int = 0  # paths not seen before (moved files included)
    changed: int = 0  # known paths whose size/mtime changed
    skipped: int = 0  # unchanged files: not read again
    failed: int = 0  # files under the roots whose photo row is failed (with a reason)
    missing: int = 0  # paths marked missing in this run (deleted or moved away)
    encoded: int = 0  # images run through the vision stage
    scored: int = 0  # (image, profile) pairs scored
    profiles: int = 0
    interrupted: bool = False
    elapsed_s: float = 0.0
    model: str = ""
    failures: list[dict[str, str]] = field(default_factory=list)
    moved: int = 0  # files moved or renamed (their scores kept): counted in neither ``new`` nor ``missing``
    demo: bool = False  # the model scoring (loaded, or known from an earlier load) is a demo (its config's flag)
    note: str = ""  # for a demo model: the sentence that says so, naming the preset
    too_small: int = 0  # files under the roots skipped as too small to judge ([scan] min_side)
    raw_pairs: int = 0  # RAW files under the roots shown as their JPEG twin (one photo)
    blank: int = 0  # files under the roots skipped as blank frames ([scan] blank_std: lens cap, misfire)
    # Files read in this run that failed (``failures`` also lists earlier ones under the roots); not in to_dict.
    fresh_failures: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> JSONDict:
        data: JSONDict = asdict(self)
        data.pop("fresh_failures")
        return data


def saved_text(summary: RunSummary) -> str:
    """What an interrupted run kept, for the "interrupted" line ("pmllm-batch: interrupted: <this>").

    Every committed chunk is saved; only the chunk in flight is lost, and the next run redoes just that.
    """
    pairs = plural(summary.scored, "scored (photo, profile) pair")
    return (f"{plural(summary.encoded, 'photo')} through vision and {pairs} were saved; "
            "run the same command again to do the rest")
