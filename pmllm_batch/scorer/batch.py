"""The library pipeline: scan → decode → vision (cached by content hash) → score per profile → write.

Incremental by construction:

* a file whose path, size and mtime are unchanged is not read again;
* visual features (the frozen tower's output, before the projector) are cached by (content hash, vision graph id):
  a new profile, a moved file, a rescan or a retrained adapter runs no vision; the cache keeps to a byte budget
  (least recently used out first);
* one pass: a chunk of new photos is encoded once and scored for every profile while its features are in memory;
* scores are unique per (content hash, profile, model fingerprint): only missing pairs are scored, and
  a new model fingerprint rescores everything.

Every write is one transaction per batch, so a killed run loses at most its in-flight batch, and
idempotent inserts keep every score unique after a restart. Bad files become ``failed`` photo rows
with a reason; the run goes on.

One process at a time works on a library: :meth:`LibraryScorer.sync` and :meth:`LibraryScorer.score_profiles`
hold the database's work lock (:meth:`pmllm_batch.db.store.Store.work_lock`), so two ``rank`` runs, or ``rank``
beside ``watch``, never run vision twice for a photo; the second waits and then finds the work done.

Nothing loads when nothing needs scoring: the settings' *recipe* (:func:`model_recipe`) is remembered with the
model it loaded, so a later run with the same settings knows the model's fingerprint and vision graph without
loading it, and loads it only when a photo needs vision or a pair needs a score.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pmllm_batch.db.store import PhotoRecord, Store
from pmllm_batch.errors import ProfileError, UserError
from pmllm_batch.log import get_logger
from pmllm_batch.scan.decode import DecodeError, decode_photo
from pmllm_batch.scan.discover import FileEntry, content_hash
from pmllm_batch.scan.plan import PathFilter, plan_scan
from pmllm_batch.scan.raw import is_raw, jpeg_twin
from pmllm_batch.scan.skip import RAW_PAIR, TOO_SMALL, raw_pair_message, too_small
from pmllm_batch.scorer.grouping import Grouper
from pmllm_batch.scorer.models import LoadedModels, ModelCache

log = get_logger("scorer")


@dataclass
class RunSummary:
    scanned: int = 0  # files found under the roots
    new: int = 0  # paths not seen before (moved files included)
    changed: int = 0  # known paths whose size/mtime changed
    skipped: int = 0  # unchanged files: not read again
    failed: int = 0  # files under the roots whose photo row is failed (with a reason)
    missing: int = 0  # paths marked missing in this run (deleted or moved away)
    encoded: int = 0  # images run through the vision stage
    scored: int = 0  # (image, profile) pairs scored
    profiles: int = 0
    interrupted: bool = False
    elapsed_s: float = 0.0
    model: str = ""
    failures: list[dict[str, str]] = field(default_factory=list)
    moved: int = 0  # files moved or renamed (their scores kept): counted in neither ``new`` nor ``missing``
    demo: bool = False  # the model scoring (loaded, or known from an earlier load) is the demo
    too_small: int = 0  # files under the roots skipped as too small to judge ([scan] min_side)
    raw_pairs: int = 0  # RAW files under the roots shown as their JPEG twin (one photo)
    # Files read in this run that failed (``failures`` also lists earlier ones under the roots); not in to_dict.
    fresh_failures: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("fresh_failures")
        return data


@dataclass(frozen=True)
class KnownModel:
    """The model a scorer works with, as the database knows it (possibly without loading it)."""

    id: int
    fingerprint: str
    vision_id: str
    demo: bool


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


_PACKAGE = Path(__file__).resolve().parents[1]
_MAX_RECIPE_FILES = 5000


def _local_paths(value: Any, base: Path) -> list[Path]:
    """Existing local files or folders named by ``value`` (a settings or preset value), else []."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _local_paths(v, base)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _local_paths(v, base)]
    if not isinstance(value, str) or not value or "://" in value or value == "none":
        return []
    if value.startswith("pkg:"):
        candidate = _PACKAGE / value[4:]
    else:
        candidate = Path(value).expanduser()
        if not candidate.is_absolute():
            candidate = base / candidate
    try:
        return [candidate] if candidate.exists() else []
    except OSError:
        return []


