"""Database schema (SQLAlchemy 2.x typed ORM) and its named, recorded migrations.

Identity of a photo's *content* is its content hash, not its path: scores and cached tower features
are keyed by hash, so a moved or renamed file keeps its scores, and two identical files are scored
once. Photos themselves are keyed by path (two identical files at two paths are two rows).

Migrations follow beets' ``dbcore`` (``Database._make_table`` / ``migrations`` table): each one has a
name and a version, is recorded once applied, and is idempotent (it checks before it changes), so a
half-applied run that was killed can simply be run again. The store backs up a SQLite file before
applying a migration to a database that already holds data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    inspect,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pmllm_batch.contracts import PhotoStatus

# In this order in messages and counts. "skipped": a photo that is never ranked, with a SkipReason (too_small,
# raw_pair: see pmllm_batch.scan.skip).
PHOTO_STATUSES: tuple[PhotoStatus, ...] = (
    PhotoStatus.OK, PhotoStatus.FAILED, PhotoStatus.MISSING, PhotoStatus.SKIPPED,
)
RUN_STATUSES = ("running", "ok", "interrupted", "failed")

# Keys of the ``meta`` table.
META_SCHEMA_VERSION = "schema_version"
META_PROFILES_VERSION = "profiles_version"  # bumped by every profile add/change/remove (the daemon polls it)
META_CURRENT_MODEL = "current_model_id"  # the model whose scores rankings read
META_CACHE_EVICTED = "visual_cache_evicted"  # feature-cache entries evicted by the byte budget, ever (key as stored)


def utcnow() -> datetime:
    """Naive UTC timestamp: SQLite has no time zones, so every stored time is UTC without tzinfo."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class PhotoStatusType(TypeDecorator[PhotoStatus]):
    """``photos.status``: stored as its plain string (``VARCHAR(16)``), read back as a :class:`PhotoStatus`."""

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: PhotoStatus | str | None, dialect: Dialect) -> str | None:
        return None if value is None else PhotoStatus(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> PhotoStatus | None:
        return None if value is None else PhotoStatus(value)


class Meta(Base):
    """Key/value facts about the database itself (schema version, change counters)."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class MigrationRecord(Base):
    """One applied migration (beets keeps the same kind of table)."""

    __tablename__ = "migrations"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    applied_at: Mapped[datetime] = mapped_column(DateTime)


class Photo(Base):
    """One file found by a scan, whatever its fate (ok, failed to decode, missing since)."""

    __tablename__ = "photos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    root: Mapped[str] = mapped_column(Text, index=True)
    # Not unique: identical files at two paths are two rows sharing one hash (and one score).
    content_hash: Mapped[str | None] = mapped_column(String(128), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(32))
    taken_at: Mapped[str | None] = mapped_column(String(40))  # EXIF capture time, ISO 8601 text as read
    camera_make: Mapped[str | None] = mapped_column(Text)
    camera_model: Mapped[str | None] = mapped_column(Text)
    orientation: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[PhotoStatus] = mapped_column(PhotoStatusType(), default=PhotoStatus.OK, index=True)
    # A FailReason (status failed) or a SkipReason (status skipped), e.g. "truncated"; None otherwise.
    error_reason: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)  # one human sentence
    exif_warning: Mapped[str | None] = mapped_column(Text)  # EXIF was broken but the pixels decoded
    first_seen: Mapped[datetime] = mapped_column(DateTime)
    last_seen: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class ProfileModel(Base):
    """A stored person profile and the persona text it renders to."""

    __tablename__ = "profiles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    fields_json: Mapped[str] = mapped_column(Text)  # Profile.to_dict(), sorted keys
    persona: Mapped[str] = mapped_column(Text)
    persona_hash: Mapped[str] = mapped_column(String(64))  # sha256 of persona; scores are valid for this text only
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class ModelRow(Base):
    """A model fingerprint (base weights + adapter + preset); scores of different models never mix."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(128), unique=True)
    preset: Mapped[str] = mapped_column(String(64))
    meta_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Score(Base):
    """How much one profile likes one content hash, according to one model."""

    __tablename__ = "scores"
    __table_args__ = (
        UniqueConstraint("content_hash", "profile_id", "model_id", name="uq_scores_hash_profile_model"),
        # Rankings and "what is left to score" read by (profile, model); the unique index leads with the hash.
        Index("ix_scores_profile_model", "profile_id", "model_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(128))
    profile_id: Mapped[int] = mapped_column(ForeignKey("profiles.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    score: Mapped[float] = mapped_column(Float)
    probs_json: Mapped[str] = mapped_column(Text)  # rating-level distribution, JSON list of floats
    created_at: Mapped[datetime] = mapped_column(DateTime)


class CachedFeatures(Base):
    """Cached tower features (the vision tower's output, before the projector: (n_feat, D_vis)) for one content hash
    under one vision graph, as float16 bytes."""

    __tablename__ = "features"

    content_hash: Mapped[str] = mapped_column(String(128), primary_key=True)
    vision_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    shape_json: Mapped[str] = mapped_column(String(64))
    dtype: Mapped[str] = mapped_column(String(16), default="float16")
    data: Mapped[bytes] = mapped_column(LargeBinary)
    # The byte budget's bookkeeping ([vision] cache_budget_mb): blob size, and when the entry was last written or
    # read (ns since the epoch); the least recently used entries are evicted first.
    nbytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    used_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)


class Run(Base):
    """One batch run (scan, rank, daemon cycle …) with its arguments and summary."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(16))  # one of RUN_STATUSES
    args_json: Mapped[str] = mapped_column(Text)
    summary_json: Mapped[str | None] = mapped_column(Text)
    # The process that runs it: a "running" row whose process is gone (kill -9, power cut) is reported, and
    # closed by the next run on the same host, as interrupted instead of staying "running" for ever.
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))


class PhotoEmbedding(Base):
    """The pooled visual embedding of one content hash under one vision graph, for bursts and near-duplicates.

    ``data`` is a unit float32 vector (little-endian); ``lsh0..lsh3`` are its locality-sensitive hash buckets and
    ``taken_s`` its capture time (seconds, EXIF local time read as UTC), the two ways a new photo finds the few
    photos it is compared with; ``linked`` is 0 until it has been compared (see :mod:`pmllm_batch.db.links`).
    """

    __tablename__ = "photo_embeddings"
    __table_args__ = (
        Index("ix_photo_embeddings_taken", "vision_id", "taken_s"),
        Index("ix_photo_embeddings_linked", "vision_id", "linked"),
        Index("ix_photo_embeddings_lsh0", "vision_id", "lsh0"),
        Index("ix_photo_embeddings_lsh1", "vision_id", "lsh1"),
        Index("ix_photo_embeddings_lsh2", "vision_id", "lsh2"),
        Index("ix_photo_embeddings_lsh3", "vision_id", "lsh3"),
    )

    content_hash: Mapped[str] = mapped_column(String(128), primary_key=True)
    vision_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    dim: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    taken_s: Mapped[int | None] = mapped_column(BigInteger)
    lsh0: Mapped[int] = mapped_column(Integer, default=0)
    lsh1: Mapped[int] = mapped_column(Integer, default=0)
    lsh2: Mapped[int] = mapped_column(Integer, default=0)
    lsh3: Mapped[int] = mapped_column(Integer, default=0)
    linked: Mapped[int] = mapped_column(Integer, default=0)


class PhotoLink(Base):
    """Two content hashes that are nearly the same photo under one vision graph: an edge of a burst group."""

    __tablename__ = "photo_links"
    __table_args__ = (Index("ix_photo_links_b", "vision_id", "hash_b"),)

    vision_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hash_a: Mapped[str] = mapped_column(String(128), primary_key=True)  # hash_a < hash_b
    hash_b: Mapped[str] = mapped_column(String(128), primary_key=True)
    similarity: Mapped[float] = mapped_column(Float)
    seconds_apart: Mapped[float | None] = mapped_column(Float)  # None when a capture time is unknown


class GroupState(Base):
    """How the links of one vision graph were made (thresholds, hash planes' centre): other settings relink."""

    __tablename__ = "group_state"

    vision_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    params_json: Mapped[str] = mapped_column(Text)
    center: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32 mean embedding the hash planes go through
    center_n: Mapped[int] = mapped_column(Integer, default=0)  # embeddings that centre was taken from


class PersonRating(Base):
    """A person's own verdict on one photo's content: 1..5 stars or -1 (rejected), with where it came from.

    Keyed by content hash, so a moved or renamed photo keeps its rating. ``source`` is one of
    :data:`pmllm_batch.ratings.SOURCES` (``cli``, ``csv``, ``xmp-sidecar``, ``xmp-embedded``, ``darktable``,
    ``digikam``); ``detail`` says which file or database it was read from. A rating of 0 ("clear") deletes the row.
    """

    __tablename__ = "ratings"
    __table_args__ = (
        UniqueConstraint("content_hash", "profile_id", name="uq_ratings_hash_profile"),
        Index("ix_ratings_profile", "profile_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(128))
    profile_id: Mapped[int] = mapped_column(ForeignKey("profiles.id", ondelete="CASCADE"))
    stars: Mapped[int] = mapped_column(Integer)  # -1 rejected, 1..5
    source: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)  # the sidecar, CSV line or database it came from
    rated_at: Mapped[datetime] = mapped_column(DateTime)


class TasteRow(Base):
    """One person's learned taste (:class:`pmllm_batch.learn.TasteState` as JSON) for one model.

    Versioned by the model (its row, whose fingerprint the state also names) and by ``ratings_digest``, a digest of
    the ratings and photos it was fitted on: a state whose digest no longer matches is fitted again.
    """

    __tablename__ = "tastes"

    profile_id: Mapped[int] = mapped_column(ForeignKey("profiles.id", ondelete="CASCADE"), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    ratings_digest: Mapped[str] = mapped_column(String(64))
    n_ratings: Mapped[int] = mapped_column(Integer)  # ratings it learned from
    state_json: Mapped[str] = mapped_column(Text)
    fitted_at: Mapped[datetime] = mapped_column(DateTime)


# ---------------------------------------------------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """A named schema step. ``apply`` must be idempotent: it may run again after a killed run."""

    version: int  # schema version the database has after this step
    name: str  # recorded in the ``migrations`` table
    apply: Callable[[Connection], None]


def _create_tables(conn: Connection) -> None:
    # create_all skips tables that exist, so this is safe to run twice.
    Base.metadata.create_all(conn)


def _add_run_owner(conn: Connection) -> None:
    # Databases created by schema version 1 lack the two columns; fresh ones already have them (create_all).
    columns = {c["name"] for c in inspect(conn).get_columns(Run.__tablename__)}
    if "pid" not in columns:
        conn.execute(text(f"ALTER TABLE {Run.__tablename__} ADD COLUMN pid INTEGER"))
    if "host" not in columns:
        conn.execute(text(f"ALTER TABLE {Run.__tablename__} ADD COLUMN host VARCHAR(255)"))


def _create_group_tables(conn: Connection) -> None:
    # Bursts and near-duplicates (pooled embeddings, links, link settings); create_all skips tables that exist.
    Base.metadata.create_all(
        conn, tables=[PhotoEmbedding.__table__, PhotoLink.__table__, GroupState.__table__]  # type: ignore[list-item]
    )


# Before schema 5 the feature cache was the table ``visual_tokens`` (a misnomer: it holds tower features).
_OLD_FEATURES_TABLE = "visual_tokens"


def _add_visual_cache_lru(conn: Connection) -> None:
    # Schema 3 caches lack the budget's columns: add them, size the blobs, and count every old entry as unused. The
    # cache was still called visual_tokens then; a database created since has the features table with the columns.
    table = _OLD_FEATURES_TABLE
    if not has_table(conn, table):
        return
    columns = {c["name"] for c in inspect(conn).get_columns(table)}
    if "nbytes" not in columns:
        conn.execute(text(f"ALTER TABLE {table} ADD COLUMN nbytes BIGINT"))
    if "used_at" not in columns:
        conn.execute(text(f"ALTER TABLE {table} ADD COLUMN used_at BIGINT"))
    conn.execute(text(f"UPDATE {table} SET nbytes = length(data) WHERE nbytes IS NULL"))
    conn.execute(text(f"UPDATE {table} SET used_at = 0 WHERE used_at IS NULL"))
    indexes = {i["name"] for i in inspect(conn).get_indexes(table)}
    if f"ix_{table}_used_at" not in indexes:
        conn.execute(text(f"CREATE INDEX ix_{table}_used_at ON {table} (used_at)"))


def _drop_index(conn: Connection, name: str, table: str) -> None:
    on = f" ON {table}" if conn.dialect.name == "mysql" else ""
    conn.execute(text(f"DROP INDEX {name}{on}"))


def _rename_visual_tokens_to_features(conn: Connection) -> None:
    # The cache holds tower features, not tokens: visual_tokens becomes features, rows and all. Idempotent: when both
    # tables exist (a killed run on a backend without transactional DDL), the old rows missing from the new table
    # are copied over before the old table goes.
    old, new = _OLD_FEATURES_TABLE, CachedFeatures.__tablename__
    if not has_table(conn, old):
        return
    if has_table(conn, new):
        cols = "content_hash, vision_id, shape_json, dtype, data, nbytes, used_at"
        conn.execute(text(
            f"INSERT INTO {new} ({cols}) SELECT {cols} FROM {old} o WHERE NOT EXISTS "
            f"(SELECT 1 FROM {new} n WHERE n.content_hash = o.content_hash AND n.vision_id = o.vision_id)"
        ))
        conn.execute(text(f"DROP TABLE {old}"))
        return
    conn.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))
    # Names that still say visual_tokens: the LRU index (as a new database names it), PostgreSQL's primary key.
    indexes = {i["name"] for i in inspect(conn).get_indexes(new)}
    if f"ix_{old}_used_at" in indexes:
        _drop_index(conn, f"ix_{old}_used_at", new)
    if f"ix_{new}_used_at" not in indexes:
        conn.execute(text(f"CREATE INDEX ix_{new}_used_at ON {new} (used_at)"))
    if conn.dialect.name == "postgresql" and inspect(conn).get_pk_constraint(new).get("name") == f"{old}_pkey":
        conn.execute(text(f"ALTER TABLE {new} RENAME CONSTRAINT {old}_pkey TO {new}_pkey"))


def _create_rating_tables(conn: Connection) -> None:
    # A person's own stars and their learned taste; create_all skips tables that exist.
    Base.metadata.create_all(conn, tables=[PersonRating.__table__, TasteRow.__table__])  # type: ignore[list-item]


MIGRATIONS: list[Migration] = [
    Migration(1, "0001_create_tables", _create_tables),
    Migration(2, "0002_run_owner", _add_run_owner),
    Migration(3, "0003_photo_groups", _create_group_tables),
    Migration(4, "0004_visual_cache_budget", _add_visual_cache_lru),
    Migration(5, "0005_features_table", _rename_visual_tokens_to_features),
    Migration(6, "0006_ratings", _create_rating_tables),
]


def latest_version() -> int:
    """Schema version this code writes (the last migration's)."""
    return MIGRATIONS[-1].version


def has_table(conn: Connection, name: str) -> bool:
    """Whether table ``name`` exists in the connected database."""
    return inspect(conn).has_table(name)
