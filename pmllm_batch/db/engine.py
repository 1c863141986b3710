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

Read-only databases (a read-only mount, a file or folder this user may not write) are opened read-only
(``mode=ro``; ``immutable=1`` when the WAL index cannot be created next to the file), so ``status``, ``export`` and
``report`` still work; a write then fails up front with one sentence naming the permission problem.

The *work lock* (:meth:`Database.work_lock`) lets one process at a time scan and score a library, so two ``rank``
runs, or ``rank`` beside ``watch``, never run vision twice for a photo: ``flock`` on ``<file>.lock`` for SQLite, a
session-level advisory lock for PostgreSQL. Both are released by the operating system or the server when the
holder dies, even by ``kill -9``.

Based on: beets ``beets/dbcore/db.py`` (``Database``, ``Transaction``, ``_handle_mutate``), redone
with SQLAlchemy sessions.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool, StaticPool

from pmllm_batch.errors import DBAccessError, DBUnavailableError

try:  # POSIX; elsewhere the work lock only serialises the threads of one process
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

BUSY_TIMEOUT_MS = 30_000
# Key of the PostgreSQL advisory lock (per database): "pmllm" in ASCII.
PG_WORK_LOCK_KEY = 0x706D6C6C6D
READ_ONLY_HINT = (
    "it is read-only for this user (the file or its folder is not writable, or the disk is mounted read-only); "
    "status, export and report can still read it"
)
# Errors after which trying again later can work (exit 75 instead of 4): a server that is down, a full disk.
_TRANSIENT = (
    "connection refused", "could not connect", "could not translate host name", "timeout expired",
    "server closed the connection", "the database system is starting up", "the database system is shutting down",
    "terminating connection", "connection to server", "no space left", "disk is full", "could not extend file",
    "disk i/o error",
)


def _is_access_error(exc: BaseException) -> bool:
    # Integrity/programming errors are bugs and must keep their traceback; only "the database itself is
    # unusable" errors (cannot open, read-only, locked, not a database, disk full) are the user's to fix.
    return type(exc) in (sa_exc.OperationalError, sa_exc.DatabaseError)


def _raw_text(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    if isinstance(orig, OSError):
        return (orig.strerror or str(orig)).rstrip(". ")
    return (str(orig).splitlines()[0] if str(orig) else type(orig).__name__).rstrip(". ")


def is_transient(exc: BaseException) -> bool:
    """Whether trying again later can work: the database server is unreachable, or the disk is full."""
    text = _raw_text(exc).lower()
    return any(marker in text for marker in _TRANSIENT)


def _reason(exc: BaseException) -> str:
    text = _raw_text(exc)
    lowered = text.lower()
    if "readonly" in lowered or "read-only" in lowered or "permission" in lowered:
        text += " (check that the file and its folder are writable)"
    elif "locked" in lowered or "busy" in lowered:
        text += f" (another process kept it busy for over {BUSY_TIMEOUT_MS // 1000} s)"
    elif "unable to open database file" in lowered:
        text += " (check that the file and its folder exist and that this user may read and write them)"
    elif "malformed" in lowered:
        text += (" (the file is damaged: `pmllm-batch status --check` says more; restore it from a backup, e.g. "
                 "a library.sqlite.v*.bak next to it, or move it aside to start a new one)")
    elif "disk i/o error" in lowered:
        text += " (the disk could not read or write it: is it full, unplugged or failing?)"
    elif "disk is full" in lowered or "no space left" in lowered or "could not extend file" in lowered:
        text += " (free some space and run it again; everything committed before is kept)"
    elif any(marker in lowered for marker in _TRANSIENT):
        text += " (is the database server running and reachable? nothing was lost: run it again once it is)"
    return text


def _sqlite_is_wal(path: Path) -> bool:
    # File format header: bytes 18 and 19 (read and write format versions) are 2 in WAL mode.
    try:
        with open(path, "rb") as fh:
            header = fh.read(20)
    except OSError:
        return False
    return len(header) == 20 and header[18] == 2 and header[19] == 2


def _sqlite_read_only(path: Path) -> bool:
    """Whether an existing SQLite file can only be read by this process (permissions, a read-only mount)."""
    if not path.exists():
        return False
    return not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK)


