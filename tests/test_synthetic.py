"""The synthetic preference task: determinism, folds, rating spread, oracle gaps, visible image parameters."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from pmllm_batch.profiles import Profile
from pmllm_batch.train.datasets import load_dataset
from pmllm_batch.train.synthetic import (
    EDUCATION_LEVELS,
    EXPERIENCE_LEVELS,
    PARA_AGE_BINS,
    ImageParams,
    hidden_rating,
    make_synthetic_dataset,
    oracle_report,
    quality,
    read_synthetic_params,
    render_image,
    sample_image_params,
    sample_profile,
)

SMALL = {"n_users": 12, "n_images": 24, "ratings_per_user": 8, "image_size": 32}
NEUTRAL_PARAMS = ImageParams(
    temperature=0.0, saturation=0.5, brightness=0.5, contrast=0.5, blur=0.0, noise=0.0, composition=0.5
)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "a", seed=3, **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ dataset folder


def test_generator_is_deterministic_for_a_seed(small_dataset: Path, tmp_path: Path) -> None:
    again = make_synthetic_dataset(tmp_path / "b", seed=3, **SMALL)
    first, second = _files(small_dataset), _files(again)
    assert first.keys() == second.keys()
    assert first == second  # CSVs, PNGs, fold files, README: same bytes
    other = make_synthetic_dataset(tmp_path / "c", seed=4, **SMALL)
    assert (other / "annotation" / "PARA-Images.csv").read_bytes() != first["annotation/PARA-Images.csv"]


def test_layout_reads_with_load_para_and_folds_are_user_disjoint(small_dataset: Path) -> None:
    everyone = load_dataset("synthetic", small_dataset, fold=None)
    assert everyone.name == "synthetic"
    assert len(everyone) == SMALL["n_users"] * SMALL["ratings_per_user"]
    assert everyone.skipped_missing_images == 0 and len(everyone.user_ids) == SMALL["n_users"]
    assert all(set(s.attributes) == {
        "qualityScore", "compositionScore", "colorScore", "dofScore",
        "contentScore", "lightScore", "contentPreference", "willingnessToShare",
    } for s in everyone.samples)  # fmt: skip
    tests: list[str] = []
    for fold in (1, 2, 3, 4):
        train = load_dataset("synthetic", small_dataset, fold=fold, split="train")
        test = load_dataset("synthetic", small_dataset, fold=fold, split="test")
        listed = (small_dataset / "userset" / f"TestUserIDs_Fold{fold}.txt").read_text().split()
        assert test.user_ids == sorted(listed)
        assert not set(train.user_ids) & set(test.user_ids)
        assert set(train.user_ids) | set(test.user_ids) == set(everyone.user_ids)
        tests += test.user_ids
    assert sorted(tests) == everyone.user_ids  # the 4 test sets partition the people


def test_csv_ratings_follow_the_hidden_function_of_the_loaded_profiles(small_dataset: Path) -> None:
    ds = load_dataset("synthetic", small_dataset, fold=None)
    params = read_synthetic_params(small_dataset)
    noiseless, csv_scores = [], []
    for s in ds.samples:
        p = params[f"{s.image_path.parent.name}/{s.image_path.name}"]
        noiseless.append(hidden_rating(ds.profiles[s.user_id], p, step=None))
        csv_scores.append(s.score)
    noiseless_arr, scores = np.array(noiseless), np.array(csv_scores)
    assert np.all(np.abs(noiseless_arr - scores) <= 0.25 + 5 * 0.15)  # rounding + at most 5 sigma of noise
    assert stats.spearmanr(noiseless_arr, scores).statistic > 0.9
    # the params file is exact and carries quality()
    with (small_dataset / "annotation" / "synthetic-params.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            p = params[f"{row['sessionId']}/{row['imageName']}"]
            assert float(row["quality"]) == pytest.approx(quality(p), abs=1e-6)
    readme = (small_dataset / "README.txt").read_text()
    assert "seed=3" in readme and "openness" in readme


def test_ratings_are_on_the_para_grid_and_spread_over_one_to_five(small_dataset: Path) -> None:
    scores = np.array([s.score for s in load_dataset("synthetic", small_dataset, fold=None).samples])
    assert scores.min() >= 1.0 and scores.max() <= 5.0
    assert np.all(scores * 2 == np.round(scores * 2))
    report = oracle_report(seed=1, n_users=150, n_images=300, ratings_per_user=40, n_population=300)
    assert report["rating_std"] > 0.8
    assert report["frac_le_2"] > 0.15 and report["frac_ge_4"] > 0.15  # not bunched at 3


# ------------------------------------------------------------------------------------------------ hidden function


def test_oracle_gaps_separate_profile_use_from_profile_blindness() -> None:
    r = oracle_report(seed=0, n_users=200, n_images=300, ratings_per_user=40, n_population=400)
    for level in ("srocc", "per_user_srocc"):
        ideal = r["ideal"][level]
        assert ideal >= 0.9
        assert r["profile_blind"][level] <= ideal - 0.3
        assert r["quality_only"][level] <= ideal - 0.3
        assert r["shuffled_profiles"][level] <= ideal - 0.3
        assert r["shuffled_profiles"][level] < r["profile_blind"][level] - 0.1  # a wrong profile hurts
        assert r["profile_blind"][level] > 0.3  # the shared term is real and learnable
    assert 0.25 <= r["quality_variance_share"] <= 0.45


def test_docstring_oracle_numbers_are_current() -> None:
    r = oracle_report()
    # the table in pmllm_batch/train/synthetic.py's module docstring
    assert r["ideal"]["srocc"] == pytest.approx(0.976, abs=0.002)
    assert r["profile_blind"]["srocc"] == pytest.approx(0.537, abs=0.002)
    assert r["quality_only"]["srocc"] == pytest.approx(0.535, abs=0.002)
    assert r["shuffled_profiles"]["srocc"] == pytest.approx(0.322, abs=0.002)


def _profile(**kw: object) -> Profile:
    return Profile.from_dict({"name": "p", **kw})


def _prefers(profile: Profile, high: ImageParams, low: ImageParams) -> float:
    return hidden_rating(profile, high, step=None) - hidden_rating(profile, low, step=None)


@pytest.mark.parametrize(
    ("field", "hi_value", "lo_value", "param", "hi", "lo"),
    [
        ("big_five", {"openness": 10}, {"openness": 1}, "saturation", 1.0, 0.0),
        ("big_five", {"extraversion": 10}, {"extraversion": 1}, "brightness", 0.9, 0.1),
        ("age", "41+", "18-21", "temperature", 1.0, -1.0),
    ],
)
def test_interactions_flip_sign_between_people(field, hi_value, lo_value, param, hi, lo) -> None:
    high = dataclasses.replace(NEUTRAL_PARAMS, **{param: hi})
    low = dataclasses.replace(NEUTRAL_PARAMS, **{param: lo})
    assert _prefers(_profile(**{field: hi_value}), high, low) > 1.0
    assert _prefers(_profile(**{field: lo_value}), high, low) < -1.0


def test_experts_punish_blur_and_noise_and_distractors_do_not_matter() -> None:
    sharp = NEUTRAL_PARAMS
    soft = dataclasses.replace(NEUTRAL_PARAMS, blur=1.0, noise=1.0)
    expert = _profile(photography_experience="expert")
    beginner = _profile(photography_experience="beginner")
    assert _prefers(expert, sharp, soft) > 2.0
    assert _prefers(expert, sharp, soft) - _prefers(beginner, sharp, soft) > 2.0
    base = {"age": "26-29", "photography_experience": "competent", "big_five": {"openness": 7, "extraversion": 4}}
    p = sample_image_params(np.random.default_rng(0))
    reference = hidden_rating(_profile(**base), p, step=None)
    distracted = _profile(
        **base,
        gender="female",
        education="university",
        art_experience="expert",
        notes="loves cats",
    )
    assert hidden_rating(distracted, p, step=None) == reference
    bf = {**base["big_five"], "conscientiousness": 10, "agreeableness": 1, "neuroticism": 9}  # type: ignore[dict-item]
    assert hidden_rating(_profile(**{**base, "big_five": bf}), p, step=None) == reference
    # the neutral (empty) profile rates by the shared quality term alone
    assert hidden_rating(Profile(name="neutral"), p, step=None) == pytest.approx(
        float(np.clip(3 + 0.55 * quality(p), 1, 5))
    )


def test_hidden_rating_noise_and_grid() -> None:
    person = sample_profile(np.random.default_rng(0), "x")
    p = sample_image_params(np.random.default_rng(1))
    r = hidden_rating(person, p)
    assert 1.0 <= r <= 5.0 and r * 2 == round(r * 2)
    noisy = [hidden_rating(person, p, np.random.default_rng(i), step=None) for i in range(200)]
    assert np.std(noisy) == pytest.approx(0.15, rel=0.25)
    assert hidden_rating(person, p, np.random.default_rng(0), noise_std=0.0, step=None) == hidden_rating(
        person, p, step=None
    )


def test_sampled_profiles_follow_the_para_schema() -> None:
    rng = np.random.default_rng(0)
    people = [sample_profile(rng, f"U{i}") for i in range(200)]
    assert people[0].name == "user-U0"
    assert {p.age for p in people} == set(PARA_AGE_BINS)
    assert {p.photography_experience for p in people} == set(EXPERIENCE_LEVELS)
    assert {p.education for p in people} <= set(EDUCATION_LEVELS)
    for p in people:
        assert set(p.big_five) == {"openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism"}
        assert all(v == int(v) and 1 <= v <= 10 for v in p.big_five.values())
    opens = np.array([p.big_five["openness"] for p in people])
    assert 4.5 < opens.mean() < 6.5  # balanced around the neutral 5.5


# ------------------------------------------------------------------------------------------------ pixels


def _px(params: ImageParams, seed: int, size: int = 64) -> np.ndarray:
    return np.asarray(render_image(params, np.random.default_rng(seed), size), dtype=np.float64) / 255.0


def _luma(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114])


def _high_freq(img: np.ndarray) -> float:
    y = _luma(img)
    return float(np.mean(np.diff(y, axis=0) ** 2) + np.mean(np.diff(y, axis=1) ** 2))


MEASURES = {
    "temperature": (lambda im: float(np.mean(im[..., 0] - im[..., 2])), (-1.0, -0.3, 0.3, 1.0)),
    "saturation": (lambda im: float(np.mean(im.max(axis=2) - im.min(axis=2))), (0.0, 0.3, 0.6, 1.0)),
    "brightness": (lambda im: float(np.mean(_luma(im))), (0.0, 0.3, 0.6, 1.0)),
    "contrast": (lambda im: float(np.std(_luma(im))), (0.0, 0.3, 0.6, 1.0)),
    "blur": (lambda im: -_high_freq(im), (0.0, 0.3, 0.6, 1.0)),  # more blur -> less high-frequency energy
    "noise": (_high_freq, (0.0, 0.3, 0.6, 1.0)),
    "composition": (lambda im: float(np.mean(np.abs(im - im[:, ::-1]))), (0.0, 0.3, 0.6, 1.0)),  # asymmetry
}


@pytest.mark.parametrize("param", list(MEASURES))
def test_every_parameter_moves_pixels_in_its_direction(param: str) -> None:
    measure, levels = MEASURES[param]
    for seed in range(4):
        values = [measure(_px(dataclasses.replace(NEUTRAL_PARAMS, **{param: v}), seed)) for v in levels]
        assert all(b > a for a, b in zip(values, values[1:], strict=False)), (param, seed, values)
        assert values[-1] - values[0] > 1e-3, (param, seed, values)


def test_centred_subject_gives_a_symmetric_image_and_rendering_is_seeded() -> None:
    centred = _px(dataclasses.replace(NEUTRAL_PARAMS, composition=0.0), 0)
    assert float(np.mean(np.abs(centred - centred[:, ::-1]))) < 0.01
    image = render_image(NEUTRAL_PARAMS, np.random.default_rng(5), 40)
    assert image.size == (40, 40) and image.mode == "RGB"
    assert image.tobytes() == render_image(NEUTRAL_PARAMS, np.random.default_rng(5), 40).tobytes()
    with pytest.raises(ValueError, match="saturation"):
        dataclasses.replace(NEUTRAL_PARAMS, saturation=1.5)
