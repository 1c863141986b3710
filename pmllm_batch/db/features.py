"""The ``features`` table: the feature cache, tower features per content hash and vision graph, as float16 bytes.

*Features* are the vision tower's output (before the projector), (n_feat, D_vis) per photo; the projector turns them
into *tokens* each time a photo is scored, so the cache does not depend on the adapter.

The cache is bounded: :func:`evict` deletes the least recently used entries (written or read longest ago) until
the blobs fit a byte budget, and counts them in the meta table (``status`` shows the count). An evicted photo
keeps its scores; it is only re-read from disk and encoded again when a profile or model added later needs it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select, tuple_, update
from sqlalchemy.orm import Session

from pmllm_batch.db import meta
from pmllm_batch.db.schema import META_CACHE_EVICTED, CachedFeatures
from pmllm_batch.db.sql import RowValues, chunks, insert_ignore, table_of

if TYPE_CHECKING:
    import numpy as np


def _now() -> int:
    return time.time_ns()


def encode(items: Mapping[str, np.ndarray], vision_id: str) -> list[RowValues]:
    """Rows for :func:`put`: each array as little-endian float16 bytes plus its shape."""
    import numpy as np

    rows: list[RowValues] = []
    now = _now()
    for h, arr in items.items():
        half = np.ascontiguousarray(np.asarray(arr), dtype="<f2")
        data = half.tobytes()
        rows.append(
            {
                "content_hash": h,
                "vision_id": vision_id,
                "shape_json": json.dumps(list(half.shape)),
                "dtype": "float16",
                "data": data,
                "nbytes": len(data),
                "used_at": now,
            }
        )
    return rows


def get(s: Session, hashes: Sequence[str], vision_id: str) -> dict[str, np.ndarray]:
    """hash -> float32 array of the stored shape, for the cached ones among ``hashes``."""
    import numpy as np

    out: dict[str, np.ndarray] = {}
    for chunk in chunks(list(dict.fromkeys(hashes))):
        stmt = select(CachedFeatures.content_hash, CachedFeatures.shape_json, CachedFeatures.data).where(
            CachedFeatures.vision_id == vision_id, CachedFeatures.content_hash.in_(list(chunk))
        )
        for h, shape_json, data in s.execute(stmt):
            shape = tuple(json.loads(shape_json))
            out[h] = np.frombuffer(data, dtype="<f2").reshape(shape).astype(np.float32)
    return out


def touch(s: Session, hashes: Sequence[str], vision_id: str) -> None:
    """Mark entries as just used (they move to the back of the eviction queue)."""
    now = _now()
    for chunk in chunks(list(dict.fromkeys(hashes))):
        s.execute(update(CachedFeatures).where(CachedFeatures.vision_id == vision_id,
                                               CachedFeatures.content_hash.in_(list(chunk))).values(used_at=now))


def present(s: Session, hashes: Sequence[str], vision_id: str) -> set[str]:
    """Which of ``hashes`` are cached under ``vision_id`` (without reading their blobs)."""
    out: set[str] = set()
    for chunk in chunks(list(dict.fromkeys(hashes))):
        stmt = select(CachedFeatures.content_hash).where(
            CachedFeatures.vision_id == vision_id, CachedFeatures.content_hash.in_(list(chunk))
        )
        out.update(s.scalars(stmt))
    return out


def put(s: Session, rows: list[RowValues]) -> int:
    """Insert rows from :func:`encode`; keys already cached are left as they are. Returns how many were new."""
    return insert_ignore(s, table_of(CachedFeatures), rows, ["content_hash", "vision_id"])


def evict(s: Session, budget_bytes: int) -> int:
    """Delete least recently used entries until the blobs total at most ``budget_bytes``. Returns how many went.

    ``budget_bytes`` <= 0 means no budget (nothing is evicted).
    """
    if budget_bytes <= 0:
        return 0
    total = int(s.execute(select(func.coalesce(func.sum(CachedFeatures.nbytes), 0))).scalar_one() or 0)
    if total <= budget_bytes:
        return 0
    victims: list[tuple[str, str]] = []
    stmt = select(CachedFeatures.content_hash, CachedFeatures.vision_id, CachedFeatures.nbytes).order_by(
        CachedFeatures.used_at.asc(), CachedFeatures.content_hash.asc()
    )
    for h, vid, nbytes in s.execute(stmt):
        if total <= budget_bytes:
            break
        victims.append((h, vid))
        total -= int(nbytes or 0)
    for chunk in chunks(victims):
        s.execute(delete(CachedFeatures).where(tuple_(CachedFeatures.content_hash, CachedFeatures.vision_id).in_(
            list(chunk))))
    meta.set_value(s, META_CACHE_EVICTED, str(evicted_count(s) + len(victims)))
    return len(victims)


def evicted_count(s: Session) -> int:
    """Entries the byte budget has evicted from this database, ever."""
    raw = meta.get_value(s, META_CACHE_EVICTED)
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        return 0


def totals(s: Session) -> tuple[int, int]:
    """(number of cached entries, total bytes of their blobs)."""
    n, total = s.execute(select(func.count(), func.coalesce(func.sum(func.length(CachedFeatures.data)), 0))).one()
    return int(n), int(total)
