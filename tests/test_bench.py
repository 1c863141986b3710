"""``pmllm-batch bench``: the quick demo run, its exact counts, the invariants between its figures, and its report.

Timing targets and wall-clock times are not asserted here (a test machine's speed is not evidence); only what a run
must satisfy on any machine: counts, figures derived from other figures, documented bounds. The full run on the cpu
preset is what docs/PERFORMANCE.md records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from pmllm_batch import bench
from pmllm_batch.bench.codec import from_json, to_json
from pmllm_batch.bench.end_to_end import PAIRS_10K_4, EndToEndResult
from pmllm_batch.bench.int8 import MAX_ABS_TARGET, SPEARMAN_TARGET, spearman
from pmllm_batch.bench.library import LibraryResult, SectionError
from pmllm_batch.bench.load import LoadResult
from pmllm_batch.bench.report import checks, render_markdown, table_rows
from pmllm_batch.bench.result import BenchResult
from pmllm_batch.bench.timing import TimingStats, probe_threads, stats
from tests.helpers import isolated_env

REPO = Path(__file__).resolve().parents[1]

# The JSON's top level, in order (docs/PERFORMANCE.md cites these names): the sections, then the headline figures.
TOP_LEVEL_KEYS = [
    "preset", "quick", "command", "weights", "machine", "threads_probe", "timings", "prefix_cache", "vision",
    "llm_int8", "limit", "model_load", "library", "end_to_end", "prefix_cache_speedup",
    "prefix_cache_scores_max_abs_diff", "persona_tokens", "prefix_cache_speedup_same_batch", "int8_vision_speedup",
    "int8_vision_speedup_same_batch", "int8_vision_cosine", "fp32_vision_cosine", "new_profile_vision_encodes",
    "new_photos_vision_encodes", "vision_gemm_fraction", "llm_gemm_fraction", "llm_int8_speedup",
    "llm_int8_score_spearman", "llm_int8_score_max_abs_diff", "suffix_tokens", "model_load_s", "model_load_rss_mb",
    "model_load_s_with_tower", "model_load_rss_mb_with_tower", "end_to_end_pairs_per_s", "end_to_end_pairs_per_s_int8",
    "projected_hours_10k_photos_4_profiles", "projected_hours_10k_photos_4_profiles_int8", "noop_rank_s",
    "noop_rank_photos", "startup_s", "visual_cache_bytes_per_photo", "threads", "elapsed_s", "checks", "reports",
]

# --quick sizes of the demo preset (bench/run.py): batches, repeats, library photos; section 6 and 8 sizes
QUICK = {"vision_batch": 8, "batch": 4, "rep_cached": 3, "rep_full": 2, "rep_vision": 3, "library": 12}
QUICK_INT8_IMAGES, QUICK_E2E_PHOTOS, QUICK_NOOP_PHOTOS = 8, 6, 300


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    """One quick demo bench through the CLI (JSON on stdout), shared by the tests below."""
    import torch

    base = tmp_path_factory.mktemp("bench")
    out = base / "reports"
    before = (torch.get_num_threads(), torch.is_grad_enabled())
    with isolated_env(base) as env:
        code, stdout, stderr = env.run_cli("bench", "--quick", "--json", "--out", str(out))
    assert code == 0, stderr
    # the bench sets threads and disables autograd while it runs; the rest of this process must not notice
    assert (torch.get_num_threads(), torch.is_grad_enabled()) == before
    return json.loads(stdout), out, stderr


@pytest.fixture(scope="module")
def run(quick_run: tuple[dict, Path, str]) -> BenchResult:
    """The quick run's JSON read back into its dataclasses."""
    return BenchResult.from_json(quick_run[0])


def _between(s: TimingStats) -> bool:
    return s.min_s <= s.median_s <= s.max_s


# -- the JSON ------------------------------------------------------------------------------------------------------


