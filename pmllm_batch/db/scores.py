"""The ``scores`` table and what is read from it: rankings and per-profile counts.

A score is keyed by (content hash, profile, model), so a moved file keeps its score and identical files
are scored once; rankings read one model's scores only and show each content hash once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from pmllm_batch.contracts import PhotoStatus
from pmllm_batch.db.records import RankedPhoto
from pmllm_batch.db.schema import Photo, ProfileModel, Score, utcnow
from pmllm_batch.db.sql import RowValues, chunks, insert_ignore, table_of

# One score as the scorer hands it in: (content_hash, profile_id, score, rating-level probabilities).
ScoreInput = tuple[str, int, float, Sequence[float]]


def encode(model_id: int, rows: Iterable[ScoreInput]) -> list[RowValues]:
    """Rows for :func:`add`, checked before any transaction opens.

    Raises:
        ValueError: A score is not a finite number.
    """
    now = utcnow()
    values: list[RowValues] = []
    for content_hash, profile_id, score, probs in rows:
        score_f = float(score)
        if not math.isfinite(score_f):
            raise ValueError(f"score for {content_hash} is not a finite number: {score!r}")
        values.append(
            {
                "content_hash": content_hash,
                "profile_id": int(profile_id),
                "model_id": int(model_id),
                "score": score_f,
                "probs_json": json.dumps([float(p) for p in probs]),
                "created_at": now,
            }
        )
    return values


def add(s: Session, values: list[RowValues]) -> int:
    """Insert rows from :func:`encode`; rows already present are skipped (the first write wins). Returns how many."""
    return insert_ignore(s, table_of(Score), values, ["content_hash", "profile_id", "model_id"])


def scored_hashes(s: Session, profile_id: int, model_id: int) -> set[str]:
    """Content hashes that already have a score for this profile and model."""
    return set(s.scalars(select(Score.content_hash).where(Score.profile_id == profile_id, Score.model_id == model_id)))


def scored_among(s: Session, profile_id: int, model_id: int, hashes: Sequence[str]) -> set[str]:
    """Which of ``hashes`` already have a score for this profile and model (reads only those)."""
    out: set[str] = set()
    for chunk in chunks(list(dict.fromkeys(hashes))):
        out.update(s.scalars(select(Score.content_hash).where(
            Score.profile_id == profile_id, Score.model_id == model_id, Score.content_hash.in_(list(chunk)))))
    return out


def forget_profile(s: Session, profile_id: int) -> None:
    """Delete every score of one profile (its persona changed, or it is being removed)."""
    s.execute(delete(Score).where(Score.profile_id == profile_id))


def ranking(s: Session, profile_id: int, model_id: int, top: int | None) -> list[RankedPhoto]:
    """One profile's ranking under one model, as ``Store.ranking`` describes it."""
    stmt = (
        select(Score.content_hash, Score.score, Photo.path, Photo.taken_at, Photo.width, Photo.height, Photo.mtime_ns)
        .join(Photo, Photo.content_hash == Score.content_hash)
        .where(Score.profile_id == profile_id, Score.model_id == model_id, Photo.status == PhotoStatus.OK)
    )
    best: dict[str, RankedPhoto] = {}
    every: dict[str, list[str]] = {}  # content hash -> all its ok paths (exact duplicates)
    for content_hash, score, path, taken_at, width, height, mtime_ns in s.execute(stmt):
        every.setdefault(content_hash, []).append(path)
        current = best.get(content_hash)
        if current is None or (len(path), path) < (len(current.path), current.path):
            best[content_hash] = RankedPhoto(
                rank=0,  # numbered once sorted
                path=path,
                score=float(score),
                content_hash=content_hash,
                taken_at=taken_at,
                width=width,
                height=height,
                mtime_ns=mtime_ns,
            )
    for content_hash, item in best.items():
        others = sorted(p for p in every[content_hash] if p != item.path)
        item.paths = (item.path, *others)
    ordered = sorted(best.values(), key=lambda r: (-r.score, r.path))
    if top is not None:
        ordered = ordered[: max(top, 0)]
    for i, r in enumerate(ordered, start=1):  # fresh objects, made above: numbered in place
        r.rank = i
    return ordered


def counts(s: Session, model_id: int | None) -> dict[str, int]:
    """Profile name -> distinct "ok" content hashes scored by ``model_id``; every profile, 0 when none."""
    names = {pid: name for pid, name in s.execute(select(ProfileModel.id, ProfileModel.name))}
    out = dict.fromkeys(sorted(names.values()), 0)
    if model_id is None:
        return out
    ok = select(Photo.content_hash).where(Photo.status == PhotoStatus.OK)
    stmt = (
        select(Score.profile_id, func.count(func.distinct(Score.content_hash)))
        .where(Score.model_id == model_id, Score.content_hash.in_(ok))
        .group_by(Score.profile_id)
    )
    for pid, n in s.execute(stmt):
        if pid in names:
            out[names[pid]] = int(n)
    return out


def count_for_model(s: Session, model_id: int | None) -> int:
    """Score rows of one model (any profile, any photo status); 0 for None."""
    if model_id is None:
        return 0
    return s.scalar(select(func.count()).select_from(Score).where(Score.model_id == model_id)) or 0


def per_profile(s: Session, model_id: int | None) -> dict[int, int]:
    """Profile id -> score rows of ``model_id`` (photos it scored for that profile, missing ones included); {} for
    None. One pass over the (profile, model) index: cheap enough for ``status`` on a 20,000-photo library."""
    if model_id is None:
        return {}
    stmt = select(Score.profile_id, func.count()).where(Score.model_id == model_id).group_by(Score.profile_id)
    return {int(pid): int(n) for pid, n in s.execute(stmt)}
