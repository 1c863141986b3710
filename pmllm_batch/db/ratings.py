"""The ``ratings`` and ``tastes`` tables: a person's own stars, and the taste learned from them.

A rating is keyed by (content hash, profile): the person's verdict follows the photo through moves and renames, and
one verdict covers every exact copy. Stars are -1 (rejected) or 1..5; storing 0 ("clear") deletes the rating. The
newest verdict wins: storing a rating for a (photo, person) that has one replaces it, whatever its source.

A taste is :class:`pmllm_batch.learn.TasteState` as JSON, one per (profile, model), with the digest of the ratings
and photos it was fitted on (the library side, :mod:`pmllm_batch.outputs.personal`, refits when it changes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from pmllm_batch.contracts import PhotoStatus
from pmllm_batch.db import profiles
from pmllm_batch.db.engine import Database
from pmllm_batch.db.schema import PersonRating, Photo, TasteRow, utcnow
from pmllm_batch.db.sql import chunks

__all__ = [
    "RateCounts",
    "RatingInput",
    "RatingStore",
    "StoredRating",
    "StoredTaste",
    "counts_by_profile",
    "forget_profile",
    "get_taste",
    "hashes_of_paths",
    "put_taste",
    "rated",
    "set_ratings",
]

STARS = (-1, 0, 1, 2, 3, 4, 5)


@dataclass(frozen=True)
class RatingInput:
    """One verdict to store: content hash, stars (-1..5, 0 = clear), source and where it was read."""

    content_hash: str
    stars: int
    source: str
    detail: str | None = None


@dataclass(frozen=True)
class StoredRating:
    """A stored verdict."""

    content_hash: str
    stars: int
    source: str
    detail: str | None


@dataclass
class RateCounts:
    """What :func:`set_ratings` did."""

    new: int = 0  # photos that had no rating from this person
    changed: int = 0  # a different verdict replaced the stored one
    unchanged: int = 0  # the same stars again (the source and detail are updated)
    cleared: int = 0  # 0 stars: a stored rating deleted
    by_source: dict[str, int] = field(default_factory=dict)  # stored (new + changed + unchanged) per source

    @property
    def stored(self) -> int:
        return self.new + self.changed + self.unchanged


@dataclass(frozen=True)
class StoredTaste:
    """A stored learned taste."""

    ratings_digest: str
    n_ratings: int
    state_json: str


def check_stars(stars: int) -> int:
    """``stars`` as an int in -1..5, else ValueError."""
    value = int(stars)
    if value not in STARS or value != stars:
        raise ValueError(f"stars must be a whole number from -1 (rejected) to 5, 0 to clear; got {stars!r}.")
    return value


def set_ratings(s: Session, profile_id: int, items: Iterable[RatingInput]) -> RateCounts:
    """Store verdicts for one person (the last of several for one content hash wins); returns the counts."""
    latest: dict[str, RatingInput] = {}
    for item in items:
        check_stars(item.stars)
        latest[item.content_hash] = item
    counts = RateCounts()
    existing: dict[str, PersonRating] = {}
    for chunk in chunks(sorted(latest)):
        rows = s.scalars(select(PersonRating).where(PersonRating.profile_id == profile_id,
                                                    PersonRating.content_hash.in_(list(chunk))))
        existing.update({r.content_hash: r for r in rows})
    now = utcnow()
    for h, item in latest.items():
        row = existing.get(h)
        if item.stars == 0:
            if row is not None:
                s.delete(row)
                counts.cleared += 1
            continue
        counts.by_source[item.source] = counts.by_source.get(item.source, 0) + 1
        if row is None:
            s.add(PersonRating(content_hash=h, profile_id=profile_id, stars=item.stars, source=item.source,
                               detail=item.detail, rated_at=now))
            counts.new += 1
            continue
        if row.stars == item.stars:
            counts.unchanged += 1
        else:
            counts.changed += 1
            row.stars = item.stars
            row.rated_at = now
        row.source, row.detail = item.source, item.detail
    return counts


def rated(s: Session, profile_id: int, *, in_library: bool = False) -> dict[str, StoredRating]:
    """A person's ratings by content hash; ``in_library``: only content an ok photo row still has."""
    stmt = select(PersonRating).where(PersonRating.profile_id == profile_id)
    if in_library:
        ok = select(Photo.content_hash).where(Photo.status == PhotoStatus.OK, Photo.content_hash.is_not(None))
        stmt = stmt.where(PersonRating.content_hash.in_(ok))
    return {r.content_hash: StoredRating(r.content_hash, r.stars, r.source, r.detail) for r in s.scalars(stmt)}