def _read_only_uri(path: Path) -> str:
    """A SQLite URI that opens ``path`` read-only (immutable when the WAL index cannot be made or read)."""
    quoted = urllib.parse.quote(str(path.absolute()))
    uri = f"file:{quoted}?mode=ro"
    shm = path.with_name(path.name + "-shm")
    if _sqlite_is_wal(path) and not shm.exists() and not os.access(path.parent, os.W_OK):
        # No reader can create the shared-memory index, and no writer can be running without one: nothing can
        # change the file under us, which is exactly what immutable promises SQLite.
        uri += "&immutable=1"
    return uri


def _install_sqlite_hooks(engine: Engine, *, memory: bool, read_only: bool = False) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        # Take BEGIN away from the sqlite3 module (it skips BEGIN before SELECT, breaking repeatable reads);
        # the "begin" hook below emits it instead (SQLAlchemy's documented recipe).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys = ON")
            if not memory and not read_only:
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
        url: object SQLAlchemy URL. For a SQLite file its parent folder is created.

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

        self.read_only = False  # True: an existing SQLite file this process can only read
        self.dialect = parsed.get_backend_name()
        if self.sqlite_path is not None:
            try:
                self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DBAccessError(f"cannot open the database at {self.label}: {_reason(exc)}.") from None
            self.read_only = _sqlite_read_only(self.sqlite_path)

        connect_args: dict[str, object] = {}
        poolclass: type[StaticPool] | type[NullPool] | None = None  # None: the dialect's own pool
        if sqlite:
            connect_args = {"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000}
            if memory:
                # One shared connection, or every pooled connection would see its own empty database.
                poolclass = StaticPool
        extra: dict[str, Callable[[], sqlite3.Connection]] = {}
        if self.read_only and self.sqlite_path is not None:
            uri = _read_only_uri(self.sqlite_path)
            timeout = BUSY_TIMEOUT_MS / 1000
            extra["creator"] = lambda: sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=timeout)
            parsed, connect_args, poolclass = make_url("sqlite://"), {}, NullPool
        try:
            self.engine: Engine = create_engine(parsed, connect_args=connect_args, poolclass=poolclass, **extra)
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError) as exc:
            raise DBAccessError(f"cannot open the database at {self.label}: {exc}.") from None
        except ImportError as exc:  # the URL's driver (psycopg2, pymysql …) is not installed
            raise DBAccessError(
                f"cannot open the database at {self.label}: its driver is not installed ({exc})."
            ) from None
        if sqlite:
            _install_sqlite_hooks(self.engine, memory=memory, read_only=self.read_only)
        self._write_engine = self.engine.execution_options(pmllm_begin="BEGIN IMMEDIATE")
        if self.sqlite_path is not None:
            self._lock_key = str(self.sqlite_path.absolute()) + ".lock"
        elif memory:
            self._lock_key = f"memory:{id(self)}"
        else:
            self._lock_key = self.safe_url

    @contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Turn "the database is unusable" errors into a DBAccessError naming the database and the fix."""
        try:
            yield
        except (sa_exc.OperationalError, sa_exc.DatabaseError) as exc:
            if not _is_access_error(exc):
                raise
            verb = "open" if self.opening else action
            cls = DBUnavailableError if is_transient(exc) else DBAccessError
            raise cls(f"cannot {verb} the database at {self.label}: {_reason(exc)}.") from None

    def check_writable(self) -> None:
        """Raise the one-sentence DBAccessError of a read-only database before any write is tried."""
        if self.read_only:
            raise DBAccessError(f"cannot write the database at {self.label}: {READ_ONLY_HINT}.")

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction (``BEGIN IMMEDIATE`` on SQLite); commits on success, rolls back on error."""
        self.check_writable()
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

    # -----------------------------------------------------------------------------------------------------------------
    # The work lock: one process at a time scans and scores a library
    # -----------------------------------------------------------------------------------------------------------------

    @contextmanager
    def work_lock(
        self,
        *,
        should_stop: Callable[[], bool] | None = None,
        on_wait: Callable[[], None] | None = None,
        poll_s: float = 0.2,
    ) -> Iterator[bool]:
        """Hold the library's work lock for the ``with`` block; reentrant within one thread.

        Waits while another process (or another thread of this one) holds it, calling ``on_wait`` once when it
        starts waiting and polling ``should_stop``; yields True once held, or False when ``should_stop`` said so
        first (the block must then do nothing). A read-only database needs no lock (it cannot be written).

        Raises:
            DBAccessError: The lock file cannot be created, or the database server cannot be reached.
        """
        stop = should_stop or (lambda: False)
        if self.read_only:
            yield True
            return
        shared = _shared_lock(self._lock_key)
        me = threading.get_ident()
        waited = False

        def waiting() -> None:
            nonlocal waited
            if not waited and on_wait is not None:
                on_wait()
            waited = True

        acquired = reentered = False
        with shared.cond:
            while shared.owner not in (None, me):
                if stop():
                    break
                waiting()
                shared.cond.wait(poll_s)
            else:
                reentered = shared.owner == me
                shared.owner, shared.count, acquired = me, shared.count + 1, True
        if not acquired:
            yield False
            return
        try:
            if not reentered:
                while not self._os_lock(shared):
                    if stop():
                        yield False
                        return
                    waiting()
                    time.sleep(poll_s)
            yield True
        finally:
            with shared.cond:
                shared.count -= 1
                if shared.count == 0:
                    self._os_unlock(shared)
                    shared.owner = None
                    shared.cond.notify_all()

    def _os_lock(self, shared: _SharedLock) -> bool:
        """Try once to take the cross-process lock; True when held (or when the backend has none)."""
        if self.sqlite_path is not None:
            if fcntl is None:
                return True
            try:
                fd = os.open(self._lock_key, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise DBAccessError(f"cannot lock the database at {self.label}: {_reason(exc)}.") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError:
                os.close(fd)
                return True  # a file system without locks (some network shares): fall back to the unique constraints
            shared.handle = fd
            return True
        if self.dialect == "postgresql":
            with self.errors("lock"):
                conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                try:
                    got = bool(conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({PG_WORK_LOCK_KEY})").scalar())
                except BaseException:
                    conn.close()
                    raise
            if not got:
                conn.close()
                return False
            shared.handle = conn
            return True
        return True  # in-memory SQLite or another backend: the thread lock above is all there is

    def _os_unlock(self, shared: _SharedLock) -> None:
        handle, shared.handle = shared.handle, None
        if handle is None:
            return
        if isinstance(handle, int):
            try:
                if fcntl is not None:
                    fcntl.flock(handle, fcntl.LOCK_UN)
            finally:
                os.close(handle)
            return
        try:
            handle.exec_driver_sql(f"SELECT pg_advisory_unlock({PG_WORK_LOCK_KEY})")
        except (sa_exc.DBAPIError, OSError):
            pass  # the connection is gone, and with it the lock
        finally:
            handle.close()


class _SharedLock:
    """The work lock of one database as this process sees it: owner thread, depth, and the cross-process handle."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.owner: int | None = None
        self.count = 0
        # While held: an fd (flock) or a connection (PostgreSQL advisory lock).
        self.handle: int | Connection | None = None


_SHARED_LOCKS: dict[str, _SharedLock] = {}
_SHARED_GUARD = threading.Lock()


def _shared_lock(key: str) -> _SharedLock:
    # Two Stores of one process on one database share it: flock would otherwise make them block each other.
    with _SHARED_GUARD:
        lock = _SHARED_LOCKS.get(key)
        if lock is None:
            lock = _SHARED_LOCKS[key] = _SharedLock()
        return lock