def test_json_keeps_its_keys_and_reads_back_into_the_same_result(quick_run, run):
    result, out, _ = quick_run
    assert list(result) == TOP_LEVEL_KEYS
    assert json.loads(json.dumps(run.to_json())) == result  # JSON -> dataclasses -> JSON loses nothing
    assert result["preset"] == "demo" and result["quick"] is True
    saved = json.loads((out / "bench-demo-quick.json").read_text(encoding="utf-8"))
    # the file is written before the reports' paths are known: everything else is the same
    assert saved == {k: v for k, v in result.items() if k != "reports"}
    assert run.reports == {"json": str(out / "bench-demo-quick.json"), "markdown": str(out / "bench-demo-quick.md")}


def test_headline_figures_are_the_sections_own(run):
    h, p, v, i8, lim = run.headline, run.prefix_cache, run.vision, run.llm_int8, run.limit
    assert (h.prefix_cache_speedup, h.prefix_cache_speedup_same_batch) == (
        p.prefix_cache_speedup, p.prefix_cache_speedup_same_batch)
    assert (h.prefix_cache_scores_max_abs_diff, h.persona_tokens, h.suffix_tokens) == (
        p.max_abs_score_diff, p.min_persona_tokens, p.suffix_tokens)
    assert (h.int8_vision_speedup, h.int8_vision_speedup_same_batch, h.int8_vision_cosine, h.fp32_vision_cosine) == (
        v.int8_vision_speedup, v.int8_vision_speedup_same_batch, v.onnx_int8.cosine_mean, v.onnx_fp32.cosine_mean)
    assert (h.llm_int8_speedup, h.llm_int8_score_spearman, h.llm_int8_score_max_abs_diff) == (
        i8.arms["int8"].speedup_vs_fp32, i8.arms["int8"].spearman_min, i8.arms["int8"].max_abs_diff)
    assert (h.vision_gemm_fraction, h.llm_gemm_fraction) == (
        lim.stages["vision_onnx_int8"].fraction, lim.stages["llm_cached"].fraction)
    assert h.threads == run.machine.threads == lim.threads == lim.gemm.threads == v.threads
    assert isinstance(run.model_load, LoadResult)
    assert (h.model_load_s, h.model_load_rss_mb) == (run.model_load.after.load_s, run.model_load.after.rss_mb)
    assert (h.model_load_s_with_tower, h.model_load_rss_mb_with_tower) == (
        run.model_load.before.load_s, run.model_load.before.rss_mb)


def test_timings_name_every_step_and_fit_in_the_run(run):
    assert list(run.timings) == [
        "model_build_s", "threads_probe_s", "onnx_export_s", "prefix_cache_s", "vision_s", "llm_int8_s", "limit_s",
        "model_load_s", "library_demo_s", "end_to_end_s",
    ]
    assert all(t >= 0 for t in run.timings.values())
    assert sum(run.timings.values()) <= run.elapsed_s  # disjoint steps of the one run


def test_checks_apply_only_where_a_quick_demo_run_is_evidence(run):
    # timing targets are for the cpu preset's shapes, full runs: not judged on a quick demo run
    assert run.checks == checks(run) == {
        "scores_agree_1e-4": True,
        "persona_at_least_120_tokens": True,
        "prefix_cache_at_least_5x": None,
        "int8_at_least_1.8x_torch": None,
        "int8_cosine_at_least_0.99": True,
        "new_profile_0_encodes": True,
        "new_photos_10_encodes": True,
        "llm_int8_at_least_1.6x": None,
        "end_to_end_at_least_6_pairs_per_s": None,
        "noop_rank_at_most_3s": None,
        "startup_at_most_0.5s": None,
        "paper_cache_at_most_300kb": True,
        "llm_int8_scores_kept": None,
    }


# -- the sections ----------------------------------------------------------------------------------------------------


