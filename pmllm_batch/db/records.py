"""Plain records handed in and out of the database (no ORM object leaks out of a transaction)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

from pmllm_batch.contracts import PhotoRecord
from pmllm_batch.profiles import Profile

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
