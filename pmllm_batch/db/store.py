"""The library database: photos, profiles, models, scores, visual-token cache and runs.

``Store`` is the only place that talks SQL. Every public write method is one short transaction, so a
killed process loses at most the batch it was writing, and a second process (``pmllm-batch status``
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

import hashlib
import json
import math
import os
import socket
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
from sqlalchemy import Engine, Table, create_engine, delete, event, func, insert, inspect, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from pmllm_batch.db import schema
from pmllm_batch.db.schema import (
    META_CURRENT_MODEL,
    META_PROFILES_VERSION,
    META_SCHEMA_VERSION,
    PHOTO_STATUSES,
    Meta,
    MigrationRecord,
    ModelRow,
    Photo,
    ProfileModel,
    Run,
    Score,
    VisualTokens,
    utcnow,
)
from pmllm_batch.errors import DBAccessError, ProfileError
from pmllm_batch.log import get_logger
from pmllm_batch.profiles import Profile

log = get_logger("db")

BUSY_TIMEOUT_MS = 30_000
# Rows per IN (...) list: far below SQLite's bound-variable limit on every version still in use.
_CHUNK = 500
_FINISHED_RUN_STATUSES = ("ok", "interrupted", "failed")
_GONE = "its process ({pid}) ended without closing the run (killed, crashed or the machine stopped)"


def _process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (signal 0 checks without sending anything)."""
    if os.name != "posix":
        return True  # Windows' os.kill has no probe signal (0 is CTRL_C_EVENT): never guess there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists but belongs to someone else, or the platform cannot tell: assume alive
    return True


def _abandoned(run: Run, host: str) -> str | None:
    """Why a "running" row can no longer be running (its process on this host is gone), or None."""
    if run.status == "running" and run.host == host and run.pid is not None and not _process_alive(run.pid):
        return _GONE.format(pid=run.pid)
    return None

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------------------
# Plain records handed in and out (no ORM objects leak out of a transaction)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class PhotoRecord:
    """One scanned file, as the scanner writes it and as incremental scans read it back."""

    path: str  # absolute path as walked
    root: str  # scan root it was found under
    content_hash: str | None  # None when the file could not even be read
    size: int  # bytes
    mtime_ns: int
    status: str = "ok"  # "ok" | "failed" | "missing"
    width: int | None = None
    height: int | None = None
    format: str | None = None
    taken_at: str | None = None  # EXIF capture time, ISO 8601
    camera_make: str | None = None
    camera_model: str | None = None
    orientation: int | None = None  # EXIF orientation 1..8
    error_reason: str | None = None  # short machine reason for status "failed"
    error_message: str | None = None  # one human sentence for status "failed"
    exif_warning: str | None = None


@dataclass
class RankedPhoto:
    """One row of a profile's ranking (one per content hash)."""

    rank: int  # 1-based
    path: str
    score: float
    content_hash: str
    taken_at: str | None
    width: int | None
    height: int | None


@dataclass
class ProfileRow:
    """A stored profile."""

    id: int
    name: str
    profile: Profile
    persona: str
    persona_hash: str
    updated_at: datetime  # naive UTC


_RECORD_FIELDS = tuple(f.name for f in fields(PhotoRecord))


def _table(model: type[schema.Base]) -> Table:
    return cast(Table, model.__table__)


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def persona_digest(persona: str) -> str:
    """sha256 of the persona text: scores stay valid exactly as long as this does not change."""
    return hashlib.sha256(persona.encode("utf-8")).hexdigest()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value is not None else None


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