def test_threads_probe_times_each_candidate_count_and_picks_the_fastest(run):
    probe, usable = run.threads_probe, run.machine.usable_cpus
    assert set(probe.median_s) == {1, usable, *[2**k for k in range(1, 8) if 2**k < usable]}
    assert probe.chosen_by == "probe" and probe.work == "LLM cached scoring"
    assert probe.best == min(probe.median_s, key=lambda n: probe.median_s[n]) == run.machine.threads


def test_prefix_cache_figures_follow_from_its_timings_and_token_counts(run):
    p = run.prefix_cache
    b = QUICK["batch"]
    assert p.profiles == [prof.name for prof in bench.BENCH_PROFILES[:2]]
    assert [t.profile for t in p.tokens] == p.profiles
    assert all(t.unknown_tokens == 0 for t in p.tokens)  # the personas use only the demo vocabulary
    assert p.min_persona_tokens == min(t.persona_tokens for t in p.tokens) >= bench.MIN_PERSONA_TOKENS
    # the demo prompt's suffix: the image token plus the answer header (model/prompts.py)
    assert p.suffix_tokens == p.tokens[0].suffix_tokens == 4
    assert p.token_ratio == pytest.approx(statistics.mean((t.prefix_tokens + 4) / 4 for t in p.tokens))
    assert set(p.per_batch) == {f"cached@{b}", f"full@{b}"}
    cached, full = p.per_batch[f"cached@{b}"], p.per_batch[f"full@{b}"]
    assert (cached.repeats, full.repeats, p.prefix_encode.repeats) == (
        QUICK["rep_cached"], QUICK["rep_full"], QUICK["rep_cached"])
    for rate in (cached, full):
        assert _between(rate) and rate.batch == b
        assert rate.pairs_per_s == pytest.approx(b / rate.median_s)
    assert _between(p.prefix_encode)
    assert (p.cached_batch, p.full_batch, p.same_batch) == (b, b, b)
    assert (p.prefix_cache_pairs_per_s, p.full_prompt_pairs_per_s) == (cached.pairs_per_s, full.pairs_per_s)
    assert p.prefix_cache_speedup == pytest.approx(cached.pairs_per_s / full.pairs_per_s)
    assert p.prefix_cache_speedup_same_batch == pytest.approx(p.prefix_cache_speedup)
    n, t_prefix = p.library_images_per_profile, p.prefix_encode.median_s
    per_c, per_f = 1 / cached.pairs_per_s, 1 / full.pairs_per_s
    assert p.prefix_cache_speedup_incl_prefix == pytest.approx(n * per_f / (t_prefix + n * per_c))
    assert p.breakeven_images_per_profile == pytest.approx(t_prefix / max(per_f - per_c, 1e-12))


def test_cached_prefix_scores_equal_full_prompt_scores_and_the_prefix_cache_size_is_its_kv(run):
    p = run.prefix_cache
    assert p.max_abs_score_diff is not None and 0 <= p.max_abs_score_diff <= 1e-4
    assert p.scores_agree is True
    # float32 keys and values of every layer for the prefix encoded last (round rep_cached - 1: profile 0)
    lm = json.loads((REPO / "pmllm_batch" / "assets" / "demo" / "lm" / "config.json").read_text(encoding="utf-8"))
    per_token = lm["num_hidden_layers"] * 2 * lm["num_key_value_heads"] * lm["head_dim"] * 4
    last = p.tokens[(QUICK["rep_cached"] - 1) % len(p.tokens)]
    assert p.prefix_kv_bytes_per_profile == last.prefix_tokens * per_token


