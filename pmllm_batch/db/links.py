"""Links between photos (bursts, near-duplicates) and RAW twins: the ``photo_embeddings``, ``photo_links`` and
``group_state`` tables.

The scorer's burst linker stores one pooled visual embedding per content hash and vision graph, compares each new one
with a few *candidates* only (photos taken within seconds of it, or sharing one of its locality-sensitive hash buckets)
and records every pair that is nearly the same photo as a link. The outputs read the links of the photos they show and
show each connected group once per person (:mod:`pmllm_batch.outputs.bursts`).

The SQL lives in module functions taking a Session; :class:`LinkStore` is the part of the
:class:`~pmllm_batch.db.store.Store` facade that calls them, each method one short transaction.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import Executable, bindparam, delete, func, or_, select, update
from sqlalchemy.orm import Session

from pmllm_batch.contracts import JSON, JSONDict, PhotoStatus, SkipReason
from pmllm_batch.db import models
from pmllm_batch.db.schema import GroupState, ModelRow, Photo, PhotoEmbedding, PhotoLink
from pmllm_batch.db.sql import RowValues, chunks, insert_ignore, table_of

if TYPE_CHECKING:
    import numpy as np

    from pmllm_batch.db.engine import Database

__all__ = ["EmbeddingRow", "LSH_TABLES", "LinkStore", "taken_seconds"]

LSH_TABLES = 4  # columns lsh0 .. lsh3


@dataclass
class EmbeddingRow:
    """One stored embedding as the grouping code reads it."""

    content_hash: str
    vector: np.ndarray  # (dim,) float32, unit length
    taken_s: int | None
    lsh: tuple[int, ...]  # LSH_TABLES bucket keys


def taken_seconds(taken_at: str | None) -> int | None:
    """An EXIF capture time (``YYYY-MM-DDTHH:MM:SS``, local time without a zone) as whole seconds, read as UTC, so
    differences between two capture times are exact; None when unknown or unreadable."""
    if not taken_at:
        return None
    try:
        moment = datetime.fromisoformat(taken_at[:19])
    except ValueError:
        return None
    return int(moment.replace(tzinfo=UTC).timestamp())


def _vector(data: bytes, dim: int) -> np.ndarray:
    import numpy as np

    return np.frombuffer(data, dtype="<f4", count=dim).astype(np.float32)


_COLUMNS = (
    PhotoEmbedding.content_hash, PhotoEmbedding.dim, PhotoEmbedding.data, PhotoEmbedding.taken_s,
    PhotoEmbedding.lsh0, PhotoEmbedding.lsh1, PhotoEmbedding.lsh2, PhotoEmbedding.lsh3,
)
_LSH = (PhotoEmbedding.lsh0, PhotoEmbedding.lsh1, PhotoEmbedding.lsh2, PhotoEmbedding.lsh3)


def _rows(s: Session, stmt: Executable) -> list[EmbeddingRow]:
    return [
        EmbeddingRow(h, _vector(data, dim), taken, (l0, l1, l2, l3))
        for h, dim, data, taken, l0, l1, l2, l3 in s.execute(stmt)
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Session-level functions
# ---------------------------------------------------------------------------------------------------------------------


def put_embeddings(s: Session, vision_id: str, items: Mapping[str, tuple[np.ndarray, Sequence[int]]]) -> int:
    """Insert (unit vector, LSH keys) per hash, not yet linked; hashes already stored are left alone."""
    import numpy as np

    rows: list[RowValues] = []
    for h, (vec, lsh) in items.items():
        arr = np.ascontiguousarray(vec, dtype="<f4")
        row: RowValues = {"content_hash": h, "vision_id": vision_id, "dim": int(arr.shape[0]), "data": arr.tobytes(),
                          "taken_s": None, "linked": 0}
        row.update({f"lsh{i}": int(k) for i, k in enumerate(lsh)})
        rows.append(row)
    return insert_ignore(s, table_of(PhotoEmbedding), rows, ["content_hash", "vision_id"])


def embedded_hashes(s: Session, vision_id: str) -> set[str]:
    stmt = select(PhotoEmbedding.content_hash).where(PhotoEmbedding.vision_id == vision_id)
    return set(s.scalars(stmt))


def pending(s: Session, vision_id: str, limit: int) -> list[EmbeddingRow]:
    stmt = (
        select(*_COLUMNS)
        .where(PhotoEmbedding.vision_id == vision_id, PhotoEmbedding.linked == 0)
        .order_by(PhotoEmbedding.content_hash)
        .limit(limit)
    )
    return _rows(s, stmt)


def every_row(s: Session, vision_id: str) -> list[EmbeddingRow]:
    return _rows(s, select(*_COLUMNS).where(PhotoEmbedding.vision_id == vision_id))


def by_buckets(
    s: Session, vision_id: str, probes: Sequence[Collection[int]], *, untimed_only: bool = False
) -> list[EmbeddingRow]:
    """Every embedding in one of the probed buckets of any LSH table (``probes[t]``: keys of table ``t``)."""
    out: dict[str, EmbeddingRow] = {}
    for column, keys in zip(_LSH, probes, strict=False):
        for chunk in chunks(sorted(keys)):
            stmt = select(*_COLUMNS).where(PhotoEmbedding.vision_id == vision_id, column.in_(list(chunk)))
            if untimed_only:
                stmt = stmt.where(PhotoEmbedding.taken_s.is_(None))
            for row in _rows(s, stmt):
                out.setdefault(row.content_hash, row)
    return list(out.values())


def by_time(s: Session, vision_id: str, ranges: Sequence[tuple[int, int]]) -> list[EmbeddingRow]:
    """Every embedding whose capture time lies in one of the (inclusive) ``ranges``."""
    out: dict[str, EmbeddingRow] = {}
    for chunk in chunks(list(ranges), 50):
        cond = or_(*[PhotoEmbedding.taken_s.between(lo, hi) for lo, hi in chunk])
        stmt = select(*_COLUMNS).where(PhotoEmbedding.vision_id == vision_id, cond)
        for row in _rows(s, stmt):
            out.setdefault(row.content_hash, row)
    return list(out.values())


def capture_times(s: Session, hashes: Sequence[str]) -> dict[str, int | None]:
    """Capture time (seconds) per content hash, from its photo rows (an ok row's when there is one)."""
    out: dict[str, int | None] = {}
    for chunk in chunks(list(dict.fromkeys(hashes))):
        stmt = select(Photo.content_hash, Photo.taken_at).where(Photo.content_hash.in_(list(chunk)))
        for h, taken_at in s.execute(stmt.order_by(Photo.status != PhotoStatus.OK)):
            if h is not None and out.get(h) is None:
                out[h] = taken_seconds(taken_at)
    return out


def _update_many(s: Session, vision_id: str, values: Mapping[str, str], rows: list[RowValues]) -> None:
    """One executemany UPDATE of embeddings by hash (``rows`` hold ``_h`` and the ``values`` parameters)."""
    if not rows:
        return
    table = table_of(PhotoEmbedding)
    stmt = (
        table.update()
        .where(table.c.vision_id == vision_id, table.c.content_hash == bindparam("_h"))
        .values({col: bindparam(param) for col, param in values.items()})
    )
    conn = s.connection()
    for chunk in chunks(rows):
        conn.execute(stmt, list(chunk))


def set_capture_times(s: Session, vision_id: str, taken: Mapping[str, int | None]) -> None:
    rows: list[RowValues] = [{"_h": h, "_t": t} for h, t in taken.items()]
    _update_many(s, vision_id, {"taken_s": "_t"}, rows)


def unlinked_hashes(s: Session, vision_id: str) -> list[str]:
    stmt = select(PhotoEmbedding.content_hash).where(PhotoEmbedding.vision_id == vision_id, PhotoEmbedding.linked == 0)
    return sorted(s.scalars(stmt))


def finish_linking(
    s: Session,
    vision_id: str,
    compared: Sequence[str],
    links: Iterable[tuple[str, str, float, float | None]],
) -> None:
    """Store the links found for the ``compared`` embeddings and mark those linked."""
    for chunk in chunks(list(compared)):
        s.execute(
            update(PhotoEmbedding)
            .where(PhotoEmbedding.vision_id == vision_id, PhotoEmbedding.content_hash.in_(list(chunk)))
            .values(linked=1)
            .execution_options(synchronize_session=False)
        )
    rows: list[RowValues] = []
    for a, b, sim, apart in links:
        lo, hi = (a, b) if a < b else (b, a)
        rows.append({"vision_id": vision_id, "hash_a": lo, "hash_b": hi, "similarity": float(sim),
                     "seconds_apart": None if apart is None else float(apart)})
    insert_ignore(s, table_of(PhotoLink), rows, ["vision_id", "hash_a", "hash_b"])


def links(s: Session, vision_id: str) -> list[tuple[str, str, float]]:
    stmt = select(PhotoLink.hash_a, PhotoLink.hash_b, PhotoLink.similarity).where(PhotoLink.vision_id == vision_id)
    return [(a, b, float(sim)) for a, b, sim in s.execute(stmt)]


def state(s: Session, vision_id: str) -> tuple[JSONDict, np.ndarray | None, int] | None:
    import numpy as np

    row = s.get(GroupState, vision_id)
    if row is None:
        return None
    center = np.frombuffer(row.center, dtype="<f4").astype(np.float32) if row.center else None
    params: JSONDict = json.loads(row.params_json)
    return params, center, int(row.center_n or 0)


def set_state(
    s: Session, vision_id: str, params: Mapping[str, JSON], center: np.ndarray | None, center_n: int
) -> None:
    import numpy as np

    row = s.get(GroupState, vision_id)
    data = None if center is None else np.ascontiguousarray(center, dtype="<f4").tobytes()
    text = json.dumps(dict(params), sort_keys=True)
    if row is None:
        s.add(GroupState(vision_id=vision_id, params_json=text, center=data, center_n=center_n))
    else:
        row.params_json, row.center, row.center_n = text, data, center_n


def relink_all(s: Session, vision_id: str) -> None:
    """Forget every link of ``vision_id`` and mark every embedding for comparing again."""
    s.execute(delete(PhotoLink).where(PhotoLink.vision_id == vision_id))
    s.execute(
        update(PhotoEmbedding).where(PhotoEmbedding.vision_id == vision_id).values(linked=0)
        .execution_options(synchronize_session=False)
    )


def all_vectors(s: Session, vision_id: str) -> list[tuple[str, np.ndarray]]:
    stmt = select(PhotoEmbedding.content_hash, PhotoEmbedding.dim, PhotoEmbedding.data).where(
        PhotoEmbedding.vision_id == vision_id
    )
    return [(h, _vector(data, dim)) for h, dim, data in s.execute(stmt)]


def matrix(s: Session, vision_id: str) -> tuple[list[str], np.ndarray]:
    """Every embedding under ``vision_id`` in one query: (content hashes, float32 matrix, one row each, in that order).

    Rows of another width than the most common one (none in a library: one vision graph, one width) are left out.
    Read through the Core table (no ORM rows: 20,000 embeddings in a fraction of a second).
    """
    import numpy as np

    table = table_of(PhotoEmbedding)
    conn = s.connection()
    widths = conn.execute(select(table.c.dim, func.count()).where(table.c.vision_id == vision_id)
                          .group_by(table.c.dim)).all()
    if not widths:
        return [], np.zeros((0, 0), dtype=np.float32)
    width = int(max(widths, key=lambda row: (row[1], row[0]))[0])
    rows = conn.execute(select(table.c.content_hash, table.c.data)
                        .where(table.c.vision_id == vision_id, table.c.dim == width)).all()
    size = 4 * width
    kept = [(h, data) for h, data in rows if len(data) == size]
    flat = np.frombuffer(b"".join([data for _, data in kept]), dtype="<f4")
    return [h for h, _ in kept], flat.reshape(len(kept), width).astype(np.float32)


def set_buckets(s: Session, vision_id: str, buckets: Mapping[str, Sequence[int]]) -> None:
    rows: list[RowValues] = []
    for h, keys in buckets.items():
        row: RowValues = {"_h": h}
        row.update({f"_l{i}": int(k) for i, k in enumerate(keys)})
        rows.append(row)
    _update_many(s, vision_id, {f"lsh{i}": f"_l{i}" for i in range(LSH_TABLES)}, rows)


def raw_twins(s: Session) -> dict[tuple[str, str], list[str]]:
    """(folder, stem) -> paths of RAW files stored as ``raw_pair`` (ranked as the JPEG with that folder and stem)."""
    out: dict[tuple[str, str], list[str]] = {}
    stmt = select(Photo.path).where(Photo.status == PhotoStatus.SKIPPED, Photo.error_reason == SkipReason.RAW_PAIR)
    for (path,) in s.execute(stmt):
        folder, name = os.path.split(path)
        out.setdefault((folder, os.path.splitext(name)[0]), []).append(path)
    return {k: sorted(v) for k, v in out.items()}


def statuses(s: Session, paths: Sequence[str]) -> dict[str, PhotoStatus]:
    out: dict[str, PhotoStatus] = {}
    for chunk in chunks(list(dict.fromkeys(paths))):
        out.update((p, st) for p, st in s.execute(select(Photo.path, Photo.status).where(Photo.path.in_(list(chunk)))))
    return out


def vision_of(s: Session, model_id: int | None) -> str | None:
    """The vision graph id of a model (recorded with its recipe), None when unknown."""
    if model_id is None:
        return None
    row = s.get(ModelRow, model_id)
    if row is None:
        return None
    try:
        meta = json.loads(row.meta_json or "{}")
    except ValueError:
        return None
    vid = meta.get("vision_id") if isinstance(meta, dict) else None
    return vid if isinstance(vid, str) else None


# ---------------------------------------------------------------------------------------------------------------------
# The Store's part
# ---------------------------------------------------------------------------------------------------------------------


class LinkStore:
    """Links (bursts, near-duplicates) and RAW twins: the :class:`~pmllm_batch.db.store.Store` methods for them."""

    _db: Database

    def put_embeddings(self, vision_id: str, items: Mapping[str, tuple[np.ndarray, Sequence[int]]]) -> int:
        """Store pooled embeddings (unit vector, LSH bucket keys) per content hash, to be linked; returns how many
        were new (hashes already stored keep theirs)."""
        if not items:
            return 0
        with self._db.write() as s:
            return put_embeddings(s, vision_id, items)

    def embedded_hashes(self, vision_id: str) -> set[str]:
        """Content hashes that have an embedding under ``vision_id``."""
        with self._db.read() as s:
            return embedded_hashes(s, vision_id)

    def unlinked_embeddings(self, vision_id: str, limit: int = 2000) -> list[EmbeddingRow]:
        """Up to ``limit`` embeddings not yet compared with their candidates."""
        with self._db.read() as s:
            return pending(s, vision_id, limit)

    def all_embedding_rows(self, vision_id: str) -> list[EmbeddingRow]:
        """Every embedding under ``vision_id`` (a first run links thousands at once: one read instead of many)."""
        with self._db.read() as s:
            return every_row(s, vision_id)

    def embeddings_in_buckets(
        self, vision_id: str, probes: Sequence[Collection[int]], *, untimed_only: bool = False
    ) -> list[EmbeddingRow]:
        """Embeddings in any of the probed LSH buckets (``probes[t]`` = keys for table ``t``); ``untimed_only``: only
        those without a capture time."""
        with self._db.read() as s:
            return by_buckets(s, vision_id, probes, untimed_only=untimed_only)

    def embeddings_taken_between(self, vision_id: str, ranges: Sequence[tuple[int, int]]) -> list[EmbeddingRow]:
        """Embeddings whose capture time (seconds) lies in one of the inclusive ``ranges``."""
        if not ranges:
            return []
        with self._db.read() as s:
            return by_time(s, vision_id, ranges)

    def capture_times(self, hashes: Sequence[str]) -> dict[str, int | None]:
        """Capture time in seconds (EXIF local time read as UTC) per content hash; None when unknown."""
        with self._db.read() as s:
            return capture_times(s, hashes)

    def unlinked_hashes(self, vision_id: str) -> list[str]:
        """Content hashes whose embedding was not yet compared with its candidates."""
        with self._db.read() as s:
            return unlinked_hashes(s, vision_id)

    def set_capture_times(self, vision_id: str, taken: Mapping[str, int | None]) -> None:
        """Record the capture time (seconds, or None) of embeddings, so candidates by time find them."""
        if not taken:
            return
        with self._db.write() as s:
            set_capture_times(s, vision_id, taken)

    def finish_linking(
        self, vision_id: str, compared: Sequence[str], links: Iterable[tuple[str, str, float, float | None]]
    ) -> None:
        """In one transaction: the links found (hash, hash, similarity, seconds apart or None) and the "linked" mark of
        the ``compared`` embeddings."""
        with self._db.write() as s:
            finish_linking(s, vision_id, compared, links)

    def group_links(self, vision_id: str | None) -> list[tuple[str, str, float]]:
        """Every link (hash, hash, similarity) under ``vision_id`` (none for None)."""
        if vision_id is None:
            return []
        with self._db.read() as s:
            return links(s, vision_id)

    def group_state(self, vision_id: str) -> tuple[JSONDict, np.ndarray | None, int] | None:
        """(link settings, LSH centre, embeddings the centre came from) for ``vision_id``, or None."""
        with self._db.read() as s:
            return state(s, vision_id)

    def set_group_state(
        self, vision_id: str, params: Mapping[str, JSON], center: np.ndarray | None, center_n: int, *,
        relink: bool = False, buckets: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        """Record link settings and LSH centre; ``relink`` forgets every link first, ``buckets`` re-files embeddings
        (after a new centre). One transaction."""
        with self._db.write() as s:
            if relink:
                relink_all(s, vision_id)
            if buckets:
                set_buckets(s, vision_id, buckets)
            set_state(s, vision_id, params, center, center_n)

    def all_embeddings(self, vision_id: str) -> list[tuple[str, np.ndarray]]:
        """(hash, unit vector) of every embedding under ``vision_id`` (only when the LSH centre is re-taken)."""
        with self._db.read() as s:
            return all_vectors(s, vision_id)

    def embedding_matrix(self, vision_id: str) -> tuple[list[str], np.ndarray]:
        """Every embedding under ``vision_id`` as (content hashes, float32 matrix with one unit row per hash), read
        in one query (the per-person learner's raw features: :mod:`pmllm_batch.outputs.personal`)."""
        with self._db.read() as s:
            return matrix(s, vision_id)

    def vision_id_of(self, model_id: int | None) -> str | None:
        """The vision graph id a model was recorded with (whose embeddings are its photos' features), or None."""
        with self._db.read() as s:
            return vision_of(s, model_id)

    def raw_twins(self) -> dict[tuple[str, str], list[str]]:
        """(folder, stem) -> RAW files shown as the JPEG of that folder and stem (stored ``raw_pair``)."""
        with self._db.read() as s:
            return raw_twins(s)

    def photo_statuses(self, paths: Sequence[str]) -> dict[str, PhotoStatus]:
        """Status of each of ``paths`` that has a photo row."""
        if not paths:
            return {}
        with self._db.read() as s:
            return statuses(s, paths)

    def current_vision_id(self) -> str | None:
        """The vision graph of the current model (whose embeddings the groups come from), None when unknown."""
        with self._db.read() as s:
            return vision_of(s, models.current_id(s))
