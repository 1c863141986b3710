"""Section 8: end to end as a user runs it, and a rank with nothing to do.

* **End to end** (:func:`end_to_end_runs`): ``rank`` of a library of ``n_photos`` new photos for four profiles, from
  an empty database, with the model loaded beforehand (a daemon or a second run pays the load once): scan, hash,
  decode, vision, one-pass scoring of every profile, writes. ``end_to_end_pairs_per_s`` is (photo, profile) pairs
  over that wall time, per LLM stage (float32 and int8), and ``projected_hours_10k_photos_4_profiles`` is 40,000
  pairs at that rate.
* **No-op rank** (:func:`noop_rank`): ``pmllm-batch rank`` as a fresh process (what a cron ``watch --once`` pays) on an
  unchanged library of ``n_noop`` photos, every one already scored for every profile. The library's rows and
  scores are written straight into the database (20,000 encodes would take the bench hours); its files are real
  files on disk that the scan stats. Its small real part was ranked by the same settings first, so the database
  knows their model: nothing loads. The same database times the start-up of ``--version``, ``status`` and
  ``profile list`` (fresh processes, best of three).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .codec import Json, from_json, to_json
from .inputs import BENCH_PROFILES, make_photo_variants

if TYPE_CHECKING:
    from pmllm_batch.config import Settings
    from pmllm_batch.db.store import Store
    from pmllm_batch.scorer.models import LoadedModels

# Four people: the bench's three and a fourth (the "4 profiles", so the prefix cost is amortised as in use).
E2E_PROFILES = (*BENCH_PROFILES, dataclasses.replace(BENCH_PROFILES[1], name="dora", age=45, gender="female"))
PAIRS_10K_4 = 10_000 * 4
QUANTIZE = ("none", "int8")  # the LLM stages the end-to-end runs compare (``[score] quantize``)


@dataclass
class EndToEndSpec:
    """The end-to-end runs: ``n_photos`` new photos for four profiles, once per LLM stage, in ``work``."""

    preset: str
    work: str
    cache_dir: str
    photos: list[str]  # source photos the library's variants are made from
    n_photos: int
    threads: int
    checkpoint: str = ""


@dataclass
class NoopSpec:
    """The no-op rank: an unchanged library of ``n_noop`` scored photos (plus 4 real ones) in ``work``."""

    work: str
    cache_dir: str
    photos: list[str]
    n_noop: int
    threads: int
    repeats: int = 2


@dataclass
class WorkerSpec:
    """What the end-to-end child runs (``python -m pmllm_batch.bench --e2e-worker SPEC RESULT``)."""

    preset: str
    end_to_end: EndToEndSpec
    noop: NoopSpec


@dataclass
class QuantizedRun:
    """One end-to-end ``rank`` with one LLM stage (float32 or int8)."""

    load_s: float
    wall_s: float
    encoded: int
    scored: int
    pairs_per_s: float  # scored / wall_s
    projected_hours_10k_photos_4_profiles: float | None  # PAIRS_10K_4 / pairs_per_s / 3600
    visual_cache_bytes_per_photo: float


@dataclass
class EndToEndRuns:
    """The end-to-end runs; ``none`` (float32 LLM) and ``int8`` are the JSON keys of ``[score] quantize``."""

    preset: str
    threads: int
    photos: int
    profiles: int
    none: QuantizedRun
    int8: QuantizedRun

    def by_quantize(self) -> dict[str, QuantizedRun]:
        return {"none": self.none, "int8": self.int8}


@dataclass
class NoopRun:
    """One no-op ``rank --json``: its wall time and the counts it printed."""

    wall_s: float
    scanned: int | None
    encoded: int | None
    scored: int | None
    skipped: int | None


@dataclass
class StartupTimes:
    """Start-up of the commands that never load a model (fresh processes, best of three), seconds."""

    version: float
    status: float
    profile_list: float


@dataclass
class NoopResult:
    """The no-op rank of an unchanged library, and the start-up times on its database."""

    startup_s: StartupTimes
    photos: int
    first_rank_s: float
    first_rank_scored: int | None
    runs: list[NoopRun]
    noop_rank_s: float  # the fastest of runs


@dataclass
class EndToEndResult:
    """Section 8's figures (the JSON object ``end_to_end``)."""

    end_to_end: EndToEndRuns
    noop: NoopResult