def test_vision_rates_speedups_and_token_cosines(run):
    v = run.vision
    b = QUICK["vision_batch"]
    assert (v.batch, v.images, v.batches) == (b, b, [b])
    assert (v.best_batch.torch, v.best_batch.onnx_int8) == (b, b)
    for rate in (v.torch, v.onnx_fp32, v.onnx_int8):
        assert rate.repeats == QUICK["rep_vision"] and _between(rate)
        assert rate.images_per_s == pytest.approx(b / rate.median_s)
    (row,) = v.batch_sweep
    assert (row.batch, row.torch_images_per_s, row.onnx_int8_images_per_s) == (
        b, v.torch.images_per_s, v.onnx_int8.images_per_s)
    assert row.int8_speedup == pytest.approx(v.onnx_int8.images_per_s / v.torch.images_per_s)
    assert v.int8_vision_speedup == pytest.approx(row.int8_speedup) == pytest.approx(v.int8_vision_speedup_same_batch)
    assert v.fp32_vision_speedup == pytest.approx(v.onnx_fp32.images_per_s / v.torch.images_per_s)
    for arm in (v.onnx_fp32, v.onnx_int8):
        assert 0.0 <= arm.cosine_min_token <= arm.cosine_min_image <= arm.cosine_mean <= 1.0 + 1e-9
        assert arm.max_abs_diff >= 0
    assert v.int8_vision_cosine == v.onnx_int8.cosine_mean >= 0.99
    assert v.onnx_fp32.cosine_mean >= 0.9999
    assert set(v.graph_ids) == {"torch", "onnx_fp32", "onnx_int8"} and v.graph_ids["torch"].startswith("torch-")


def test_int8_llm_stage_speedup_is_the_ratio_of_medians_and_parity_is_within_its_bounds(run):
    i8 = run.llm_int8
    assert (i8.images, i8.profiles) == (QUICK_INT8_IMAGES, [p.name for p in bench.BENCH_PROFILES])
    assert set(i8.arms) == {"fp32", "int8"} and i8.skipped == {}  # --quick compares no other scheme
    assert i8.suffix_tokens == run.prefix_cache.suffix_tokens
    assert len(i8.score_range_fp32) == len(i8.profiles) and all(r >= 0 for r in i8.score_range_fp32)
    fp32, int8 = i8.arms["fp32"], i8.arms["int8"]
    assert (fp32.speedup_vs_fp32, fp32.spearman_min, fp32.max_abs_diff) == (1.0, pytest.approx(1.0), 0.0)
    for arm in (fp32, int8):
        assert arm.repeats == 1 and _between(arm)
        assert arm.pairs_per_s == pytest.approx(len(i8.profiles) * i8.images / arm.median_s)
        assert len(arm.per_profile) == len(i8.profiles)
        assert arm.spearman_min == min(p.spearman for p in arm.per_profile)
        assert arm.max_abs_diff == max(p.max_abs_diff for p in arm.per_profile)
        assert all(-1.0 <= p.spearman <= 1.0 and 0.0 <= p.max_abs_diff <= 4.0 for p in arm.per_profile)  # 1-5 scale
    assert int8.speedup_vs_fp32 == pytest.approx(fp32.median_s / int8.median_s)
    assert (i8.llm_int8_speedup, i8.llm_int8_score_spearman, i8.llm_int8_score_max_abs_diff) == (
        int8.speedup_vs_fp32, int8.spearman_min, int8.max_abs_diff)
    assert i8.parity == (int8.spearman_min >= SPEARMAN_TARGET and int8.max_abs_diff <= MAX_ABS_TARGET)


