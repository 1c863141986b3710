"""The library pipeline: scan → decode → vision (cached by content hash) → score per profile → write.

Incremental by construction:

* a file whose path, size and mtime are unchanged is not read again;
* visual tokens are cached by (content hash, vision graph id): a new profile, a moved file or a
  rescan runs no vision;
* scores are unique per (content hash, profile, model fingerprint): only missing pairs are scored, and
  a new model fingerprint rescores everything.

Every write is one transaction per batch, so a killed run loses at most its in-flight batch, and
idempotent inserts keep every score unique after a restart. Bad files become ``failed`` photo rows
with a reason; the run goes on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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

    # ------------------------------------------------------------------------------------------
    # public entry points
    # ------------------------------------------------------------------------------------------
    def run(self, roots: Sequence[str | Path], profile_names: Sequence[str] | None = None) -> RunSummary:
        """Scan ``roots`` and bring every selected profile's scores up to date."""
        t0 = time.perf_counter()
        roots_abs = [Path(os.path.abspath(os.path.expanduser(str(r)))) for r in roots]
        for r in roots_abs:
            if not r.is_dir():
                raise UserError(f"photo folder {r} does not exist or is not a folder.")
        profiles = self._select_profiles(profile_names)
        summary = RunSummary(profiles=len(profiles))
        run_id = self.store.start_run("rank", {"roots": [str(r) for r in roots_abs], "profiles": profile_names})
        status = "ok"
        try:
            self.sync(roots_abs, summary)
            if not self.should_stop():
                self.score_profiles(profiles, summary)
        except KeyboardInterrupt:
            status = "interrupted"
            summary.interrupted = True
            raise
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
    ) -> list[Path]:
        """Bring photo rows (and the visual-token cache) up to date for ``roots``.

        With ``paths`` only those files are looked at (the daemon's event batches) and nothing is
        marked missing except those of them that are gone. With ``settle_s``, files modified less than that
        many seconds ago are not read (they may still be being written) and are returned instead.

        Returns:
            The paths left for later because they were still settling (empty without ``settle_s``).
        """
        index = self.store.photo_index([str(r) for r in roots])
        cutoff = None if settle_s is None else time.time_ns() - int(float(settle_s) * 1e9)
        plan = plan_scan(roots, index, self.settings.scan, paths=paths, settle_cutoff_ns=cutoff)
        entries, todo = plan.entries, plan.todo
        summary.scanned += len(entries)
        summary.new += plan.new
        summary.changed += plan.changed
        summary.skipped += plan.unchanged
        if plan.gone:
            summary.missing += self.store.mark_missing(plan.gone)
        self._process(todo, summary)
        # failures under these roots (this run's and earlier ones), reported with their reasons
        index = self.store.photo_index([str(r) for r in roots])
        scanned = {str(e.path) for e in entries}
        fails = [r for p, r in index.items() if p in scanned and r.status == "failed"]
        summary.failed += len(fails)
        summary.failures.extend(
            {"path": r.path, "reason": r.error_reason or "", "message": r.error_message or ""} for r in fails
        )
        return plan.settling

    def path_filter(self, roots: Sequence[Path]) -> PathFilter:
        """The scanner's file rules for single paths under ``roots`` (the daemon's event filter)."""
        return PathFilter.from_settings(roots, self.settings.scan)

    def score_profiles(self, profiles: Sequence[Any], summary: RunSummary) -> None:
        """Score every ok photo that lacks a score for each profile under the current model."""
        if not profiles:
            return
        loaded = self.models.get()
        model_id = self.store.ensure_model(loaded.fingerprint, loaded.preset, {"demo": bool(loaded.model.cfg.demo)})
        summary.model = loaded.fingerprint
        library = self.store.ok_hashes()
        batch_size = int(self.settings.score.batch_size)
        for prof in profiles:
            todo = sorted(set(library) - self.store.scored_hashes(prof.id, model_id))
            if not todo:
                continue
            prefix = loaded.model.encode_prefix(prof.profile)
            bar = self._bar(len(todo), f"score {prof.name}")
            for i in range(0, len(todo), batch_size):
                if self.should_stop():
                    return
                chunk = todo[i : i + batch_size]
                tokens = self._visual_tokens(chunk, loaded, summary)
                ok = [h for h in chunk if h in tokens]
                if not ok:
                    continue
                import torch

                vis = torch.from_numpy(np.stack([tokens[h] for h in ok]))
                with torch.inference_mode():
                    out = loaded.model.score_cached(prefix, vis)
                rows = [
                    (h, prof.id, float(s), [round(float(p), 5) for p in pr])
                    for h, s, pr in zip(ok, out.scores.tolist(), out.probs.tolist(), strict=True)
                ]
                summary.scored += self.store.add_scores(model_id, rows)
                if bar:
                    bar.update(len(chunk))
            if bar:
                bar.close()

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

    def _prepare(self, entry: FileEntry, digest: str | None, need_pixels: bool, image_size: Any) -> _Prepared:
        """Decode one file (runs in a worker thread; PIL releases the GIL while decoding)."""
        from pmllm_batch.runtime.preprocess import preprocess_image

        rec = PhotoRecord(path=str(entry.path), root=str(entry.root), content_hash=None, size=entry.size,
                          mtime_ns=entry.mtime_ns)
        try:
            rec.content_hash = digest or content_hash(entry.path)
            photo = decode_photo(entry.path, max_pixels=int(self.settings.scan.max_pixels))
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
        pixels = preprocess_image(photo.image, image_size) if need_pixels else None
        return _Prepared(entry, rec, pixels)

    def _process(self, todo: list[FileEntry], summary: RunSummary) -> None:
        """Hash/decode new or changed files in batches; encode those whose tokens are not cached."""
        if not todo:
            return
        loaded: LoadedModels | None = None
        batch_size = int(self.settings.vision.batch_size)
        bar = self._bar(len(todo), "scan")
        with ThreadPoolExecutor(self._workers) as pool:
            for i in range(0, len(todo), batch_size):
                if self.should_stop():
                    break
                chunk = todo[i : i + batch_size]
                # which of these already have cached tokens? (hashing first is cheap relative to decode)
                loaded = loaded or self.models.get()
                vid = loaded.vision.graph_id
                hashes = list(pool.map(lambda e: _safe_hash(e.path), chunk))
                cached = set(self.store.get_visual_tokens([h for h in hashes if h], vid))
                pre = loaded.vision.preprocess
                jobs = [(e, h, h not in cached, pre) for e, h in zip(chunk, hashes, strict=True)]
                prepared = list(pool.map(lambda job: self._prepare(*job), jobs))
                need = [p for p in prepared if p.pixels is not None and p.record.content_hash not in cached]
                # identical files inside one batch: encode once
                uniq: dict[str, _Prepared] = {}
                for p in need:
                    uniq.setdefault(p.record.content_hash or "", p)
                if uniq:
                    toks = loaded.vision.encode(np.stack([p.pixels for p in uniq.values() if p.pixels is not None]))
                    self.store.put_visual_tokens(dict(zip(uniq, toks, strict=True)), vid)
                    summary.encoded += len(uniq)
                self.store.upsert_photos([p.record for p in prepared])
                if bar:
                    bar.update(len(chunk))
        if bar:
            bar.close()

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
                    photo = decode_photo(path, max_pixels=int(self.settings.scan.max_pixels))
                except (DecodeError, OSError) as exc:
                    log.warning("cannot re-read %s for vision: %s", path, exc)
                    continue
                pix[h] = preprocess_image(photo.image, loaded.vision.preprocess)
                break
        if pix:
            toks = loaded.vision.encode(np.stack(list(pix.values())))
            new = dict(zip(pix, toks, strict=True))
            self.store.put_visual_tokens(new, vid)
            summary.encoded += len(new)
            tokens.update(new)
        return tokens


def _safe_hash(path: Path) -> str | None:
    try:
        return content_hash(path)
    except OSError:
        return None
