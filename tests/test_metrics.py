"""Correlation metrics agree with scipy and with hand computation; per-user aggregation; edge cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from pmllm_batch.train.metrics import (
    bootstrap_ci,
    calculate_krcc,
    calculate_plcc,
    calculate_srcc,
    evaluate_predictions,
    per_user_metrics,
)

CASES = [
    ([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]),
    ([1, 1, 2, 3, 3, 3, 4], [2, 1, 2, 2, 5, 4, 4]),  # ties on both sides
    ([3.5, 2.0, 2.0, 4.5, 1.0, 3.5], [4, 2, 3, 5, 1, 3]),
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]),  # binary target
]


@pytest.mark.parametrize(("pred", "target"), CASES)
def test_metrics_equal_scipy_on_hand_made_cases(pred: list[float], target: list[float]) -> None:
    assert calculate_srcc(pred, target) == pytest.approx(stats.spearmanr(pred, target).statistic, abs=1e-12)
    assert calculate_plcc(pred, target) == pytest.approx(stats.pearsonr(pred, target).statistic, abs=1e-12)
    assert calculate_krcc(pred, target) == pytest.approx(stats.kendalltau(pred, target).statistic, abs=1e-12)


def test_metrics_equal_scipy_on_random_tied_data() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(3, 60))
        pred = rng.integers(0, 6, n) * 0.5  # heavy ties, like 0.5-step ratings
        target = pred + rng.integers(-2, 3, n)
        if np.ptp(pred) == 0 or np.ptp(target) == 0:
            continue
        assert calculate_srcc(pred, target) == pytest.approx(stats.spearmanr(pred, target).statistic, abs=1e-12)
        assert calculate_plcc(pred, target) == pytest.approx(stats.pearsonr(pred, target).statistic, abs=1e-12)
        assert calculate_krcc(pred, target) == pytest.approx(stats.kendalltau(pred, target).statistic, abs=1e-12)


def test_hand_computed_four_element_case() -> None:
    pred, target = [1, 2, 3, 10], [1, 3, 2, 4]
    # ranks differ by d = (0, -1, 1, 0): SROCC = 1 - 6*2 / (4*(16-1)) = 0.8
    assert calculate_srcc(pred, target) == pytest.approx(0.8)
    # centred pred (-3,-2,-1,6), centred target (-1.5,.5,-.5,1.5): 13 / sqrt(50*5)
    assert calculate_plcc(pred, target) == pytest.approx(13 / math.sqrt(250))
    # 6 pairs, only (2,3) is discordant: (5-1)/6
    assert calculate_krcc(pred, target) == pytest.approx(2 / 3)


def test_constant_short_nan_and_mismatched_inputs() -> None:
    for fn in (calculate_srcc, calculate_plcc, calculate_krcc):
        assert fn([3, 3, 3, 3], [1, 2, 3, 4]) == 0.0  # constant prediction: no ranking information
        assert fn([1, 2, 3, 4], [2, 2, 2, 2]) == 0.0
        assert math.isnan(fn([1.0], [2.0]))
        assert math.isnan(fn([], []))
        # NaN pairs are dropped, not propagated
        assert fn([1, 2, np.nan, 3, 4], [1, 3, 5, 2, 4]) == pytest.approx(fn([1, 2, 3, 4], [1, 3, 2, 4]))
        assert math.isnan(fn([1, np.nan], [np.inf, 2]))
        with pytest.raises(ValueError):
            fn([1, 2, 3], [1, 2])


def test_plcc_logistic_fit_linearises_a_monotonic_scale() -> None:
    x = np.linspace(-3, 3, 40)
    target = 1 + 4 / (1 + np.exp(-2 * x))  # sigmoid-shaped ratings
    assert calculate_plcc(x, target) < 0.97
    assert calculate_plcc(x, target, fit_scale=True) == pytest.approx(1.0, abs=1e-6)


def test_per_user_metrics_aggregates_within_users() -> None:
    pred = [1, 2, 3, 4] + [1, 2, 3] + [1, 2] + [5, 5, 5]
    target = [1, 2, 3, 4] + [3, 2, 1] + [2, 1] + [1, 2, 3]
    users = ["a"] * 4 + ["b"] * 3 + ["c"] * 2 + ["d"] * 3
    res = per_user_metrics(pred, target, users, min_items=3)
    assert res["n_users"] == 3 and set(res["per_user"]) == {"a", "b", "d"}  # c has 2 items: left out
    assert res["per_user"]["a"] == {"srocc": 1.0, "plcc": 1.0, "n": 4}
    assert res["per_user"]["b"]["srocc"] == pytest.approx(-1.0)
    assert res["per_user"]["d"]["srocc"] == 0.0  # constant prediction for that user
    assert res["srocc_mean"] == pytest.approx(0.0)
    assert res["srocc_std"] == pytest.approx(np.std([1.0, -1.0, 0.0]))
    assert res["plcc_mean"] == pytest.approx(0.0)
    assert per_user_metrics(pred, target, users, min_items=2)["n_users"] == 4
    empty = per_user_metrics([1, 2], [1, 2], ["a", "b"])
    assert empty["n_users"] == 0 and math.isnan(empty["srocc_mean"])
    with pytest.raises(ValueError):
        per_user_metrics([1, 2], [1, 2], ["a"])


def test_bootstrap_ci_is_seeded_and_brackets_the_mean() -> None:
    values = np.random.default_rng(1).normal(0.5, 0.1, 200)
    lo, hi = bootstrap_ci(values, n_boot=500, seed=0)
    assert lo < values.mean() < hi and hi - lo < 0.05
    assert bootstrap_ci(values, n_boot=500, seed=0) == (lo, hi)
    assert bootstrap_ci(values, n_boot=500, seed=1) != (lo, hi)
    # a statistic without an ``axis`` argument still works (one call per resample)
    lo_m, hi_m = bootstrap_ci(values, stat=lambda v: float(np.median(v)), n_boot=200)
    assert lo_m < float(np.median(values)) < hi_m
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    assert all(math.isnan(x) for x in bootstrap_ci([]))


def test_evaluate_predictions_summary() -> None:
    rng = np.random.default_rng(2)
    users = np.repeat([f"u{i}" for i in range(10)], 12)
    target = rng.integers(2, 11, users.size) / 2.0
    pred = target + rng.normal(0, 0.7, users.size)
    res = evaluate_predictions(pred, target, users.tolist(), n_boot=200)
    assert set(res) == {
        "srocc",
        "plcc",
        "krcc",
        "per_user_srocc_mean",
        "per_user_srocc_std",
        "per_user_srocc_ci95",
        "per_user_plcc_mean",
        "per_user_plcc_std",
        "n_users",
        "n_pairs",
    }
    assert res["srocc"] == pytest.approx(stats.spearmanr(pred, target).statistic)
    assert res["n_users"] == 10 and res["n_pairs"] == users.size
    lo, hi = res["per_user_srocc_ci95"]
    assert lo <= res["per_user_srocc_mean"] <= hi
    json.dumps(res)  # plain floats and ints only
