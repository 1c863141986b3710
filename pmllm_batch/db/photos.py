"""The ``photos`` table: one row per file a scan found, keyed by path, whatever its fate."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from pmllm_batch.contracts import PhotoStatus
from pmllm_batch.db.records import PHOTO_RECORD_FIELDS, ExifWarning, FailedPhoto, PhotoRecord
from pmllm_batch.db.schema import PHOTO_STATUSES, Photo, utcnow
from pmllm_batch.db.sql import chunks


def index(
    s: Session, roots: Sequence[str] | None, statuses: Sequence[PhotoStatus] | None = None
) -> dict[str, PhotoRecord]:
    """All photo rows by path; only those under ``roots`` (as stored) unless it is None, only with one of
    ``statuses`` unless it is None. Each record's ``status`` is a :class:`PhotoStatus`."""
    stmt = select(*[getattr(Photo, name) for name in PHOTO_RECORD_FIELDS])
    if roots is not None:
        stmt = stmt.where(Photo.root.in_(list(roots)))
    if statuses is not None:
        stmt = stmt.where(Photo.status.in_(list(statuses)))
    return {row.path: PhotoRecord(**row._asdict()) for row in s.execute(stmt)}


def check_statuses(records: Sequence[PhotoRecord]) -> None:
    """Raise ValueError on a record whose status is not a :class:`PhotoStatus` value (before any write)."""
    for rec in records:
        if rec.status not in PHOTO_STATUSES:
            known = tuple(st.value for st in PHOTO_STATUSES)
            raise ValueError(f"photo status must be one of {known}, got {rec.status!r}")


def upsert(s: Session, records: Sequence[PhotoRecord]) -> None:
    """Insert or update photo rows by path.

    ``last_seen`` is set on every row written; ``updated_at`` only when a field actually changed, so it
    tells when the file last changed rather than when it was last scanned.
    """
    now = utcnow()
    for chunk in chunks(records):
        by_path = {p.path: p for p in s.scalars(select(Photo).where(Photo.path.in_([r.path for r in chunk])))}
        for rec in chunk:
            values = {name: getattr(rec, name) for name in PHOTO_RECORD_FIELDS}
            row = by_path.get(rec.path)
            if row is None:
                row = Photo(**values, first_seen=now, last_seen=now, updated_at=now)
                s.add(row)
                by_path[rec.path] = row
                continue
            changed = False
            for name, value in values.items():
                if getattr(row, name) != value:
                    setattr(row, name, value)
                    changed = True
            row.last_seen = now
            if changed:
                row.updated_at = now
        s.flush()


