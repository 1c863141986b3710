"""The ``photos`` table: one row per file a scan found, keyed by path, whatever its fate."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from pmllm_batch.db.records import PHOTO_RECORD_FIELDS, PhotoRecord
from pmllm_batch.db.schema import PHOTO_STATUSES, Photo, utcnow
from pmllm_batch.db.sql import chunks


def index(s: Session, roots: Sequence[str] | None) -> dict[str, PhotoRecord]:
    """All photo rows (any status) by path; only those under ``roots`` (as stored) unless it is None."""
    stmt = select(*[getattr(Photo, name) for name in PHOTO_RECORD_FIELDS])
    if roots is not None:
        stmt = stmt.where(Photo.root.in_(list(roots)))
    return {row.path: PhotoRecord(**row._asdict()) for row in s.execute(stmt)}


def check_statuses(records: Sequence[PhotoRecord]) -> None:
    """Raise ValueError on a record whose status is not one of PHOTO_STATUSES (before any write)."""
    for rec in records:
        if rec.status not in PHOTO_STATUSES:
            raise ValueError(f"photo status must be one of {PHOTO_STATUSES}, got {rec.status!r}")


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
            .where(Photo.path.in_(list(chunk)), Photo.status != "missing")
            .values(status="missing", updated_at=now)
            .execution_options(synchronize_session=False)
        )
        changed += max(s.execute(stmt).rowcount, 0)  # type: ignore[attr-defined]
    return changed


def paths_by_hash(s: Session, hashes: Sequence[str]) -> dict[str, list[str]]:
    """Paths of "ok" photos for each content hash (sorted; hashes with no ok photo are absent)."""
    out: dict[str, list[str]] = {}
    for chunk in chunks(list(dict.fromkeys(hashes))):
        stmt = select(Photo.content_hash, Photo.path).where(Photo.content_hash.in_(list(chunk)), Photo.status == "ok")
        for h, path in s.execute(stmt):
            out.setdefault(str(h), []).append(path)
    return {h: sorted(paths) for h, paths in out.items()}


def ok_hashes(s: Session) -> list[str]:
    """Distinct content hashes of photos with status "ok", sorted."""
    stmt = (
        select(Photo.content_hash)
        .where(Photo.status == "ok", Photo.content_hash.is_not(None))
        .distinct()
        .order_by(Photo.content_hash)
    )
    return [h for h in s.scalars(stmt) if h is not None]


def roots(s: Session) -> list[str]:
    """Distinct scan roots of every stored photo (any status), sorted."""
    return sorted(s.scalars(select(Photo.root).distinct()))


def count_by_status(s: Session) -> dict[str, int]:
    """Status -> number of rows, every status present (0 when none)."""
    counts = dict.fromkeys(PHOTO_STATUSES, 0)
    for status, n in s.execute(select(Photo.status, func.count()).group_by(Photo.status)):
        counts[status] = int(n)
    return counts


def failures(s: Session) -> list[dict[str, str | None]]:
    """Every failed photo by path: {"path", "reason", "message"}."""
    stmt = select(Photo.path, Photo.error_reason, Photo.error_message).where(Photo.status == "failed")
    return [{"path": p, "reason": r, "message": m} for p, r, m in s.execute(stmt.order_by(Photo.path))]