def _loader(preset: str, quantize: str) -> Callable[[Settings], LoadedModels] | None:
    """The ModelCache loader: the scorer's own (None) for demo/smol; the random-weight one for cpu (int8 applied)."""
    if preset != "cpu":
        return None
    from .library import _random_cpu_loader

    def load(settings: Settings, build_tower: bool | None = None) -> LoadedModels:
        loaded = _random_cpu_loader(settings, build_tower=build_tower)
        if quantize == "int8":
            from pmllm_batch.model.checkpoint import fingerprint

            from .int8 import quantize_in_place

            model = quantize_in_place(loaded.model)
            loaded = dataclasses.replace(loaded, fingerprint=fingerprint(model, vision_graph_id=loaded.vision.graph_id))
        return loaded

    return load


def end_to_end_runs(spec: EndToEndSpec) -> EndToEndRuns:
    """``rank`` of ``spec.n_photos`` new photos for four profiles, once with each LLM stage of :data:`QUANTIZE`."""
    from .timing import set_threads

    set_threads(spec.threads)
    work = Path(spec.work)
    lib = work / "library"
    make_photo_variants([Path(p) for p in spec.photos], lib, spec.n_photos)
    runs = {q: _quantized_run(spec, q, lib) for q in QUANTIZE}
    return EndToEndRuns(
        preset=spec.preset,
        threads=spec.threads,
        photos=spec.n_photos,
        profiles=len(E2E_PROFILES),
        none=runs["none"],
        int8=runs["int8"],
    )


def _quantized_run(spec: EndToEndSpec, quantize: str, lib: Path) -> QuantizedRun:
    """One ``rank`` of ``lib`` from an empty database, the model loaded beforehand (untimed)."""
    from pmllm_batch.db.store import Store
    from pmllm_batch.model.prompts import render_persona
    from pmllm_batch.scorer.batch import LibraryScorer
    from pmllm_batch.scorer.models import ModelCache

    from .library import _library_settings

    run_dir = Path(spec.work) / f"run-{quantize}"
    settings = _library_settings(run_dir, Path(spec.cache_dir), spec.preset, spec.threads, spec.checkpoint)
    settings = dataclasses.replace(settings, score=dataclasses.replace(settings.score, quantize=quantize))
    loader = _loader(spec.preset, quantize)
    models = ModelCache(settings, loader=loader) if loader else ModelCache(settings)
    t0 = time.perf_counter()
    models.get()
    load_s = time.perf_counter() - t0
    with Store(settings.db_url()) as store:
        for p in E2E_PROFILES:
            store.upsert_profile(p, render_persona(p))
        scorer = LibraryScorer(settings, store, models=models)
        t = time.perf_counter()
        summary = scorer.run([lib])
        wall = time.perf_counter() - t
        entries, nbytes = store.feature_cache_bytes()
    rate = summary.scored / wall if wall > 0 else 0.0
    return QuantizedRun(
        load_s=load_s,
        wall_s=wall,
        encoded=summary.encoded,
        scored=summary.scored,
        pairs_per_s=rate,
        projected_hours_10k_photos_4_profiles=PAIRS_10K_4 / rate / 3600 if rate else None,
        visual_cache_bytes_per_photo=nbytes / max(entries, 1),
    )


def _bulk_files(folder: Path, n: int) -> list[Path]:
    """``n`` small distinct files (the no-op scan only stats them; their rows say they are scored photos)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        sub = folder / f"{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir(exist_ok=True)
        p = sub / f"IMG_{i:05d}.jpg"
        p.write_bytes(b"\xff\xd8\xff\xe0" + i.to_bytes(4, "big") + b"\0" * 56)
        paths.append(p)
    return paths


class _Cli:
    """``pmllm-batch --config CONFIG ...`` as a fresh process, in an environment of the bench's own."""

    def __init__(self, work: Path, cache_dir: str) -> None:
        self.db = work / "library.sqlite"
        self.config = work / "config.toml"
        self.config.write_text(
            "[model]\npreset = \"demo\"\noffline = true\ndevice = \"cpu\"\n"
            f"[db]\nurl = \"sqlite:///{self.db}\"\n"
            f"[paths]\ndata_dir = \"{work / 'data'}\"\ncache_dir = \"{cache_dir}\"\n"
            "[vision]\nproviders = [\"CPUExecutionProvider\"]\n",
            encoding="utf-8",
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PMLLM_")}
        self.env.update({"HOME": str(work / "home"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})

    def __call__(self, *args: str) -> tuple[float, Json]:
        """Run one command: (wall seconds, its last stdout line as JSON when ``--json`` is among ``args``, else {}).

        Raises:
            RuntimeError: the command failed.
        """
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pmllm_batch", "--config", str(self.config), *args],
                              env=self.env, capture_output=True, text=True, timeout=900, check=False)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"pmllm-batch {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr[-800:]}")
        lines = proc.stdout.strip().splitlines()
        out: Json = json.loads(lines[-1]) if "--json" in args and lines else {}
        return wall, out


