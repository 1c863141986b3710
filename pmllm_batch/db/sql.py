"""Statement helpers the table modules share: chunked ``IN (...)`` lists and a portable INSERT-or-skip."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from pmllm_batch.db import schema

# Rows per IN (...) list: far below SQLite's bound-variable limit on every version still in use.
CHUNK = 500

T = TypeVar("T")

# One row of an INSERT: column name -> value.
RowValues = dict[str, object]


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def table_of(model: type[schema.Base]) -> Table:
    """The Core table behind an ORM class."""
    return cast(Table, model.__table__)


def insert_ignore(s: Session, table: Table, rows: list[RowValues], keys: list[str]) -> int:
    """INSERT rows, skipping those whose ``keys`` already exist; returns how many were inserted."""
    if not rows:
        return 0
    conn = s.connection()
    dialect = conn.dialect.name
    inserted = 0
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite":
            from sqlalchemy.dialects import sqlite as sqlite_dialect

            stmt = sqlite_dialect.insert(table).on_conflict_do_nothing(index_elements=keys)
            for chunk in chunks(rows):
                inserted += max(conn.execute(stmt, list(chunk)).rowcount, 0)
            return inserted
        # psycopg's executemany (SQLAlchemy's "insertmanyvalues") reports no row count: count what RETURNING gives
        from sqlalchemy.dialects import postgresql as postgresql_dialect

        pg_stmt = postgresql_dialect.insert(table).on_conflict_do_nothing(index_elements=keys)
        returning = pg_stmt.returning(table.c[keys[0]])
        for chunk in chunks(rows):
            inserted += len(conn.execute(returning, list(chunk)).all())
        return inserted
    # Portable fallback: look the keys up first. Safe here because writers hold the process lock, and a
    # racing second process can at worst hit the unique constraint (an error, never a duplicate).
    cols = [table.c[k] for k in keys]
    for chunk in chunks(rows):
        fresh: dict[tuple[object, ...], RowValues] = {}
        for row in chunk:
            fresh.setdefault(tuple(row[k] for k in keys), row)
        first = table.c[keys[0]]
        existing = {tuple(r) for r in conn.execute(select(*cols).where(first.in_({k[0] for k in fresh})))}
        todo = [row for key, row in fresh.items() if key not in existing]
        if todo:
            conn.execute(insert(table), todo)
            inserted += len(todo)
    return inserted
