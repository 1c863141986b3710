"""What every ratings reader returns: :class:`Rating`, :class:`Skipped` and :class:`ReadResult` (see the package
docstring for the rules behind them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["REASONS", "SOURCES", "ReadResult", "Rating", "Skipped", "map_moved"]

# Where a rating came from (Rating.source).
SOURCES = ("xmp-sidecar", "xmp-embedded", "darktable", "digikam", "csv", "cli")

# Why something was skipped (Skipped.reason). A reader never raises for a bad source: it reports it here and goes on.
REASONS = (
    "photo_missing",  # read_xmp: the photo is not on disk
    "sidecar_not_a_file",  # read_xmp: a sidecar name is taken by a folder or another non-file
    "unreadable_sidecar",  # read_xmp: the sidecar exists but cannot be read (permissions, I/O error)
    "corrupt_sidecar",  # read_xmp: the sidecar is not XMP (not XML, truncated, not an XMP packet)
    "unreadable_photo",  # read_xmp: no sidecar verdict and the photo's embedded metadata cannot be read
    "bad_rating",  # a rating value outside -1..5 or not a whole number (sidecar, embedded, database row)
    "unreadable_database",  # read_darktable / read_digikam: the file cannot be opened as an SQLite database
    "not_a_darktable_library",  # read_darktable: SQLite, but without darktable's images / film_rolls tables
    "not_a_digikam_database",  # read_digikam: SQLite, but without digiKam's Images / Albums / AlbumRoots tables
    "album_root_unknown",  # read_digikam: the collection's folder cannot be found on this machine (pass roots=)
    "unreadable_file",  # read_csv: the CSV file cannot be read
    "bad_row",  # read_csv: a row without a path, or whose stars are not a whole number in -1..5
)


@dataclass(frozen=True)
class Rating:
    """One person's verdict on one photo, as their app stored it.

    ``stars``: -1 rejected, 1..5 stars. 0 appears only from the "csv" and "cli" sources and means *clear*: forget
    any rating stored for this photo (an app's "0 stars" is no verdict and is never returned).
    """

    path: Path  # the photo file
    stars: int
    source: str  # one of SOURCES
    detail: str  # where exactly: the sidecar file, "embedded XMP", "<db> image id 12", "<file> line 3"


@dataclass
class Skipped:
    """A photo, database, file or row that could not be read; the run went on without it."""

    path: Path  # the photo (read_xmp), the database / CSV file, or the photo a database row names
    reason: str  # one of REASONS
    message: str  # one human sentence


@dataclass
class ReadResult:
    """What one reader found.

    ``unrated`` counts the photos (or database rows) read without error that hold no verdict of the person: no
    rating, 0 stars, a rating we wrote ourselves (also counted in ``written_by_us``) or an app's import default
    (also counted in ``import_defaults``). ``notes`` are human sentences about choices the reader made (which of two
    disagreeing sidecars won, which import default was assumed, rows ignored as deleted).
    """

    ratings: list[Rating] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    unrated: int = 0
    import_defaults: int = 0  # of unrated: darktable's import default (1 star unless configured otherwise)
    written_by_us: int = 0  # of unrated: xmp:Rating equal to our own pmllm:writtenRating
    notes: list[str] = field(default_factory=list)

    def by_path(self) -> dict[Path, Rating]:
        """Path -> rating (each reader returns at most one rating per path)."""
        return {r.path: r for r in self.ratings}

    def skip(self, path: Path, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        self.skipped.append(Skipped(path=path, reason=reason, message=message))


def map_moved(path: str, moved: Mapping[str, Path]) -> Path:
    """Rewrite a folder prefix recorded in an app's database to where that folder is on this machine.

    ``moved`` maps a stored folder (``"/home/anna/Pictures"``) to a local one; the longest matching prefix wins and
    only whole path components match (``/photos`` does not match ``/photos2``).
    """
    best: tuple[str, Path] | None = None
    for old, new in moved.items():
        prefix = str(old).rstrip("/") or "/"
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, Path(new))
    if best is None:
        return Path(path)
    rest = path[len(best[0]):].lstrip("/")
    return best[1] / rest if rest else best[1]
