"""Rendering a bench result, kept apart from measuring: the acceptance checks, the table, the Markdown report.

Every row is rendered from a section's result dataclass (:mod:`.result`); one function per section, in the order
the table shows them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .end_to_end import EndToEndResult
from .inputs import MIN_PERSONA_TOKENS
from .learn import learn_checks, learn_rows
from .library import N_NEW_PHOTOS, LibraryResult, SectionError
from .load import LoadResult
from .ray import ray_checks, ray_rows

if TYPE_CHECKING:
    from .int8 import Int8Result
    from .limit import LimitResult
    from .prefix_cache import PrefixCacheResult
    from .result import BenchResult, ThreadsProbeResult
    from .vision import VisionResult

Row = tuple[str, str, str]  # (section, figure, value)


def checks(result: BenchResult) -> dict[str, bool | None]:
    """The issue's acceptance figures as pass (True) / fail (False) / not applicable (None).

    Counts and score agreement always apply. The speed targets are stated for the cpu preset's shapes, so a
    demo or smol run or a --quick run reports them as None (its timings are plumbing checks, not evidence).
    """
    p, h = result.prefix_cache, result.headline
    timed = result.preset == "cpu" and not result.quick
    full = not result.quick
    up = h.startup_s
    return {
        "scores_agree_1e-4": bool(p.scores_agree),
        "persona_at_least_120_tokens": p.min_persona_tokens >= MIN_PERSONA_TOKENS,
        "prefix_cache_at_least_5x": h.prefix_cache_speedup >= 5.0 if timed else None,
        "int8_at_least_1.8x_torch": h.int8_vision_speedup >= 1.8 if timed else None,
        "int8_cosine_at_least_0.99": h.int8_vision_cosine >= 0.99,
        "new_profile_0_encodes": h.new_profile_vision_encodes == 0,
        "new_photos_10_encodes": h.new_photos_vision_encodes == N_NEW_PHOTOS,
        "llm_int8_at_least_1.6x": h.llm_int8_speedup >= 1.6 if timed else None,
        "end_to_end_at_least_6_pairs_per_s": _at_least(h.end_to_end_pairs_per_s, 6.0) if timed else None,
        "noop_rank_at_most_3s": _at_most(h.noop_rank_s, 3.0) if full else None,
        "startup_at_most_0.5s": (up is not None and max(up.version, up.status, up.profile_list) <= 0.5)
        if full
        else None,
        "paper_cache_at_most_300kb": (h.visual_cache_bytes_per_photo.get("paper") or 10**9) <= 300_000,
        # the parity targets are stated for the real-LLM (smol) and cpu shapes, on a full run's 32 distinct images
        "llm_int8_scores_kept": bool(result.llm_int8.parity) if result.preset in ("smol", "cpu") and full else None,
        **ray_checks(result.ray),  # section 9's targets (no keys when it did not run)
        **learn_checks(result.learn),  # section 10's target (no key when it did not run)
    }


def _at_least(x: float | None, bound: float) -> bool:
    return x is not None and x >= bound


def _at_most(x: float | None, bound: float) -> bool:
    return x is not None and x <= bound


def _f(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "n/a"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.1f} ms"


def _failed(section: str, error: SectionError) -> Row:
    return (section, "FAILED", error.error.splitlines()[-1][:150])


def table_rows(result: BenchResult) -> list[Row]:
    """(section, figure, value) rows shared by the stdout table and the Markdown report."""
    rows = _prefix_rows(result.prefix_cache) + _vision_rows(result.vision)
    for name, lib in result.library.items():
        rows += _library_rows(name, lib)
    rows += _int8_rows(result.llm_int8)
    rows += _load_rows(result.model_load)
    rows += _e2e_rows(result.end_to_end, result.visual_cache_bytes_per_photo)
    rows += _limit_rows(result.limit, result.threads_probe)
    rows += ray_rows(result.ray)
    rows += learn_rows(result.learn)
    return rows


def _prefix_rows(p: PrefixCacheResult) -> list[Row]:
    """Section 1: token counts, pairs/s per batch, the speedups and their bound, the prefix's cost, score agreement."""
    sec = "1 prefix cache"
    tk = p.tokens[0]
    tokens = f"{p.min_persona_tokens}+ / {tk.prefix_tokens} / {tk.suffix_tokens}"
    rows = [(sec, "persona / prefix / suffix tokens", tokens)]
    for name, row in p.per_batch.items():
        path = "prefix cache" if name.startswith("cached") else "full prompt"
        rows.append((sec, f"{path}, pairs/s at batch {row.batch}", _f(row.pairs_per_s, 2)))
    rows.append((sec, f"speedup, each at its best batch (cached {p.cached_batch}, full {p.full_batch})",
                 f"{p.prefix_cache_speedup:.1f}x"))
    if p.prefix_cache_speedup_same_batch is not None:
        rows.append((sec, f"speedup at the same batch ({p.same_batch})", f"{p.prefix_cache_speedup_same_batch:.1f}x"))
    diff = "n/a" if p.max_abs_score_diff is None else f"{p.max_abs_score_diff:.1e}"
    return rows + [
        (sec, "bound: (prefix + suffix) / suffix tokens",
         f"{p.token_ratio:.1f}x ({p.token_ratio_at_min_persona:.1f}x for a {MIN_PERSONA_TOKENS}-token persona)"),
        (sec, "prefix encode, once per profile", f"{p.prefix_encode.median_s * 1e3:.0f} ms"),
        (sec, f"speedup incl. prefix, {p.library_images_per_profile} photos/profile",
         f"{p.prefix_cache_speedup_incl_prefix:.1f}x"),
        (sec, "break-even", f"{p.breakeven_images_per_profile:.1f} photos/profile"),
        (sec, "max abs difference of cached and full scores", diff),
    ]


