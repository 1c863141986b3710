"""The bench's Ray arm (section 9, ``bench --only ray``) and the cost model at the paper's shapes (``bench.cost``).

Timing targets are not asserted (a shared 2-core test machine's figures are not evidence; docs/RAY.md records the
measured ones): only counts, the figures' arithmetic, the checks' logic, and that a missing Ray is a reason.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from pmllm_batch.bench import cost
from pmllm_batch.bench.codec import from_json, to_json
from pmllm_batch.bench.library import SectionError
from pmllm_batch.bench.ray import (
    ARMS,
    RAY_MISSING,
    RAY_SIZES,
    ArmResult,
    RayResult,
    RaySpec,
    measure_ray,
    ray_checks,
    ray_missing,
    ray_rows,
    run_only,
)
from pmllm_batch.bench.result import RAY_KEYS, _ray_headline

try:
    import ray  # noqa: F401

    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False


def _result(local: float, one: float, two: float, photos: int = 64) -> RayResult:
    arms = {arm: ArmResult(photos * 4 / rate, photos * 4 / rate, photos * 4 / rate, 1, photos * 4, rate, [rate])
            for arm, rate in zip(ARMS, (local, one, two), strict=True)}
    return RayResult("demo", photos, 4, photos * 4, 1, score_batch=32, cpus=2, cpus_per_actor=0.5, threads=1,
                     ray_version="2.60.0", ray_start_s=4.0, arms=arms, local_engine_pairs_per_s=local,
                     ray_pairs_per_s_1_actor=one, ray_pairs_per_s_2_actors=two, two_actors_vs_one=two / one,
                     one_actor_vs_local=one / local, load_average_start=[1.0, 1.0, 1.0],
                     load_average_end=[1.5, 1.0, 1.0])


# -- the Ray arm: checks, rows, headline, JSON -------------------------------------------------------------------------


def test_the_targets_pass_and_fail_at_their_bounds_and_apply_from_256_pairs():
    assert ray_checks(_result(100.0, 80.0, 160.0)) == {
        "ray_2_actors_at_least_1.6x_1": True, "ray_1_actor_within_25pct_of_local": True}
    assert ray_checks(_result(100.0, 74.0, 118.0)) == {
        "ray_2_actors_at_least_1.6x_1": False, "ray_1_actor_within_25pct_of_local": False}
    assert set(ray_checks(_result(100.0, 80.0, 160.0, photos=16)).values()) == {None}  # 64 pairs: a plumbing run
    assert ray_checks(None) == {}  # not run (--quick): no keys at all
    assert set(ray_checks(SectionError("boom")).values()) == {False}  # ran and failed


def test_without_ray_the_section_is_a_reason_and_its_figures_are_none(monkeypatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as without the extra
    assert ray_missing() == RAY_MISSING
    spec = RaySpec(work=str(tmp_path / "w"), cache_dir=str(tmp_path / "c"), photos=[], n_photos=64, rounds=1)
    result = measure_ray(spec)  # no child process is started
    assert isinstance(result, RayResult) and result.skipped == RAY_MISSING and result.pairs == 256
    assert _ray_headline(result) == dict.fromkeys(RAY_KEYS)
    assert set(ray_checks(result).values()) == {None}
    assert ray_rows(result) == [("9 ray engine", "64 photos x 4 profiles (256 pairs) from the feature cache",
                                 f"not run: {RAY_MISSING}")]
    assert from_json(RayResult, json.loads(json.dumps(to_json(result)))) == result


def test_rows_headline_and_json_carry_the_arms_figures():
    result = _result(400.0, 360.0, 620.0)
    assert _ray_headline(result) == {"ray_pairs_per_s_1_actor": 360.0, "ray_pairs_per_s_2_actors": 620.0,
                                     "ray_local_engine_pairs_per_s": 400.0}
    rows = {fig: val for _, fig, val in ray_rows(result)}
    assert rows["64 photos x 4 profiles (256 pairs) from the feature cache, pairs/s: local engine / Ray 1 actor / "
                "Ray 2 actors"] == "400 / 360 / 620"
    assert rows["2 actors vs 1 (target >= 1.6x) / 1 actor vs local (target >= 0.75x)"] == "1.72x / 0.90x"
    assert from_json(RayResult, json.loads(json.dumps(to_json(result)))) == result


@dataclasses.dataclass
class _Holder:
    ray: SectionError | RayResult | None = None  # as BenchResult.ray


def test_a_failed_section_reads_back_as_the_error_and_a_measured_one_as_its_figures():
    for value in (SectionError("RuntimeError: ray bench failed"), _result(1.0, 1.0, 2.0), None):
        assert from_json(_Holder, json.loads(json.dumps(to_json(_Holder(value))))) == _Holder(value)


def test_bench_only_ray_prints_and_writes_the_section_and_its_checks(monkeypatch, tmp_path: Path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # the section is then a reason: nothing to start
    assert run_only(tmp_path, quick=True, as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ray"]["skipped"] == RAY_MISSING and data["command"] == "pmllm-batch bench --only ray --quick"
    assert data["checks"] == {"ray_2_actors_at_least_1.6x_1": None, "ray_1_actor_within_25pct_of_local": None}
    assert json.loads((tmp_path / "bench-ray-quick.json").read_text()) == data
    assert run_only(tmp_path, quick=True) == 0
    out = capsys.readouterr().out
    assert f"not run: {RAY_MISSING}" in out and "ray_2_actors_at_least_1.6x_1 n/a" in out


@pytest.mark.integration
@pytest.mark.skipif(not HAVE_RAY, reason=RAY_MISSING)
def test_the_quick_ray_arm_scores_every_pair_in_every_arm(tmp_path: Path, model_cache: Path, example_photos):
    """``bench --only ray --quick``'s measurement: 16 photos x 4 profiles through the local engine and Ray with 1 and
    2 scoring actors, in a child process with its own Ray (a minute or two: two actor pools start)."""
    spec = RaySpec(work=str(tmp_path / "ray"), cache_dir=str(model_cache), photos=[str(p) for p in example_photos],
                   n_photos=RAY_SIZES[True].photos, rounds=RAY_SIZES[True].rounds)
    result = measure_ray(spec)
    assert isinstance(result, RayResult), result
    assert result.skipped is None and (result.photos, result.profiles, result.pairs) == (16, 4, 64)
    assert list(result.arms) == list(ARMS) and all(a.pairs == 64 and a.repeats == 1 for a in result.arms.values())
    assert [result.local_engine_pairs_per_s, result.ray_pairs_per_s_1_actor, result.ray_pairs_per_s_2_actors] == [
        result.arms[a].pairs_per_s for a in ARMS]
    assert all(rate is not None and rate > 0 for rate in _ray_headline(result).values())
    assert result.two_actors_vs_one == pytest.approx(result.ray_pairs_per_s_2_actors / result.ray_pairs_per_s_1_actor)
    assert (result.cpus_per_actor, result.threads, result.score_batch) == (0.5, 1, 32)
    assert set(ray_checks(result).values()) == {None}  # 64 pairs < 256: a plumbing run, its targets do not apply


# -- the cost model at the paper's shapes ------------------------------------------------------------------------------


def test_the_estimate_is_the_counted_flops_over_the_assumed_rate():
    f = cost.PAPER_FLOPS
    rate = cost.Assumptions()
    assert rate.llm_rate == pytest.approx(989e12 * 0.78 * 0.70)  # 540 TFLOP/s
    est = cost.estimate(10_000_000, 1_000, (8, 64, 512))
    assert est.pairs == 10**10 and est.flops_per_pair == f.cached_per_pair == 86_514_900_992
    assert est.llm_flops == pytest.approx(8.6514900992e20)
    assert est.vision_flops == pytest.approx(1e7 * (366_033_858_560 + 6_039_797_760))
    one_gpu_s = est.vision_flops / rate.vision_rate + (est.llm_flops + 1_000 * f.prefix_per_profile) / rate.llm_rate
    assert est.gpu_hours == pytest.approx(one_gpu_s / 3600) and est.gpu_hours == pytest.approx(447.0, abs=0.5)
    for n, hours in est.hours.items():  # the pairs split over n GPUs; every actor encodes every prefix once
        extra = (n - 1) * 1_000 * f.prefix_per_profile / rate.llm_rate
        assert hours == pytest.approx((one_gpu_s + extra) / n / 3600)
    assert est.hours[8] == pytest.approx(55.9, abs=0.1) and est.hours[512] == pytest.approx(0.87, abs=0.01)
    # without the prefix cache every pair also runs the 212-token prefix: about 35x the GPU time
    assert est.full_prompt_gpu_hours / est.gpu_hours == pytest.approx(
        (f.prefix_per_profile + f.cached_per_pair) / f.cached_per_pair, rel=0.01)


def test_the_estimate_follows_its_assumptions():
    base = cost.estimate(1_000_000, 100, (8,))
    half = cost.estimate(1_000_000, 100, (8,), rate=cost.Assumptions(gemm_of_peak=0.35))
    assert half.hours[8] == pytest.approx(2 * base.hours[8])
    slower = cost.estimate(1_000_000, 100, (8,), rate=cost.Assumptions(scaling=0.8))
    assert slower.hours[8] == pytest.approx(base.hours[8] / 0.8)
    six = cost.estimate(1_000_000, 100, (8,), rate=cost.Assumptions(suffix_tokens=6))  # Llama-3's own template
    assert six.flops_per_pair == cost.PAPER_FLOPS.cached_per_pair + 2 * cost.PAPER_FLOPS.suffix_token
    text = cost.markdown(base)
    assert text.startswith("ESTIMATE: 1,000,000 photos x 100 profiles = 100,000,000 pairs")
    assert "| 8 | " in text and "86.5 GFLOP" in text


def test_the_recorded_paper_flops_are_what_torch_counts_on_the_module_graph():
    """Counted again on the meta device at 3 and 4 layers (fusion on the first three; every further layer is a plain
    decoder layer), extrapolated to Llama-3-8B's 32: the recorded figures, exactly. A change of the prompt, the fusion
    or the shapes shows here: count again with ``python -m pmllm_batch.bench.cost --count``."""
    three = cost.count_paper_flops(layers=3, vision=False)
    four = cost.count_paper_flops(layers=4, vision=False)
    f = cost.PAPER_FLOPS
    for name in ("cached_per_pair", "prefix_per_profile", "suffix_token"):
        a, b = getattr(three, name), getattr(four, name)
        assert a + (f.layers - 3) * (b - a) == getattr(f, name), name
    assert (four.projector_per_photo, four.prefix_tokens, four.suffix_tokens) == (
        f.projector_per_photo, f.prefix_tokens, f.suffix_tokens)
    # the per-pair work is 3 fusion blocks reading the photo's 144 tokens plus 32 layers over the 4-token suffix
    fusion_kv = 3 * 2 * 144 * 4096 * (2 * 4096)
    assert fusion_kv < f.cached_per_pair - 4 * 32 * 2 * 218_103_808 < fusion_kv * 1.1
