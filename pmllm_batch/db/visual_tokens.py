"""The ``visual_tokens`` table: cached projector output per content hash and vision graph, as float16 bytes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pmllm_batch.db.schema import VisualTokens
from pmllm_batch.db.sql import RowValues, chunks, insert_ignore, table_of


def encode(items: Mapping[str, np.ndarray], vision_id: str) -> list[RowValues]:
    """Rows for :func:`put`: each array as little-endian float16 bytes plus its shape."""
    rows: list[RowValues] = []
    for h, arr in items.items():
        half = np.ascontiguousarray(np.asarray(arr), dtype="<f2")
        rows.append(
            {
                "content_hash": h,
                "vision_id": vision_id,
                "shape_json": json.dumps(list(half.shape)),
                "dtype": "float16",
                "data": half.tobytes(),
            }
        )
    return rows


def get(s: Session, hashes: Sequence[str], vision_id: str) -> dict[str, np.ndarray]:
    """hash -> float32 array of the stored shape, for the cached ones among ``hashes``."""
    out: dict[str, np.ndarray] = {}
    for chunk in chunks(list(dict.fromkeys(hashes))):
        stmt = select(VisualTokens.content_hash, VisualTokens.shape_json, VisualTokens.data).where(
            VisualTokens.vision_id == vision_id, VisualTokens.content_hash.in_(list(chunk))
        )
        for h, shape_json, data in s.execute(stmt):
            shape = tuple(json.loads(shape_json))
            out[h] = np.frombuffer(data, dtype="<f2").reshape(shape).astype(np.float32)
    return out


def present(s: Session, hashes: Sequence[str], vision_id: str) -> set[str]:
    """Which of ``hashes`` are cached under ``vision_id`` (without reading their blobs)."""
    out: set[str] = set()
    for chunk in chunks(list(dict.fromkeys(hashes))):
        stmt = select(VisualTokens.content_hash).where(
            VisualTokens.vision_id == vision_id, VisualTokens.content_hash.in_(list(chunk))
        )
        out.update(s.scalars(stmt))
    return out


def put(s: Session, rows: list[RowValues]) -> int:
    """Insert rows from :func:`encode`; keys already cached are left as they are. Returns how many were new."""
    return insert_ignore(s, table_of(VisualTokens), rows, ["content_hash", "vision_id"])


def totals(s: Session) -> tuple[int, int]:
    """(number of cached entries, total bytes of their blobs)."""
    n, total = s.execute(select(func.count(), func.coalesce(func.sum(func.length(VisualTokens.data)), 0))).one()
    return int(n), int(total)
