"""The engine, its transaction scopes and the translation of "the database is unusable" errors.

Every statement runs inside :meth:`Database.read` or :meth:`Database.write`, each one short transaction,
so a killed process loses at most the batch it was writing, and a second process (``pmllm-batch status``
while the daemon runs) can read at any time.

SQLite specifics (the default backend):

* WAL journal, so readers never wait for the writer and the writer never waits for readers;
* ``busy_timeout`` 30 s, so two writers queue instead of failing;
* ``foreign_keys=ON``, so removing a profile removes its scores;
* ``synchronous=NORMAL``: durable at every checkpoint and never corrupt, which is what WAL needs;
* write transactions start with ``BEGIN IMMEDIATE``. A deferred transaction that reads and then
  writes can fail at once with "database is locked" when another writer committed in between (the
  busy timeout does not apply to that upgrade), so writers take the write lock up front.

Based on: beets ``beets/dbcore/db.py`` (``Database``, ``Transaction``, ``_handle_mutate``), redone
with SQLAlchemy sessions.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from pmllm_batch.errors import DBAccessError

BUSY_TIMEOUT_MS = 30_000


def _is_access_error(exc: BaseException) -> bool:
    # Integrity/programming errors are bugs and must keep their traceback; only "the database itself is
    # unusable" errors (cannot open, read-only, locked, not a database, disk full) are the user's to fix.
    return type(exc) in (sa_exc.OperationalError, sa_exc.DatabaseError)


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    if isinstance(orig, OSError):
        text = orig.strerror or str(orig)
    else:
        text = str(orig).splitlines()[0] if str(orig) else type(orig).__name__
    text = text.rstrip(". ")
    lowered = text.lower()
    if "readonly" in lowered or "read-only" in lowered or "permission" in lowered:
        text += " (check that the file and its folder are writable)"
    elif "locked" in lowered or "busy" in lowered:
        text += f" (another process kept it busy for over {BUSY_TIMEOUT_MS // 1000} s)"
    return text


def _install_sqlite_hooks(engine: Engine, *, memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        # Take BEGIN away from the sqlite3 module (it skips BEGIN before SELECT, breaking repeatable reads);
        # the "begin" hook below emits it instead (SQLAlchemy's documented recipe).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys = ON")
            if not memory:
                cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get("pmllm_begin", "BEGIN"))


class Database:
    """One engine for one URL, and the read and write transactions every table module runs in.

    Args:
        url: Any SQLAlchemy URL. For a SQLite file its parent folder is created.

    Raises:
        DBAccessError: The URL is not valid, its driver is missing, or the SQLite folder cannot be created.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.opening = True  # errors while opening all read "cannot open the database at ..."
        self._lock = threading.RLock()  # one writer per process; other processes queue on the busy timeout
        try:
            parsed = make_url(url)
        except sa_exc.ArgumentError:
            raise DBAccessError(f"cannot open the database at {url}: it is not a valid database URL.") from None
        self.safe_url = parsed.render_as_string(hide_password=True)
        sqlite = parsed.get_backend_name() == "sqlite"
        database = parsed.database or ""
        memory = sqlite and (database in ("", ":memory:") or "mode=memory" in database)
        self.sqlite_path: Path | None = None  # a SQLite file of ours (backed up before migrating), else None
        if sqlite and not memory and not database.startswith("file:"):
            self.sqlite_path = Path(database).expanduser()
            self.label = str(self.sqlite_path)
        elif sqlite and database.startswith("file:"):
            self.label = database  # a SQLite URI filename (…?mode=ro&uri=true); its folder is not ours to create
        else:
            self.label = self.safe_url

        if self.sqlite_path is not None:
            try:
                self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DBAccessError(f"cannot open the database at {self.label}: {_reason(exc)}.") from None

        connect_args: dict[str, object] = {}
        poolclass: type[StaticPool] | None = None  # None: the dialect's own pool
        if sqlite:
            connect_args = {"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000}
            if memory:
                # One shared connection, or every pooled connection would see its own empty database.
                poolclass = StaticPool
        try:
            self.engine: Engine = create_engine(parsed, connect_args=connect_args, poolclass=poolclass)
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError) as exc:
            raise DBAccessError(f"cannot open the database at {self.label}: {exc}.") from None
        except ImportError as exc:  # the URL's driver (psycopg2, pymysql …) is not installed
            raise DBAccessError(
                f"cannot open the database at {self.label}: its driver is not installed ({exc})."
            ) from None
        if sqlite:
            _install_sqlite_hooks(self.engine, memory=memory)
        self._write_engine = self.engine.execution_options(pmllm_begin="BEGIN IMMEDIATE")

    @contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Turn "the database is unusable" errors into a DBAccessError naming the database and the fix."""
        try:
            yield
        except (sa_exc.OperationalError, sa_exc.DatabaseError) as exc:
            if not _is_access_error(exc):
                raise
            verb = "open" if self.opening else action
            raise DBAccessError(f"cannot {verb} the database at {self.label}: {_reason(exc)}.") from None

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction (``BEGIN IMMEDIATE`` on SQLite); commits on success, rolls back on error."""
        with self._lock, self.errors("write"), Session(self._write_engine, expire_on_commit=False) as s, s.begin():
            yield s

    @contextmanager
    def read(self) -> Iterator[Session]:
        """One read transaction: a consistent snapshot that never blocks the writer (WAL)."""
        with self.errors("read"), Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    def close(self) -> None:
        """Return every pooled connection (the WAL is checkpointed when the last one closes)."""
        self.engine.dispose()
