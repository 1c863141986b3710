"""``status --check``: is the database file sound, and do its rows keep the promises the code relies on?

SQLite runs its own ``PRAGMA integrity_check`` (pages, indexes) and ``PRAGMA foreign_key_check``; every backend then
gets the same portable checks of our invariants: every score unique per (content hash, profile, model), no score of
a removed profile or model, a current model that exists, photo statuses the code knows.
"""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from pmllm_batch.db import models
from pmllm_batch.db.schema import PHOTO_STATUSES, ModelRow, Photo, ProfileModel, Score

MAX_LISTED = 10  # integrity_check lines reported at most


def problems(s: Session) -> list[str]:
    """Every problem found, as short phrases; empty when the database is sound."""
    found: list[str] = []
    conn = s.connection()
    if conn.dialect.name == "sqlite":
        rows = [str(r[0]) for r in conn.exec_driver_sql(f"PRAGMA integrity_check({MAX_LISTED})")]
        if rows != ["ok"]:
            found.extend(f"SQLite integrity check: {r}" for r in rows)
            return found  # the table checks below would only repeat the damage in other words
        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            tables = sorted({str(r[0]) for r in broken})
            found.append(f"{len(broken)} rows of {', '.join(tables)} point at rows that no longer exist")
    dupes = s.execute(
        select(func.count()).select_from(
            select(Score.content_hash)
            .group_by(Score.content_hash, Score.profile_id, Score.model_id)
            .having(func.count() > 1)
            .subquery()
        )
    ).scalar_one()
    if dupes:
        found.append(f"{dupes} (photo, profile, model) triples have more than one score")
    orphans = s.execute(
        select(func.count())
        .select_from(Score)
        .where(~Score.profile_id.in_(select(ProfileModel.id)) | ~Score.model_id.in_(select(ModelRow.id)))
    ).scalar_one()
    if orphans:
        found.append(f"{orphans} scores belong to a removed profile or model")
    current = models.current_id(s)
    if current is not None and s.get(ModelRow, current) is None:
        found.append(f"the current model (id {current}) does not exist")
    odd = s.execute(select(func.count()).select_from(Photo).where(~Photo.status.in_(PHOTO_STATUSES))).scalar_one()
    if odd:
        found.append(f"{odd} photos have a status other than {', '.join(st.value for st in PHOTO_STATUSES)}")
    return found


def describe(s: Session) -> str:
    """What :func:`problems` checked, for the "check: ok" line."""
    if s.connection().dialect.name == "sqlite":
        return "SQLite integrity and foreign keys, unique scores, references"
    s.execute(text("SELECT 1"))
    return "unique scores, references"
