"""The local engine: the pipeline's stages (:mod:`pmllm_batch.scorer.stages`) run in one process, in a loop.

    plan → read (hash, RAW twins, decode) → encode (features, cached) → score (every profile, one pass) → write

Incremental by construction:

* a file whose path, size and mtime are unchanged is not read again;
* tower features are cached by (content hash, vision graph id): a new profile, a moved file, a rescan or a retrained
  adapter runs no vision; the cache keeps to a byte budget (least recently used out first);
* one pass: a chunk of new photos is encoded once and scored for every profile while its features are in memory;
* scores are unique per (content hash, profile, model fingerprint): only missing pairs are scored, and a new model
  fingerprint rescores everything.

Every write is one transaction per batch, so a killed run loses at most its in-flight batch, and idempotent inserts
keep every score unique after a restart. Bad files become ``failed`` photo rows with a reason; the run goes on.

One process at a time works on a library: :meth:`LibraryScorer.sync` and :meth:`LibraryScorer.score_profiles` hold
the database's work lock (:meth:`pmllm_batch.db.store.Store.work_lock`), so two ``rank`` runs, or ``rank`` beside
``watch``, never run vision twice for a photo; the second waits and then finds the work done. Which model scores,
and whether it must load at all, is :class:`pmllm_batch.scorer.known.ModelRegistry`'s business.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

from pmllm_batch.config import Settings
from pmllm_batch.db.records import ProfileRow
from pmllm_batch.db.store import Store
from pmllm_batch.errors import ProfileError, UserError
from pmllm_batch.log import get_logger
from pmllm_batch.scan.discover import FileEntry
from pmllm_batch.scan.plan import PathFilter
from pmllm_batch.scan.raw import is_raw
from pmllm_batch.scorer import stages
from pmllm_batch.scorer.known import KnownModel, ModelRegistry, model_recipe
from pmllm_batch.scorer.linking import Grouper
from pmllm_batch.scorer.models import LoadedModels, ModelCache
from pmllm_batch.scorer.scoring import ProfileScoring
from pmllm_batch.scorer.summary import RunSummary, saved_text

if TYPE_CHECKING:
    from tqdm import tqdm

log = get_logger("scorer")

__all__ = ["KnownModel", "LibraryScorer", "RunSummary", "check_folder", "model_recipe", "saved_text"]


class LibraryScorer:
    """Drives the pipeline for a set of roots against the stored profiles.

    Args:
        settings: the loaded settings.
        store: the database.
        models: a :class:`ModelCache` (lazy; the daemon shares one across runs).
        progress: show tqdm progress bars on stderr.
        should_stop: polled between batches; when it returns True the run stops after the current batch.
    """

    def __init__(self, settings: Settings, store: Store, models: ModelCache | None = None, *, progress: bool = False,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.models = models or ModelCache(settings)
        self.progress = progress
        self.should_stop = should_stop or (lambda: False)
        self._workers = max(1, min(4, os.cpu_count() or 1))
        self.recipe = model_recipe(settings)
        self.registry = ModelRegistry(store, self.models, self.recipe)
        self._one_pass: list[ProfileRow] = []  # the profiles a sync scores as it encodes (one pass)
        self._budget = settings.vision.cache_budget_bytes
        self.grouper = Grouper(store, settings.group)  # bursts and near-duplicates (links in the database)
        self.scoring = ProfileScoring(settings, store, self.models, self.registry, self.grouper,
                                      should_stop=self.should_stop, bar=self._bar)

    def work(self) -> AbstractContextManager[bool]:
        """The library's work lock (reentrant): yields False when a stop was requested while waiting for it."""
        return self.store.work_lock(should_stop=self.should_stop, on_wait=self.say_waiting)

    def say_waiting(self) -> None:
        try:
            others = self.store.others_running()
        except UserError:
            others = []
        who = ", ".join(f"{r['kind']} (pid {r['pid']} on {r['host']})" for r in others) or "another pmllm-batch process"
        log.warning("%s is working on this library; waiting until it is done, then going on with what is left", who)

    def known_model(self, *, load: bool = False) -> KnownModel | None:
        """The model these settings score with (see :meth:`ModelRegistry.known`)."""
        return self.registry.known(load=load)

    def run(self, roots: Sequence[str | Path], profile_names: Sequence[str] | None = None) -> RunSummary:
        """Scan ``roots`` and bring every selected profile's scores up to date.

        Raises:
            UserError: A root is missing or not a folder, or a named profile is unknown.
            KeyboardInterrupt: Ctrl-C; its message says what was saved before it.
        """
        t0 = time.perf_counter()
        roots_abs = [Path(os.path.abspath(os.path.expanduser(str(r)))) for r in roots]
        for r in roots_abs:
            check_folder(r)
        profiles = self.select_profiles(profile_names)
        summary = RunSummary(profiles=len(profiles))
        run_id = self.store.start_run("rank", {"roots": [str(r) for r in roots_abs], "profiles": profile_names})
        status = "ok"
        try:
            with self.work() as held:  # the whole run, so a second rank waits instead of interleaving
                if held:
                    self.sync(roots_abs, summary, profiles=profiles)
                    if not self.should_stop():
                        self.score_profiles(profiles, summary)
        except KeyboardInterrupt:
            status = "interrupted"
            summary.interrupted = True
            raise KeyboardInterrupt(saved_text(summary)) from None
        finally:
            summary.interrupted = summary.interrupted or self.should_stop()
            if summary.interrupted:
                status = "interrupted"
            summary.elapsed_s = round(time.perf_counter() - t0, 3)
            self.store.finish_run(run_id, status, summary.to_dict())
        return summary

    def sync(self, roots: Sequence[Path], summary: RunSummary, paths: Iterable[Path] | None = None, *,
             settle_s: float | None = None, profiles: Sequence[ProfileRow] | None = None) -> list[Path]:
        """Bring photo rows (and the feature cache) up to date for ``roots``.

        With ``profiles``, the run is one pass: each chunk of newly encoded photos is scored for every one of those
        profiles while its features are in memory (the cache is read back only for pairs left over, such as a
        profile or model added later). With ``paths`` only those files are looked at (the daemon's event batches)
        and nothing is marked missing except those of them that are gone. With ``settle_s``, files modified less
        than that many seconds ago are not read (they may still be being written) and are returned instead.

        Returns:
            The paths left for later because they were still settling (empty without ``settle_s``).
        """
        with self.work() as held:
            if not held:
                return []
            self._one_pass = list(profiles or [])
            try:
                return self._sync(roots, summary, paths, settle_s)
            finally:
                self._one_pass = []

    def _sync(self, roots: Sequence[Path], summary: RunSummary, paths: Iterable[Path] | None,
              settle_s: float | None) -> list[Path]:
        cutoff = None if settle_s is None else time.time_ns() - int(float(settle_s) * 1e9)
        plan, index, arrived = stages.plan(self.store, roots, self.settings.scan, summary, paths, cutoff)
        # RAW files last: whether one is the twin of a JPEG depends on how that JPEG's row turned out.
        written = self._process([e for e in plan.todo if not is_raw(e.path)], summary)
        written.update(self._process([e for e in plan.todo if is_raw(e.path)], summary))
        stages.settle(self.store, roots, plan, index, arrived, written, summary, full_scan=paths is None)
        self._group()
        return plan.settling

    def _group(self) -> None:
        """Pool and link what is new: bursts and near-duplicates (:mod:`pmllm_batch.scorer.linking`)."""
        model = self.known_model()
        if model is None:
            return  # nothing was ever encoded with these settings
        if model.vision_id not in self.grouper.backfilled:
            self.grouper.backfill(model.vision_id, self.store.ok_hashes())
        self.grouper.update(model.vision_id)

    def path_filter(self, roots: Sequence[Path]) -> PathFilter:
        """The scanner's file rules for single paths under ``roots`` (the daemon's event filter)."""
        return PathFilter.from_settings(roots, self.settings.scan)

    def score_profiles(self, profiles: Sequence[ProfileRow], summary: RunSummary) -> None:
        """Score every ok photo that lacks a score for each profile under the current model.

        Loads the models only when a pair is left to score (or the settings were never loaded before, so the
        fingerprint that says which scores count is unknown).
        """
        if not profiles:
            return
        with self.work() as held:
            if held:
                self.scoring.score_missing(profiles, summary)
                self._group()  # photos whose features were encoded only now (their cache entry was gone)

    def select_profiles(self, names: Sequence[str] | None) -> list[ProfileRow]:
        if names:
            return [self.store.get_profile(n) for n in names]
        profiles = self.store.list_profiles()
        if not profiles:
            raise ProfileError("no profiles are stored; add one with `pmllm-batch profile add FILE.toml`.")
        return profiles

    def _bar(self, total: int, desc: str) -> tqdm[None] | None:
        if not self.progress or total < 1:
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="img", leave=False)

    def _process(self, todo: list[FileEntry], summary: RunSummary) -> dict[str, str]:
        """Read new or changed files in chunks; encode those whose features are not cached; score them (one pass).

        The models load only for a chunk that holds a photo without cached features (or on the very first run of
        these settings, whose vision graph id is not known yet).

        Returns:
            path -> content hash of every file written as an ok photo.
        """
        written: dict[str, str] = {}
        if not todo:
            return written
        batch_size = int(self.settings.vision.batch_size)
        bar = self._bar(len(todo), "scan")
        with ThreadPoolExecutor(self._workers) as pool:
            for i in range(0, len(todo), batch_size):
                if self.should_stop():
                    break
                chunk = todo[i : i + batch_size]
                written.update(self._process_chunk(chunk, pool, summary))
                if bar:
                    bar.update(len(chunk))
        if bar:
            bar.close()
        return written

    def _process_chunk(self, chunk: list[FileEntry], pool: ThreadPoolExecutor, summary: RunSummary) -> dict[str, str]:
        hashes = list(pool.map(lambda e: stages.safe_hash(e.path), chunk))  # cheap next to decoding
        twins = stages.twins_in(self.store, chunk)
        model = self.known_model() or self.registry.loaded()
        cached = self.store.cached_hashes([h for h in hashes if h], model.vision_id)
        loaded: LoadedModels | None = None
        if any((h is None or h not in cached) and str(e.path) not in twins for e, h in zip(chunk, hashes, strict=True)):
            loaded = self.models.get()
            fresh = self.registry.loaded()
            if fresh.vision_id != model.vision_id:
                model = fresh
                cached = self.store.cached_hashes([h for h in hashes if h], model.vision_id)
        batch = stages.read_batch(chunk, self.settings.scan, hashes=hashes, twins=twins, cached=cached,
                                  preprocess=loaded.vision.preprocess if loaded is not None else None, map_fn=pool.map)
        need = batch.need_encoding(cached)
        if need and loaded is not None:
            features = stages.encode_batch(loaded.vision, need)
            stages.write_features(self.store, features, model.vision_id, self._budget)
            self.grouper.add_tokens(features, model.vision_id)
            summary.encoded += len(features)
            self.scoring.score_fresh(features, loaded, self._one_pass, summary)
        stages.write_photos(self.store, batch)
        summary.fresh_failures.extend(batch.failures)
        return batch.ok_hashes()


def check_folder(root: Path, command: str = "rank") -> None:
    """Raise one sentence unless ``root`` is an existing folder (a file and a missing path are told apart).

    Raises:
        UserError: ``root`` is a file, does not exist, or is something else.
    """
    if root.is_dir():
        return
    if root.is_file():
        raise UserError(f"{root} is a file, not a folder: {command} takes photo folders (pmllm-batch {command} "
                        f"{root.parent} for the folder that holds it).")
    if not root.exists():
        raise UserError(f"photo folder {root} does not exist.")
    raise UserError(f"{root} is not a folder.")