def _vision_rows(v: VisionResult) -> list[Row]:
    """Section 2: the batch sweep, fp32's rate, the speedups, the token cosines against torch."""
    sec = "2 vision"
    rows = [
        (sec, f"batch {row.batch}: torch eager / ONNX int8 images/s",
         f"{_f(row.torch_images_per_s)} / {_f(row.onnx_int8_images_per_s)} ({row.int8_speedup:.2f}x)")
        for row in v.batch_sweep
    ]
    bb = v.best_batch
    return rows + [
        (sec, f"ONNX fp32 images/s (batch {v.batch})", _f(v.onnx_fp32.images_per_s)),
        (sec, f"int8 vs torch eager, each at its best batch (torch {bb.torch}, int8 {bb.onnx_int8})",
         f"{v.int8_vision_speedup:.2f}x"),
        (sec, f"int8 / fp32 vs torch eager at the same batch ({v.batch})",
         f"{v.int8_vision_speedup_same_batch:.2f}x / {v.fp32_vision_speedup:.2f}x"),
        (sec, f"token cosine vs torch, {v.images} real photos: int8 mean (worst photo)",
         f"{v.onnx_int8.cosine_mean:.5f} ({v.onnx_int8.cosine_min_image:.5f})"),
        (sec, "token cosine vs torch: fp32 mean", f"{v.onnx_fp32.cosine_mean:.6f}"),
    ]


def _library_rows(name: str, lib: LibraryResult | SectionError) -> list[Row]:
    """Sections 3 (incremental work) and 4 (end to end) for one preset's library."""
    if isinstance(lib, SectionError):
        return [_failed(f"3-4 library ({name})", lib)]
    f1, f2, f3 = lib.first_run, lib.new_profile_run, lib.new_photos_run
    sec = f"3 incremental ({name})"
    rows = [
        (sec, f"first run: {lib.photos} photos x 2 profiles, vision encodes", str(f1.encoded)),
        (sec, "third profile added: vision encodes", str(f2.encoded)),
        (sec, "third profile: wall time vs first run",
         f"{f2.wall_s:.2f} s vs {f1.wall_s:.2f} s ({f2.wall_vs_first:.2f}x)"),
        (sec, f"{lib.new_photos} new photos: vision encodes (pairs scored)", f"{f3.encoded} ({f3.scored})"),
    ]
    sec = f"4 end to end ({name})"
    return rows + [
        (sec, "images/s (scan, decode, vision, 2 profiles, write)", _f(f1.images_per_s, 1)),
        (sec, "(image, profile) pairs/s", _f(f1.pairs_per_s, 1)),
        (sec, "peak RSS of the scoring process (after load / at end)",
         f"{lib.peak_rss_mb:.0f} MB ({_f(lib.rss_after_load_mb, 0)} / {_f(lib.rss_end_mb, 0)} MB)"),
        (sec, "visual-token cache per image", f"{lib.visual_cache_bytes_per_image / 1024:.1f} KiB"),
        (sec, "model load (once)", f"{lib.load_s:.1f} s"),
        (sec, "scorer batches, shipped defaults: vision / score", f"{lib.vision_batch} / {lib.score_batch}"),
    ]


