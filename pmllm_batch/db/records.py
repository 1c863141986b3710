"""Plain records handed in and out of the database (no ORM object leaks out of a transaction)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

from pmllm_batch.profiles import Profile


@dataclass
class PhotoRecord:
    """One scanned file, as the scanner writes it and as incremental scans read it back."""

    path: str  # absolute path as walked
    root: str  # scan root it was found under
    content_hash: str | None  # None when the file could not even be read
    size: int  # bytes
    mtime_ns: int
    status: str = "ok"  # "ok" | "failed" | "missing"
    width: int | None = None
    height: int | None = None
    format: str | None = None
    taken_at: str | None = None  # EXIF capture time, ISO 8601
    camera_make: str | None = None
    camera_model: str | None = None
    orientation: int | None = None  # EXIF orientation 1..8
    error_reason: str | None = None  # short machine reason for status "failed"
    error_message: str | None = None  # one human sentence for status "failed"
    exif_warning: str | None = None


# The ``photos`` columns a PhotoRecord carries (every one but the bookkeeping times).
PHOTO_RECORD_FIELDS = tuple(f.name for f in fields(PhotoRecord))


@dataclass
class RankedPhoto:
    """One row of a profile's ranking (one per content hash, or per burst group in a grouped view)."""

    rank: int  # 1-based
    path: str
    score: float
    content_hash: str
    taken_at: str | None
    width: int | None
    height: int | None
    mtime_ns: int | None = None  # of ``path``: the file time, for date scopes when ``taken_at`` is unknown
    paths: tuple[str, ...] = ()  # every file of this content (exact duplicates, RAW twins); () = just ``path``
    group_size: int = 1  # photos of its burst / near-duplicate group in this view (1 = no group)
    group: tuple[str, ...] = ()  # the other group members' paths, best first (grouped views only)


@dataclass
class ProfileRow:
    """A stored profile."""

    id: int
    name: str
    profile: Profile
    persona: str
    persona_hash: str
    updated_at: datetime  # naive UTC
