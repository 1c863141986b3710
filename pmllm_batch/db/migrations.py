"""Bringing a database to this code's schema: version check, backup, then the named migrations in order.

The steps themselves live in :mod:`pmllm_batch.db.schema` (``MIGRATIONS``); this module decides which of
them still have to run, records each one in the ``migrations`` table, and refuses a database written by a
newer pmllm-batch. As in beets (``create_backup``), a SQLite file that already holds data is copied aside
first.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from pmllm_batch.db import meta, schema
from pmllm_batch.db.engine import Database
from pmllm_batch.db.schema import META_PROFILES_VERSION, META_SCHEMA_VERSION, Meta, MigrationRecord, utcnow
from pmllm_batch.errors import DBAccessError
from pmllm_batch.log import get_logger

log = get_logger("db")


def schema_version(s: Session, label: str) -> int:
    """Schema version recorded in the database (0 for an empty one).

    Raises:
        DBAccessError: The database holds other programs' tables, or an unreadable version.
    """
    conn = s.connection()
    if not schema.has_table(conn, Meta.__tablename__):
        foreign = sorted(set(inspect(conn).get_table_names()) - set(schema.Base.metadata.tables))
        if foreign:
            raise DBAccessError(
                f"the database at {label} is not a pmllm-batch database "
                f"(it holds other tables: {', '.join(foreign[:5])}); choose another --db."
            )
        return 0
    raw = meta.get_value(s, META_SCHEMA_VERSION)
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        raise DBAccessError(
            f"the database at {label} has an unreadable schema version {raw!r}; restore it from a backup."
        ) from None


def _check_not_newer(version: int, label: str) -> None:
    latest = schema.latest_version()
    if version > latest:
        raise DBAccessError(
            f"the database at {label} has schema version {version}, newer than this pmllm-batch "
            f"understands ({latest}); upgrade pmllm-batch."
        )


def migrate(db: Database) -> None:
    """Apply every migration the database lacks, in one write transaction, after a backup.

    Raises:
        DBAccessError: See :func:`schema_version`; also a newer schema than this code knows, or a failed backup.
    """
    # Look first without the write lock, so opening an up-to-date database never waits for a busy writer.
    with db.read() as s:
        version = schema_version(s, db.label)
    _check_not_newer(version, db.label)
    if version == schema.latest_version():
        return
    if db.read_only:
        raise DBAccessError(
            f"the database at {db.label} needs a schema upgrade (version {version} to {schema.latest_version()}) "
            "but is read-only for this user; open it once where it can be written."
        )
    with db.write() as s:
        conn = s.connection()
        version = schema_version(s, db.label)  # another process may have migrated meanwhile
        _check_not_newer(version, db.label)
        pending = [m for m in schema.MIGRATIONS if m.version > version]
        if not pending:
            return
        if version > 0:
            backup(db, version)
        applied: set[str] = set()
        if schema.has_table(conn, MigrationRecord.__tablename__):
            applied = set(s.scalars(select(MigrationRecord.name)))
        for migration in pending:
            if migration.name not in applied:
                log.info("applying database migration %s to %s", migration.name, db.label)
                migration.apply(conn)
                s.add(MigrationRecord(name=migration.name, version=migration.version, applied_at=utcnow()))
            meta.set_value(s, META_SCHEMA_VERSION, str(migration.version))
            s.flush()
        if meta.get_value(s, META_PROFILES_VERSION) is None:
            meta.set_value(s, META_PROFILES_VERSION, "0")


def backup(db: Database, version: int) -> Path | None:
    """Copy a SQLite file aside before migrating it (beets ``create_backup``); other backends are left alone."""
    if db.sqlite_path is None:
        return None
    stamp = utcnow().strftime("%Y%m%dT%H%M%S")
    target = db.sqlite_path.with_name(f"{db.sqlite_path.name}.v{version}-{stamp}.bak")
    src = sqlite3.connect(str(db.sqlite_path))
    dst = sqlite3.connect(str(target))
    try:
        src.backup(dst)
    except sqlite3.Error as exc:
        raise DBAccessError(
            f"cannot back up the database at {db.label} to {target} before migrating it: {exc}."
        ) from None
    finally:
        dst.close()
        src.close()
    log.warning("backed up %s to %s before upgrading its schema", db.label, target)
    return target
