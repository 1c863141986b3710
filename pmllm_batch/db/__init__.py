"""Library database: SQLAlchemy schema, migrations, one module per table, and the :class:`Store` facade over them.

The names below load :mod:`~pmllm_batch.db.store` (and with it SQLAlchemy, ~0.3 s) on first use, not when the package
is imported: ``status`` and ``profile list`` read an up-to-date SQLite library through :mod:`~pmllm_batch.db.quick`
without SQLAlchemy at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pmllm_batch.db.store import PhotoRecord, ProfileRow, RankedPhoto, Store, persona_digest

__all__ = ["PhotoRecord", "ProfileRow", "RankedPhoto", "Store", "persona_digest"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from pmllm_batch.db import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
