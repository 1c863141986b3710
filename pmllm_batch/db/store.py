"""The library database facade: photos, profiles, models, scores, the feature cache, runs and links.

``Store`` is what the rest of pmllm-batch talks to; the SQL itself lives in one module per table
(:mod:`~pmllm_batch.db.photos`, :mod:`~pmllm_batch.db.profiles`, :mod:`~pmllm_batch.db.models`,
:mod:`~pmllm_batch.db.features`, :mod:`~pmllm_batch.db.scores`, :mod:`~pmllm_batch.db.runs`,
:mod:`~pmllm_batch.db.links`), each a set of functions taking a Session. Every public write method here is one short
transaction (see :mod:`~pmllm_batch.db.engine` for why and for the SQLite settings), so a killed process loses at
most the batch it was writing, and a second process (``pmllm-batch status`` while the daemon runs) can read at any
time. Checks that can fail without the database (a bad status, a non-finite score) run before the transaction opens.

Based on: beets ``beets/dbcore/db.py`` (``Database``, ``Transaction``, ``_handle_mutate``), redone
with SQLAlchemy sessions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, NotRequired, TypedDict

from sqlalchemy import Engine

from pmllm_batch.contracts import PhotoStatus
from pmllm_batch.db import check, features, forget, migrations, models, photos, profiles, runs, scores
from pmllm_batch.db.engine import Database
from pmllm_batch.db.forget import ForgetCounts
from pmllm_batch.db.links import LinkStore
from pmllm_batch.db.profiles import persona_digest
from pmllm_batch.db.ratings import RatingStore
from pmllm_batch.db.records import (
    ExifWarning,
    FailedPhoto,
    ModelInfo,
    PhotoRecord,
    ProfileRow,
    RankedPhoto,
    RecipeModel,
    RunInfo,
    RunningRun,
)
from pmllm_batch.errors import UserError
from pmllm_batch.profiles import Profile

if TYPE_CHECKING:
    import numpy as np

# Callers import the records from here too (``from pmllm_batch.db.store import PhotoRecord, Store``).
__all__ = ["CacheStatus", "LibraryStatus", "PhotoRecord", "ProfileRow", "RankedPhoto", "Store", "persona_digest"]


class CacheStatus(TypedDict):
    """The feature cache in :meth:`Store.status`."""

    entries: int
    bytes: int
    evicted: int  # entries dropped to stay within the budget, ever
    budget_bytes: NotRequired[int]  # added by the CLI ([vision] cache budget)


class StatusCheck(TypedDict):
    """``status --check``'s result, added by the CLI."""

    ok: bool
    checked: str  # what was checked, in words


class LibraryStatus(TypedDict):
    """:meth:`Store.status` (JSON-able): the library's counts and health; the CLI adds the not-required keys."""

    photos: dict[PhotoStatus, int]  # ok, failed, missing (and skipped when there are any)
    profiles: int
    models: int
    current_model: ModelInfo | None  # the library's model
    scores_current_model: int  # score rows
    photos_scored_current_model: int  # photos it scored: the most for one profile
    exif_warnings: list[ExifWarning]  # ok photos whose EXIF could not be read, by path
    visual_cache: CacheStatus
    failures: list[FailedPhoto]  # every failed photo, by path
    last_run: RunInfo | None
    # profile name -> the person's ratings of photos in the library (what their ranking learns from; 0 = profile only)
    ratings: dict[str, int]
    db: str  # the database URL, password hidden
    read_only: NotRequired[bool]
    check: NotRequired[StatusCheck]


