"""Forget folders: drop their photo rows, and what was stored for content that no other photo row still has.

``pmllm-batch forget PATH...`` (and :meth:`pmllm_batch.db.store.Store.forget`) take a library back to what it would be
had those folders never been ranked: the photo rows under each path (any status: ok, failed, skipped, missing) go,
and so does everything keyed by the content hash of those rows — scores, cached features, burst embeddings and burst
links — unless a photo row that stays (another folder, an exact copy, a row marked missing that may come back) still
has that content. Profiles, models, runs and the files themselves are never touched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import ColumnElement, Select, delete, func, or_, select
from sqlalchemy.orm import Session

from pmllm_batch.contracts import PhotoStatus
from pmllm_batch.db.schema import CachedFeatures, Photo, PhotoEmbedding, PhotoLink, Score
from pmllm_batch.db.sql import chunks

__all__ = ["ForgetCounts", "forget", "unknown_paths"]


@dataclass
class ForgetCounts:
    """What forgetting removed (or, for a dry run, would remove)."""

    photos: int = 0  # photo rows under the paths, any status
    ok: int = 0  # of those, rows with status ok (photos that were ranked)
    scores: int = 0  # (content, profile, model) scores of content no kept row has
    features: int = 0  # cached tower features (content, vision graph) of that content
    embeddings: int = 0  # burst/near-duplicate embeddings of that content
    links: int = 0  # burst links touching that content
    shared: int = 0  # contents that stay because a kept photo row has them too (their scores stay)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _under(path: str) -> ColumnElement[bool]:
    """Photo rows at ``path`` or anywhere below it (``path`` absolute, no trailing separator).

    Compared with ``substr``, not ``LIKE``: SQLite's LIKE ignores case, and /photos is not /Photos.
    """
    prefix = path.rstrip(os.sep) + os.sep
    return or_(Photo.path == path, func.substr(Photo.path, 1, len(prefix)) == prefix)


def unknown_paths(s: Session, paths: Sequence[str]) -> list[str]:
    """Those of ``paths`` (absolute) that have no photo row at or below them."""
    return [p for p in paths if s.scalar(select(func.count()).select_from(Photo).where(_under(p))) == 0]


def _count(s: Session, stmt: Select[object]) -> int:
    return int(s.scalar(select(func.count()).select_from(stmt.subquery())) or 0)


def forget(s: Session, paths: Sequence[str], *, dry_run: bool = False) -> ForgetCounts:
    """Delete the photo rows at or under ``paths`` (absolute) and the data of content no remaining row has.

    With ``dry_run`` only counts (the caller's read transaction changes nothing either way).
    """
    where = or_(*[_under(p) for p in paths])
    counts = ForgetCounts()
    ids: list[int] = []
    hashes: set[str] = set()
    for pid, h, status in s.execute(select(Photo.id, Photo.content_hash, Photo.status).where(where)):
        ids.append(pid)
        counts.ok += int(status == PhotoStatus.OK)
        if h:
            hashes.add(h)
    counts.photos = len(ids)
    gone_ids = set(ids)
    kept: set[str] = set()
    for chunk in chunks(sorted(hashes)):
        same = select(Photo.id, Photo.content_hash).where(Photo.content_hash.in_(list(chunk)))
        kept.update(h for pid, h in s.execute(same) if pid not in gone_ids and h)
    orphans = sorted(hashes - kept)
    counts.shared = len(hashes & kept)
    for chunk in chunks(orphans):
        members = list(chunk)
        counts.scores += _count(s, select(Score.id).where(Score.content_hash.in_(members)))
        counts.features += _count(s, select(CachedFeatures.content_hash)
                                  .where(CachedFeatures.content_hash.in_(members)))
        counts.embeddings += _count(s, select(PhotoEmbedding.content_hash)
                                    .where(PhotoEmbedding.content_hash.in_(members)))
    # A link whose two ends are both orphans is counted once.
    link_keys: set[tuple[str, str, str]] = set()
    for chunk in chunks(orphans):
        members = list(chunk)
        touching = select(PhotoLink.vision_id, PhotoLink.hash_a, PhotoLink.hash_b).where(
            or_(PhotoLink.hash_a.in_(members), PhotoLink.hash_b.in_(members))
        )
        link_keys.update((v, a, b) for v, a, b in s.execute(touching))
    counts.links = len(link_keys)
    if dry_run:
        return counts
    for chunk in chunks(orphans):
        members = list(chunk)
        for removal in (
            delete(Score).where(Score.content_hash.in_(members)),
            delete(CachedFeatures).where(CachedFeatures.content_hash.in_(members)),
            delete(PhotoEmbedding).where(PhotoEmbedding.content_hash.in_(members)),
            delete(PhotoLink).where(or_(PhotoLink.hash_a.in_(members), PhotoLink.hash_b.in_(members))),
        ):
            s.execute(removal.execution_options(synchronize_session=False))
    for id_chunk in chunks(ids):
        s.execute(delete(Photo).where(Photo.id.in_(list(id_chunk))).execution_options(synchronize_session=False))
    return counts
