"""Sections 3 and 4: a library scored by the real scorer, incrementally (a new profile, new photos) and end to end.

:func:`library_runs` does the work; :func:`run_library_child` runs it in a fresh interpreter
(``python -m pmllm_batch.bench --library-worker SPEC RESULT``, whose ``__main__`` calls :func:`worker_main`),
so that its peak RSS is the scorer's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .codec import Json, from_json, to_json
from .inputs import BENCH_PROFILES, SEED, make_photo_variants
from .models import random_cpu_model
from .timing import set_threads

if TYPE_CHECKING:
    from pmllm_batch.config import Settings
    from pmllm_batch.db.store import Store
    from pmllm_batch.scorer.batch import LibraryScorer, RunSummary
    from pmllm_batch.scorer.models import LoadedModels, ModelCache

N_NEW_PHOTOS = 10


@dataclass
class LibrarySpec:
    """What a library child runs: one preset's library in ``work``, ``n_photos`` then ``n_new`` more."""

    preset: str
    work: str  # folder
    cache_dir: str  # the cache of run_bench's ONNX export: the child's model has the same fingerprint
    photos: list[str]  # source photos the library's variants are made from
    n_photos: int
    n_new: int
    threads: int
    checkpoint: str = ""  # "none": an untrained adapter (smol before its adapter ships), for timing only


@dataclass
class FirstRun:
    """The first run: every photo new, two profiles."""

    profiles: int
    wall_s: float
    encoded: int
    scored: int
    failed: int
    images_per_s: float  # photos / wall_s
    pairs_per_s: float  # scored / wall_s


@dataclass
class LaterRun:
    """A run after the first, with all three profiles: what it encoded and scored, and its cost against the first."""

    profiles: int
    wall_s: float
    encoded: int
    scored: int
    wall_vs_first: float  # wall_s / the first run's wall_s


@dataclass
class LibraryResult:
    """Sections 3 and 4 for one preset (an entry of the JSON object ``library``)."""

    preset: str
    model: str
    load_s: float
    threads: int
    torch_threads: int
    vision_graph: str
    vision_batch: int
    score_batch: int
    photos: int
    new_photos: int
    first_run: FirstRun
    new_profile_run: LaterRun
    new_photos_run: LaterRun
    visual_cache_entries: int
    visual_cache_bytes: int
    visual_cache_bytes_per_image: float  # visual_cache_bytes / visual_cache_entries
    db_bytes: int | None
    rss_after_load_mb: float | None
    rss_end_mb: float | None
    peak_rss_mb: float


@dataclass
class SectionError:
    """A section (or one preset's library runs) that failed: the error in place of its figures."""

    error: str


def _library_settings(work: Path, cache_dir: Path, preset: str, threads: int, checkpoint: str = "") -> Settings:
    """Shipped defaults plus the bench's own paths; no user config file or PMLLM_* variable can leak in.

    ``checkpoint="none"`` (smol before its adapter ships): an untrained adapter, allowed for timing only.
    """
    from pmllm_batch.config import load_config

    model: dict[str, object] = {"preset": preset, "offline": True, "device": "cpu", "checkpoint": checkpoint}
    if checkpoint == "none":
        model["allow_untrained"] = True
    overrides: dict[str, dict[str, object]] = {
        "model": model,
        "db": {"url": f"sqlite:///{work / 'library.sqlite'}"},
        "paths": {"data_dir": str(work / "data"), "cache_dir": str(cache_dir)},
        "vision": {
            "backend": "onnx",
            "variant": "int8",
            "providers": ["CPUExecutionProvider"],
            "intra_op_threads": threads,
        },
    }
    return load_config(None, overrides=overrides, env={"HOME": str(work / "home")})


def _random_cpu_loader(settings: Settings, build_tower: bool | None = None) -> LoadedModels:
    """``ModelCache`` loader for the random-weight cpu model (what ``scorer.models.load_models`` does for a preset):
    the torch tower is built only when the ONNX export is missing, unless ``build_tower``."""
    import torch

    from pmllm_batch.model.checkpoint import fingerprint
    from pmllm_batch.runtime.onnx_export import is_complete
    from pmllm_batch.runtime.vision_runner import load_vision_runner
    from pmllm_batch.scorer.models import LoadedModels

    from .models import random_vision_fingerprint

    if build_tower:
        model = random_cpu_model(SEED)
    else:
        model = random_cpu_model(SEED, with_tower=False)
        if not is_complete(settings.cache_dir() / "onnx" / random_vision_fingerprint(model)):
            model = random_cpu_model(SEED)  # first use: the export needs the tower (same weights otherwise)
    vision = load_vision_runner(
        model.exportable_tower(),
        fingerprint=random_vision_fingerprint(model),
        backend="onnx",
        variant=settings.vision.variant,
        cache_root=settings.cache_dir() / "onnx",
        providers=list(settings.vision.providers),
        intra_op_threads=settings.vision.intra_op_threads,
    )
    model.tower = None  # the ONNX graph replaces it, as in load_models
    torch.set_grad_enabled(False)
    return LoadedModels(model, vision, fingerprint(model, vision_graph_id=vision.graph_id), model.cfg.name)