def test_limit_stages_are_flops_times_rate_against_the_matching_gemm(run):
    lim, v, p = run.limit, run.vision, run.prefix_cache
    g, fl = lim.gemm, lim.flops
    assert g.shapes == ["512x512x512"] and set(g.per_shape) == {"512x512x512"}
    for engine in ("torch_fp32", "onnx_fp32", "onnx_int8"):
        assert getattr(g, f"{engine}_best_shape") == "512x512x512"
        assert getattr(g, f"{engine}_gflops") == g.per_shape["512x512x512"][engine]  # both rounded to 0.1
    expected = {
        "vision_torch": (fl.vision_flops_per_image * v.torch.images_per_s, g.torch_fp32_gflops),
        "vision_onnx_fp32": (fl.vision_flops_per_image * v.onnx_fp32.images_per_s, g.onnx_fp32_gflops),
        "vision_onnx_int8": (fl.vision_flops_per_image * v.onnx_int8.images_per_s, g.onnx_int8_gflops),
        "llm_cached": (fl.llm_cached_flops_per_pair * p.prefix_cache_pairs_per_s, g.torch_fp32_gflops),
        "llm_full": (fl.llm_full_flops_per_pair * p.full_prompt_pairs_per_s, g.torch_fp32_gflops),
    }
    assert list(lim.stages) == list(expected)
    for name, (flops_per_s, limit) in expected.items():
        st = lim.stages[name]
        assert (st.gflops, st.limit_gflops) == (pytest.approx(flops_per_s / 1e9), limit), name
        assert st.fraction == pytest.approx(st.gflops / st.limit_gflops), name
    # the full prompt runs the prefix too: more work per pair than the cached suffix
    assert fl.llm_full_flops_per_pair > fl.llm_cached_flops_per_pair > 0
    assert lim.vision_int8_vs_fp32_gemm_fraction == pytest.approx(lim.stages["vision_onnx_int8"].gflops
                                                                  / g.torch_fp32_gflops)


def test_model_load_builds_the_tower_only_when_told_and_loads_the_same_model(run):
    ld = run.model_load
    assert isinstance(ld, LoadResult), ld
    assert ld.rounds == 1 and len(ld.before.runs) == len(ld.after.runs) == 1
    assert (ld.after.tower_builds, ld.before.tower_builds) == (0, 1)
    assert [r.tower_kept for r in ld.after.runs] == [False]
    assert ld.same_fingerprint is True
    for arm in (ld.before, ld.after):
        (one,) = arm.runs
        assert (arm.load_s, arm.rss_mb, arm.peak_rss_mb) == (one.load_s, one.rss_mb or 0.0, one.peak_rss_mb or 0.0)
    assert (ld.model_load_peak_rss_mb, ld.model_load_peak_rss_mb_with_tower) == (
        ld.after.peak_rss_mb, ld.before.peak_rss_mb)


def test_a_new_profile_encodes_nothing_and_new_photos_encode_exactly_themselves(run):
    from pmllm_batch.config import Settings

    assert list(run.library) == ["demo"]
    lib = run.library["demo"]
    assert isinstance(lib, LibraryResult), lib
    n, new = QUICK["library"], bench.N_NEW_PHOTOS
    assert (lib.photos, lib.new_photos, new) == (n, new, 10)
    f1, f2, f3 = lib.first_run, lib.new_profile_run, lib.new_photos_run
    assert (f1.profiles, f1.encoded, f1.scored, f1.failed) == (2, n, 2 * n, 0)
    assert (f2.profiles, f2.encoded, f2.scored) == (3, 0, n)  # the third profile: every photo, no vision
    assert (f3.profiles, f3.encoded, f3.scored) == (3, new, 3 * new)
    assert f1.images_per_s == pytest.approx(n / f1.wall_s) and f1.pairs_per_s == pytest.approx(2 * n / f1.wall_s)
    for later in (f2, f3):
        assert later.wall_vs_first == pytest.approx(later.wall_s / f1.wall_s)
    assert (run.headline.new_profile_vision_encodes, run.headline.new_photos_vision_encodes) == (0, new)
    # one cached entry per distinct photo: float16 (n_feat, D_vis) = (96 / 12)^2 = 64 patches x 64 dims each
    assert lib.visual_cache_entries == n + new
    assert lib.visual_cache_bytes == (n + new) * 64 * 64 * 2
    assert lib.visual_cache_bytes_per_image == 64 * 64 * 2
    shipped = Settings()
    assert (lib.vision_batch, lib.score_batch) == (shipped.vision.batch_size, shipped.score.batch_size)
    assert lib.threads == run.machine.threads and lib.preset == "demo"
    assert lib.peak_rss_mb > 0