def model_recipe(settings: Any) -> str:
    """What the model settings load, without loading anything: a digest of the ``[model]`` settings (but device and
    offline), the vision backend and variant, this package's version, and the names, sizes and mtimes of every local
    weight file they name (adapter, preset file, local base weights, the shipped presets and demo assets).

    Two runs with the same recipe load the same model, so a run whose recipe the database knows can tell what
    still needs scoring without loading the model (design §5, lever 6).
    """
    from pmllm_batch.version import __version__

    model = {k: v for k, v in dataclasses.asdict(settings.model).items() if k not in ("device", "offline")}
    facts = {"version": __version__, "model": model,
             "vision": [settings.vision.backend, settings.vision.variant]}
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode())
    roots = [_PACKAGE / "model" / "model_configs", _PACKAGE / "assets"]
    roots += _local_paths(model, Path.cwd())
    preset = str(settings.model.preset)
    for path in [p for p in roots if p.suffix == ".json" and p.is_file()]:
        try:
            roots += _local_paths(json.loads(path.read_text(encoding="utf-8")), path.parent)
        except (OSError, ValueError):
            pass
    shipped = _PACKAGE / "model" / "model_configs" / f"{preset}.json"
    if shipped.is_file():
        try:
            roots += _local_paths(json.loads(shipped.read_text(encoding="utf-8")), shipped.parent)
        except (OSError, ValueError):
            pass
    seen: set[Path] = set()
    count = 0
    for root in roots:
        files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
        for f in files:
            if f in seen or count >= _MAX_RECIPE_FILES:
                continue
            seen.add(f)
            count += 1
            try:
                st = f.stat()
            except OSError:
                continue
            digest.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


@dataclass
class _Prepared:
    entry: FileEntry
    record: PhotoRecord
    pixels: np.ndarray | None  # (3, S, S) when vision must run


