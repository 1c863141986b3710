"""The per-person learner (pmllm_batch/learn): zero-shot with no ratings (bit for bit), a planted taste recovered
from 50 ratings, no harm when zero-shot is already right, the verdicts-win rule on random inputs, an exact JSON
round trip, and the package's place in the layers (ground + numpy only)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from pmllm_batch.learn import (
    METHODS,
    FeatureSpec,
    LearnerConfig,
    TasteState,
    calibrate,
    fit_taste,
    learn_rerank_seconds,
    mean_pool,
    rating_targets,
    verdicts_win,
)
from pmllm_batch.train.metrics import calculate_srcc

LEARN_DIR = Path(__file__).resolve().parents[1] / "pmllm_batch" / "learn"
GROUND = {"pmllm_batch.config", "pmllm_batch.contracts", "pmllm_batch.errors", "pmllm_batch.log"}


def _library(seed: int, n: int = 400, d_in: int = 24) -> tuple[np.ndarray, np.ndarray, FeatureSpec, np.ndarray]:
    """Raw features with structure (a few strong directions), zero-shot scores, the spec and its phi."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 6))
    raw = latent @ rng.standard_normal((6, d_in)) + 0.3 * rng.standard_normal((n, d_in)) + 5.0
    s0 = 3.0 + 0.6 * np.tanh(latent[:, 0] + 0.5 * latent[:, 1])
    spec = FeatureSpec.fit(raw, dim=16, source="test-graph")
    return raw, s0, spec, spec.transform(raw)


def _half_stars(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x * 2.0 + 0.5) / 2.0, 1.0, 5.0)


# ------------------------------------------------------------------------------------------------ no ratings