_INT8_NAMES = {"int8": "shipped int8", "torch_dynamic": "torch quantize_dynamic", "quanto_w8": "optimum-quanto w8"}


def _int8_rows(i8: Int8Result) -> list[Row]:
    """Section 6: float32's rate, then each int8 arm's rate, speedup and parity; arms that did not run."""
    sec = "6 int8 LLM stage"
    rows = [(sec, f"{i8.images} distinct images x {len(i8.profiles)} profiles, suffix tokens", str(i8.suffix_tokens))]
    for name, arm in i8.arms.items():
        if name == "fp32":
            rows.append((sec, "float32: pairs/s", _f(arm.pairs_per_s, 2)))
            continue
        rows.append((
            sec,
            f"{_INT8_NAMES.get(name, name)}: pairs/s, speedup, worst Spearman / max abs diff",
            f"{_f(arm.pairs_per_s, 2)}, {arm.speedup_vs_fp32:.2f}x, {arm.spearman_min:.4f} / {arm.max_abs_diff:.3f}",
        ))
    rows += [(sec, f"{_INT8_NAMES.get(name, name)}", f"not run: {why}") for name, why in i8.skipped.items()]
    return rows


def _load_rows(ld: LoadResult | SectionError) -> list[Row]:
    """Section 7: the load with no tower against the load with the tower built."""
    sec = "7 model load"
    if isinstance(ld, SectionError):
        return [_failed(sec, ld)]
    return [(
        sec,
        "ONNX backend, warm artefact: seconds / RSS MB, no tower vs tower built",
        f"{ld.model_load_s:.2f} s / {ld.model_load_rss_mb:.0f} MB vs "
        f"{ld.model_load_s_with_tower:.2f} s / {ld.model_load_rss_mb_with_tower:.0f} MB "
        f"(tower builds {ld.after.tower_builds} vs {ld.before.tower_builds})",
    )]


def _e2e_rows(e2e: EndToEndResult | SectionError, cache: dict[str, int | None]) -> list[Row]:
    """Section 8 (end to end, one thread; the no-op rank) and the visual-token cache per preset."""
    sec = "8 end to end"
    rows: list[Row] = []
    if isinstance(e2e, SectionError):
        rows.append(_failed(sec, e2e))
    else:
        runs = e2e.end_to_end
        for r, label in ((runs.none, "float32 LLM"), (runs.int8, "int8 LLM")):
            rows.append((sec, f"rank {runs.photos} new photos x {runs.profiles} profiles, 1 thread, {label}: "
                              "pairs/s (projected hours, 10,000 photos x 4)",
                         f"{_f(r.pairs_per_s, 2)} ({_f(r.projected_hours_10k_photos_4_profiles, 2)} h)"))
        noop = e2e.noop
        up = noop.startup_s
        rows += [
            (sec, f"no-op rank (fresh process) of an unchanged {noop.photos:,}-photo library",
             f"{noop.noop_rank_s:.2f} s"),
            (sec, "start-up, fresh process: --version / status / profile list",
             f"{up.version:.2f} / {up.status:.2f} / {up.profile_list:.2f} s"),
        ]
    sizes = " / ".join("n/a" if v is None else f"{v / 1024:.1f} KiB" for v in cache.values())
    rows.append(("8 cache", "visual-token cache per photo (float16 tower features): " + " / ".join(cache), sizes))
    return rows


_STAGE_LABELS = {
    "vision_torch": "vision torch eager",
    "vision_onnx_fp32": "vision ONNX fp32",
    "vision_onnx_int8": "vision ONNX int8 (vs int8 GEMM)",
    "llm_cached": "LLM prefix-cached suffix",
    "llm_full": "LLM full prompt",
}