class LibraryScorer:
    """Drives the pipeline for a set of roots against the stored profiles.

    Args:
        settings: loaded :class:`pmllm_batch.config.Settings`.
        store: the database.
        models: a :class:`ModelCache` (lazy; the daemon shares one across runs).
        progress: show tqdm progress bars on stderr.
        should_stop: polled between batches; when it returns True the run stops after the current batch.
    """

    def __init__(
        self,
        settings: Any,
        store: Store,
        models: ModelCache | None = None,
        *,
        progress: bool = False,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.models = models or ModelCache(settings)
        self.progress = progress
        self.should_stop = should_stop or (lambda: False)
        self._workers = max(1, min(4, os.cpu_count() or 1))
        self.recipe = model_recipe(settings)
        self._model: KnownModel | None = None  # known (from the recipe) or registered (after a load)
        self._registered = False  # ensure_model ran for self._model in this process
        self._looked_up = False
        self._one_pass: list[Any] = []  # the profiles a sync scores as it encodes (one pass)
        self._prefixes: dict[tuple[str, int, str], Any] = {}  # (model fingerprint, profile id, persona) -> prefix
        self._budget = int(getattr(getattr(settings, "vision", None), "cache_budget_bytes", 0) or 0)
        group_settings = getattr(settings, "group", None)
        if group_settings is None:
            from pmllm_batch.config import GroupSettings

            group_settings = GroupSettings()
        self.grouper = Grouper(store, group_settings)  # bursts and near-duplicates (links in the database)

    # ------------------------------------------------------------------------------------------
    # the work lock and the model, known or loaded
    # ------------------------------------------------------------------------------------------
    def work(self) -> AbstractContextManager[bool]:
        """The library's work lock (reentrant): yields False when a stop was requested while waiting for it."""
        return self.store.work_lock(should_stop=self.should_stop, on_wait=self._say_waiting)

    def _say_waiting(self) -> None:
        try:
            others = self.store.others_running()
        except UserError:
            others = []
        who = ", ".join(f"{r['kind']} (pid {r['pid']} on {r['host']})" for r in others) or "another pmllm-batch process"
        log.warning("%s is working on this library; waiting until it is done, then going on with what is left", who)

    def known_model(self, *, load: bool = False) -> KnownModel | None:
        """The model these settings score with: registered after a load, or known from an earlier one (no load).

        With ``load`` the models are loaded when they are not yet (first use: the fingerprint is only known then).
        """
        if load or self.models.loaded:
            loaded = self.models.get()
            if not self._registered or self._model is None or self._model.fingerprint != loaded.fingerprint:
                demo = bool(loaded.model.cfg.demo)
                model_id = self.store.ensure_model(loaded.fingerprint, loaded.preset, {"demo": demo})
                vision_id = str(loaded.vision.graph_id)
                self.store.remember_recipe(model_id, self.recipe, {"vision_id": vision_id, "demo": demo})
                self._model = KnownModel(model_id, loaded.fingerprint, vision_id, demo)
                self._registered = True
            return self._model
        if self._model is None and not self._looked_up:
            self._looked_up = True
            row = self.store.model_for_recipe(self.recipe)
            if row is not None and isinstance(row.get("vision_id"), str):
                self._model = KnownModel(int(row["id"]), str(row["fingerprint"]), str(row["vision_id"]),
                                         bool(row.get("demo")))
        return self._model

    def _note_model(self, model: KnownModel, summary: RunSummary) -> None:
        summary.model, summary.demo = model.fingerprint, model.demo
        if self.store.current_model_id() != model.id:
            self.store.make_current(model.id)

    # ------------------------------------------------------------------------------------------
    # public entry points
    # ------------------------------------------------------------------------------------------
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
        profiles = self._select_profiles(profile_names)
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

    def sync(
        self,
        roots: Sequence[Path],
        summary: RunSummary,
        paths: Iterable[Path] | None = None,
        *,
        settle_s: float | None = None,
        profiles: Sequence[Any] | None = None,
    ) -> list[Path]:
        """Bring photo rows (and the visual-token cache) up to date for ``roots``.

        With ``profiles``, the run is one pass: each chunk of newly encoded photos is scored for every one of those
        profiles while its tokens are in memory (the cache is read back only for pairs left over, such as a profile
        or model added later).

        With ``paths`` only those files are looked at (the daemon's event batches) and nothing is
        marked missing except those of them that are gone. With ``settle_s``, files modified less than that
        many seconds ago are not read (they may still be being written) and are returned instead.

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

    def _sync(
        self, roots: Sequence[Path], summary: RunSummary, paths: Iterable[Path] | None, settle_s: float | None
    ) -> list[Path]:
        index = self.store.photo_index([str(r) for r in roots])
        cutoff = None if settle_s is None else time.time_ns() - int(float(settle_s) * 1e9)
        plan = plan_scan(roots, index, self.settings.scan, paths=paths, settle_cutoff_ns=cutoff)
        entries, todo = plan.entries, plan.todo
        summary.scanned += len(entries)
        summary.new += plan.new
        summary.changed += plan.changed
        summary.skipped += plan.unchanged
        arrived = [str(e.path) for e in todo if (rec := index.get(str(e.path))) is None or rec.status == "missing"]
        # RAW files last: whether one is the twin of a JPEG depends on how that JPEG's row turned out.
        written = self._process([e for e in todo if not is_raw(e.path)], summary)
        written.update(self._process([e for e in todo if is_raw(e.path)], summary))
        # After the new files are written, so a path that left and one that arrived with the same content are
        # recognised as one move (scores kept, no "new" and no "missing"), also when the departure has not been
        # reported yet (the two halves of a move in different event batches).
        gone = list(plan.gone) + self._departed(roots, arrived, written, set(plan.gone))
        missing, moved, moved_in = self.store.resolve_gone(gone, arrived)
        summary.missing += missing
        summary.moved += moved
        summary.new -= moved_in
        if paths is None and index and any(rec.status == "missing" for rec in index.values()):
            self.store.forget_moved_missing([str(r) for r in roots])  # a full scan also tidies older moves
        # failures under these roots (this run's and earlier ones), reported with their reasons
        index = self.store.photo_index([str(r) for r in roots], statuses=("failed", "skipped"))
        scanned = {str(e.path) for e in entries}
        fails = [r for p, r in index.items() if p in scanned and r.status == "failed"]
        summary.failed += len(fails)
        summary.failures.extend(
            {"path": r.path, "reason": r.error_reason or "", "message": r.error_message or ""} for r in fails
        )
        skipped = [r.error_reason for p, r in index.items() if p in scanned and r.status == "skipped"]
        summary.too_small += skipped.count(TOO_SMALL)
        summary.raw_pairs += skipped.count(RAW_PAIR)
        self._group()
        return plan.settling

    def _departed(
        self, roots: Sequence[Path], arrived: list[str], written: dict[str, str], gone: set[str]
    ) -> list[str]:
        """Stored "ok" paths under ``roots`` with the content of an arrived file, no longer on disk: moved away."""
        arrived_set = set(arrived)
        hashes = sorted({written[p] for p in arrived if p in written})
        if not hashes:
            return []
        out = []
        for paths in self.store.photos_by_hash(hashes).values():
            for path in paths:
                if path in arrived_set or path in gone or os.path.lexists(path):
                    continue
                if any(Path(path).is_relative_to(r) for r in roots):
                    out.append(path)
        return out

    def _group(self) -> None:
        """Pool and link what is new: bursts and near-duplicates (:mod:`pmllm_batch.scorer.grouping`)."""
        model = self.known_model()
        if model is None:
            return  # nothing was ever encoded with these settings
        if model.vision_id not in self.grouper.backfilled:
            self.grouper.backfill(model.vision_id, self.store.ok_hashes())
        self.grouper.update(model.vision_id)

    def path_filter(self, roots: Sequence[Path]) -> PathFilter:
        """The scanner's file rules for single paths under ``roots`` (the daemon's event filter)."""
        return PathFilter.from_settings(roots, self.settings.scan)

    def score_profiles(self, profiles: Sequence[Any], summary: RunSummary) -> None:
        """Score every ok photo that lacks a score for each profile under the current model.

        Loads the models only when a pair is left to score (or the settings were never loaded before, so the
        fingerprint that says which scores count is unknown).
        """
        if not profiles:
            return
        with self.work() as held:
            if held:
                self._score_profiles(profiles, summary)
                self._group()  # photos whose tokens were encoded only now (their cache entry was gone)

    def _score_profiles(self, profiles: Sequence[Any], summary: RunSummary) -> None:
        library = set(self.store.ok_hashes())
        if not library:
            return  # an empty library needs no model
        model = self.known_model()
        if model is not None:
            todo = {p.id: sorted(library - self.store.scored_hashes(p.id, model.id)) for p in profiles}
            if not any(todo.values()):
                self._note_model(model, summary)
                return
        loaded = self.models.get()
        registered = self.known_model(load=True)
        assert registered is not None
        if model is None or registered.id != model.id:
            todo = {p.id: sorted(library - self.store.scored_hashes(p.id, registered.id)) for p in profiles}
        model = registered
        self._note_model(model, summary)
        batch_size = int(self.settings.score.batch_size)
        for prof in profiles:
            pending = todo[prof.id]
            if not pending:
                continue
            prefix = self._prefix(loaded, model, prof)
            bar = self._bar(len(pending), f"score {prof.name}")
            for i in range(0, len(pending), batch_size):
                if self.should_stop():
                    return
                chunk = pending[i : i + batch_size]
                tokens = self._visual_tokens(chunk, loaded, summary)
                ok = [h for h in chunk if h in tokens]
                if not ok:
                    continue
                import torch

                feats = torch.from_numpy(np.stack([tokens[h] for h in ok]))
                with torch.inference_mode():
                    out = loaded.model.score_cached(prefix, loaded.model.project(feats))
                rows = [
                    (h, prof.id, float(s), [round(float(p), 5) for p in pr])
                    for h, s, pr in zip(ok, out.scores.tolist(), out.probs.tolist(), strict=True)
                ]
                summary.scored += self.store.add_scores(model.id, rows)
                if bar:
                    bar.update(len(chunk))
            if bar:
                bar.close()

    def _prefix(self, loaded: LoadedModels, model: KnownModel, prof: Any) -> Any:
        """The profile's cached persona prefix under this model (kept across runs: the daemon's batches reuse it)."""
        persona = repr(prof.profile)
        key = (model.fingerprint, int(prof.id), persona)
        if key not in self._prefixes:
            for old in [k for k in self._prefixes if k[1] == key[1]]:
                del self._prefixes[old]  # that profile changed, or the model did
            self._prefixes[key] = loaded.model.encode_prefix(prof.profile)
        return self._prefixes[key]

    def _score_fresh(self, tokens: dict[str, np.ndarray], loaded: LoadedModels, summary: RunSummary) -> None:
        """One pass: score photos encoded just now for every profile of this run, from the tokens in memory."""
        if not self._one_pass or not tokens:
            return
        model = self.known_model(load=True)
        assert model is not None
        import torch

        self._note_model(model, summary)
        batch_size = int(self.settings.score.batch_size)
        order = list(tokens)
        row = {h: i for i, h in enumerate(order)}
        with torch.inference_mode():  # the projector once per photo, not once per (photo, profile)
            projected = loaded.model.project(torch.from_numpy(np.stack([tokens[h] for h in order])))
        for prof in self._one_pass:
            done = self.store.scored_among(prof.id, model.id, order)  # a photo encoded again (its cache evicted)
            todo = [h for h in order if h not in done]
            if not todo:
                continue
            prefix = self._prefix(loaded, model, prof)
            for i in range(0, len(todo), batch_size):
                chunk = todo[i : i + batch_size]
                with torch.inference_mode():
                    out = loaded.model.score_cached(prefix, projected[[row[h] for h in chunk]])
                rows = [
                    (h, prof.id, float(sc), [round(float(p), 5) for p in pr])
                    for h, sc, pr in zip(chunk, out.scores.tolist(), out.probs.tolist(), strict=True)
                ]
                summary.scored += self.store.add_scores(model.id, rows)

    # ------------------------------------------------------------------------------------------
    # internals
    # ------------------------------------------------------------------------------------------
    def _select_profiles(self, names: Sequence[str] | None) -> list[Any]:
        if names:
            return [self.store.get_profile(n) for n in names]
        profiles = self.store.list_profiles()
        if not profiles:
            raise ProfileError("no profiles are stored; add one with `pmllm-batch profile add FILE.toml`.")
        return profiles

    def _bar(self, total: int, desc: str) -> Any:
        if not self.progress or total < 1:
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="img", leave=False)

    def _prepare(
        self, entry: FileEntry, digest: str | None, need_pixels: bool, image_size: Any, twin: str | None = None
    ) -> _Prepared:
        """Decode one file (runs in a worker thread; PIL releases the GIL while decoding).

        ``twin``: the "ok" JPEG this RAW was shot with; the RAW is then stored as skipped (``raw_pair``), not decoded.
        """
        from pmllm_batch.runtime.preprocess import preprocess_image

        rec = PhotoRecord(path=str(entry.path), root=str(entry.root), content_hash=None, size=entry.size,
                          mtime_ns=entry.mtime_ns)
        try:
            rec.content_hash = digest or content_hash(entry.path)
            if twin is not None:
                rec.status, rec.error_reason, rec.error_message = "skipped", RAW_PAIR, raw_pair_message(twin)
                return _Prepared(entry, rec, None)
            # RAW: the embedded preview is enough when it covers the vision input (any preview when none runs)
            side = int(getattr(image_size, "image_size", 0) or 0)
            photo = decode_photo(entry.path, max_pixels=int(self.settings.scan.max_pixels), min_preview_side=side)
        except DecodeError as exc:
            rec.status, rec.error_reason, rec.error_message = "failed", exc.reason, exc.message
            return _Prepared(entry, rec, None)
        except FileNotFoundError:
            rec.status, rec.error_reason = "failed", "vanished"
            rec.error_message = "the file disappeared during the scan"
            return _Prepared(entry, rec, None)
        except OSError as exc:
            rec.status, rec.error_reason, rec.error_message = "failed", "unreadable", str(exc.strerror or exc)
            return _Prepared(entry, rec, None)
        rec.width, rec.height, rec.format = photo.width, photo.height, photo.format
        ex = photo.exif
        rec.taken_at, rec.camera_make, rec.camera_model = ex.taken_at, ex.camera_make, ex.camera_model
        rec.orientation, rec.exif_warning = ex.orientation, ex.warning
        small = too_small(photo.width, photo.height, int(getattr(self.settings.scan, "min_side", 0)))
        if small is not None:
            rec.status, rec.error_reason, rec.error_message = "skipped", TOO_SMALL, small
            return _Prepared(entry, rec, None)
        pixels = preprocess_image(photo.image, image_size) if need_pixels else None
        return _Prepared(entry, rec, pixels)

    def _twins(self, chunk: Sequence[FileEntry]) -> dict[str, str]:
        """RAW files of ``chunk`` whose JPEG twin (same folder and stem) has an "ok" row: RAW path -> twin path."""
        found = {str(e.path): str(t) for e in chunk if is_raw(e.path) and (t := jpeg_twin(e.path)) is not None}
        if not found:
            return {}
        statuses = self.store.photo_statuses(list(found.values()))
        return {raw: twin for raw, twin in found.items() if statuses.get(twin) == "ok"}

    def _process(self, todo: list[FileEntry], summary: RunSummary) -> dict[str, str]:
        """Hash/decode new or changed files in batches; encode those whose tokens are not cached.

        The models load only for a batch that holds a photo without cached tokens (or on the very first run of
        these settings, whose vision graph id is not known yet).

        Returns:
            path -> content hash of every file written as an "ok" photo.
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
                # which of these already have cached tokens? (hashing first is cheap relative to decode)
                hashes = list(pool.map(lambda e: _safe_hash(e.path), chunk))
                twins = self._twins(chunk)
                model = self.known_model() or self.known_model(load=True)
                assert model is not None
                cached = self.store.cached_hashes([h for h in hashes if h], model.vision_id)
                loaded: LoadedModels | None = None
                if any((h is None or h not in cached) and str(e.path) not in twins
                       for e, h in zip(chunk, hashes, strict=True)):
                    loaded = self.models.get()
                    fresh = self.known_model(load=True)
                    if fresh is not None and fresh.vision_id != model.vision_id:
                        model = fresh
                        cached = self.store.cached_hashes([h for h in hashes if h], model.vision_id)
                pre = loaded.vision.preprocess if loaded is not None else None
                jobs = [(e, h, pre is not None and h not in cached, pre, twins.get(str(e.path)))
                        for e, h in zip(chunk, hashes, strict=True)]
                prepared = list(pool.map(lambda job: self._prepare(*job), jobs))
                need = [p for p in prepared if p.pixels is not None and p.record.content_hash not in cached]
                # identical files inside one batch: encode once
                uniq: dict[str, _Prepared] = {}
                for p in need:
                    uniq.setdefault(p.record.content_hash or "", p)
                if uniq and loaded is not None:
                    toks = loaded.vision.encode(np.stack([p.pixels for p in uniq.values() if p.pixels is not None]))
                    fresh_tokens = dict(zip(uniq, _as_cached(toks), strict=True))
                    self.store.put_visual_tokens(fresh_tokens, model.vision_id, budget_bytes=self._budget)
                    self.grouper.add_tokens(fresh_tokens, model.vision_id)
                    summary.encoded += len(uniq)
                    self._score_fresh(fresh_tokens, loaded, summary)
                self.store.upsert_photos([p.record for p in prepared])
                written.update((p.record.path, p.record.content_hash) for p in prepared
                               if p.record.status == "ok" and p.record.content_hash)
                summary.fresh_failures.extend(
                    {"path": p.record.path, "reason": p.record.error_reason or "",
                     "message": p.record.error_message or ""}
                    for p in prepared if p.record.status == "failed"
                )
                if bar:
                    bar.update(len(chunk))
        if bar:
            bar.close()
        return written

    def _visual_tokens(self, hashes: list[str], loaded: LoadedModels, summary: RunSummary) -> dict[str, np.ndarray]:
        """Cached tokens for ``hashes``; the rest are decoded from any ok path and encoded now."""
        vid = loaded.vision.graph_id
        tokens = self.store.get_visual_tokens(hashes, vid)
        missing = [h for h in hashes if h not in tokens]
        if not missing:
            return tokens
        from pmllm_batch.runtime.preprocess import preprocess_image

        paths = self.store.photos_by_hash(missing)
        pix: dict[str, np.ndarray] = {}
        for h in missing:
            for path in paths.get(h, []):
                try:
                    photo = decode_photo(path, max_pixels=int(self.settings.scan.max_pixels),
                                         min_preview_side=int(loaded.vision.preprocess.image_size))
                except (DecodeError, OSError) as exc:
                    log.warning("cannot re-read %s for vision: %s", path, exc)
                    continue
                pix[h] = preprocess_image(photo.image, loaded.vision.preprocess)
                break
        if pix:
            toks = loaded.vision.encode(np.stack(list(pix.values())))
            new = dict(zip(pix, _as_cached(toks), strict=True))
            self.store.put_visual_tokens(new, vid, budget_bytes=self._budget)
            self.grouper.add_tokens(new, vid)
            summary.encoded += len(new)
            tokens.update(new)
        return tokens


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


def saved_text(summary: RunSummary) -> str:
    """What an interrupted run kept, for the "interrupted" line."""
    return (f"the work finished before it is saved ({_plural(summary.encoded, 'photo')} through vision, "
            f"{_plural(summary.scored, '(photo, profile) pair')} scored): run the same command again to do the rest")


def _as_cached(tokens: np.ndarray) -> np.ndarray:
    """Tokens exactly as the cache gives them back (float16 values as float32): a photo scored from memory in one
    pass gets the score it would get from the cache later."""
    return np.asarray(tokens).astype("<f2").astype(np.float32)


def _safe_hash(path: Path) -> str | None:
    try:
        return content_hash(path)
    except OSError:
        return None
