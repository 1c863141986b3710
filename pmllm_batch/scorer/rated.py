"""Store what a ratings reader found as one person's verdicts: photo paths become content hashes.

The readers (:mod:`pmllm_batch.ratings`) name photos by path; the library keys verdicts by content hash, so a rating
follows its photo through moves and renames and covers every exact copy. A photo the library has a row for takes
that row's hash, except for a verdict embedded in the photo file (writing it changed the content: hashed from disk);
a photo the library has no row for is hashed from disk (its rating waits until the photo is ranked); a photo that is
neither is skipped with a reason. ``rate`` and the daemon both call :func:`store_ratings`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pmllm_batch.db import Store
from pmllm_batch.db.ratings import RateCounts, RatingInput
from pmllm_batch.ratings import ReadResult, Skipped
from pmllm_batch.scorer.stages import safe_hash

__all__ = ["RateReport", "library_paths", "store_ratings"]

# Sources whose verdict was written into the photo file itself: hashed from disk, never taken from the library row.
REWRITTEN_SOURCES = frozenset({"xmp-embedded"})


@dataclass
class RateReport:
    """What :func:`store_ratings` did with one reader's result."""

    counts: RateCounts
    read: ReadResult  # the reader's own skipped / unrated / notes
    not_ranked_yet: int = 0  # stored for content no ok photo of the library has yet (it counts once ranked)
    skipped: list[Skipped] = field(default_factory=list)  # the reader's skips and the photos that could not be hashed


def library_paths(path: Path | str) -> tuple[str, str]:
    """How the library may have stored a photo's path: as given made absolute, and with symlinks resolved (the scan
    resolves its roots and records files as walked below them)."""
    given = os.path.abspath(os.fspath(path))
    return given, os.path.realpath(given)


def store_ratings(store: Store, profile: str, result: ReadResult) -> RateReport:
    """Store ``result.ratings`` as ``profile``'s verdicts (the newest wins; 0 stars clears).

    Raises:
        ProfileError: Unknown profile (checked before anything is hashed).
    """
    store.get_profile(profile)
    report = RateReport(counts=RateCounts(), read=result, skipped=list(result.skipped))
    paths = {r.path: library_paths(r.path) for r in result.ratings}
    known = store.hashes_of_paths(sorted({p for pair in paths.values() for p in pair}))
    items: list[RatingInput] = []
    for rating in result.ratings:
        given, real = paths[rating.path]
        # An app that rates into the photo itself (embedded XMP) changed its content since the library hashed it:
        # the verdict belongs to the content on disk, which the next rank finds as a changed file.
        h = None if rating.source in REWRITTEN_SOURCES else known.get(given) or known.get(real)
        if h is None:
            h = safe_hash(Path(real))
            if h is None:
                report.skipped.append(Skipped(path=rating.path, reason="photo_missing",
                                              message="the photo is neither in the library nor readable on disk"))
                continue
        items.append(RatingInput(content_hash=h, stars=rating.stars, source=rating.source, detail=rating.detail))
    report.counts = store.set_ratings(profile, items)
    stored = {item.content_hash: item.stars for item in items}  # the last verdict per content, as set_ratings keeps
    waiting = [h for h, stars in stored.items() if stars != 0]
    ranked = store.photos_by_hash(waiting) if waiting else {}
    report.not_ranked_yet = sum(h not in ranked for h in waiting)
    return report
