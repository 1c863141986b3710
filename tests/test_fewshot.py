"""The few-shot protocol (train/fewshot.py, ``eval --shots``) and the synthetic task's idiosyncratic share.

``eval --shots`` runs on the PARA and LAPIS fixture layouts with the shipped demo adapter; the counts of people
per k follow from the fixture (each person needs k + query ratings). The protocol's arithmetic is checked on
hand-built data without a model. ``idiosyncrasy=0`` writes the files it wrote before the option existed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from pmllm_batch.train.fewshot import FewShotData, PersonRatings, parse_shots, run_fewshot
from pmllm_batch.train.synthetic import (
    PROFILE_TERM_VARIANCE,
    _interaction_features,
    _noiseless_pairs,
    _taste_features,
    hidden_rating,
    idiosyncrasy_oracle,
    make_synthetic_dataset,
    profile_signs,
    read_synthetic_params,
    read_synthetic_tastes,
    sample_image_params,
    sample_profile,
    sample_tastes,
    synthetic_oracle,
)
from tests.dataset_fixtures import write_lapis_fixture, write_para_fixture

DEMO_ADAPTER = Path(__file__).resolve().parents[1] / "pmllm_batch" / "assets" / "demo" / "adapter"
SMALL = {"n_users": 12, "n_images": 24, "ratings_per_user": 8, "image_size": 32}
# sha256 of the files make_synthetic_dataset(seed=3, **SMALL) wrote before the idiosyncrasy option existed
BEFORE = {
    "annotation/PARA-Images.csv": "ba290f6c5f2bd71acbdcf1fa51c015f265de261fecf13f058aec0b6bbf5e78e2",
    "annotation/PARA-UserInfo.csv": "f0e58cdb966d43e2ac410e444c2b8755d0190f44bcb10f98156dde135b1bcccc",
    "annotation/synthetic-params.csv": "0a6a29eed601f47695b1c0a5cc58a4541fb07758ff399620b852e5b0695572a2",
    "README.txt": "9a5eba7f50edea8d7607cf054913480c880a442b194523bf754b140f56caab56",
}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ idiosyncrasy


def test_idiosyncrasy_zero_is_the_task_as_before(tmp_path: Path) -> None:
    zero = make_synthetic_dataset(tmp_path / "zero", seed=3, idiosyncrasy=0.0, **SMALL)
    default = make_synthetic_dataset(tmp_path / "default", seed=3, **SMALL)
    files = _files(zero)
    assert files == _files(default)
    for name, digest in BEFORE.items():
        assert hashlib.sha256(files[name]).hexdigest() == digest, name
    assert not (zero / "annotation" / "synthetic-tastes.csv").exists()


def test_idiosyncrasy_changes_only_the_ratings_and_writes_the_tastes(tmp_path: Path) -> None:
    from pmllm_batch.train.datasets import load_dataset

    base = make_synthetic_dataset(tmp_path / "zero", seed=3, **SMALL)
    idio = make_synthetic_dataset(tmp_path / "idio", seed=3, idiosyncrasy=0.4, **SMALL)
    a, b = _files(base), _files(idio)
    for name in ("annotation/PARA-UserInfo.csv", "annotation/synthetic-params.csv"):
        assert a[name] == b[name]
    assert {n for n in a if n.startswith("imgs/")} == {n for n in b if n.startswith("imgs/")}
    assert all(a[n] == b[n] for n in a if n.startswith("imgs/"))
    assert a["annotation/PARA-Images.csv"] != b["annotation/PARA-Images.csv"]
    share, tastes = read_synthetic_tastes(idio)
    assert share == 0.4 and len(tastes) == SMALL["n_users"]
    assert all(abs(float(np.linalg.norm(t)) - 1.0) < 1e-12 for t in tastes.values())
    assert read_synthetic_tastes(base) == (0.0, {})
    # the written ratings are the oracle's ideal plus rating noise (std 0.15, 0.5 rounding)
    ds = load_dataset("synthetic", idio, fold=None)
    orc = synthetic_oracle(idio, [(s.user_id, s.image_path) for s in ds.samples], ds.profiles)
    ratings = np.array([s.score for s in ds.samples])
    assert np.mean(np.abs(ratings - orc["ideal"])) < 0.3
    assert np.mean(np.abs(ratings - orc["ideal"])) < np.mean(np.abs(ratings - orc["profile_only"]))
    # the same person through hidden_rating
    s = ds.samples[0]
    key = s.image_path.relative_to(idio / "imgs").as_posix()
    r = hidden_rating(ds.profiles[s.user_id], read_synthetic_params(idio)[key], step=None,
                      taste=tastes[s.user_id], idiosyncrasy=share)
    assert r == pytest.approx(float(orc["ideal"][0]), abs=1e-12)
    with pytest.raises(ValueError):
        make_synthetic_dataset(tmp_path / "bad", idiosyncrasy=1.5, **SMALL)


def test_the_taste_carries_its_share_of_the_person_specific_variance() -> None:
    rng = np.random.default_rng(0)
    n = 40_000
    signs = np.stack([profile_signs(sample_profile(rng, str(i))) for i in range(n)])
    mat = np.stack([sample_image_params(rng).as_array() for _ in range(n)])
    tastes = sample_tastes(rng, n)
    profile = 0.95 * np.einsum("ij,ij->i", signs, _interaction_features(mat))
    idio = np.einsum("ij,ij->i", tastes, _taste_features(mat))
    assert np.var(profile) == pytest.approx(PROFILE_TERM_VARIANCE, rel=0.03)
    assert np.var(idio) == pytest.approx(1.0, rel=0.03)
    share = 0.4
    personal = np.sqrt(1 - share) * profile + np.sqrt(share * PROFILE_TERM_VARIANCE) * idio
    assert np.var(personal) == pytest.approx(PROFILE_TERM_VARIANCE, rel=0.03)  # the total stays
    # unclipped pairs: the noiseless rating minus the shared part is exactly that personal term
    clean = _noiseless_pairs(signs, mat, tastes, share)
    zero = _noiseless_pairs(signs, mat)
    inside = (clean > 1) & (clean < 5) & (zero > 1) & (zero < 5)
    assert np.allclose((clean - zero)[inside], (personal - profile)[inside])


def test_idiosyncrasy_oracle_orders_its_rows() -> None:
    r = idiosyncrasy_oracle(0.4, seed=1, n_users=24, n_images=300, ratings_per_user=120, shots=(0, 10, 50))
    rows = {e["k"]: e for e in r["results"]}
    assert rows[0]["stars_only"] == 0.0  # nothing to rank with
    for e in rows.values():
        assert e["ideal"] > e["profile_only"] + 0.05  # the taste is real and the profile does not reveal it
        assert e["learner"] >= e["profile_only"] - 0.01
    assert rows[50]["learner"] > rows[10]["learner"] > rows[0]["learner"]
    assert rows[50]["stars_only"] > rows[10]["stars_only"]


def test_docstring_idiosyncrasy_oracle_numbers_are_current() -> None:
    r = idiosyncrasy_oracle(0.4)
    # the table in pmllm_batch/train/synthetic.py's module docstring ("Idiosyncrasy")
    documented = {0: (0.000, 0.807), 5: (0.460, 0.851), 10: (0.704, 0.886), 20: (0.907, 0.933),
                  50: (0.959, 0.961), 100: (0.966, 0.966)}
    for e in r["results"]:
        assert e["ideal"] == pytest.approx(0.971, abs=0.002)
        assert e["profile_only"] == pytest.approx(0.807, abs=0.002)
        stars, learner = documented[e["k"]]
        assert e["stars_only"] == pytest.approx(stars, abs=0.002), e
        assert e["learner"] == pytest.approx(learner, abs=0.002), e


# ------------------------------------------------------------------------------------------------ the protocol


def _planted_data(n_people: int = 6, n_ratings: int = 80, seed: int = 0) -> FewShotData:
    """Hand-built data: 8-dim features; each person = zero-shot + a personal linear taste on the features."""
    rng = np.random.default_rng(seed)
    n_photos = 150
    feats = rng.standard_normal((n_photos, 8))
    base = 3.0 + 0.5 * feats[:, 0]
    people = {}
    for i in range(n_people):
        photos = rng.permutation(n_photos)[: n_ratings - 10 * (i % 3)]
        taste = feats[photos] @ rng.standard_normal(8) * 0.3
        ratings = np.clip(np.round((base[photos] + taste + rng.normal(0, 0.1, photos.size)) * 2) / 2, 1, 5)
        people[f"u{i}"] = PersonRatings(photos, base[photos] + rng.normal(0, 0.05, photos.size), ratings)
    return FewShotData("planted", [Path(f"p{j}.png") for j in range(n_photos)], feats, people, "fp")


def test_protocol_counts_people_per_k_and_k0_is_zero_shot() -> None:
    data = _planted_data()
    sizes = sorted(p.ratings.size for p in data.people.values())
    assert sizes == [60, 60, 70, 70, 80, 80]
    r = run_fewshot(data, (0, 5, 10, 20, 30), n_query=50, n_boot=100)
    assert r["shots"] == [0, 5, 10, 20, 30] and r["n_test_people"] == 6 and r["n_photos"] == 150
    assert r["calibration"]["people"] == 0
    counts = {e["k"]: (e["n_people"], e["n_skipped"]) for e in r["results"]}
    assert counts == {0: (6, 0), 5: (6, 0), 10: (6, 0), 20: (4, 2), 30: (2, 4)}
    k0 = r["results"][0]
    assert k0["learner_equals_zero_shot"] is True
    assert k0["learner"] == k0["zero_shot"]
    assert k0["learner_minus_zero_shot"]["mean"] == 0.0
    for e in r["results"]:
        for name in ("learner", "zero_shot", "stars_only", "learner_minus_zero_shot", "learner_minus_stars_only"):
            lo, hi = e[name]["ci95"]
            assert lo <= e[name]["mean"] <= hi
    assert r["results"][-1]["learner"]["mean"] > r["results"][-1]["zero_shot"]["mean"] + 0.05
    json.dumps(r)  # JSON-ready


def test_protocol_calibrates_on_other_people_and_compares_designs() -> None:
    data = _planted_data(n_people=4)
    data.calibration = _planted_data(n_people=5, seed=1).people
    r = run_fewshot(data, (0, 10), n_query=50, n_boot=50, compare=True)
    assert r["calibration"]["people"] == 5
    assert r["learners"]["learner"]["rule"] == "fixed" and r["learners"]["stars_only"]["rule"] == "fixed"
    assert r["methods"][:3] == ["learner", "zero_shot", "stars_only"]
    assert {"residual_evidence", "kernel"} <= set(r["methods"])
    for e in r["results"]:
        assert {"residual_evidence", "kernel"} <= set(e)
    # the draws do not depend on which methods run
    again = run_fewshot(data, (0, 10), n_query=50, n_boot=50)
    assert again["results"][1]["learner"] == r["results"][1]["learner"]


def test_parse_shots() -> None:
    assert parse_shots("0,5, 10,5") == (0, 5, 10)
    for bad in ("", "a", "-1,3"):
        with pytest.raises(ValueError):
            parse_shots(bad)


# ------------------------------------------------------------------------------------------------ eval --shots

N_IMAGES, PER_USER, QUERY = 60, 53, 50  # k + 50 <= 53: k = 0 and 2 take everyone, k = 4 nobody


def _check_cli_result(result: dict, test_users: list[str], images: set[str]) -> None:
    assert result["protocol"] == "fewshot" and result["shots"] == [0, 2, 4]
    assert result["n_query"] == QUERY and result["draws"] == 3
    assert result["n_test_people"] == len(test_users)
    assert result["n_photos"] == len(images)
    assert result["demo"] is True
    counts = [(e["k"], e["n_people"], e["n_skipped"]) for e in result["results"]]
    n = len(test_users)
    assert counts == [(0, n, 0), (2, n, 0), (4, 0, n)]
    k0, k2, k4 = result["results"]
    assert k0["learner_equals_zero_shot"] is True and k0["learner"] == k0["zero_shot"]
    assert k2["learner"]["mean"] is not None and k2["stars_only"]["mean"] is not None
    assert k4["learner"] == {"mean": None, "ci95": [None, None]}
    assert result["calibration"]["people"] >= 1  # the fold's training people fix λ
    assert result["learners"]["learner"]["method"] == "residual"
    assert result["learners"]["stars_only"]["method"] == "stars_only"
    report = Path(result["report"])
    assert (report / "fewshot.json").is_file() and (report / "report.md").is_file()


def test_eval_shots_on_the_para_layout(env, tmp_path: Path) -> None:
    fx = write_para_fixture(tmp_path / "para", n_images=N_IMAGES, ratings_per_user=PER_USER)
    code, stdout, err = env.run_cli("eval", "--checkpoint", str(DEMO_ADAPTER), "--dataset", "para", "--root",
                                    str(fx.root), "--fold", "1", "--shots", "0,2,4", "--json",
                                    "--out", str(tmp_path / "out"))
    assert code == 0, err
    result = json.loads(stdout)
    train_ids, test_ids = fx.folds[1]
    data_users = {r["userId"] for r in fx.rows}
    test = sorted(set(test_ids) & data_users)
    assert test == ["B22", "C32"]
    calibration = set(train_ids) & data_users  # all 4 of them (fewer than --calibration-people's 40)
    assert result["calibration"]["people"] == len(calibration) == 4
    # the feature spec is fitted on every photo scored: the test and the calibration people's
    images = {f"{r['sessionId']}/{r['imageName']}" for r in fx.rows if r["userId"] in set(test) | calibration}
    _check_cli_result(result, test, images)


def test_eval_shots_on_the_lapis_layout(env, tmp_path: Path) -> None:
    from pmllm_batch.train.datasets import load_lapis
    from pmllm_batch.train.fewshot import calibration_people

    fx = write_lapis_fixture(tmp_path / "lapis", n_images=N_IMAGES, ratings_per_user=PER_USER)
    code, stdout, err = env.run_cli("eval", "--checkpoint", str(DEMO_ADAPTER), "--dataset", "lapis", "--root",
                                    str(fx.root), "--shots", "0,2,4", "--json", "--calibration-people", "2",
                                    "--out", str(tmp_path / "out"))
    assert code == 0, err
    result = json.loads(stdout)
    test = load_lapis(fx.root, fold=1, split="test", seed=0).user_ids
    assert test == ["101", "104"]
    calibration = set(calibration_people(load_lapis(fx.root, fold=1, split="train", seed=0), 2, seed=0).user_ids)
    assert result["calibration"]["people"] == len(calibration) == 2 and not calibration & set(test)
    images = {r["file"] for r in fx.rows if r["participant_id"] in set(test) | calibration}
    _check_cli_result(result, test, images)


def test_eval_shots_refuses_controls(env, tmp_path: Path) -> None:
    fx = write_para_fixture(tmp_path / "para")
    code, _, err = env.run_cli("eval", "--checkpoint", str(DEMO_ADAPTER), "--dataset", "para", "--root",
                               str(fx.root), "--shots", "0,5", "--control", "shuffled")
    assert code == 2 and "--shots" in err
    code, _, err = env.run_cli("eval", "--checkpoint", str(DEMO_ADAPTER), "--dataset", "para", "--root",
                               str(fx.root), "--shots", "0,x")
    assert code != 0
