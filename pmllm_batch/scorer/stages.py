"""The pipeline's stages: plain functions over typed batches (docs/ARCHITECTURE.md, "Stages").

    plan ─► read (hash, RAW twins, decode) ─► encode (tower features, cached) ─► score (per profile) ─► write

Each stage takes what it needs as arguments — the store, the settings, a :class:`~pmllm_batch.contracts.FeatureEncoder`
and a :class:`~pmllm_batch.contracts.PhotoScorer` — and keeps no state, so an engine runs them in its own way: the
local engine (:class:`pmllm_batch.scorer.engine.LibraryScorer`) in a loop under the library's work lock, another
engine (a Ray cluster) on its workers. Writes are idempotent (upserts by path, features by (content hash, graph),
scores unique per (content hash, profile, model)), so a retried batch duplicates nothing.

Stages never read the clock or print; counts go back to the caller in their return values.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from pmllm_batch.config import ScanSettings
from pmllm_batch.contracts import FailReason, FeatureEncoder, PhotoRecord, PhotoScorer, PhotoStatus, SkipReason
from pmllm_batch.db.store import Store
from pmllm_batch.log import get_logger
from pmllm_batch.preprocess_cfg import PreprocessCfg
from pmllm_batch.profiles import Profile
from pmllm_batch.scan.decode import DecodeError, decode_photo
from pmllm_batch.scan.discover import FileEntry, content_hash
from pmllm_batch.scan.plan import ScanPlan, plan_scan
from pmllm_batch.scan.raw import is_raw, jpeg_twin
from pmllm_batch.scan.skip import blank, raw_pair_message, too_small
from pmllm_batch.scorer.summary import RunSummary

if TYPE_CHECKING:
    import torch

log = get_logger("scorer")

__all__ = [
    "Prepared",
    "plan",
    "settle",
    "ReadBatch",
    "ScoreRow",
    "as_cached",
    "encode_batch",
    "features_for",
    "prepare_photo",
    "project",
    "read_batch",
    "safe_hash",
    "score_tokens",
    "twins_in",
    "write_features",
    "write_photos",
    "write_scores",
]

PrefixT = TypeVar("PrefixT")

# (content hash, profile id, score, probabilities over the rating levels): one row of the scores table
ScoreRow = tuple[str, int, float, list[float]]


@dataclass
class Prepared:
    """One file after the read stage: its photo row, and its pixels when the encode stage must run on it."""

    entry: FileEntry
    record: PhotoRecord
    pixels: np.ndarray | None = None  # (3, S, S) float32, preprocessed for the encoder


@dataclass
class ReadBatch:
    """A chunk of files through the read stage."""

    prepared: list[Prepared]
    failures: list[dict[str, str]] = field(default_factory=list)  # this chunk's failed files: path, reason, message

    def need_encoding(self, cached: set[str]) -> dict[str, Prepared]:
        """Decoded photos whose features are not cached, one per content hash (identical files encode once)."""
        out: dict[str, Prepared] = {}
        for p in self.prepared:
            if p.pixels is not None and p.record.content_hash and p.record.content_hash not in cached:
                out.setdefault(p.record.content_hash, p)
        return out

    def ok_hashes(self) -> dict[str, str]:
        """path -> content hash of every file written as an ok photo."""
        return {p.record.path: p.record.content_hash for p in self.prepared
                if p.record.status == PhotoStatus.OK and p.record.content_hash}


# ----------------------------------------------------------------------------------------------------------------------
# plan and settle: what to read, and what the reads mean for moves, losses and the counts
# ----------------------------------------------------------------------------------------------------------------------


def plan(store: Store, roots: Sequence[Path], scan: ScanSettings, summary: RunSummary,
         paths: Iterable[Path] | None = None, settle_cutoff_ns: int | None = None
         ) -> tuple[ScanPlan, dict[str, PhotoRecord], list[str]]:
    """The plan stage against the photo index (counts into ``summary``): the plan, the index it was made against, and
    the paths that arrived (new, or back after being missing). Every engine plans here."""
    index = store.photo_index([str(r) for r in roots])
    plan = plan_scan(roots, index, scan, paths=paths, settle_cutoff_ns=settle_cutoff_ns)
    summary.scanned += len(plan.entries)
    summary.new += plan.new
    summary.changed += plan.changed
    summary.skipped += plan.unchanged
    arrived = [str(e.path) for e in plan.todo
               if (rec := index.get(str(e.path))) is None or rec.status == PhotoStatus.MISSING]
    return plan, index, arrived


def settle(store: Store, roots: Sequence[Path], plan: ScanPlan, index: dict[str, PhotoRecord], arrived: list[str],
           written: dict[str, str], summary: RunSummary, *, full_scan: bool) -> None:
    """After the planned files are written (``written``: path -> content hash of the ok ones): moves and losses,
    older moves tidied on a full scan, and this scan's failures and skips tallied. Every engine settles here.

    After the writes, so a path that left and one that arrived with the same content are recognised as one move
    (scores kept, no "new" and no "missing"), also when the departure has not been reported yet (the two halves
    of a move in different event batches).
    """
    gone = list(plan.gone) + _departed(store, roots, arrived, written, set(plan.gone))
    missing, moved, moved_in = store.resolve_gone(gone, arrived)
    summary.missing += missing
    summary.moved += moved
    summary.new -= moved_in
    if full_scan and index and any(rec.status == PhotoStatus.MISSING for rec in index.values()):
        store.forget_moved_missing([str(r) for r in roots])  # a full scan also tidies older moves
    _tally_unranked(store, roots, {str(e.path) for e in plan.entries}, summary)

def _tally_unranked(store: Store, roots: Sequence[Path], scanned: set[str], summary: RunSummary) -> None:
    """Failures under these roots (this run's and earlier ones) with their reasons, and the skipped counts."""
    index = store.photo_index([str(r) for r in roots],
                                   statuses=(PhotoStatus.FAILED, PhotoStatus.SKIPPED))
    fails = [r for p, r in index.items() if p in scanned and r.status == PhotoStatus.FAILED]
    summary.failed += len(fails)
    summary.failures.extend(
        {"path": r.path, "reason": r.error_reason or "", "message": r.error_message or ""} for r in fails
    )
    skipped = [r.error_reason for p, r in index.items() if p in scanned and r.status == PhotoStatus.SKIPPED]
    summary.too_small += skipped.count(SkipReason.TOO_SMALL)
    summary.raw_pairs += skipped.count(SkipReason.RAW_PAIR)
    summary.blank += skipped.count(SkipReason.BLANK)

def _departed(store: Store, roots: Sequence[Path], arrived: list[str], written: dict[str, str],
              gone: set[str]) -> list[str]:
    """Stored ok paths under ``roots`` with the content of an arrived file, no longer on disk: moved away."""
    arrived_set = set(arrived)
    hashes = sorted({written[p] for p in arrived if p in written})
    if not hashes:
        return []
    out = []
    for paths in store.photos_by_hash(hashes).values():
        for path in paths:
            if path in arrived_set or path in gone or os.path.lexists(path):
                continue
            if any(Path(path).is_relative_to(r) for r in roots):
                out.append(path)
    return out

# ----------------------------------------------------------------------------------------------------------------------
# read: hash, RAW twins, decode, preprocess
# ----------------------------------------------------------------------------------------------------------------------


def safe_hash(path: Path) -> str | None:
    """The file's content hash, or None when it cannot be read (the read stage then records why)."""
    try:
        return content_hash(path)
    except OSError:
        return None


def twins_in(store: Store, chunk: Sequence[FileEntry]) -> dict[str, str]:
    """RAW files of ``chunk`` whose JPEG twin (same folder and stem) has an ok row: RAW path -> twin path."""
    found = {str(e.path): str(t) for e in chunk if is_raw(e.path) and (t := jpeg_twin(e.path)) is not None}
    if not found:
        return {}
    statuses = store.photo_statuses(list(found.values()))
    return {raw: twin for raw, twin in found.items() if statuses.get(twin) == PhotoStatus.OK}


def _fail(rec: PhotoRecord, status: PhotoStatus, reason: str, message: str) -> PhotoRecord:
    rec.status, rec.error_reason, rec.error_message = status, reason, message
    return rec


def prepare_photo(
    entry: FileEntry,
    scan: ScanSettings,
    *,
    digest: str | None = None,
    preprocess: PreprocessCfg | None = None,
    want_pixels: bool = True,
    twin: str | None = None,
) -> Prepared:
    """Read one file into its photo row, and into pixels (the encoder's input) when ``preprocess`` is given and
    ``want_pixels``. ``preprocess`` also sets the smallest RAW preview that will do.

    ``twin``: the ok JPEG this RAW was shot with; the RAW is then stored as skipped (``raw_pair``), not decoded.
    Runs in worker threads (PIL releases the GIL while decoding). Every failure becomes the row's status and reason.
    """
    from pmllm_batch.runtime.preprocess import preprocess_image

    rec = PhotoRecord(path=str(entry.path), root=str(entry.root), content_hash=None, size=entry.size,
                      mtime_ns=entry.mtime_ns)
    try:
        rec.content_hash = digest or content_hash(entry.path)
        if twin is not None:
            return Prepared(entry, _fail(rec, PhotoStatus.SKIPPED, SkipReason.RAW_PAIR, raw_pair_message(twin)))
        # RAW: the embedded preview is enough when it covers the encoder's input (any preview when none runs)
        side = int(preprocess.image_size) if preprocess is not None else 0
        photo = decode_photo(entry.path, max_pixels=int(scan.max_pixels), min_preview_side=side)
    except DecodeError as exc:
        return Prepared(entry, _fail(rec, PhotoStatus.FAILED, exc.reason, exc.message))
    except FileNotFoundError:
        return Prepared(entry, _fail(rec, PhotoStatus.FAILED, FailReason.VANISHED,
                                     "the file disappeared during the scan"))
    except OSError as exc:
        return Prepared(entry, _fail(rec, PhotoStatus.FAILED, FailReason.UNREADABLE, str(exc.strerror or exc)))
    rec.width, rec.height, rec.format = photo.width, photo.height, photo.format
    ex = photo.exif
    rec.taken_at, rec.camera_make, rec.camera_model = ex.taken_at, ex.camera_make, ex.camera_model
    rec.orientation, rec.exif_warning = ex.orientation, ex.warning
    small = too_small(photo.width, photo.height, int(scan.min_side))
    if small is not None:
        return Prepared(entry, _fail(rec, PhotoStatus.SKIPPED, SkipReason.TOO_SMALL, small))
    empty = blank(photo.image, float(scan.blank_std))  # on the decoded pixels, before any preprocessing
    if empty is not None:
        return Prepared(entry, _fail(rec, PhotoStatus.SKIPPED, SkipReason.BLANK, empty))
    pixels = preprocess_image(photo.image, preprocess) if preprocess is not None and want_pixels else None
    return Prepared(entry, rec, pixels)


def read_batch(
    chunk: Sequence[FileEntry],
    scan: ScanSettings,
    *,
    hashes: Sequence[str | None],
    twins: Mapping[str, str],
    cached: set[str],
    preprocess: PreprocessCfg | None,
    map_fn: Callable[[Callable[[FileEntry, str | None], Prepared], Sequence[FileEntry], Sequence[str | None]],
                     Iterable[Prepared]] = map,
) -> ReadBatch:
    """The read stage over a chunk: decode each file; make pixels only for photos whose features are not cached.

    ``map_fn``: how to map over the chunk (the builtin ``map``, or a thread pool's ``map``).
    """

    def one(entry: FileEntry, digest: str | None) -> Prepared:
        return prepare_photo(entry, scan, digest=digest, preprocess=preprocess, want_pixels=digest not in cached,
                             twin=twins.get(str(entry.path)))

    prepared = list(map_fn(one, chunk, hashes))
    failures = [{"path": p.record.path, "reason": p.record.error_reason or "", "message": p.record.error_message or ""}
                for p in prepared if p.record.status == PhotoStatus.FAILED]
    return ReadBatch(prepared, failures)


# ----------------------------------------------------------------------------------------------------------------------
# encode: pixels -> tower features (what the cache stores)
# ----------------------------------------------------------------------------------------------------------------------


def as_cached(features: np.ndarray) -> np.ndarray:
    """Features exactly as the cache gives them back (float16 values as float32): a photo scored from memory in one
    pass gets the score it would get from the cache later."""
    return np.asarray(features).astype("<f2").astype(np.float32)


def encode_batch(encoder: FeatureEncoder, todo: Mapping[str, Prepared]) -> dict[str, np.ndarray]:
    """The encode stage: content hash -> tower features (N_feat, D_vis), rounded as the cache stores them."""
    pixels = [p.pixels for p in todo.values() if p.pixels is not None]
    if not pixels:
        return {}
    return dict(zip(todo, as_cached(encoder.encode(np.stack(pixels))), strict=True))


def features_for(
    store: Store, hashes: Sequence[str], encoder: FeatureEncoder, scan: ScanSettings
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Cached features for ``hashes``; the rest are decoded again from any ok path and encoded now.

    Returns:
        (all features found or made, the ones made now — the caller caches and links them).
    """
    from pmllm_batch.runtime.preprocess import preprocess_image

    features = store.get_features(list(hashes), encoder.graph_id)
    missing = [h for h in hashes if h not in features]
    if not missing:
        return features, {}
    paths = store.photos_by_hash(missing)
    pix: dict[str, np.ndarray] = {}
    for h in missing:
        for path in paths.get(h, []):
            try:
                photo = decode_photo(path, max_pixels=int(scan.max_pixels),
                                     min_preview_side=int(encoder.preprocess.image_size))
            except (DecodeError, OSError) as exc:
                log.warning("cannot re-read %s for vision: %s", path, exc)
                continue
            pix[h] = preprocess_image(photo.image, encoder.preprocess)
            break
    if not pix:
        return features, {}
    new = dict(zip(pix, as_cached(encoder.encode(np.stack(list(pix.values())))), strict=True))
    features.update(new)
    return features, new


# ----------------------------------------------------------------------------------------------------------------------
# score: features -> tokens (projector) -> scores per profile
# ----------------------------------------------------------------------------------------------------------------------


def project(scorer: PhotoScorer[PrefixT], features: Sequence[np.ndarray]) -> torch.Tensor:
    """The projector over a stack of tower features: (N, n_tok, D_lm) tokens (once per photo, for every profile)."""
    import torch

    with torch.inference_mode():
        return scorer.project(torch.from_numpy(np.stack(list(features))))


def score_tokens(
    scorer: PhotoScorer[PrefixT],
    prefix: PrefixT,
    profile_id: int,
    hashes: Sequence[str],
    tokens: torch.Tensor,
    batch_size: int,
) -> list[ScoreRow]:
    """The score stage: one profile's prefix against the tokens of ``hashes`` (row i of ``tokens`` is hashes[i])."""
    import torch

    rows: list[ScoreRow] = []
    for i in range(0, len(hashes), batch_size):
        chunk = hashes[i : i + batch_size]
        with torch.inference_mode():
            out = scorer.score_cached(prefix, tokens[i : i + batch_size])
        rows += [(h, profile_id, float(s), [round(float(p), 5) for p in pr])
                 for h, s, pr in zip(chunk, out.scores.tolist(), out.probs.tolist(), strict=True)]
    return rows


def persona_key(profile: Profile) -> str:
    """What a cached prefix depends on besides the model: the profile's fields."""
    return repr(profile)


# ----------------------------------------------------------------------------------------------------------------------
# write: idempotent
# ----------------------------------------------------------------------------------------------------------------------


def write_photos(store: Store, batch: ReadBatch) -> None:
    """Upsert the chunk's photo rows (by path)."""
    store.upsert_photos([p.record for p in batch.prepared])


def write_features(store: Store, features: Mapping[str, np.ndarray], graph_id: str, budget_bytes: int) -> None:
    """Cache tower features by (content hash, graph id); the least recently used go when over ``budget_bytes``."""
    if features:
        store.put_features(dict(features), graph_id, budget_bytes=budget_bytes)


def write_scores(store: Store, model_id: int, rows: Sequence[ScoreRow]) -> int:
    """Insert scores unique per (content hash, profile, model); returns how many were new."""
    return store.add_scores(model_id, rows) if rows else 0
