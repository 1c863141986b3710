"""Quick reads for ``status`` and ``profile list``: an up-to-date SQLite library read with the standard library only.

SQLAlchemy and the schema take about 0.45 s to import, most of the start-up of those two commands (issue 24: they
must start in at most 0.5 s). For a plain SQLite file whose schema is this code's (:data:`SCHEMA_VERSION`) the
functions here read the same rows with :mod:`sqlite3`, in one read transaction, and return exactly what the
:class:`~pmllm_batch.db.Store` path returns (``Store.status()``; ``list_profiles()`` with ``score_counts()``).

They return None whenever anything is unusual — not a plain ``sqlite:///FILE`` URL, no such file, a file this user
cannot write (the Store opens those specially), another schema version, any error at all — and the caller then takes
the Store path, which has the real behaviour and messages (a migration, "there is no database", a damaged file …).

The file is opened ``mode=rw`` (never created) with ``PRAGMA query_only``: nothing is written, and as with the Store
the last connection to close removes the WAL files. A ``mode=ro`` connection would leave ``-wal`` and ``-shm`` files
behind next to the library after every ``status`` (a read-only connection may create them but not remove them).

Importing this module imports no SQLAlchemy: keep it that way.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import urllib.parse
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pmllm_batch.contracts import PhotoStatus
from pmllm_batch.db.plain import RunRow, model_info, model_meta, run_info
from pmllm_batch.db.records import ExifWarning, FailedPhoto, ModelInfo, ProfileRow, RunInfo
from pmllm_batch.profiles import Profile

if TYPE_CHECKING:
    from pmllm_batch.db.store import LibraryStatus

__all__ = ["SCHEMA_VERSION", "library_status", "profile_listing", "sqlite_database"]

# The schema version these queries are written for: pmllm_batch.db.schema.latest_version() (a test checks they agree).
# A database at any other version takes the Store path, which migrates it or refuses it.
SCHEMA_VERSION = 6

T = TypeVar("T")

# Characters a SQLite file name may hold here: those SQLAlchemy neither unquotes when it parses the URL nor quotes when
# it shows it, so the file and the "database:" line are the same under every SQLAlchemy 2.x. Others take the Store path.
_PLAIN_FILE_NAME = re.compile(r"[\w.~ +/-]+", re.ASCII)
_PLAIN_SQLITE = "sqlite:///"
_BUSY_TIMEOUT_S = 30.0  # as the Store's (pmllm_batch.db.engine.BUSY_TIMEOUT_MS)


def sqlite_database(url: str) -> str | None:
    """The file a plain ``sqlite:///FILE`` URL names (as SQLAlchemy's ``make_url(url).database``), or None for any
    other URL (another backend or driver, options after "?", memory, a ``file:`` URI, unusual characters)."""
    if not url.startswith(_PLAIN_SQLITE):
        return None
    database = url[len(_PLAIN_SQLITE):]
    return database if _PLAIN_FILE_NAME.fullmatch(database) else None


def library_status(url: str) -> LibraryStatus | None:
    """What ``Store(url).status()`` returns, read without SQLAlchemy; None: take the Store path (see the module)."""
    return _read(url, lambda conn: _status(conn, url))


def profile_listing(url: str) -> tuple[list[ProfileRow], dict[str, int]] | None:
    """What ``Store(url).list_profiles()`` and ``.score_counts()`` return, read without SQLAlchemy; None: take the
    Store path (see the module)."""
    return _read(url, lambda conn: (_profiles(conn), _score_counts(conn, _current_model_id(conn))))


def _read(url: str, body: Callable[[sqlite3.Connection], T]) -> T | None:
    """``body(connection)`` in one read transaction on an up-to-date SQLite library; None when that is not what
    ``url`` names, or when anything at all goes wrong (the Store path then says what, or shows it works)."""
    database = sqlite_database(url)
    if database is None:
        return None
    path = Path(database).expanduser()
    # The Store opens a file it may not write (or whose folder it may not write) read-only, immutable when need be.
    if not path.is_file() or not os.access(path, os.R_OK | os.W_OK) or not os.access(path.parent, os.W_OK):
        return None
    uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("BEGIN")  # one snapshot for every read, as Store.status()
        if _meta_value(conn, "schema_version") != str(SCHEMA_VERSION):
            return None
        return body(conn)
    except Exception:  # anything unusual: the Store path has the real behaviour and message
        return None
    finally:
        conn.close()


def _meta_value(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _count(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _time(value: str | None) -> datetime | None:
    """A time as SQLAlchemy stores it in SQLite ("2026-01-02 03:04:05.000006", naive UTC)."""
    return datetime.fromisoformat(value) if value is not None else None


def _current_model_id(conn: sqlite3.Connection) -> int | None:
    raw = _meta_value(conn, "current_model_id")  # schema.META_CURRENT_MODEL
    return int(raw) if raw else None


def _status(conn: sqlite3.Connection, url: str) -> LibraryStatus:
    """``Store.status()`` (see there), keys in the same order (``url`` is plain: SQLAlchemy shows it as it is)."""
    mid = _current_model_id(conn)
    entries, nbytes = conn.execute("SELECT count(*), coalesce(sum(length(data)), 0) FROM features").fetchone()
    evicted = _meta_value(conn, "visual_cache_evicted")  # schema.META_CACHE_EVICTED
    scored = _per_profile(conn, mid)
    return {
        "photos": _count_by_status(conn),
        "profiles": _count(conn, "profiles"),
        "models": _count(conn, "models"),
        "current_model": _model(conn, mid),
        "scores_current_model": sum(scored.values()),
        "photos_scored_current_model": max(scored.values(), default=0),
        "exif_warnings": _exif_warnings(conn),
        "visual_cache": {"entries": int(entries), "bytes": int(nbytes), "evicted": _int_or_zero(evicted)},
        "failures": _failures(conn),
        "last_run": _last_run(conn),
        "ratings": _ratings(conn),
        "db": url,
    }


def _ratings(conn: sqlite3.Connection) -> dict[str, int]:
    """Profile name -> ratings of content an ok photo still has (``db.ratings.counts_by_profile(in_library=True)``)."""
    rows = conn.execute(
        "SELECT p.name, count(r.id) FROM profiles p LEFT JOIN ratings r ON r.profile_id = p.id AND r.content_hash IN "
        "(SELECT content_hash FROM photos WHERE status = 'ok' AND content_hash IS NOT NULL) GROUP BY p.id, p.name "
        "ORDER BY p.name"
    )
    return {str(name): int(n) for name, n in rows}


def _int_or_zero(raw: str | None) -> int:
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        return 0


def _count_by_status(conn: sqlite3.Connection) -> dict[PhotoStatus, int]:
    counts: dict[PhotoStatus, int] = {PhotoStatus.OK: 0, PhotoStatus.FAILED: 0, PhotoStatus.MISSING: 0}
    for status, n in conn.execute("SELECT status, count(*) FROM photos GROUP BY status"):
        counts[PhotoStatus(status)] = int(n)
    return counts


def _per_profile(conn: sqlite3.Connection, model_id: int | None) -> dict[int, int]:
    if model_id is None:
        return {}
    rows = conn.execute("SELECT profile_id, count(*) FROM scores WHERE model_id = ? GROUP BY profile_id", (model_id,))
    return {int(pid): int(n) for pid, n in rows}


def _model(conn: sqlite3.Connection, model_id: int | None) -> ModelInfo | None:
    if model_id is None:
        return None
    row = conn.execute("SELECT id, fingerprint, preset, meta_json FROM models WHERE id = ?", (model_id,)).fetchone()
    return None if row is None else model_info(row[0], row[1], row[2], model_meta(row[3]))


def _exif_warnings(conn: sqlite3.Connection) -> list[ExifWarning]:
    rows = conn.execute("SELECT path, exif_warning, status FROM photos WHERE exif_warning IS NOT NULL")
    found = sorted((p, w) for p, w, st in rows if st == PhotoStatus.OK)
    return [{"path": p, "warning": w or ""} for p, w in found]


def _failures(conn: sqlite3.Connection) -> list[FailedPhoto]:
    rows = conn.execute("SELECT path, error_reason, error_message FROM photos WHERE status = ? ORDER BY path",
                        (PhotoStatus.FAILED.value,))
    return [{"path": p, "reason": r, "message": m} for p, r, m in rows]


def _last_run(conn: sqlite3.Connection) -> RunInfo | None:
    row = conn.execute("SELECT id, kind, status, pid, host, started_at, finished_at, args_json, summary_json "
                       "FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    if row is None:
        return None
    run_id, kind, status, pid, host, started, finished, args_json, summary_json = row
    run = RunRow(run_id, kind, status, pid, host, _time(started), _time(finished), args_json, summary_json)
    return run_info(run, _this_host() if status == "running" else "")  # only a running row is compared with it


def _this_host() -> str:
    import socket  # only for a "running" row: its import is start-up time

    return socket.gethostname()


def _profiles(conn: sqlite3.Connection) -> list[ProfileRow]:
    """``Store.list_profiles()``: every stored profile, by name."""
    rows = conn.execute("SELECT id, name, fields_json, persona, persona_hash, updated_at FROM profiles ORDER BY name")
    return [
        ProfileRow(id=pid, name=name, profile=Profile.from_dict(json.loads(fields), source=f"stored profile '{name}'"),
                   persona=persona, persona_hash=digest, updated_at=datetime.fromisoformat(updated))
        for pid, name, fields, persona, digest, updated in rows
    ]


def _score_counts(conn: sqlite3.Connection, model_id: int | None) -> dict[str, int]:
    """``Store.score_counts()``: profile name -> distinct "ok" content hashes the model scored; every profile."""
    names = {pid: name for pid, name in conn.execute("SELECT id, name FROM profiles")}
    out = dict.fromkeys(sorted(names.values()), 0)
    if model_id is None:
        return out
    rows = conn.execute(
        "SELECT profile_id, count(DISTINCT content_hash) FROM scores WHERE model_id = ? AND content_hash IN "
        "(SELECT content_hash FROM photos WHERE status = ?) GROUP BY profile_id",
        (model_id, PhotoStatus.OK.value),
    )
    for pid, n in rows:
        if pid in names:
            out[names[pid]] = int(n)
    return out