def _limit_rows(lim: LimitResult, probe: ThreadsProbeResult) -> list[Row]:
    """Section 5: the large-GEMM rates, each stage's GFLOP/s against them, and the thread count with its probe."""
    sec = "5 limit"
    g = lim.gemm
    rows = [(sec, f"large GEMM, best of {len(g.shapes)} shapes: torch fp32 / ORT fp32 / ORT int8 GFLOP/s",
             f"{_f(g.torch_fp32_gflops)} / {_f(g.onnx_fp32_gflops)} / {_f(g.onnx_int8_gflops)}")]
    for key, label in _STAGE_LABELS.items():
        st = lim.stages[key]
        rows.append((sec, f"{label}: GFLOP/s (fraction of GEMM)", f"{_f(st.gflops)} ({st.fraction:.0%})"))
    how = ", ".join(f"{n}: {_duration(t)}" for n, t in sorted(probe.median_s.items()))
    rows.append((sec, "threads, torch and ONNX Runtime (probe: LLM batch at each count)",
                 f"{lim.threads} ({probe.chosen_by}; {how})"))
    return rows


def _checks_line(checks_: dict[str, bool | None]) -> str:
    word = {True: "pass", False: "FAIL", None: "n/a"}
    return ", ".join(f"{k} {word[ok]}" for k, ok in checks_.items())


def format_table(result: BenchResult) -> str:
    """A plain-text table for stdout."""
    rows = table_rows(result)
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    m = result.machine
    lines = [
        f"pmllm-batch bench — preset {result.preset} ({result.weights}){' — QUICK' if result.quick else ''}",
        f"{m.cpu_model}, {m.usable_cpus} CPUs, {m.threads} threads, torch {m.torch}, "
        f"onnxruntime {m.onnxruntime}, {m.date_utc}",
        "",
    ]
    prev = ""
    for sec, fig, val in rows:
        lines.append(f"{sec if sec != prev else '':<{w0}}  {fig:<{w1}}  {val}")
        prev = sec
    lines.append("")
    lines.append("checks: " + _checks_line(result.checks))
    lines.append(f"command: {result.command}   ({result.elapsed_s:.0f} s)")
    return "\n".join(lines)


def _md_rows(result: BenchResult) -> list[Row]:
    """:func:`table_rows` with any ``|`` escaped, so a cell can never split the Markdown table."""
    return [(s.replace("|", "\\|"), f.replace("|", "\\|"), v.replace("|", "\\|")) for s, f, v in table_rows(result)]


def _opt(x: object) -> object:
    return "?" if x is None else x


def render_markdown(result: BenchResult) -> str:
    """The Markdown report (the README's performance section cites it)."""
    m = result.machine
    out = [
        f"# pmllm-batch bench — preset `{result.preset}`" + (" (quick)" if result.quick else ""),
        "",
        f"- command: `{result.command}`",
        f"- date: {m.date_utc}",
        f"- machine: {m.cpu_model} (family {_opt(m.cpu_family)}, model {_opt(m.model)}), "
        f"{m.physical_cores or '?'} cores / {m.logical_cpus} logical CPUs"
        f"{' in a virtual machine' if m.virtual_machine else ''}, {_opt(m.memory_gib)} GiB RAM, "
        f"SIMD {', '.join(m.simd) or 'none listed'}",
        f"- load average at start / end: {m.load_average_start} / {m.load_average_end}",
        f"- software: Python {m.python}, torch {m.torch}, onnxruntime {m.onnxruntime}, "
        f"transformers {m.transformers}, open_clip {_opt(m.open_clip)}",
        f"- threads: {m.threads} (torch intra-op and ONNX Runtime intra-op, the same in every arm)",
        f"- weights: {result.weights}",
        "- method: arms interleaved round by round in one process; medians of timed repeats after a warm-up; "
        "library runs in a child process (its own peak RSS).",
        "",
        "| section | figure | value |",
        "|---|---|---|",
    ]
    out += [f"| {s} | {f} | {v} |" for s, f, v in _md_rows(result)]
    out += ["", "Checks: " + _checks_line(result.checks), ""]
    return "\n".join(out)


def write_reports(result: BenchResult, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``bench-<preset>.json`` and ``bench-<preset>.md`` into ``out_dir``; their paths go into ``reports``."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{result.preset}" + ("-quick" if result.quick else "")
    paths = {"json": d / f"{stem}.json", "markdown": d / f"{stem}.md"}
    data = result.to_json()
    paths["json"].write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    paths["markdown"].write_text(render_markdown(result), encoding="utf-8")
    result.reports = {k: str(v) for k, v in paths.items()}
    return paths
