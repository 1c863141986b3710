"""Read-only access to another application's SQLite database."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

__all__ = ["DatabaseUnreadable", "columns", "open_read_only", "tables"]


class DatabaseUnreadable(Exception):
    """The file cannot be opened or queried as SQLite; ``str(exc)`` says why."""


def open_read_only(path: Path) -> sqlite3.Connection:
    """Open ``path`` read-only (``mode=ro``: no journal, no write, no new file); the app may keep running.

    Raises:
        DatabaseUnreadable: Missing, unreadable, or not an SQLite database.
    """
    if not path.is_file():
        raise DatabaseUnreadable("the file does not exist" if not path.exists() else "it is not a file")
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        conn.execute("PRAGMA query_only = ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # "file is not a database" shows here
    except sqlite3.Error as exc:
        raise DatabaseUnreadable(str(exc)) from None
    return conn


def tables(conn: sqlite3.Connection) -> set[str]:
    """Table names, lower-cased (SQLite matches table names case-insensitively)."""
    return {str(r[0]).lower() for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    """Column names of ``table``, lower-cased."""
    return {str(r[1]).lower() for r in conn.execute(f'PRAGMA table_info("{table}")')}
