"""``pmllm-batch bench``: the quick demo run reports every figure, the counts the issue fixes, and exact scores.

Timing targets are not asserted here (a test machine's speed is not evidence); the full run on the cpu preset
is what docs/PERFORMANCE.md records.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from pmllm_batch import bench
from tests.helpers import isolated_env

HEADLINE_KEYS = (
    "prefix_cache_speedup",
    "end_to_end_pairs_per_s",
    "end_to_end_pairs_per_s_int8",
    "projected_hours_10k_photos_4_profiles",
    "noop_rank_s",
    "visual_cache_bytes_per_photo",
    "suffix_tokens",
    "llm_int8_speedup",
    "llm_int8_score_spearman",
    "int8_vision_speedup",
    "int8_vision_cosine",
    "new_profile_vision_encodes",
    "new_photos_vision_encodes",
    "vision_gemm_fraction",
    "llm_gemm_fraction",
    "prefix_cache_scores_max_abs_diff",
    "prefix_cache_speedup_same_batch",
    "int8_vision_speedup_same_batch",
    "persona_tokens",
    "threads",
)


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


def test_quick_run_reports_every_headline_figure(quick_run):
    result, _, _ = quick_run
    for key in HEADLINE_KEYS:
        assert key in result, key
    assert result["preset"] == "demo" and result["quick"] is True
    for section in ("prefix_cache", "vision", "library", "limit", "machine", "threads_probe", "timings"):
        assert section in result, section
    lib = result["library"]["demo"]
    for key in ("images_per_s", "pairs_per_s"):
        assert lib["first_run"][key] > 0
    assert lib["peak_rss_mb"] > 0
    # the demo model's visual tokens: (96 / 12)^2 = 64 patches x 64 dims, float16
    assert lib["visual_cache_bytes_per_image"] == 64 * 64 * 2
    assert result["machine"]["threads"] == result["threads"] >= 1
    assert 0 < result["vision_gemm_fraction"]


def test_end_to_end_scores_every_pair_in_one_pass_and_the_noop_rank_does_nothing(quick_run):
    result, _, _ = quick_run
    e2e = result["end_to_end"]
    assert "error" not in e2e, e2e.get("error")
    runs = e2e["end_to_end"]
    assert (runs["photos"], runs["profiles"], runs["threads"]) == (6, 4, 1)
    for quantize in ("none", "int8"):
        run = runs[quantize]
        assert (run["encoded"], run["scored"]) == (6, 24), quantize  # one pass: each photo through vision once
        assert run["pairs_per_s"] == pytest.approx(24 / run["wall_s"])
        assert run["projected_hours_10k_photos_4_profiles"] == pytest.approx(40_000 / run["pairs_per_s"] / 3600)
        assert run["visual_cache_bytes_per_photo"] == 64 * 64 * 2
    noop = e2e["noop"]
    assert noop["photos"] == 304 and noop["first_rank_scored"] == 16
    assert [(r["scanned"], r["encoded"], r["scored"], r["skipped"]) for r in noop["runs"]] == [(304, 0, 0, 304)]
    assert result["noop_rank_s"] == noop["noop_rank_s"] > 0
    assert set(result["startup_s"]) == {"version", "status", "profile_list"} and min(result["startup_s"].values()) > 0
    # float16 tower features per photo: demo/smol 64 x 64, cpu ViT-B/32 49 x 768, paper ViT-L/14-336 pooled 144 x 1024
    assert result["visual_cache_bytes_per_photo"] == {"demo": 8192, "smol": 8192, "cpu": 75264, "paper": 294912}
    assert result["checks"]["paper_cache_at_most_300kb"] is True


def test_a_new_profile_encodes_nothing_and_new_photos_encode_exactly_themselves(quick_run):
    result, _, _ = quick_run
    lib = result["library"]["demo"]
    assert lib["first_run"]["encoded"] == lib["photos"]
    assert lib["first_run"]["scored"] == 2 * lib["photos"]
    assert result["new_profile_vision_encodes"] == 0
    assert lib["new_profile_run"]["scored"] == lib["photos"]
    assert result["new_photos_vision_encodes"] == bench.N_NEW_PHOTOS == 10
    assert lib["new_photos_run"]["scored"] == 3 * bench.N_NEW_PHOTOS
    # one cached entry per distinct photo, float16 (N, D) each
    assert lib["visual_cache_entries"] == lib["photos"] + bench.N_NEW_PHOTOS


def test_cached_prefix_scores_equal_full_prompt_scores(quick_run):
    result, _, _ = quick_run
    diff = result["prefix_cache_scores_max_abs_diff"]
    assert diff is not None and diff <= 1e-4
    assert result["prefix_cache"]["scores_agree"] is True
    assert result["persona_tokens"] >= bench.MIN_PERSONA_TOKENS


def test_visual_token_cosines_are_valid_and_close(quick_run):
    result, _, _ = quick_run
    vision = result["vision"]
    for arm in ("onnx_fp32", "onnx_int8"):
        for key in ("cosine_mean", "cosine_min_image", "cosine_min_token"):
            assert 0.0 <= vision[arm][key] <= 1.0 + 1e-9, (arm, key)
    assert result["int8_vision_cosine"] == vision["onnx_int8"]["cosine_mean"] >= 0.99
    assert vision["onnx_fp32"]["cosine_mean"] >= 0.9999


def test_reports_name_the_machine_the_date_and_the_command(quick_run):
    result, out, _ = quick_run
    md = (out / "bench-demo-quick.md").read_text(encoding="utf-8")
    saved = json.loads((out / "bench-demo-quick.json").read_text(encoding="utf-8"))
    assert saved["prefix_cache_speedup"] == result["prefix_cache_speedup"]
    assert result["command"].startswith("pmllm-batch bench --preset demo --quick")
    assert f"`{result['command']}`" in md
    assert result["machine"]["cpu_model"] in md and result["machine"]["date_utc"] in md
    assert "| section | figure | value |" in md
    # timing targets are for the cpu preset's shapes: not judged on a quick demo run
    assert result["checks"]["prefix_cache_at_least_5x"] is None
    assert result["checks"]["new_profile_0_encodes"] is True


def test_table_has_a_row_for_every_section(quick_run):
    result, _, _ = quick_run
    text = bench.format_table(result)
    for section in ("1 prefix cache", "2 vision", "3 incremental (demo)", "4 end to end (demo)", "5 limit"):
        assert section in text
    assert "command: pmllm-batch bench --preset demo --quick" in text


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


def test_unknown_preset_is_a_one_line_user_error(tmp_path: Path):
    from pmllm_batch.errors import ConfigError

    with pytest.raises(ConfigError, match="demo, cpu"):
        bench.run_bench("paper", tmp_path)