def library_runs(spec: LibrarySpec) -> LibraryResult:
    """Sections 3 and 4 for one preset, with the real scorer (run in a child process by :func:`run_bench`)."""
    import torch

    from pmllm_batch.db.store import Store
    from pmllm_batch.scorer.models import ModelCache

    work = Path(spec.work)
    set_threads(spec.threads)
    sources = [Path(p) for p in spec.photos]
    lib = work / "library"
    make_photo_variants(sources, lib, spec.n_photos)
    new_files = make_photo_variants(sources, work / "new-photos", spec.n_new, start=spec.n_photos)
    settings = _library_settings(work, Path(spec.cache_dir), spec.preset, spec.threads, spec.checkpoint)
    models = ModelCache(settings, loader=_random_cpu_loader) if spec.preset == "cpu" else ModelCache(settings)
    t0 = time.perf_counter()
    loaded = models.get()  # load outside the timed runs: a daemon or a second run pays it once
    load_s = time.perf_counter() - t0
    rss_loaded = _proc_status_mb("VmRSS")
    with Store(settings.db_url()) as store:
        runs = _three_runs(settings, store, models, lib, new_files)
        entries, cache_bytes = store.feature_cache_bytes()
    db_file = work / "library.sqlite"
    s1, t1 = runs[0]
    return LibraryResult(
        preset=spec.preset,
        model=loaded.model.cfg.name,
        load_s=load_s,
        threads=spec.threads,
        torch_threads=torch.get_num_threads(),
        vision_graph=loaded.vision.graph_id,
        vision_batch=settings.vision.batch_size,
        score_batch=settings.score.batch_size,
        photos=spec.n_photos,
        new_photos=spec.n_new,
        first_run=FirstRun(
            profiles=2,
            wall_s=t1,
            encoded=s1.encoded,
            scored=s1.scored,
            failed=s1.failed,
            images_per_s=spec.n_photos / t1,
            pairs_per_s=s1.scored / t1,
        ),
        new_profile_run=_later_run(*runs[1], t1),
        new_photos_run=_later_run(*runs[2], t1),
        visual_cache_entries=entries,
        visual_cache_bytes=cache_bytes,
        visual_cache_bytes_per_image=cache_bytes / max(entries, 1),
        db_bytes=db_file.stat().st_size if db_file.exists() else None,
        rss_after_load_mb=rss_loaded,
        rss_end_mb=_proc_status_mb("VmRSS"),
        peak_rss_mb=_peak_rss_mb(),
    )


def _three_runs(
    settings: Settings, store: Store, models: ModelCache, lib: Path, new_files: list[Path]
) -> list[tuple[RunSummary, float]]:
    """The library's three runs, each (summary, wall seconds): two profiles; a third profile added; new photos moved
    into the library."""
    from pmllm_batch.model.prompts import render_persona
    from pmllm_batch.scorer.batch import LibraryScorer

    first_two, third = BENCH_PROFILES[:2], BENCH_PROFILES[2]
    for p in first_two:
        store.upsert_profile(p, render_persona(p))
    scorer = LibraryScorer(settings, store, models=models)
    runs = [_timed_run(scorer, lib)]
    store.upsert_profile(third, render_persona(third))
    runs.append(_timed_run(scorer, lib))
    for f in new_files:
        shutil.move(str(f), lib / f.name)
    runs.append(_timed_run(scorer, lib))
    return runs


def _timed_run(scorer: LibraryScorer, lib: Path) -> tuple[RunSummary, float]:
    t = time.perf_counter()
    summary = scorer.run([lib])
    return summary, time.perf_counter() - t


def _later_run(summary: RunSummary, wall_s: float, first_wall_s: float) -> LaterRun:
    """Figures of a run after the first, with all three profiles (what it encoded, scored, and its relative cost)."""
    return LaterRun(
        profiles=3,
        wall_s=wall_s,
        encoded=summary.encoded,
        scored=summary.scored,
        wall_vs_first=wall_s / first_wall_s,
    )


def _proc_status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (VmRSS: now, VmHWM: peak) in MB; None where there is none."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return None


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MB.

    VmHWM where Linux has it: it belongs to this process's own address space, whereas ``ru_maxrss`` of a child
    started with fork + exec also counts the parent's resident memory at the fork.
    """
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    # ru_maxrss is KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def run_worker(flag: str, spec: object, spec_file: Path, result_file: Path, what: str, timeout_s: float) -> Json:
    """Run ``python -m pmllm_batch.bench FLAG SPEC RESULT`` in a fresh interpreter (its peak RSS is then its own).

    ``spec`` is a dataclass (written as JSON); returns the JSON object the child wrote.

    Raises:
        RuntimeError: the child failed (the tail of its stderr says why).
        subprocess.TimeoutExpired: it ran past ``timeout_s``.
    """
    result_file.unlink(missing_ok=True)
    payload = to_json(spec)
    spec_file.write_text(json.dumps(payload), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PMLLM_")}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    proc = subprocess.run(
        [sys.executable, "-m", "pmllm_batch.bench", flag, str(spec_file), str(result_file)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        check=False,
    )
    if proc.returncode != 0 or not result_file.is_file():
        tail = "\n".join((proc.stderr or "").strip().splitlines()[-15:])
        preset = payload.get("preset", "?")
        raise RuntimeError(f"{what} bench for preset {preset} failed (exit {proc.returncode}):\n{tail}")
    result: Json = json.loads(result_file.read_text(encoding="utf-8"))
    return result


def run_library_child(spec: LibrarySpec, timeout_s: float = 900) -> LibraryResult:
    """Run :func:`library_runs` in a fresh interpreter (its peak RSS is then the scorer's own)."""
    work = Path(spec.work)
    work.mkdir(parents=True, exist_ok=True)
    data = run_worker("--library-worker", spec, work / "spec.json", work / "result.json", "library", timeout_s)
    return from_json(LibraryResult, data)


def worker_main(argv: Sequence[str]) -> int:
    """``python -m pmllm_batch.bench --library-worker SPEC RESULT``: the child side of :func:`run_library_child`."""
    spec = from_json(LibrarySpec, json.loads(Path(argv[1]).read_text(encoding="utf-8")))
    Path(argv[2]).write_text(json.dumps(to_json(library_runs(spec))), encoding="utf-8")
    return 0
