"""Library database: SQLAlchemy schema, migrations, one module per table, and the :class:`Store` facade over them."""

from __future__ import annotations

from pmllm_batch.db.store import PhotoRecord, ProfileRow, RankedPhoto, Store, persona_digest

__all__ = ["PhotoRecord", "ProfileRow", "RankedPhoto", "Store", "persona_digest"]