def counts_by_profile(s: Session, *, in_library: bool = False) -> dict[int, dict[str, int]]:
    """profile id -> {source: number of ratings}; ``in_library`` as in :func:`rated`."""
    stmt = select(PersonRating.profile_id, PersonRating.source, func.count()).group_by(
        PersonRating.profile_id, PersonRating.source)
    if in_library:
        ok = select(Photo.content_hash).where(Photo.status == PhotoStatus.OK, Photo.content_hash.is_not(None))
        stmt = stmt.where(PersonRating.content_hash.in_(ok))
    out: dict[int, dict[str, int]] = {}
    for pid, source, n in s.execute(stmt):
        out.setdefault(int(pid), {})[str(source)] = int(n)
    return out


def forget_profile(s: Session, profile_id: int) -> None:
    """Delete a person's ratings and tastes (explicitly: backends without enforced foreign keys too)."""
    s.execute(delete(PersonRating).where(PersonRating.profile_id == profile_id))
    s.execute(delete(TasteRow).where(TasteRow.profile_id == profile_id))


def get_taste(s: Session, profile_id: int, model_id: int) -> StoredTaste | None:
    row = s.get(TasteRow, (profile_id, model_id))
    return None if row is None else StoredTaste(row.ratings_digest, row.n_ratings, row.state_json)


def put_taste(s: Session, profile_id: int, model_id: int, taste: StoredTaste) -> None:
    row = s.get(TasteRow, (profile_id, model_id))
    if row is None:
        s.add(TasteRow(profile_id=profile_id, model_id=model_id, ratings_digest=taste.ratings_digest,
                       n_ratings=taste.n_ratings, state_json=taste.state_json, fitted_at=utcnow()))
        return
    row.ratings_digest, row.n_ratings, row.state_json = taste.ratings_digest, taste.n_ratings, taste.state_json
    row.fitted_at = utcnow()


def hashes_of_paths(s: Session, paths: Sequence[str]) -> dict[str, str]:
    """path -> content hash for the photo rows (any status with a hash) at exactly these paths."""
    out: dict[str, str] = {}
    for chunk in chunks(list(dict.fromkeys(paths))):
        for path, h in s.execute(select(Photo.path, Photo.content_hash).where(Photo.path.in_(list(chunk)))):
            if h:
                out[path] = h
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The Store's part
# ---------------------------------------------------------------------------------------------------------------------


class RatingStore:
    """Ratings and learned tastes: the :class:`~pmllm_batch.db.store.Store` methods for them."""

    _db: Database

    def set_ratings(self, profile_name: str, items: Iterable[RatingInput]) -> RateCounts:
        """Store one person's verdicts in one transaction (0 stars clears). ProfileError: unknown profile;
        ValueError: stars outside -1..5 (checked before anything is written)."""
        items = list(items)
        for item in items:
            check_stars(item.stars)
        with self._db.write() as s:
            return set_ratings(s, profiles.find(s, profile_name).id, items)

    def ratings(self, profile_name: str, *, in_library: bool = False) -> dict[str, StoredRating]:
        """A person's ratings by content hash (``in_library``: only content an ok photo still has)."""
        with self._db.read() as s:
            return rated(s, profiles.find(s, profile_name).id, in_library=in_library)

    def rating_counts(self, *, in_library: bool = False) -> dict[str, dict[str, int]]:
        """Profile name -> {source: ratings}; every stored profile appears ({} when it has none)."""
        with self._db.read() as s:
            by_id = counts_by_profile(s, in_library=in_library)
            return {p.name: by_id.get(p.id, {}) for p in profiles.list_all(s)}

    def hashes_of_paths(self, paths: Sequence[str]) -> dict[str, str]:
        """path -> content hash of the photo rows at these exact paths (rows without a hash are left out)."""
        with self._db.read() as s:
            return hashes_of_paths(s, paths)

    def taste(self, profile_name: str, model_id: int) -> StoredTaste | None:
        """The stored learned taste of a person for a model, if any."""
        with self._db.read() as s:
            return get_taste(s, profiles.find(s, profile_name).id, model_id)

    def put_taste(self, profile_name: str, model_id: int, taste: StoredTaste) -> None:
        """Store (replace) a person's learned taste for a model."""
        with self._db.write() as s:
            put_taste(s, profiles.find(s, profile_name).id, model_id, taste)