def test_end_to_end_scores_every_pair_in_one_pass_and_the_noop_rank_does_nothing(run):
    e2e = run.end_to_end
    assert isinstance(e2e, EndToEndResult), e2e
    runs, h = e2e.end_to_end, run.headline
    assert (runs.preset, runs.photos, runs.profiles, runs.threads) == ("demo", QUICK_E2E_PHOTOS, 4, 1)
    pairs = QUICK_E2E_PHOTOS * 4
    for quantized, pairs_per_s, hours in (
        (runs.none, h.end_to_end_pairs_per_s, h.projected_hours_10k_photos_4_profiles),
        (runs.int8, h.end_to_end_pairs_per_s_int8, h.projected_hours_10k_photos_4_profiles_int8),
    ):
        assert (quantized.encoded, quantized.scored) == (QUICK_E2E_PHOTOS, pairs)  # each photo through vision once
        assert quantized.pairs_per_s == pytest.approx(pairs / quantized.wall_s) and pairs_per_s == quantized.pairs_per_s
        assert quantized.projected_hours_10k_photos_4_profiles == pytest.approx(
            PAIRS_10K_4 / quantized.pairs_per_s / 3600)
        assert hours == quantized.projected_hours_10k_photos_4_profiles
        assert quantized.visual_cache_bytes_per_photo == 64 * 64 * 2
    noop = e2e.noop
    assert (noop.photos, noop.first_rank_scored) == (QUICK_NOOP_PHOTOS + 4, 4 * 4)
    assert [(r.scanned, r.encoded, r.scored, r.skipped) for r in noop.runs] == [(noop.photos, 0, 0, noop.photos)]
    assert noop.noop_rank_s == min(r.wall_s for r in noop.runs) == h.noop_rank_s
    assert h.noop_rank_photos == noop.photos and h.startup_s == noop.startup_s
    assert min(noop.startup_s.version, noop.startup_s.status, noop.startup_s.profile_list) > 0


def test_visual_cache_per_photo_is_n_feat_x_d_vis_float16_at_each_presets_shapes(run):
    from pmllm_batch.model.config import ModelCfg
    from pmllm_batch.model.presets import get_preset
    from pmllm_batch.model.vision import feature_shape

    expected = {}
    for name in ("demo", "smol", "cpu", "paper"):
        n_feat, d_vis = feature_shape(ModelCfg.from_dict(get_preset(name)["model"]).vision)
        expected[name] = n_feat * d_vis * 2
    # demo/smol 64 x 64, cpu ViT-B/32 49 x 768, paper ViT-L/14-336 pooled 144 x 1024
    assert run.visual_cache_bytes_per_photo == expected == {"demo": 8192, "smol": 8192, "cpu": 75264, "paper": 294912}


# -- the report ------------------------------------------------------------------------------------------------------