@pytest.mark.parametrize("method", ["residual", "kernel"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_no_ratings_gives_the_zero_shot_scores_bit_for_bit(method: str, dtype: type) -> None:
    _, s0, spec, phi = _library(0)
    s0 = s0.astype(dtype)
    cfg = LearnerConfig(method=method)
    empty = fit_taste(phi[:0], s0[:0], np.zeros(0), spec=spec, model_fingerprint="m", config=cfg)
    unrated = fit_taste(phi[:3], s0[:3], [0.0, np.nan, 0.0], spec=spec, model_fingerprint="m", config=cfg)
    for state in (empty, unrated):
        assert state.n_ratings == 0 and state.is_zero_shot
        out = state.predict(phi, s0)
        assert out.dtype == s0.dtype and np.array_equal(out, s0) and out is not s0
        assert np.array_equal(state.score(np.zeros((len(s0), 1)), s0), s0)  # features are not even read
        restored = TasteState.from_dict(json.loads(json.dumps(state.to_dict())))
        assert np.array_equal(restored.predict(phi, s0), s0)


def test_stars_only_without_ratings_ranks_nothing() -> None:
    _, s0, spec, phi = _library(0)
    state = fit_taste(phi[:0], s0[:0], np.zeros(0), spec=spec, model_fingerprint="m",
                      config=LearnerConfig(method="stars_only"))
    out = state.predict(phi, s0)
    assert np.all(out == out[0])


# ------------------------------------------------------------------------------------------------ learning


def _run_people(
    planted: float, n_people: int, k: int, cfg: LearnerConfig, n_query: int = 100
) -> tuple[float, float, float]:
    """Mean held-out SROCC over simulated people: (learner, zero-shot, stars-only with the same rule)."""
    raw, s0, spec, phi = _library(1)
    learner, zero, stars = [], [], []
    for p in range(n_people):
        rng = np.random.default_rng([7, p])
        w = rng.standard_normal(spec.dim) / np.sqrt(spec.dim)
        taste = phi @ w
        truth = s0 + planted * taste / max(float(taste.std()), 1e-12)
        y = _half_stars(truth + rng.normal(0.0, 0.1, truth.size))
        perm = rng.permutation(len(s0))
        q, s = perm[:n_query], perm[n_query : n_query + k]
        st = fit_taste(phi[s], s0[s], y[s], spec=spec, model_fingerprint="m", config=cfg)
        so = fit_taste(phi[s], s0[s], y[s], spec=spec, model_fingerprint="m",
                       config=LearnerConfig(method="stars_only", rule=cfg.rule, lam=cfg.lam))
        learner.append(calculate_srcc(st.predict(phi[q], s0[q]), y[q]))
        zero.append(calculate_srcc(s0[q], y[q]))
        stars.append(calculate_srcc(so.predict(phi[q], s0[q]), y[q]))
    return float(np.mean(learner)), float(np.mean(zero)), float(np.mean(stars))


@pytest.mark.parametrize("rule", ["evidence", "loo", "fixed"])
def test_a_planted_linear_taste_is_recovered_from_50_ratings(rule: str) -> None:
    cfg = LearnerConfig(rule=rule, lam=30.0, guard=False)
    learner, zero, stars = _run_people(planted=0.6, n_people=20, k=50, cfg=cfg)
    assert learner > zero + 0.15, (learner, zero)
    assert learner >= stars - 0.02, (learner, stars)


NO_HARM_CONFIGS = {
    "residual-evidence": LearnerConfig(),
    "residual-fixed-30": LearnerConfig(rule="fixed", lam=30.0, guard=False),  # as calibrated on the synthetic task
    "kernel-evidence": LearnerConfig(method="kernel"),
}


@pytest.mark.parametrize("name", sorted(NO_HARM_CONFIGS))
@pytest.mark.parametrize("k", [3, 5, 10, 20, 50])
def test_when_zero_shot_is_already_right_the_learner_does_no_harm(name: str, k: int) -> None:
    learner, zero, _ = _run_people(planted=0.0, n_people=20, k=k, cfg=NO_HARM_CONFIGS[name])
    assert learner >= zero - 0.01, (k, learner, zero)


def _population(planted: float, n_people: int = 12, k: int = 60) -> tuple[list, FeatureSpec]:
    _, s0, spec, phi = _library(1)
    people = []
    for p in range(n_people):
        rng = np.random.default_rng([11, p])
        taste = phi @ (rng.standard_normal(spec.dim) / np.sqrt(spec.dim))
        y = _half_stars(s0 + planted * taste / max(float(taste.std()), 1e-12) + rng.normal(0.0, 0.1, s0.size))
        idx = rng.permutation(len(s0))[:k]
        people.append((phi[idx], s0[idx], y[idx]))
    return people, spec


def test_calibration_fixes_a_strong_prior_when_people_agree_with_zero_shot() -> None:
    tasteful, spec = _population(planted=0.6)
    plain, _ = _population(planted=0.0)
    lam_taste = calibrate(tasteful, spec=spec).lam
    lam_plain = calibrate(plain, spec=spec).lam
    assert calibrate(tasteful, spec=spec).rule == "fixed"
    assert lam_plain >= 100.0 and lam_plain > 3 * lam_taste, (lam_plain, lam_taste)
    assert calibrate([], spec=spec) == LearnerConfig(rule="fixed")


def test_kernel_and_loo_designs_also_learn() -> None:
    for cfg in (LearnerConfig(method="kernel"), LearnerConfig(rule="loo"), LearnerConfig(rule="fixed", lam=30.0)):
        learner, zero, _ = _run_people(planted=0.6, n_people=10, k=50, cfg=cfg)
        assert learner > zero + 0.05, (cfg, learner, zero)


def test_an_offset_person_keeps_the_zero_shot_order() -> None:
    """Somebody who rates everything a star higher than the model: the scale moves, the ranking stays."""
    _, s0, spec, phi = _library(2)
    y = s0 + 1.0
    state = fit_taste(phi[:30], s0[:30], y[:30], spec=spec, model_fingerprint="m")
    out = state.predict(phi, s0)
    assert calculate_srcc(out, s0) > 0.99
    assert abs(float(np.mean(out - s0)) - 1.0) < 0.3


def test_rejections_count_as_the_bottom_of_the_scale_and_bad_ratings_raise() -> None:
    rated, y = rating_targets([5, -1, 0, np.nan, 2.5, 1])
    assert rated.tolist() == [True, True, False, False, True, True]
    assert y.tolist() == [5.0, 1.0, 2.5, 1.0]
    assert rating_targets([-1], reject_target=0.5)[1].tolist() == [0.5]
    for bad in ([6], [0.5], [-2], [np.inf]):
        with pytest.raises(ValueError):
            rating_targets(bad)
    _, s0, spec, phi = _library(0)
    with pytest.raises(ValueError):
        fit_taste(phi[:3], s0[:2], [1, 2, 3], spec=spec, model_fingerprint="m")
    with pytest.raises(ValueError):
        LearnerConfig(method="nope")
    with pytest.raises(ValueError):
        LearnerConfig(rule="nope")


# ------------------------------------------------------------------------------------------------ state


@pytest.mark.parametrize("method", METHODS)
def test_state_round_trips_through_json_exactly(method: str) -> None:
    raw, s0, spec, phi = _library(3)
    rng = np.random.default_rng(3)
    idx = rng.choice(len(s0), 25, replace=False)
    y = _half_stars(s0[idx] + phi[idx, 0] * 0.5)
    y[0] = -1.0
    state = fit_taste(phi[idx], s0[idx], y, spec=spec, model_fingerprint="fp-123", config=LearnerConfig(method=method))
    text = json.dumps(state.to_dict())
    back = TasteState.from_dict(json.loads(text))
    assert back.model_fingerprint == "fp-123" and back.spec == spec and back.config == state.config
    assert back.n_ratings == 25 and back.to_dict() == state.to_dict()
    assert np.array_equal(back.predict(phi, s0), state.predict(phi, s0))
    assert np.array_equal(back.score(raw, s0), state.score(raw, s0))
    assert len(text) < 64_000  # small: a few arrays of spec.dim floats (and the kernel's support)
    spec_back = FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert spec_back == spec and np.array_equal(spec_back.transform(raw), phi)


def test_feature_spec_pools_standardises_and_reduces() -> None:
    rng = np.random.default_rng(4)
    tower = rng.standard_normal((50, 9, 12)) * np.arange(1, 13) + 3.0  # (photos, patches, D_vis)
    spec = FeatureSpec.fit(tower, dim=5)
    assert (spec.d_in, spec.dim) == (12, 5)
    phi = spec.transform(tower)
    assert phi.shape == (50, 5)
    assert np.allclose(phi.mean(axis=0), 0.0, atol=1e-9)
    variances = phi.var(axis=0)
    assert np.all(np.diff(variances) <= 1e-9)  # principal directions, largest first
    assert np.allclose(spec.transform(mean_pool(tower)), phi)
    assert FeatureSpec.fit(tower, dim=64).dim == 12  # never more than the features have
    with pytest.raises(ValueError):
        spec.transform(np.zeros((2, 7)))


def test_rerank_timing_runs() -> None:
    seconds = learn_rerank_seconds(n=500, dim=8, n_rated=10, repeats=2)
    assert seconds > 0.0


# ------------------------------------------------------------------------------------------------ verdicts win


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = int(rng.integers(1, 60))
    scores = rng.uniform(-1.0, 7.0, n)
    if rng.random() < 0.3:
        scores = np.round(scores)  # ties
    kind = rng.integers(3)
    if kind == 0:
        levels = np.array([-1.0, 0.0, np.nan, 1.0, 2.0, 3.0, 4.0, 5.0])
    elif kind == 1:
        levels = np.array([-1.0, 0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0])
    else:
        levels = np.concatenate([[-1.0, 0.0], 1.0 + 4.0 * rng.integers(0, 101, 8) / 100.0])  # LAPIS-like
    ratings = rng.choice(levels, n)
    return scores, ratings


def test_verdicts_win_invariants_on_random_inputs() -> None:
    rng = np.random.default_rng(5)
    for _ in range(400):
        scores, ratings = _random_case(rng)
        s_copy, r_copy = scores.copy(), ratings.copy()
        out = verdicts_win(scores, ratings)
        assert np.array_equal(scores, s_copy) and np.array_equal(ratings, r_copy, equal_nan=True)  # pure
        assert np.array_equal(out, verdicts_win(scores, ratings))  # deterministic
        unrated = np.isnan(ratings) | (ratings == 0)
        rejected = ratings == -1
        rated = ~unrated & ~rejected
        assert np.array_equal(out[unrated], scores[unrated])
        if rejected.any() and (~rejected).any():
            assert out[rejected].max() < out[~rejected].min()
        ri, ro, si = ratings[rated], out[rated], scores[rated]
        row, col = np.broadcast_to(ro[:, None], (ro.size, ro.size)), np.broadcast_to(ro[None, :], (ro.size, ro.size))
        higher = ri[:, None] > ri[None, :]
        assert np.all(row[higher] > col[higher])  # rated higher: strictly above
        same = (ri[:, None] == ri[None, :]) & (si[:, None] < si[None, :])
        assert np.all(row[same] < col[same])  # within a level the model's order stands
        assert np.all(np.abs(ro - ri) < 0.1 + 1e-12)  # a rated photo sits at its rating


def test_verdicts_win_examples_and_errors() -> None:
    out = verdicts_win([4.9, 1.2, 3.0, 4.3, 2.0], [3, 5, 0, 0, -1])
    assert out[2] == 3.0 and out[3] == 4.3  # unrated keep their scores
    assert out[1] > out[3] > out[0] > out[4]  # the 5-star on top, the rejected at the bottom
    assert out[4] < 1.0
    assert np.array_equal(verdicts_win([2.0, 3.0], [0, 0]), [2.0, 3.0])
    with pytest.raises(ValueError):
        verdicts_win([1.0, 2.0], [1])
    with pytest.raises(ValueError):
        verdicts_win([1.0], [7])
    with pytest.raises(ValueError):
        verdicts_win([np.nan], [0])


# ------------------------------------------------------------------------------------------------ layers


def test_learn_imports_only_the_ground_layer_and_numpy() -> None:
    for path in sorted(LEARN_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top == "pmllm_batch":
                    assert name in GROUND or name.startswith("pmllm_batch.learn"), (path.name, name)
                else:
                    assert top in {"numpy", "__future__", "dataclasses", "typing", "math", "time", "json",
                                   "collections"}, (path.name, name)