class Store(LinkStore, RatingStore):  # bursts, near-duplicates, RAW twins (db.links); ratings, tastes (db.ratings)
    """The library database. Open one per process (or per command); it is safe to share between threads.

    Args:
        url: any SQLAlchemy URL. For a SQLite file its parent folder is created.

    Raises:
        DBAccessError: The database cannot be opened, created or written, has a newer schema than this
            code knows, or is not a pmllm-batch database.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._db = Database(url)
        self.label: str = self._db.label
        self.engine: Engine = self._db.engine
        self.read_only: bool = self._db.read_only  # an existing SQLite file this user can only read
        try:
            migrations.migrate(self._db)
        except BaseException:
            self._db.close()
            raise
        self._db.opening = False

    def close(self) -> None:
        """Return every pooled connection (the WAL is checkpointed when the last one closes)."""
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def work_lock(
        self, *, should_stop: Callable[[], bool] | None = None, on_wait: Callable[[], None] | None = None
    ) -> Iterator[bool]:
        """Hold the library's work lock (one scanning/scoring process at a time; reentrant in one thread).

        Yields True once held, or False when ``should_stop`` returned True while waiting (do nothing then). See
        :meth:`pmllm_batch.db.engine.Database.work_lock`.
        """
        with self._db.work_lock(should_stop=should_stop, on_wait=on_wait) as held:
            yield held

    def others_running(self) -> list[RunningRun]:
        """Runs other live processes have open on this database: [{"id", "kind", "pid", "host"}]."""
        with self._db.read() as s:
            return runs.others_running(s)

    def check(self) -> tuple[list[str], str]:
        """Integrity check: (problems found, what was checked). No problems means the database is sound."""
        with self._db.read() as s:
            return check.problems(s), check.describe(s)

    def schema_version(self) -> int:
        """Schema version recorded in the database."""
        with self._db.read() as s:
            return migrations.schema_version(s, self.label)

    # -----------------------------------------------------------------------------------------------------------------
    # Photos
    # -----------------------------------------------------------------------------------------------------------------

    def photo_index(
        self, roots: list[str] | None = None, statuses: Sequence[PhotoStatus] | None = None
    ) -> dict[str, PhotoRecord]:
        """Photo rows by path, for incremental scans (each record's ``status`` a :class:`PhotoStatus`).

        Args:
            roots: Only rows found under these scan roots (as stored); None for all.
            statuses: Only rows with one of these statuses; None for any.
        """
        with self._db.read() as s:
            return photos.index(s, roots, statuses)

    def upsert_photos(self, records: list[PhotoRecord]) -> None:
        """Insert or update photo rows by path, in one transaction.

        ``last_seen`` is set on every row written; ``updated_at`` only when a field actually changed, so it
        tells when the file last changed rather than when it was last scanned.
        """
        if not records:
            return
        photos.check_statuses(records)
        with self._db.write() as s:
            photos.upsert(s, records)

    def resolve_gone(self, gone: list[str], arrived: list[str]) -> tuple[int, int, int]:
        """Settle paths no longer on disk against paths that appeared, in one transaction.

        A gone path whose content now lives at a path that appeared (in this scan, or since the gone one was last
        written) was moved or renamed: its row is deleted (the photo and its scores live on at the new path); so
        is an older "missing" row whose content just arrived. Every other gone path is marked "missing".

        Returns:
            (missing, moved, moved_in): ``moved_in`` of the moves consumed one of ``arrived`` (not new photos).
        """
        if not gone and not arrived:
            return 0, 0, 0
        with self._db.write() as s:
            return photos.resolve_gone(s, gone, arrived)

    def forget_moved_missing(self, roots: list[str]) -> int:
        """Delete "missing" rows under ``roots`` whose content lives on at an "ok" path (it moved); returns how many."""
        with self._db.write() as s:
            return photos.forget_moved_missing(s, roots)

    def mark_missing(self, paths: list[str]) -> int:
        """Set status "missing" on these paths. Scores stay (they are keyed by content hash).

        Returns:
            How many rows changed status.
        """
        if not paths:
            return 0
        with self._db.write() as s:
            return photos.mark_missing(s, paths)

    def photos_by_hash(self, hashes: list[str]) -> dict[str, list[str]]:
        """Paths of "ok" photos for each content hash (sorted; hashes with no ok photo are absent)."""
        with self._db.read() as s:
            return photos.paths_by_hash(s, hashes)

    def ok_hashes(self) -> list[str]:
        """Distinct content hashes of photos with status "ok", sorted."""
        with self._db.read() as s:
            return photos.ok_hashes(s)

    def photo_roots(self) -> list[str]:
        """Distinct scan roots of every stored photo (any status), sorted."""
        with self._db.read() as s:
            return photos.roots(s)

    def forget(self, paths: Sequence[str], *, dry_run: bool = False) -> ForgetCounts:
        """Remove the photo rows at or under ``paths`` (absolute) from the library, in one transaction, with the
        scores, cached features and burst embeddings and links of content no other photo row still has; never a file.

        Args:
            paths: Absolute folders (or files) as rank stored them.
            dry_run: Count what would go and change nothing.

        Returns:
            What was (or would be) removed.

        Raises:
            UserError: A path has no photo row at or under it (nothing is removed then); exit 2.
            DBAccessError: The database is read-only and this is not a dry run.
        """
        if not dry_run:
            self._db.check_writable()
        session = self._db.read if dry_run else self._db.write
        with session() as s:
            unknown = forget.unknown_paths(s, paths)
            if unknown:
                one = len(unknown) == 1
                raise UserError(
                    f"{', '.join(unknown)} {'is' if one else 'are'} not in the library at {self.label}: no photo is "
                    f"stored at or under {'it' if one else 'them'}, so nothing was forgotten."
                )
            return forget.forget(s, paths, dry_run=dry_run)

    # -----------------------------------------------------------------------------------------------------------------
    # Profiles
    # -----------------------------------------------------------------------------------------------------------------

    def upsert_profile(self, profile: Profile, persona: str, source: str | None = None) -> tuple[int, bool]:
        """Store a profile and its rendered persona (and, when given, the file it came from).

        Returns:
            (profile id, changed): ``changed`` is True when the profile is new or its persona text changed.
            A changed persona deletes that profile's scores, because they were computed for the old text.
        """
        with self._db.write() as s:
            return profiles.upsert(s, profile, persona, source)

    def profile_sources(self) -> dict[str, str | None]:
        """Profile name -> the file it was last added from (absolute path), None when unknown."""
        with self._db.read() as s:
            return profiles.sources(s)

    def get_profile(self, name: str) -> ProfileRow:
        """One stored profile.

        Raises:
            ProfileError: No profile has this name (the message lists the known ones).
        """
        with self._db.read() as s:
            return profiles.get(s, name)

    def list_profiles(self) -> list[ProfileRow]:
        """Every stored profile, by name."""
        with self._db.read() as s:
            return profiles.list_all(s)

    def remove_profile(self, name: str) -> None:
        """Delete a profile and its scores.

        Raises:
            ProfileError: No profile has this name.
        """
        with self._db.write() as s:
            profiles.remove(s, name)

    def profiles_version(self) -> str:
        """A token that changes whenever any profile is added, changed or removed (one indexed read)."""
        with self._db.read() as s:
            return profiles.version(s)

    # -----------------------------------------------------------------------------------------------------------------
    # Models
    # -----------------------------------------------------------------------------------------------------------------

    def ensure_model(
        self, fingerprint: str, preset: str, meta: Mapping[str, object], *, make_current: bool = True
    ) -> int:
        """Register a model fingerprint (once) and, by default, make it the model rankings read.

        Args:
            fingerprint: Identity of base weights + adapter + preset.
            preset: Preset name, for display.
            meta: Free JSON-able facts, stored on first registration; ``{"demo": bool}`` is the model config's demo
                flag (the report's disclaimer follows it).
            make_current: False for a model that must not change what rankings show (e.g. an evaluation).

        Returns:
            The model id.
        """
        with self._db.write() as s:
            return models.ensure(s, fingerprint, preset, meta, make_current=make_current)

    def remember_recipe(self, model_id: int, recipe: str, facts: Mapping[str, object]) -> None:
        """Record that settings with ``recipe`` load model ``model_id``, with the ``facts`` needed without loading
        it (its vision graph id, whether it is the demo), so a later run with nothing to score loads nothing."""
        with self._db.write() as s:
            models.remember_recipe(s, model_id, recipe, facts)

    def model_for_recipe(self, recipe: str) -> RecipeModel | None:
        """The model settings with ``recipe`` loaded before (id, fingerprint, preset, demo, vision_id), or None."""
        with self._db.read() as s:
            return models.by_recipe(s, recipe)

    def remember_model_settings(self, model_id: int, settings: Mapping[str, str]) -> bool:
        """Store the settings that rebuild model ``model_id`` (``scorer.known.model_settings``: preset, checkpoint,
        lm_path, vision_checkpoint, quantize), so a command given no model can score with the library's; True when
        they changed (nothing is written otherwise)."""
        with self._db.read() as s:  # a read first: the usual case (unchanged) takes no write lock
            known = models.describe(s, model_id)
        if known is None or known["settings"] == dict(settings):
            return False
        with self._db.write() as s:
            return models.remember_settings(s, model_id, settings)

    def model_for_settings(self, settings: Mapping[str, str]) -> ModelInfo | None:
        """The model last rebuilt from exactly these stored settings, or None (see :meth:`remember_model_settings`)."""
        with self._db.read() as s:
            return models.by_settings(s, settings)

    def model(self, model_id: int) -> ModelInfo | None:
        """{"id", "fingerprint", "preset", "demo", "note", "settings"} of one model; None when there is none."""
        with self._db.read() as s:
            return models.describe(s, model_id)

    def make_current(self, model_id: int) -> None:
        """Make ``model_id`` the library's model: the one whose scores rankings read."""
        with self._db.write() as s:
            models.make_current(s, model_id)

    def current_model_id(self) -> int | None:
        """The library's model (rankings read its scores only); None before any scoring."""
        with self._db.read() as s:
            return models.current_id(s)

    def current_model(self) -> ModelInfo | None:
        """{"id", "fingerprint", "preset", "demo", "note", "settings"} of the library's model; None before any
        scoring."""
        with self._db.read() as s:
            return models.describe(s, models.current_id(s))

    def photos_scored(self, model_id: int) -> int:
        """Photos ``model_id`` scored: the most it scored for any one profile (0: it has no scores)."""
        with self._db.read() as s:
            return max(scores.per_profile(s, model_id).values(), default=0)

    # -----------------------------------------------------------------------------------------------------------------
    # Feature cache: tower features (the vision tower's output, before the projector) per content hash and vision graph
    # -----------------------------------------------------------------------------------------------------------------

    def get_features(self, hashes: list[str], vision_id: str) -> dict[str, np.ndarray]:
        """Cached tower features for these hashes under one vision graph.

        Returns:
            hash -> float32 array of the stored shape ((n_feat, D_vis): the cache holds them as float16); absent
            hashes are not in the dict.
        """
        with self._db.read() as s:
            found = features.get(s, hashes, vision_id)
        if found:
            with self._db.write() as s:
                features.touch(s, list(found), vision_id)
        return found

    def cached_hashes(self, hashes: list[str], vision_id: str) -> set[str]:
        """Which of ``hashes`` have cached features under ``vision_id`` (no blob is read)."""
        with self._db.read() as s:
            return features.present(s, hashes, vision_id)

    def put_features(self, items: dict[str, np.ndarray], vision_id: str, *, budget_bytes: int = 0) -> int:
        """Cache tower features as little-endian float16 bytes; hashes already cached are left as they are.

        With ``budget_bytes`` > 0 the least recently used entries are then evicted until the cache fits it.

        Returns:
            How many entries the budget evicted.
        """
        rows = features.encode(items, vision_id)
        if not rows:
            return 0
        with self._db.write() as s:
            features.put(s, rows)
            return features.evict(s, budget_bytes)

    def feature_cache_bytes(self) -> tuple[int, int]:
        """(number of cached entries, total bytes of their blobs)."""
        with self._db.read() as s:
            return features.totals(s)

    # -----------------------------------------------------------------------------------------------------------------
    # Scores and rankings
    # -----------------------------------------------------------------------------------------------------------------

    def scored_hashes(self, profile_id: int, model_id: int) -> set[str]:
        """Content hashes that already have a score for this profile and model."""
        with self._db.read() as s:
            return scores.scored_hashes(s, profile_id, model_id)

    def scored_among(self, profile_id: int, model_id: int, hashes: Sequence[str]) -> set[str]:
        """Which of ``hashes`` already have a score for this profile and model."""
        with self._db.read() as s:
            return scores.scored_among(s, profile_id, model_id, hashes)

    def add_scores(self, model_id: int, rows: Iterable[tuple[str, int, float, Sequence[float]]]) -> int:
        """Write one batch of scores in one transaction; rows already present are skipped.

        Args:
            model_id: From :meth:`ensure_model`.
            rows: (content_hash, profile_id, score, rating-level probabilities).

        Returns:
            How many rows were inserted.
        """
        values = scores.encode(model_id, rows)
        if not values:
            return 0
        with self._db.write() as s:
            return scores.add(s, values)

    def ranking(self, profile_name: str, model_id: int | None = None, top: int | None = None) -> list[RankedPhoto]:
        """One profile's ranking.

        Only photos with status "ok" appear, one row per content hash (represented by its shortest, then
        lexicographically smallest path; ``paths`` lists every ok path of it), sorted by score descending, ties by
        path; ranks are 1..n. Bursts, RAW twins and scopes are the outputs' view of it
        (:class:`pmllm_batch.outputs.bursts.RankingView`).

        Args:
            profile_name: A stored profile.
            model_id: Whose scores to read; the current model by default (no model yet: empty list).
            top: Keep the first ``top`` rows only.

        Raises:
            ProfileError: Unknown profile.
        """
        with self._db.read() as s:
            profile = profiles.find(s, profile_name)
            mid = model_id if model_id is not None else models.current_id(s)
            if mid is None:
                return []
            return scores.ranking(s, profile.id, mid, top)

    def score_counts(self, model_id: int | None = None) -> dict[str, int]:
        """Profile name -> number of distinct "ok" content hashes scored (= its ranking's length).

        Every stored profile appears, with 0 when nothing is scored. ``model_id`` defaults to the current model.
        """
        with self._db.read() as s:
            mid = model_id if model_id is not None else models.current_id(s)
            return scores.counts(s, mid)

    # -----------------------------------------------------------------------------------------------------------------
    # Runs and status
    # -----------------------------------------------------------------------------------------------------------------

    def start_run(self, kind: str, args: Mapping[str, object]) -> int:
        """Record a run as "running" (with this process's pid and host); returns its id.

        Runs left "running" by a process of this host that no longer exists (killed with -9, a crash, a power
        cut) are closed first, as "interrupted".
        """
        with self._db.write() as s:
            return runs.start(s, kind, args)

    def finish_run(self, run_id: int, status: str, summary: Mapping[str, object]) -> None:
        """Close a run with status "ok", "interrupted" or "failed" and its summary."""
        runs.check_finished_status(status)
        with self._db.write() as s:
            runs.finish(s, run_id, status, summary)

    def failures(self) -> list[FailedPhoto]:
        """Every failed photo, by path: {"path", "reason", "message"}."""
        with self._db.read() as s:
            return photos.failures(s)

    def status(self) -> LibraryStatus:
        """Counts and health of the library, read in one snapshot (JSON-able; the CLI adds its own keys to it).

        Returns:
            {"photos": {"ok", "failed", "missing"}, "profiles", "models", "current_model" (the library's model: id,
            fingerprint, preset, demo, note, settings; or None), "scores_current_model" (score rows),
            "photos_scored_current_model" (photos it scored: the most for one profile), "visual_cache" (the feature
            cache): {"entries", "bytes", "evicted"}, "failures": [{"path", "reason", "message"}] (every failed photo, by
            path), "exif_warnings": [{"path", "warning"}] (ok photos whose EXIF could not be read, by path),
            "last_run" (or None), "ratings" ({profile name: the person's ratings of photos in the library}), "db"}.
        """
        from pmllm_batch.db.ratings import counts_by_profile

        with self._db.read() as s:
            mid = models.current_id(s)
            entries, nbytes = features.totals(s)
            evicted = features.evicted_count(s)
            scored = scores.per_profile(s, mid)  # one pass over the (profile, model) index for both counts
            rated = counts_by_profile(s, in_library=True)
            return {
                "photos": photos.count_by_status(s),
                "profiles": profiles.count(s),
                "models": models.count(s),
                "current_model": models.describe(s, mid),
                "scores_current_model": sum(scored.values()),
                "photos_scored_current_model": max(scored.values(), default=0),
                "exif_warnings": photos.exif_warnings(s),
                "visual_cache": {"entries": entries, "bytes": nbytes, "evicted": evicted},
                "failures": photos.failures(s),
                "last_run": runs.last(s),
                "ratings": {p.name: sum(rated.get(p.id, {}).values()) for p in profiles.list_all(s)},
                "db": self._db.safe_url,
            }