def noop_rank(spec: NoopSpec) -> NoopResult:
    """The demo preset (the CLI's own loader and recipe): a real first rank of 4 photos, ``spec.n_noop`` scored rows
    added, then ``spec.repeats`` no-op ranks and the start-up times on that database."""
    work = Path(spec.work)
    root = work / "library"
    make_photo_variants([Path(p) for p in spec.photos], root / "real", 4)
    cli = _Cli(work, spec.cache_dir)
    _add_profiles(cli, work / "profiles")
    first_s, first = cli("rank", str(root), "--json", "--top", "1")
    _fill_library(cli.db, root, _bulk_files(root / "bulk", spec.n_noop))
    runs = []
    for _ in range(spec.repeats):
        wall, summary = cli("rank", str(root), "--json", "--top", "1")
        runs.append(NoopRun(wall_s=wall, scanned=summary.get("scanned"), encoded=summary.get("encoded"),
                            scored=summary.get("scored"), skipped=summary.get("skipped")))
    # start-up of the commands that never load a model, on this 20,000-photo database (best of three, fresh processes)
    startup = StartupTimes(
        version=_best_of_three(cli, "--version"),
        status=_best_of_three(cli, "status"),
        profile_list=_best_of_three(cli, "profile", "list"),
    )
    shutil.rmtree(root / "bulk", ignore_errors=True)
    return NoopResult(
        startup_s=startup,
        photos=spec.n_noop + 4,
        first_rank_s=first_s,
        first_rank_scored=first.get("scored"),
        runs=runs,
        noop_rank_s=min(r.wall_s for r in runs),
    )


def _best_of_three(cli: _Cli, *args: str) -> float:
    return min(cli(*args)[0] for _ in range(3))


def _add_profiles(cli: _Cli, folder: Path) -> None:
    """The four profiles, as TOML files added through the CLI."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for p in E2E_PROFILES:
        (folder / f"{p.name}.toml").write_text(f"name = \"{p.name}\"\nage = {json.dumps(p.age)}\n", encoding="utf-8")
        names.append(str(folder / f"{p.name}.toml"))
    cli("profile", "add", *names)


def _fill_library(db: Path, root: Path, files: Sequence[Path]) -> None:
    """Rows for ``files`` straight into the database, each scored for every profile by the current model."""
    from pmllm_batch.db import Store

    with Store(f"sqlite:///{db}") as store:
        model_id = store.current_model_id()
        if model_id is None:
            raise RuntimeError("the first rank left no current model in the no-op library's database")
        _add_photo_rows(store, root, files)
        n = len(files)
        for prof in store.list_profiles():
            rows = [(f"{i:064x}", prof.id, 3.0, [0.2] * 5) for i in range(n)]
            for i in range(0, n, 5000):
                store.add_scores(model_id, rows[i : i + 5000])


def _add_photo_rows(store: Store, root: Path, files: Sequence[Path]) -> None:
    from pmllm_batch.db import PhotoRecord

    records = []
    for i, path in enumerate(files):
        st = path.stat()
        records.append(PhotoRecord(path=str(path), root=str(root), content_hash=f"{i:064x}", size=st.st_size,
                                   mtime_ns=st.st_mtime_ns, width=1024, height=768, format="JPEG"))
    for i in range(0, len(records), 2000):
        store.upsert_photos(records[i : i + 2000])


def run_end_to_end(spec: WorkerSpec) -> EndToEndResult:
    """Both parts of section 8 (in the calling process; :func:`run_bench` runs it in a child)."""
    return EndToEndResult(end_to_end=end_to_end_runs(spec.end_to_end), noop=noop_rank(spec.noop))


def worker_main(argv: Sequence[str]) -> int:
    """``python -m pmllm_batch.bench --e2e-worker SPEC RESULT``."""
    spec = from_json(WorkerSpec, json.loads(Path(argv[1]).read_text(encoding="utf-8")))
    Path(argv[2]).write_text(json.dumps(to_json(run_end_to_end(spec))), encoding="utf-8")
    return 0