class Store:
    """The library database. Open one per process (or per command); it is safe to share between threads.

    Args:
        url: Any SQLAlchemy URL. For a SQLite file its parent folder is created.

    Raises:
        DBAccessError: The database cannot be opened, created or written, has a newer schema than this
            code knows, or is not a pmllm-batch database.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._opening = True  # errors while opening all read "cannot open the database at ..."
        self._lock = threading.RLock()  # one writer per process; other processes queue on the busy timeout
        try:
            parsed = make_url(url)
        except sa_exc.ArgumentError:
            raise DBAccessError(f"cannot open the database at {url}: it is not a valid database URL.") from None
        self._sqlite = parsed.get_backend_name() == "sqlite"
        database = parsed.database or ""
        self._memory = self._sqlite and (database in ("", ":memory:") or "mode=memory" in database)
        self._sqlite_path: Path | None = None
        if self._sqlite and not self._memory and not database.startswith("file:"):
            self._sqlite_path = Path(database).expanduser()
            self.label = str(self._sqlite_path)
        elif self._sqlite and database.startswith("file:"):
            self.label = database  # a SQLite URI filename (…?mode=ro&uri=true); its folder is not ours to create
        else:
            self.label = parsed.render_as_string(hide_password=True)

        if self._sqlite_path is not None:
            try:
                self._sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DBAccessError(f"cannot open the database at {self.label}: {_reason(exc)}.") from None

        kwargs: dict[str, Any] = {}
        if self._sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000}
            if self._memory:
                # One shared connection, or every pooled connection would see its own empty database.
                kwargs["poolclass"] = StaticPool
        try:
            self.engine: Engine = create_engine(parsed, **kwargs)
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError) as exc:
            raise DBAccessError(f"cannot open the database at {self.label}: {exc}.") from None
        except ImportError as exc:  # the URL's driver (psycopg2, pymysql …) is not installed
            raise DBAccessError(
                f"cannot open the database at {self.label}: its driver is not installed ({exc})."
            ) from None
        if self._sqlite:
            self._install_sqlite_hooks()
        self._write_engine = self.engine.execution_options(pmllm_begin="BEGIN IMMEDIATE")
        try:
            self._migrate()
        except BaseException:
            self.engine.dispose()
            raise
        self._opening = False

    # -----------------------------------------------------------------------------------------------------------------
    # Engine, transactions, errors
    # -----------------------------------------------------------------------------------------------------------------

    def _install_sqlite_hooks(self) -> None:
        memory = self._memory

        @event.listens_for(self.engine, "connect")
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

        @event.listens_for(self.engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql(conn.get_execution_options().get("pmllm_begin", "BEGIN"))

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except (sa_exc.OperationalError, sa_exc.DatabaseError) as exc:
            if not _is_access_error(exc):
                raise
            verb = "open" if self._opening else action
            raise DBAccessError(f"cannot {verb} the database at {self.label}: {_reason(exc)}.") from None

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """One write transaction (``BEGIN IMMEDIATE`` on SQLite); commits on success, rolls back on error."""
        with self._lock, self._errors("write"), Session(self._write_engine, expire_on_commit=False) as s, s.begin():
            yield s

    @contextmanager
    def _read(self) -> Iterator[Session]:
        """One read transaction: a consistent snapshot that never blocks the writer (WAL)."""
        with self._errors("read"), Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    def close(self) -> None:
        """Return every pooled connection (the WAL is checkpointed when the last one closes)."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -----------------------------------------------------------------------------------------------------------------
    # Schema and migrations
    # -----------------------------------------------------------------------------------------------------------------

    @staticmethod
    def _meta(s: Session, key: str) -> str | None:
        row = s.get(Meta, key)
        return row.value if row is not None else None

    @staticmethod
    def _set_meta(s: Session, key: str, value: str) -> None:
        row = s.get(Meta, key)
        if row is None:
            s.add(Meta(key=key, value=value))
        else:
            row.value = value

    def _schema_version(self, s: Session) -> int:
        conn = s.connection()
        if not schema.has_table(conn, Meta.__tablename__):
            foreign = sorted(set(inspect(conn).get_table_names()) - set(schema.Base.metadata.tables))
            if foreign:
                raise DBAccessError(
                    f"the database at {self.label} is not a pmllm-batch database "
                    f"(it holds other tables: {', '.join(foreign[:5])}); choose another --db."
                )
            return 0
        raw = self._meta(s, META_SCHEMA_VERSION)
        try:
            return int(raw) if raw is not None else 0
        except ValueError:
            raise DBAccessError(
                f"the database at {self.label} has an unreadable schema version {raw!r}; restore it from a backup."
            ) from None

    def _check_not_newer(self, version: int) -> None:
        latest = schema.latest_version()
        if version > latest:
            raise DBAccessError(
                f"the database at {self.label} has schema version {version}, newer than this pmllm-batch "
                f"understands ({latest}); upgrade pmllm-batch."
            )

    def _migrate(self) -> None:
        # Look first without the write lock, so opening an up-to-date database never waits for a busy writer.
        with self._read() as s:
            version = self._schema_version(s)
        self._check_not_newer(version)
        if version == schema.latest_version():
            return
        with self._write() as s:
            conn = s.connection()
            version = self._schema_version(s)  # another process may have migrated meanwhile
            self._check_not_newer(version)
            pending = [m for m in schema.MIGRATIONS if m.version > version]
            if not pending:
                return
            if version > 0:
                self._backup(version)
            applied: set[str] = set()
            if schema.has_table(conn, MigrationRecord.__tablename__):
                applied = set(s.scalars(select(MigrationRecord.name)))
            for migration in pending:
                if migration.name not in applied:
                    log.info("applying database migration %s to %s", migration.name, self.label)
                    migration.apply(conn)
                    s.add(MigrationRecord(name=migration.name, version=migration.version, applied_at=utcnow()))
                self._set_meta(s, META_SCHEMA_VERSION, str(migration.version))
                s.flush()
            if self._meta(s, META_PROFILES_VERSION) is None:
                self._set_meta(s, META_PROFILES_VERSION, "0")

    def _backup(self, version: int) -> Path | None:
        """Copy a SQLite file aside before migrating it (beets ``create_backup``); other backends are left alone."""
        if self._sqlite_path is None:
            return None
        stamp = utcnow().strftime("%Y%m%dT%H%M%S")
        target = self._sqlite_path.with_name(f"{self._sqlite_path.name}.v{version}-{stamp}.bak")
        src = sqlite3.connect(str(self._sqlite_path))
        dst = sqlite3.connect(str(target))
        try:
            src.backup(dst)
        except sqlite3.Error as exc:
            raise DBAccessError(
                f"cannot back up the database at {self.label} to {target} before migrating it: {exc}."
            ) from None
        finally:
            dst.close()
            src.close()
        log.warning("backed up %s to %s before upgrading its schema", self.label, target)
        return target

    def schema_version(self) -> int:
        """Schema version recorded in the database."""
        with self._read() as s:
            return self._schema_version(s)

    # -----------------------------------------------------------------------------------------------------------------
    # Generic helpers
    # -----------------------------------------------------------------------------------------------------------------

    def _insert_ignore(self, s: Session, table: Table, rows: list[dict[str, Any]], keys: list[str]) -> int:
        """INSERT rows, skipping those whose ``keys`` already exist; returns how many were inserted."""
        if not rows:
            return 0
        conn = s.connection()
        dialect = conn.dialect.name
        inserted = 0
        if dialect in ("sqlite", "postgresql"):
            stmt: Any
            if dialect == "sqlite":
                stmt = sqlite_dialect.insert(table).on_conflict_do_nothing(index_elements=keys)
            else:
                stmt = postgresql_dialect.insert(table).on_conflict_do_nothing(index_elements=keys)
            for chunk in _chunks(rows):
                inserted += max(conn.execute(stmt, list(chunk)).rowcount, 0)
            return inserted
        # Portable fallback: look the keys up first. Safe here because writers hold the process lock, and a
        # racing second process can at worst hit the unique constraint (an error, never a duplicate).
        cols = [table.c[k] for k in keys]
        for chunk in _chunks(rows):
            fresh: dict[tuple[Any, ...], dict[str, Any]] = {}
            for row in chunk:
                fresh.setdefault(tuple(row[k] for k in keys), row)
            first = table.c[keys[0]]
            existing = {tuple(r) for r in conn.execute(select(*cols).where(first.in_({k[0] for k in fresh})))}
            todo = [row for key, row in fresh.items() if key not in existing]
            if todo:
                conn.execute(insert(table), todo)
                inserted += len(todo)
        return inserted

    # -----------------------------------------------------------------------------------------------------------------
    # Photos
    # -----------------------------------------------------------------------------------------------------------------

    def photo_index(self, roots: list[str] | None = None) -> dict[str, PhotoRecord]:
        """All photo rows (any status) by path, for incremental scans.

        Args:
            roots: Only rows found under these scan roots (as stored); None for all.
        """
        stmt = select(*[getattr(Photo, name) for name in _RECORD_FIELDS])
        if roots is not None:
            stmt = stmt.where(Photo.root.in_(list(roots)))
        with self._read() as s:
            return {row.path: PhotoRecord(**row._asdict()) for row in s.execute(stmt)}

    def upsert_photos(self, records: list[PhotoRecord]) -> None:
        """Insert or update photo rows by path, in one transaction.

        ``last_seen`` is set on every row written; ``updated_at`` only when a field actually changed, so it
        tells when the file last changed rather than when it was last scanned.
        """
        if not records:
            return
        for rec in records:
            if rec.status not in PHOTO_STATUSES:
                raise ValueError(f"photo status must be one of {PHOTO_STATUSES}, got {rec.status!r}")
        now = utcnow()
        with self._write() as s:
            for chunk in _chunks(records):
                by_path = {p.path: p for p in s.scalars(select(Photo).where(Photo.path.in_([r.path for r in chunk])))}
                for rec in chunk:
                    values = {name: getattr(rec, name) for name in _RECORD_FIELDS}
                    row = by_path.get(rec.path)
                    if row is None:
                        row = Photo(**values, first_seen=now, last_seen=now, updated_at=now)
                        s.add(row)
                        by_path[rec.path] = row
                        continue
                    changed = False
                    for name, value in values.items():
                        if getattr(row, name) != value:
                            setattr(row, name, value)
                            changed = True
                    row.last_seen = now
                    if changed:
                        row.updated_at = now
                s.flush()

    def mark_missing(self, paths: list[str]) -> int:
        """Set status "missing" on these paths. Scores stay (they are keyed by content hash).

        Returns:
            How many rows changed status.
        """
        if not paths:
            return 0
        now = utcnow()
        changed = 0
        with self._write() as s:
            for chunk in _chunks(list(paths)):
                stmt = (
                    update(Photo)
                    .where(Photo.path.in_(list(chunk)), Photo.status != "missing")
                    .values(status="missing", updated_at=now)
                    .execution_options(synchronize_session=False)
                )
                changed += max(s.execute(stmt).rowcount, 0)  # type: ignore[attr-defined]
        return changed

    def photos_by_hash(self, hashes: list[str]) -> dict[str, list[str]]:
        """Paths of "ok" photos for each content hash (sorted; hashes with no ok photo are absent)."""
        out: dict[str, list[str]] = {}
        with self._read() as s:
            for chunk in _chunks(list(dict.fromkeys(hashes))):
                stmt = select(Photo.content_hash, Photo.path).where(
                    Photo.content_hash.in_(list(chunk)), Photo.status == "ok"
                )
                for h, path in s.execute(stmt):
                    out.setdefault(str(h), []).append(path)
        return {h: sorted(paths) for h, paths in out.items()}

    def ok_hashes(self) -> list[str]:
        """Distinct content hashes of photos with status "ok", sorted."""
        stmt = (
            select(Photo.content_hash)
            .where(Photo.status == "ok", Photo.content_hash.is_not(None))
            .distinct()
            .order_by(Photo.content_hash)
        )
        with self._read() as s:
            return [h for h in s.scalars(stmt) if h is not None]

    def photo_roots(self) -> list[str]:
        """Distinct scan roots of every stored photo (any status), sorted."""
        with self._read() as s:
            return sorted(s.scalars(select(Photo.root).distinct()))

    # -----------------------------------------------------------------------------------------------------------------
    # Profiles
    # -----------------------------------------------------------------------------------------------------------------

    def _bump_profiles_version(self, s: Session) -> None:
        current = self._meta(s, META_PROFILES_VERSION)
        self._set_meta(s, META_PROFILES_VERSION, str(int(current or 0) + 1))

    @staticmethod
    def _to_profile_row(row: ProfileModel) -> ProfileRow:
        data = json.loads(row.fields_json)
        return ProfileRow(
            id=row.id,
            name=row.name,
            profile=Profile.from_dict(data, source=f"stored profile '{row.name}'"),
            persona=row.persona,
            persona_hash=row.persona_hash,
            updated_at=row.updated_at,
        )

    def _profile_model(self, s: Session, name: str) -> ProfileModel:
        row = s.scalar(select(ProfileModel).where(ProfileModel.name == name))
        if row is not None:
            return row
        known = list(s.scalars(select(ProfileModel.name).order_by(ProfileModel.name)))
        if known:
            raise ProfileError(f"unknown profile '{name}'; known profiles: {', '.join(known)}.")
        raise ProfileError(
            f"unknown profile '{name}'; no profiles are stored yet (add one with `pmllm-batch profile add FILE.toml`)."
        )

    def upsert_profile(self, profile: Profile, persona: str) -> tuple[int, bool]:
        """Store a profile and its rendered persona.

        Returns:
            (profile id, changed): ``changed`` is True when the profile is new or its persona text changed.
            A changed persona deletes that profile's scores, because they were computed for the old text.
        """
        fields_json = json.dumps(profile.to_dict(), sort_keys=True, ensure_ascii=False)
        digest = persona_digest(persona)
        now = utcnow()
        with self._write() as s:
            row = s.scalar(select(ProfileModel).where(ProfileModel.name == profile.name))
            if row is None:
                row = ProfileModel(
                    name=profile.name,
                    fields_json=fields_json,
                    persona=persona,
                    persona_hash=digest,
                    created_at=now,
                    updated_at=now,
                )
                s.add(row)
                s.flush()
                self._bump_profiles_version(s)
                return row.id, True
            if row.persona_hash != digest:
                s.execute(delete(Score).where(Score.profile_id == row.id))
                row.fields_json, row.persona, row.persona_hash, row.updated_at = fields_json, persona, digest, now
                self._bump_profiles_version(s)
                return row.id, True
            if row.fields_json != fields_json:
                # Same persona, so the scores still hold; keep the stored fields exact anyway.
                row.fields_json, row.updated_at = fields_json, now
                self._bump_profiles_version(s)
            return row.id, False

    def get_profile(self, name: str) -> ProfileRow:
        """One stored profile.

        Raises:
            ProfileError: No profile has this name (the message lists the known ones).
        """
        with self._read() as s:
            return self._to_profile_row(self._profile_model(s, name))

    def list_profiles(self) -> list[ProfileRow]:
        """Every stored profile, by name."""
        with self._read() as s:
            return [self._to_profile_row(r) for r in s.scalars(select(ProfileModel).order_by(ProfileModel.name))]

    def remove_profile(self, name: str) -> None:
        """Delete a profile and its scores.

        Raises:
            ProfileError: No profile has this name.
        """
        with self._write() as s:
            row = self._profile_model(s, name)
            # Explicit, so backends without enforced foreign keys lose the scores too.
            s.execute(delete(Score).where(Score.profile_id == row.id))
            s.execute(delete(ProfileModel).where(ProfileModel.id == row.id))
            self._bump_profiles_version(s)

    def profiles_version(self) -> str:
        """A token that changes whenever any profile is added, changed or removed (one indexed read)."""
        with self._read() as s:
            return self._meta(s, META_PROFILES_VERSION) or "0"

    # -----------------------------------------------------------------------------------------------------------------
    # Models
    # -----------------------------------------------------------------------------------------------------------------

    def ensure_model(self, fingerprint: str, preset: str, meta: dict[str, Any], *, make_current: bool = True) -> int:
        """Register a model fingerprint (once) and, by default, make it the model rankings read.

        Args:
            fingerprint: Identity of base weights + adapter + preset.
            preset: Preset name, for display.
            meta: Free JSON-able facts (checkpoint path, versions …), stored on first registration.
            make_current: False for a model that must not change what rankings show (e.g. an evaluation).

        Returns:
            The model id.
        """
        with self._write() as s:
            row = s.scalar(select(ModelRow).where(ModelRow.fingerprint == fingerprint))
            if row is None:
                row = ModelRow(
                    fingerprint=fingerprint,
                    preset=preset,
                    meta_json=json.dumps(meta, sort_keys=True, default=str),
                    created_at=utcnow(),
                )
                s.add(row)
                s.flush()
            if make_current:
                self._set_meta(s, META_CURRENT_MODEL, str(row.id))
            return row.id

    def _current_model(self, s: Session) -> int | None:
        raw = self._meta(s, META_CURRENT_MODEL)
        return int(raw) if raw else None

    def current_model_id(self) -> int | None:
        """The most recently ensured model (rankings read its scores only); None before any scoring."""
        with self._read() as s:
            return self._current_model(s)

    # -----------------------------------------------------------------------------------------------------------------
    # Visual-token cache
    # -----------------------------------------------------------------------------------------------------------------

    def get_visual_tokens(self, hashes: list[str], vision_id: str) -> dict[str, np.ndarray]:
        """Cached visual tokens for these hashes under one vision graph.

        Returns:
            hash -> float32 array of the stored shape (e.g. (N_vis, D_lm)); absent hashes are not in the dict.
        """
        out: dict[str, np.ndarray] = {}
        with self._read() as s:
            for chunk in _chunks(list(dict.fromkeys(hashes))):
                stmt = select(VisualTokens.content_hash, VisualTokens.shape_json, VisualTokens.data).where(
                    VisualTokens.vision_id == vision_id, VisualTokens.content_hash.in_(list(chunk))
                )
                for h, shape_json, data in s.execute(stmt):
                    shape = tuple(json.loads(shape_json))
                    out[h] = np.frombuffer(data, dtype="<f2").reshape(shape).astype(np.float32)
        return out

    def put_visual_tokens(self, items: dict[str, np.ndarray], vision_id: str) -> None:
        """Cache visual tokens as little-endian float16 bytes; hashes already cached are left as they are."""
        rows = []
        for h, arr in items.items():
            half = np.ascontiguousarray(np.asarray(arr), dtype="<f2")
            rows.append(
                {
                    "content_hash": h,
                    "vision_id": vision_id,
                    "shape_json": json.dumps(list(half.shape)),
                    "dtype": "float16",
                    "data": half.tobytes(),
                }
            )
        if not rows:
            return
        with self._write() as s:
            self._insert_ignore(s, _table(VisualTokens), rows, ["content_hash", "vision_id"])

    def visual_cache_bytes(self) -> tuple[int, int]:
        """(number of cached entries, total bytes of their blobs)."""
        with self._read() as s:
            n, total = s.execute(select(func.count(), func.coalesce(func.sum(func.length(VisualTokens.data)), 0))).one()
        return int(n), int(total)

    # -----------------------------------------------------------------------------------------------------------------
    # Scores and rankings
    # -----------------------------------------------------------------------------------------------------------------

    def scored_hashes(self, profile_id: int, model_id: int) -> set[str]:
        """Content hashes that already have a score for this profile and model."""
        stmt = select(Score.content_hash).where(Score.profile_id == profile_id, Score.model_id == model_id)
        with self._read() as s:
            return set(s.scalars(stmt))

    def add_scores(self, model_id: int, rows: Iterable[tuple[str, int, float, Sequence[float]]]) -> int:
        """Write one batch of scores in one transaction; rows already present are skipped.

        Args:
            model_id: From :meth:`ensure_model`.
            rows: (content_hash, profile_id, score, rating-level probabilities).

        Returns:
            How many rows were inserted.
        """
        now = utcnow()
        values = []
        for content_hash, profile_id, score, probs in rows:
            score_f = float(score)
            if not math.isfinite(score_f):
                raise ValueError(f"score for {content_hash} is not a finite number: {score!r}")
            values.append(
                {
                    "content_hash": content_hash,
                    "profile_id": int(profile_id),
                    "model_id": int(model_id),
                    "score": score_f,
                    "probs_json": json.dumps([float(p) for p in probs]),
                    "created_at": now,
                }
            )
        if not values:
            return 0
        with self._write() as s:
            return self._insert_ignore(s, _table(Score), values, ["content_hash", "profile_id", "model_id"])

    def ranking(self, profile_name: str, model_id: int | None = None, top: int | None = None) -> list[RankedPhoto]:
        """One profile's ranking.

        Only photos with status "ok" appear, one row per content hash (represented by its shortest, then
        lexicographically smallest path), sorted by score descending, ties by path; ranks are 1..n.

        Args:
            profile_name: A stored profile.
            model_id: Whose scores to read; the current model by default (no model yet: empty list).
            top: Keep the first ``top`` rows only.

        Raises:
            ProfileError: Unknown profile.
        """
        with self._read() as s:
            profile = self._profile_model(s, profile_name)
            mid = model_id if model_id is not None else self._current_model(s)
            if mid is None:
                return []
            stmt = (
                select(Score.content_hash, Score.score, Photo.path, Photo.taken_at, Photo.width, Photo.height)
                .join(Photo, Photo.content_hash == Score.content_hash)
                .where(Score.profile_id == profile.id, Score.model_id == mid, Photo.status == "ok")
            )
            rows = s.execute(stmt).all()
        best: dict[str, Any] = {}
        for row in rows:
            current = best.get(row.content_hash)
            if current is None or (len(row.path), row.path) < (len(current.path), current.path):
                best[row.content_hash] = row
        ordered = sorted(best.values(), key=lambda r: (-r.score, r.path))
        if top is not None:
            ordered = ordered[: max(top, 0)]
        return [
            RankedPhoto(
                rank=i,
                path=r.path,
                score=float(r.score),
                content_hash=r.content_hash,
                taken_at=r.taken_at,
                width=r.width,
                height=r.height,
            )
            for i, r in enumerate(ordered, start=1)
        ]

    def _score_counts(self, s: Session, model_id: int | None) -> dict[str, int]:
        names = {pid: name for pid, name in s.execute(select(ProfileModel.id, ProfileModel.name))}
        counts = dict.fromkeys(sorted(names.values()), 0)
        if model_id is None:
            return counts
        ok = select(Photo.content_hash).where(Photo.status == "ok")
        stmt = (
            select(Score.profile_id, func.count(func.distinct(Score.content_hash)))
            .where(Score.model_id == model_id, Score.content_hash.in_(ok))
            .group_by(Score.profile_id)
        )
        for pid, n in s.execute(stmt):
            if pid in names:
                counts[names[pid]] = int(n)
        return counts

    def score_counts(self, model_id: int | None = None) -> dict[str, int]:
        """Profile name -> number of distinct "ok" content hashes scored (= its ranking's length).

        Every stored profile appears, with 0 when nothing is scored. ``model_id`` defaults to the current model.
        """
        with self._read() as s:
            mid = model_id if model_id is not None else self._current_model(s)
            return self._score_counts(s, mid)

    # -----------------------------------------------------------------------------------------------------------------
    # Runs and status
    # -----------------------------------------------------------------------------------------------------------------

    def start_run(self, kind: str, args: dict[str, Any]) -> int:
        """Record a run as "running" (with this process's pid and host); returns its id.

        Runs left "running" by a process of this host that no longer exists (killed with -9, a crash, a power
        cut) are closed first, as "interrupted".
        """
        host = socket.gethostname()
        with self._write() as s:
            for old in s.scalars(select(Run).where(Run.status == "running", Run.host == host)):
                if reason := _abandoned(old, host):
                    old.status, old.finished_at = "interrupted", utcnow()
                    old.summary_json = json.dumps({"reason": reason})
            run = Run(
                kind=kind,
                started_at=utcnow(),
                status="running",
                args_json=json.dumps(args, sort_keys=True, default=str),
                pid=os.getpid(),
                host=host,
            )
            s.add(run)
            s.flush()
            return run.id

    def finish_run(self, run_id: int, status: str, summary: dict[str, Any]) -> None:
        """Close a run with status "ok", "interrupted" or "failed" and its summary."""
        if status not in _FINISHED_RUN_STATUSES:
            raise ValueError(f"run status must be one of {_FINISHED_RUN_STATUSES}, got {status!r}")
        with self._write() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise ValueError(f"no run with id {run_id}")
            run.status = status
            run.finished_at = utcnow()
            run.summary_json = json.dumps(summary, sort_keys=True, default=str)

    @staticmethod
    def _run_dict(run: Run) -> dict[str, Any]:
        status, summary = run.status, json.loads(run.summary_json) if run.summary_json else None
        if reason := _abandoned(run, socket.gethostname()):  # reported only; the next run on this host records it
            status, summary = "interrupted", {"reason": reason}
        return {
            "id": run.id,
            "kind": run.kind,
            "status": status,
            "pid": run.pid,
            "host": run.host,
            "started_at": _iso(run.started_at),
            "finished_at": _iso(run.finished_at),
            "args": json.loads(run.args_json) if run.args_json else {},
            "summary": summary,
        }

    def status(self) -> dict[str, Any]:
        """Counts and health of the library, read in one snapshot (JSON-able).

        Returns:
            {"photos": {"ok", "failed", "missing"}, "profiles", "models", "current_model" (id, fingerprint,
            preset, or None), "scores_current_model", "visual_cache": {"entries", "bytes"}, "failures": [{"path",
            "reason", "message"}] (every failed photo, by path), "last_run" (or None), "db"}.
        """
        with self._read() as s:
            photos = dict.fromkeys(PHOTO_STATUSES, 0)
            for st, n in s.execute(select(Photo.status, func.count()).group_by(Photo.status)):
                photos[st] = int(n)
            n_profiles = s.scalar(select(func.count()).select_from(ProfileModel)) or 0
            n_models = s.scalar(select(func.count()).select_from(ModelRow)) or 0
            mid = self._current_model(s)
            current = s.get(ModelRow, mid) if mid is not None else None
            n_scores = 0
            if mid is not None:
                n_scores = s.scalar(select(func.count()).select_from(Score).where(Score.model_id == mid)) or 0
            entries, nbytes = s.execute(
                select(func.count(), func.coalesce(func.sum(func.length(VisualTokens.data)), 0))
            ).one()
            failures = [
                {"path": p, "reason": r, "message": m}
                for p, r, m in s.execute(
                    select(Photo.path, Photo.error_reason, Photo.error_message)
                    .where(Photo.status == "failed")
                    .order_by(Photo.path)
                )
            ]
            last = s.scalar(select(Run).order_by(Run.id.desc()).limit(1))
            return {
                "photos": photos,
                "profiles": int(n_profiles),
                "models": int(n_models),
                "current_model": (
                    {"id": current.id, "fingerprint": current.fingerprint, "preset": current.preset}
                    if current is not None
                    else None
                ),
                "scores_current_model": int(n_scores),
                "visual_cache": {"entries": int(entries), "bytes": int(nbytes)},
                "failures": failures,
                "last_run": self._run_dict(last) if last is not None else None,
                "db": make_url(self.url).render_as_string(hide_password=True),
            }
