"""Library database: SQLAlchemy schema, migrations and the :class:`Store` that owns every SQL statement."""

from __future__ import annotations

from pmllm_batch.db.store import PhotoRecord, ProfileRow, RankedPhoto, Store, persona_digest

__all__ = ["PhotoRecord", "ProfileRow", "RankedPhoto", "Store", "persona_digest"]
