"""The ``meta`` table: key/value facts about the database itself (schema version, change counters)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from pmllm_batch.db.schema import Meta


def get_value(s: Session, key: str) -> str | None:
    """The stored value of ``key``, or None when it was never set."""
    row = s.get(Meta, key)
    return row.value if row is not None else None


def set_value(s: Session, key: str, value: str) -> None:
    """Store ``value`` under ``key``, replacing what was there."""
    row = s.get(Meta, key)
    if row is None:
        s.add(Meta(key=key, value=value))
    else:
        row.value = value


def delete_value(s: Session, key: str) -> None:
    """Forget ``key`` (nothing happens when it was never set)."""
    row = s.get(Meta, key)
    if row is not None:
        s.delete(row)