def test_table_has_each_sections_rows_with_the_runs_counts(run):
    text = bench.format_table(run)
    rows = table_rows(run)
    for sec, fig, val in rows:
        assert fig in text and val in text, (sec, fig)
    by_figure = {(sec, fig): val for sec, fig, val in rows}
    n, new = QUICK["library"], bench.N_NEW_PHOTOS
    lib = "3 incremental (demo)"
    assert by_figure[(lib, f"first run: {n} photos x 2 profiles, vision encodes")] == str(n)
    assert by_figure[(lib, "third profile added: vision encodes")] == "0"
    assert by_figure[(lib, f"{new} new photos: vision encodes (pairs scored)")] == f"{new} ({3 * new})"
    assert by_figure[("4 end to end (demo)", "visual-token cache per image")] == "8.0 KiB"
    assert by_figure[("1 prefix cache", "persona / prefix / suffix tokens")].endswith(" / 4")
    assert by_figure[("6 int8 LLM stage", f"{QUICK_INT8_IMAGES} distinct images x 3 profiles, suffix tokens")] == "4"
    e2e = f"rank {QUICK_E2E_PHOTOS} new photos x 4 profiles, 1 thread, "
    assert sum(fig.startswith(e2e) for _, fig, _ in rows) == 2  # float32 and int8 LLM
    assert ("8 end to end", f"no-op rank (fresh process) of an unchanged {QUICK_NOOP_PHOTOS + 4}-photo library") in (
        by_figure)
    cache = "visual-token cache per photo (float16 tower features): demo / smol / cpu / paper"
    assert by_figure[("8 cache", cache)] == "8.0 KiB / 8.0 KiB / 73.5 KiB / 288.0 KiB"
    assert sum(sec == "5 limit" for sec, _, _ in rows) == 1 + 5 + 1  # GEMM, five stages, threads
    assert [sec for sec in dict.fromkeys(sec for sec, _, _ in rows)] == [
        "1 prefix cache", "2 vision", "3 incremental (demo)", "4 end to end (demo)", "6 int8 LLM stage",
        "7 model load", "8 end to end", "8 cache", "5 limit",
    ]
    assert "FAILED" not in text
    assert "command: pmllm-batch bench --preset demo --quick" in text


def test_reports_name_the_machine_the_date_and_the_command(quick_run, run):
    _, out, _ = quick_run
    md = (out / "bench-demo-quick.md").read_text(encoding="utf-8")
    assert md == render_markdown(run)  # what was written renders again from the JSON alone
    assert run.command.startswith("pmllm-batch bench --preset demo --quick")
    assert f"`{run.command}`" in md
    assert run.machine.cpu_model in md and run.machine.date_utc in md
    assert "| section | figure | value |" in md
    assert md.count("\n| ") == 1 + len(table_rows(run))  # the header and one line per row


def test_a_failed_section_is_one_row_and_its_headline_figures_are_none(run):
    error = SectionError("Traceback (most recent call last):\nRuntimeError: the child | died")
    broken = dataclasses.replace(run, library={"demo": error}, model_load=error, end_to_end=error)
    rows = table_rows(broken)
    failed = [(sec, val) for sec, fig, val in rows if fig == "FAILED"]
    last = "RuntimeError: the child | died"
    assert failed == [("3-4 library (demo)", last), ("7 model load", last), ("8 end to end", last)]
    h = broken.headline
    assert (h.new_profile_vision_encodes, h.model_load_s, h.end_to_end_pairs_per_s, h.startup_s) == (None,) * 4
    assert checks(broken)["new_profile_0_encodes"] is False
    assert "the child \\| died" in render_markdown(broken)  # a cell never splits the Markdown table
    assert BenchResult.from_json(json.loads(json.dumps(broken.to_json()))).library == {"demo": error}


# -- small pieces, no model needed ---------------------------------------------------------------------------------


def test_interleaved_times_every_arm_the_requested_number_of_times():
    calls: list[str] = []
    times = bench.interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, {"a": 3, "b": 1}, warmup=True
    )
    assert [len(times["a"]), len(times["b"])] == [3, 1]
    assert calls[:2] == ["a", "b"]  # the untimed warm-up runs each arm once
    assert calls.count("a") == 4 and calls.count("b") == 2
    assert all(t >= 0 for t in times["a"])


def test_stats_are_median_min_max_and_count():
    s = stats([0.3, 0.1, 0.2, 0.5])
    assert (s.median_s, s.min_s, s.max_s, s.repeats) == (pytest.approx(0.25), 0.1, 0.5, 4)
    assert s.parts() == (s.median_s, 0.1, 0.5, 4)