def mark_missing(s: Session, paths: Sequence[str]) -> int:
    """Set status "missing" on these paths (scores stay: they are keyed by content hash); returns how many changed."""
    now = utcnow()
    changed = 0
    for chunk in chunks(paths):
        stmt = (
            update(Photo)
            .where(Photo.path.in_(list(chunk)), Photo.status != PhotoStatus.MISSING)
            .values(status=PhotoStatus.MISSING, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        changed += max(s.execute(stmt).rowcount, 0)  # type: ignore[attr-defined]
    return changed


def resolve_gone(s: Session, gone: Sequence[str], arrived: Sequence[str]) -> tuple[int, int, int]:
    """Settle paths that are no longer there against paths that appeared: a move is not a loss.

    A gone path whose content hash just appeared at one of ``arrived`` (new paths of this scan, already written as
    "ok") was moved or renamed: its row is deleted, because the photo lives on at the new path with the same scores.
    So is a gone path whose content turned up at another path since it was last written (the two halves of a move
    seen in different batches), and a row already "missing" (the move out was seen in an earlier scan) whose content
    just arrived. Every other gone path is marked "missing" (scores stay, rankings hide it).

    Returns:
        (missing, moved, moved_in): paths newly marked missing, moves recognised, and how many of those moves
        consumed one of ``arrived`` (they are moves, not new photos).
    """
    now = utcnow()
    pool: dict[str, int] = {}  # hash -> arrived ok paths not yet paired with a gone one
    for row in _rows(s, arrived):
        if row.status == PhotoStatus.OK and row.content_hash:
            pool[row.content_hash] = pool.get(row.content_hash, 0) + 1
    missing = moved = moved_in = 0
    to_delete: list[int] = []
    unpaired: list[Photo] = []
    for row in _rows(s, gone):
        if row.status == PhotoStatus.MISSING:
            continue
        h = row.content_hash
        if h and pool.get(h):
            pool[h] -= 1
            moved += 1
            moved_in += 1
            to_delete.append(row.id)
        else:
            unpaired.append(row)
    gone_set = set(gone)
    # ok rows elsewhere with the content of an unpaired gone row: hash -> when each of them first appeared
    elsewhere: dict[str, list[datetime]] = {}
    for chunk in chunks(sorted({r.content_hash for r in unpaired if r.content_hash})):
        found = select(Photo.content_hash, Photo.path, Photo.first_seen).where(
            Photo.content_hash.in_(list(chunk)), Photo.status == PhotoStatus.OK
        )
        for h, path, first_seen in s.execute(found):
            if h and path not in gone_set:
                elsewhere.setdefault(h, []).append(first_seen)
    for row in unpaired:
        seen = elsewhere.get(row.content_hash or "", [])
        if any(first > row.last_seen for first in seen):
            moved += 1  # it turned up at another path after this one was last written: a move
            to_delete.append(row.id)
        else:
            row.status, row.updated_at = PhotoStatus.MISSING, now
            missing += 1
    s.flush()
    # Moves whose first half an earlier scan already saw (the file left, then turned up elsewhere).
    leftover = [h for h, n in pool.items() if n > 0]
    arrived_set = set(arrived)
    for chunk in chunks(leftover):
        stmt = select(Photo).where(Photo.content_hash.in_(list(chunk)), Photo.status == PhotoStatus.MISSING)
        for row in s.scalars(stmt):
            h = row.content_hash or ""
            if row.path in arrived_set or not pool.get(h):
                continue
            pool[h] -= 1
            moved += 1
            moved_in += 1
            to_delete.append(row.id)
    for ids in chunks(to_delete):
        s.execute(delete(Photo).where(Photo.id.in_(list(ids))).execution_options(synchronize_session=False))
    return missing, moved, moved_in


def forget_moved_missing(s: Session, roots: Sequence[str]) -> int:
    """Delete "missing" rows under ``roots`` whose content lives on at an "ok" path (moves recorded as losses by
    older versions, or whose arrival was never paired); their scores are keyed by content and stay. Returns how
    many."""
    ok = select(Photo.content_hash).where(Photo.status == PhotoStatus.OK, Photo.content_hash.is_not(None))
    stmt = (
        delete(Photo)
        .where(Photo.status == PhotoStatus.MISSING, Photo.root.in_(list(roots)), Photo.content_hash.in_(ok))
        .execution_options(synchronize_session=False)
    )
    return max(s.execute(stmt).rowcount, 0)  # type: ignore[attr-defined]


def _rows(s: Session, paths: Sequence[str]) -> list[Photo]:
    out: list[Photo] = []
    for chunk in chunks(list(dict.fromkeys(paths))):
        out.extend(s.scalars(select(Photo).where(Photo.path.in_(list(chunk)))))
    return out


def paths_by_hash(s: Session, hashes: Sequence[str]) -> dict[str, list[str]]:
    """Paths of "ok" photos for each content hash (sorted; hashes with no ok photo are absent)."""
    out: dict[str, list[str]] = {}
    for chunk in chunks(list(dict.fromkeys(hashes))):
        stmt = select(Photo.content_hash, Photo.path).where(
            Photo.content_hash.in_(list(chunk)), Photo.status == PhotoStatus.OK
        )
        for h, path in s.execute(stmt):
            out.setdefault(str(h), []).append(path)
    return {h: sorted(paths) for h, paths in out.items()}


def ok_hashes(s: Session) -> list[str]:
    """Distinct content hashes of photos with status "ok", sorted."""
    stmt = (
        select(Photo.content_hash)
        .where(Photo.status == PhotoStatus.OK, Photo.content_hash.is_not(None))
        .distinct()
        .order_by(Photo.content_hash)
    )
    return [h for h in s.scalars(stmt) if h is not None]


def roots(s: Session) -> list[str]:
    """Distinct scan roots of every stored photo (any status), sorted."""
    return sorted(s.scalars(select(Photo.root).distinct()))


def count_by_status(s: Session) -> dict[PhotoStatus, int]:
    """Status -> number of rows: "ok", "failed" and "missing" always (0 when none), "skipped" when there are any."""
    counts: dict[PhotoStatus, int] = dict.fromkeys((st for st in PHOTO_STATUSES if st != PhotoStatus.SKIPPED), 0)
    for status, n in s.execute(select(Photo.status, func.count()).group_by(Photo.status)):
        counts[status] = int(n)
    return counts


def exif_warnings(s: Session) -> list[ExifWarning]:
    """Every ok photo whose EXIF could not be read (its pixels could), by path: {"path", "warning"}."""
    # Few rows carry a warning: one plain scan for them is cheaper than walking every ok row by the status index
    # (status reads this on every start).
    stmt = select(Photo.path, Photo.exif_warning, Photo.status).where(Photo.exif_warning.is_not(None))
    found = sorted((p, w) for p, w, st in s.execute(stmt) if st == PhotoStatus.OK)
    return [{"path": p, "warning": w or ""} for p, w in found]


def failures(s: Session) -> list[FailedPhoto]:
    """Every failed photo by path: {"path", "reason", "message"}."""
    stmt = select(Photo.path, Photo.error_reason, Photo.error_message).where(Photo.status == PhotoStatus.FAILED)
    return [{"path": p, "reason": r, "message": m} for p, r, m in s.execute(stmt.order_by(Photo.path))]
