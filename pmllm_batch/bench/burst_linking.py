"""What linking bursts and near-duplicates costs at library scale, against the rank run it is part of.

    python3 -m pmllm_batch.bench.burst_linking [--photos 20000] [--dim 64] [--new 100] [--rank-photos 200] [--json]

Three measurements, one process:

1. **Grouping a 20,000-photo library from scratch** with *synthetic* pooled embeddings (``--dim`` wide, the demo's
   64 by default; 4096 for the paper's LLM width, which is projected to 256): 18,000 single photos spread over years
   (one in ten without a capture time) and 400 five-frame bursts (frames seconds apart, cosine 0.97-0.99 to their
   neighbour). The embeddings go through the scorer's own :class:`~pmllm_batch.scorer.linking.Grouper` into a
   SQLite library exactly as ``rank`` stores them: 16 at a time (one vision batch), then one linking pass.
2. **Adding ``--new`` photos** to that library (a fifth of them near-copies of stored ones): the incremental case; how
   many candidates each new photo is compared with.
3. **A real rank run** of ``--rank-photos`` photo variants (``examples/photos``) with the demo model, with the
   grouping steps timed inside it; its per-photo cost, times 20,000, is the rank run grouping is compared with (the
   demo is the cheapest model, so this is the least favourable comparison; a 20,000-photo rank itself is not run).

The synthetic embeddings stand in for vision output only; every stored row, query and comparison is the real code.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import numpy as np

if TYPE_CHECKING:
    from pmllm_batch.db import Store
    from pmllm_batch.scorer.linking import Grouper

SEED = 20251126
P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class LinkingAtScale:
    """Measurements 1 and 2 for one embedding width (a row of the JSON list ``scale``)."""

    photos: int
    dim: int
    stored_dim: int
    first_s: float  # storing + linking the library from scratch
    first_store_s: float
    first_link_s: float
    first_links: int
    first_candidates_per_photo: float
    new_photos: int
    new_s: float
    new_links: int
    new_candidates_per_photo: float
    nothing_new_s: float
    bursts: int
    bursts_found_whole: int
    singles_merged: int
    share_of_rank: float | None = None  # first_s / the extrapolated rank run (with a reference rank run only)


@dataclass
class BurstRecall:
    """How many synthetic bursts came out as exactly one group of five, and how many singles were merged."""

    bursts: int
    bursts_found_whole: int
    singles_merged: int


@dataclass
class RankReference:
    """Measurement 3: a real rank run with the linking steps timed inside it (the JSON object ``rank``)."""

    photos: int
    profiles: int
    load_s: float
    wall_s: float
    encoded: int
    scored: int
    grouping_s: float  # time inside the Grouper's add_tokens / update / backfill
    grouping_share: float  # grouping_s / wall_s
    per_photo_s: float
    extrapolated_rank_s: float | None = None  # load_s + per_photo_s x the library size of measurement 1


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def synthetic_library(n: int, dim: int, seed: int = SEED) -> tuple[list[str], np.ndarray, list[str | None]]:
    """(hashes, unit vectors, capture times) of ``n`` photos: bursts of 5 (a tenth of the photos) and singles.

    Vectors are anisotropic like real embeddings (a shared mean direction plus per-photo variation), so the LSH
    centre matters as it does in a real library.
    """
    rng = np.random.default_rng(seed)
    mean = _unit(rng.standard_normal(dim))
    n_bursts = n // 50
    singles = n - 5 * n_bursts
    vecs = [_unit(mean + 0.6 * _unit(rng.standard_normal((singles, dim))))]
    start = 1_500_000_000
    times: list[int | None] = [int(t) for t in rng.integers(start, start + 5 * 365 * 86400, singles)]
    for i in range(singles):
        if rng.random() < 0.1:
            times[i] = None
    for _ in range(n_bursts):
        frame = _unit(mean + 0.6 * _unit(rng.standard_normal(dim)))
        t0 = int(rng.integers(start, start + 5 * 365 * 86400))
        vecs.append(_burst(rng, frame, dim))
        times.extend(t0 + k for k in range(5))
    matrix = np.concatenate(vecs)
    stamps = [None if t is None else time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) for t in times]
    hashes = [f"{i:032x}" for i in range(n)]
    return hashes, matrix, stamps


def _burst(rng: np.random.Generator, frame: np.ndarray, dim: int) -> np.ndarray:
    """Five frames (5, dim) from ``frame`` on, each at a cosine of 0.97-0.99 to the one before."""
    frames = [frame]
    for _k in range(4):
        step = _unit(rng.standard_normal(dim))
        step = _unit(step - (step @ frames[-1]) * frames[-1])
        cos = float(rng.uniform(0.97, 0.99))
        frames.append(_unit(cos * frames[-1] + math.sqrt(1 - cos * cos) * step))
    return np.stack(frames)


def _store_photos(store: Store, hashes: list[str], stamps: list[str | None]) -> None:
    from pmllm_batch.db import PhotoRecord

    records = [PhotoRecord(path=f"/library/{h}.jpg", root="/library", content_hash=h, size=1, mtime_ns=1,
                           taken_at=t) for h, t in zip(hashes, stamps, strict=True)]
    for i in range(0, len(records), 2000):
        store.upsert_photos(records[i : i + 2000])


def _with_new_photos(
    n: int, dim: int, n_new: int
) -> tuple[list[str], np.ndarray, list[str | None]]:
    """The library of ``n`` and, after it, ``n_new`` more: another synthetic library, a fifth of it replaced by
    near-copies of stored photos."""
    hashes, matrix, stamps = synthetic_library(n, dim)
    new_hashes, new_matrix, new_stamps = synthetic_library(n_new, dim, SEED + 7)
    rng = np.random.default_rng(SEED + 1)
    for j in range(0, n_new, 5):
        src = int(rng.integers(0, n))
        new_matrix[j] = _unit(matrix[src] + 0.03 * _unit(rng.standard_normal(dim)))
        new_stamps[j] = stamps[src]
    return hashes + [f"f{h[1:]}" for h in new_hashes], np.concatenate([matrix, new_matrix]), stamps + new_stamps


def _add(grouper: Grouper, hashes: list[str], matrix: np.ndarray, lo: int, hi: int, vision_id: str) -> None:
    """Photos ``lo`` … ``hi - 1`` as rank stores them: one vision batch (16) at a time."""
    for i in range(lo, hi, 16):
        grouper.add_tokens({hashes[k]: matrix[k][None, :] for k in range(i, min(i + 16, hi))}, vision_id)


def grouping_at_scale(n: int, dim: int, n_new: int, work: Path) -> LinkingAtScale:
    """Measurements 1 and 2: link ``n`` synthetic photos from scratch, then add ``n_new``."""
    from pmllm_batch.config import GroupSettings
    from pmllm_batch.db import Store
    from pmllm_batch.scorer.linking import Grouper

    hashes, matrix, stamps = _with_new_photos(n, dim, n_new)
    vision_id = f"bench-{dim}"
    with Store(f"sqlite:///{work / f'grouping-{dim}.sqlite'}") as store:
        _store_photos(store, hashes, stamps)
        grouper = Grouper(store, GroupSettings())
        t0 = time.perf_counter()
        _add(grouper, hashes, matrix, 0, n, vision_id)
        t_store = time.perf_counter() - t0
        links = grouper.update(vision_id)
        t_first = time.perf_counter() - t0
        first_candidates = grouper.candidates
        t1 = time.perf_counter()
        _add(grouper, hashes, matrix, n, n + n_new, vision_id)
        new_links = grouper.update(vision_id)
        t_new = time.perf_counter() - t1
        t2 = time.perf_counter()  # a rank run with nothing new: the backfill check and an empty linking pass
        Grouper(store, GroupSettings()).backfill(vision_id, hashes)
        grouper.update(vision_id)
        t_noop = time.perf_counter() - t2
        recall = _burst_recall(store, vision_id, hashes[:n], n)
    return LinkingAtScale(
        photos=n, dim=dim, stored_dim=min(dim, 256), first_s=t_first, first_store_s=t_store,
        first_link_s=t_first - t_store, first_links=links, first_candidates_per_photo=first_candidates / n,
        new_photos=n_new, new_s=t_new, new_links=new_links,
        new_candidates_per_photo=(grouper.candidates - first_candidates) / max(n_new, 1), nothing_new_s=t_noop,
        bursts=recall.bursts, bursts_found_whole=recall.bursts_found_whole, singles_merged=recall.singles_merged,
    )


def _burst_recall(store: Store, vision_id: str, hashes: list[str], n: int) -> BurstRecall:
    """How many of the synthetic bursts came out as exactly one group of five, and how many singles were merged."""
    from pmllm_batch.outputs.bursts import components

    comp = components(hashes, store.group_links(vision_id))
    n_bursts = n // 50
    singles = n - 5 * n_bursts
    sizes: dict[str, int] = {}
    for h in hashes:
        sizes[comp[h]] = sizes.get(comp[h], 0) + 1
    whole = sum(1 for b in range(n_bursts) if len({comp[hashes[singles + 5 * b + k]] for k in range(5)}) == 1
                and sizes[comp[hashes[singles + 5 * b]]] == 5)
    merged_singles = sum(1 for h in hashes[:singles] if sizes[comp[h]] > 1)
    return BurstRecall(bursts=n_bursts, bursts_found_whole=whole, singles_merged=merged_singles)


def _timed(fn: Callable[P, R], spent: list[float]) -> Callable[P, R]:
    """``fn``, adding the seconds of each call to ``spent[0]``."""

    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t

    return wrapper


def rank_reference(n_photos: int, work: Path) -> RankReference:
    """Measurement 3: a real rank run (demo model) of ``n_photos`` photo variants, linking timed inside it."""
    from pmllm_batch.bench.inputs import BENCH_PROFILES, find_photos, make_photo_variants
    from pmllm_batch.config import load_config
    from pmllm_batch.db import Store
    from pmllm_batch.model.prompts import render_persona
    from pmllm_batch.scorer.batch import LibraryScorer
    from pmllm_batch.scorer.linking import Grouper
    from pmllm_batch.scorer.models import ModelCache

    lib = work / "rank-library"
    make_photo_variants(find_photos(), lib, n_photos)
    settings = load_config(None, overrides={
        "model": {"preset": "demo", "offline": True, "device": "cpu"},
        "db": {"url": f"sqlite:///{work / 'rank.sqlite'}"},
        "paths": {"data_dir": str(work / "data"), "cache_dir": str(work / "cache")},
        "vision": {"providers": ["CPUExecutionProvider"]},
    }, env={"HOME": str(work / "home")})
    spent = [0.0]
    originals = {name: getattr(Grouper, name) for name in ("add_tokens", "update", "backfill")}
    models = ModelCache(settings)
    t0 = time.perf_counter()
    models.get()
    load_s = time.perf_counter() - t0
    try:
        for name, fn in originals.items():
            setattr(Grouper, name, _timed(fn, spent))
        with Store(settings.db_url()) as store:
            for p in BENCH_PROFILES[:2]:
                store.upsert_profile(p, render_persona(p))
            t1 = time.perf_counter()
            summary = LibraryScorer(settings, store, models=models).run([lib])
            wall = time.perf_counter() - t1
    finally:
        for name, fn in originals.items():
            setattr(Grouper, name, fn)
    return RankReference(photos=n_photos, profiles=2, load_s=load_s, wall_s=wall, encoded=summary.encoded,
                         scored=summary.scored, grouping_s=spent[0], grouping_share=spent[0] / wall,
                         per_photo_s=wall / n_photos)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m pmllm_batch.bench.burst_linking",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--photos", type=int, default=20000, help="library size for the linking timing")
    parser.add_argument("--dim", type=int, action="append", help="embedding widths (default: 64 and 4096)")
    parser.add_argument("--new", type=int, default=100, help="photos added to the linked library")
    parser.add_argument("--rank-photos", type=int, default=200, help="photos in the reference rank run (0: skip)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser


def _scale_line(row: LinkingAtScale) -> str:
    share = "" if row.share_of_rank is None else f", {100 * row.share_of_rank:.1f} % of a {row.photos}-photo rank run"
    return (f"{row.photos} photos, {row.dim}-d embeddings (stored {row.stored_dim}-d, synthetic): grouped "
            f"from scratch in {row.first_s:.2f} s (storing {row.first_store_s:.2f} s, linking "
            f"{row.first_link_s:.2f} s, {row.first_candidates_per_photo:.0f} candidates per photo){share}; "
            f"{row.bursts_found_whole}/{row.bursts} bursts found whole, {row.singles_merged} singles "
            f"merged; +{row.new_photos} photos in {row.new_s:.3f} s "
            f"({row.new_candidates_per_photo:.0f} candidates each, {row.new_links} links); nothing new "
            f"{row.nothing_new_s:.3f} s")


def _rank_line(r: RankReference, photos: int) -> str:
    return (f"reference rank run (demo model, {r.photos} photos, 2 profiles): {r.wall_s:.1f} s, "
            f"{1000 * r.per_photo_s:.1f} ms per photo (grouping {100 * r.grouping_share:.1f} % of it), "
            f"model load {r.load_s:.1f} s; {photos} photos ≈ {r.extrapolated_rank_s or 0.0:.0f} s")


def _json(obj: LinkingAtScale | RankReference) -> dict[str, object]:
    """Its JSON object; the rank-run figures (None without a reference rank run) are left out."""
    return {k: v for k, v in asdict(obj).items() if v is not None}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pmllm-bench-grouping-"))
    ref: RankReference | None = None
    try:
        scale = [grouping_at_scale(args.photos, d, args.new, work) for d in (args.dim or [64, 4096])]
        if args.rank_photos:
            ref = rank_reference(args.rank_photos, work)
            ref.extrapolated_rank_s = ref.load_s + ref.per_photo_s * args.photos
            for row in scale:
                row.share_of_rank = row.first_s / ref.extrapolated_rank_s
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        results: dict[str, object] = {"scale": [_json(row) for row in scale]}
        if ref is not None:
            results["rank"] = _json(ref)
        print(json.dumps(results, indent=2))
        return 0
    for row in scale:
        print(_scale_line(row))
    if ref is not None:
        print(_rank_line(ref, args.photos))
    return 0


if __name__ == "__main__":
    sys.exit(main())