def test_probe_threads_times_one_to_max_threads_and_restores_the_count():
    import torch

    before = torch.get_num_threads()
    probe = probe_threads(lambda: None, 6, repeats=1)
    assert set(probe.candidates) == {1, 2, 4, 6}
    assert probe.best in probe.candidates and probe.candidates[probe.best] == min(probe.candidates.values())
    assert torch.get_num_threads() == before


def test_spearman_is_one_for_the_same_order_minus_one_reversed_and_averages_ties():
    assert spearman([1.0, 2.0, 3.0], [10.0, 20.0, 30.0]) == pytest.approx(1.0)
    assert spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert spearman([1.0, 1.0], [2.0, 2.0]) == 1.0  # two constant sequences
    assert spearman([1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(0.9486832980505138)


@dataclasses.dataclass
class _Inner:
    x: float


@dataclasses.dataclass
class _Outer:
    by_count: dict[int, _Inner]
    items: list[_Inner]
    either: _Inner | SectionError
    maybe: _Inner | None = None


def test_codec_reads_back_nested_dataclasses_int_keys_and_errors():
    value = _Outer({2: _Inner(0.5)}, [_Inner(1.0)], SectionError("boom"))
    data = json.loads(json.dumps(to_json(value)))
    assert data == {"by_count": {"2": {"x": 0.5}}, "items": [{"x": 1.0}], "either": {"error": "boom"}, "maybe": None}
    assert from_json(_Outer, data) == value
    assert from_json(_Outer, {**data, "either": {"x": 2}}).either == _Inner(2.0)


def test_token_cosine_is_one_for_scaled_copies_and_zero_for_orthogonal_tokens():
    a = np.zeros((1, 2, 3), dtype=np.float32)
    a[0, 0, 0] = 1.0
    a[0, 1, 1] = 2.0
    b = a.copy()
    b[0, 0] *= 5.0
    b[0, 1] = np.array([3.0, 0.0, 0.0])
    cos = bench.token_cosine(b, a)
    np.testing.assert_allclose(cos, [[1.0, 0.0]], atol=1e-12)


def test_photo_variants_are_distinct_and_leave_the_sources_alone(tmp_path: Path, example_photos):
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in example_photos}
    paths = bench.make_photo_variants(example_photos, tmp_path / "v", 20)
    later = bench.make_photo_variants(example_photos, tmp_path / "w", 5, start=20)
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in [*paths, *later]}
    assert len(digests) == 25
    assert digests.isdisjoint(before.values())
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in example_photos} == before


def test_bench_personas_are_long_and_fully_in_the_demo_vocabulary(demo_tokenizer):
    from pmllm_batch.model.prompts import render_persona

    for profile in bench.BENCH_PROFILES:
        ids = demo_tokenizer(render_persona(profile), add_special_tokens=False)["input_ids"]
        assert len(ids) >= bench.MIN_PERSONA_TOKENS, profile.name
        assert demo_tokenizer.unk_token_id not in ids, profile.name


def test_burst_linking_library_has_its_bursts_and_singles():
    from pmllm_batch.bench.burst_linking import synthetic_library

    hashes, matrix, stamps = synthetic_library(500, 8)
    assert matrix.shape == (500, 8) and len(set(hashes)) == len(stamps) == 500
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    singles = 500 - 5 * (500 // 50)  # 10 bursts of five frames after 450 singles
    bursts = matrix[singles:].reshape(10, 5, 8)
    neighbour_cos = (bursts[:, 1:] * bursts[:, :-1]).sum(-1)
    assert np.all((neighbour_cos > 0.969) & (neighbour_cos < 0.991))  # frames 0.97-0.99 apart
    assert all(s is not None for s in stamps[singles:])  # every burst frame has a capture time


def test_unknown_preset_is_a_one_line_user_error(tmp_path: Path):
    from pmllm_batch.errors import ConfigError

    with pytest.raises(ConfigError, match="demo, cpu"):
        bench.run_bench("paper", tmp_path)
