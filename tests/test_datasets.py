"""PARA / LAPIS readers and user-disjoint splits, on tiny fixture folders and the public PARA folds."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pmllm_batch.errors import DatasetError
from pmllm_batch.profiles import Profile
from pmllm_batch.train.datasets import (
    PARA_ATTRIBUTES,
    load_dataset,
    load_lapis,
    load_para,
    seeded_user_split,
    user_split,
)
from tests.dataset_fixtures import (
    LAPIS_USERS,
    PARA_USERS,
    write_captions,
    write_lapis_fixture,
    write_para_fixture,
)


def _rewrite_csv(path: Path, drop_column: str) -> None:
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = [c for c in rows[0] if c != drop_column]
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _error(fn, *args, **kwargs) -> str:
    """The one-sentence message of the DatasetError ``fn(*args, **kwargs)`` raises."""
    with pytest.raises(DatasetError) as exc:
        fn(*args, **kwargs)
    return str(exc.value)


# ------------------------------------------------------------------------------------------------ PARA


def test_para_reads_every_row_with_scores_attributes_and_paths(tmp_path: Path) -> None:
    fx = write_para_fixture(tmp_path / "para")
    ds = load_para(fx.root, fold=None)
    assert ds.name == "para" and ds.root == fx.root
    assert len(ds) == len(fx.rows) == 30
    assert ds.skipped_missing_images == 0 and ds.skipped_bad_rows == 0
    for sample, row in zip(ds.samples, fx.rows, strict=True):
        assert sample.image_path == fx.root / "imgs" / row["sessionId"] / row["imageName"]
        assert sample.image_path.is_file()
        assert sample.user_id == row["userId"]
        assert sample.score == float(row["aestheticScore"])
        expected = {a: float(row[a]) for a in PARA_ATTRIBUTES if row[a] != ""}
        assert sample.attributes == expected
        assert sample.caption is None
    # the empty dofScore of the first row is left out, extra columns never leak into attributes
    assert "dofScore" not in ds.samples[0].attributes and len(ds.samples[1].attributes) == 8
    assert all("isObjectEmphasis" not in s.attributes for s in ds.samples)
    assert ds.user_ids == sorted(PARA_USERS)
    assert sorted(ds.profiles) == sorted(PARA_USERS)


def test_para_profiles_map_fields_clip_ranges_and_stay_coarse(tmp_path: Path) -> None:
    fx = write_para_fixture(tmp_path / "para")
    profiles = load_para(fx.root, fold=None).profiles
    assert profiles["A11"] == Profile(
        name="user-A11",
        age="22-25",
        gender="female",
        education="university",
        art_experience="competent",
        photography_experience="expert",
        big_five={"extraversion": 7, "agreeableness": 6, "neuroticism": 3, "openness": 9, "conscientiousness": 5},
    )
    # ">40" becomes a bin the Profile accepts; 12 and 0 are clipped into 1..10
    b22 = profiles["B22"]
    assert b22.age == "41+"
    assert b22.big_five["extraversion"] == 10.0 and b22.big_five["agreeableness"] == 1.0
    # a rater with only one usable field gets a coarse profile, not an error and not "nan" strings
    assert profiles["C32"].to_dict() == {"name": "user-C32", "big_five": {"openness": 3.0}}


def test_para_fold_files_are_used_exactly_and_test_users_never_train(tmp_path: Path) -> None:
    fx = write_para_fixture(tmp_path / "para")
    everyone = set(PARA_USERS)
    for fold, (train_listed, test_listed) in fx.folds.items():
        train = load_para(fx.root, fold=fold, split="train")
        test = load_para(fx.root, fold=fold, split="test")
        assert set(test.user_ids) == set(test_listed) & everyone  # "Z99" is not in the data: ignored
        assert set(train.user_ids) == set(train_listed) & everyone
        assert not set(train.user_ids) & set(test.user_ids)
        assert not {s.user_id for s in train.samples} & set(test_listed)
        assert set(test.profiles) == set(test.user_ids)
        assert len(train) + len(test) == len(fx.rows)
    assert set(load_para(fx.root, fold=1, split="all").user_ids) == everyone


def test_para_fold_without_files_is_an_error_when_other_folds_exist(tmp_path: Path) -> None:
    fx = write_para_fixture(tmp_path / "para")
    assert _error(load_para, fx.root, fold=3, split="test") == (
        f"{fx.root}/userset has no fold-3 files (folds there: 1, 2)."
    )


def test_para_seeded_split_without_fold_files_is_user_disjoint_and_covers_everyone(tmp_path: Path) -> None:
    fx = write_para_fixture(tmp_path / "para", with_folds=False)
    tests: list[str] = []
    for fold in (1, 2, 3, 4):
        train = load_para(fx.root, fold=fold, split="train", seed=5)
        test = load_para(fx.root, fold=fold, split="test", seed=5)
        assert not set(train.user_ids) & set(test.user_ids)
        assert set(train.user_ids) | set(test.user_ids) == set(PARA_USERS)
        assert test.user_ids == load_para(fx.root, fold=fold, split="test", seed=5).user_ids  # deterministic
        tests += test.user_ids
    assert sorted(tests) == sorted(PARA_USERS)  # the 4 test sets partition the users


def test_para_missing_images_are_skipped_and_counted(tmp_path: Path) -> None:
    fx = write_para_fixture(tmp_path / "para", missing_images=(0, 7))
    ds = load_para(fx.root, fold=None)
    missing_rows = [r for r in fx.rows if f"{r['sessionId']}/{r['imageName']}" in fx.missing]
    assert fx.missing == ["session1/iaa_pub1_.jpg", "session2/iaa_pub8_.jpg"]
    assert len(missing_rows) == ds.skipped_missing_images == 4
    assert len(ds) == len(fx.rows) - len(missing_rows)
    assert all(s.image_path.is_file() for s in ds.samples)


def test_para_reads_a_utf8_bom_header(tmp_path: Path) -> None:
    fx = write_para_fixture(tmp_path / "para")
    info = fx.root / "annotation" / "PARA-UserInfo.csv"
    info.write_bytes(b"\xef\xbb\xbf" + info.read_bytes())
    assert load_para(fx.root, fold=None).profiles["A11"].gender == "female"


IMAGES_CSV = "PARA file {root}/annotation/PARA-Images.csv"
USERINFO_CSV = "PARA user-info file {root}/annotation/PARA-UserInfo.csv"


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda root: (root / "annotation" / "PARA-Images.csv").unlink(), IMAGES_CSV + " is missing."),
        (lambda root: (root / "annotation" / "PARA-UserInfo.csv").unlink(), USERINFO_CSV + " is missing."),
        (
            lambda root: _rewrite_csv(root / "annotation" / "PARA-Images.csv", "aestheticScore"),
            IMAGES_CSV + " has no column 'aestheticScore'.",
        ),
        (
            lambda root: _rewrite_csv(root / "annotation" / "PARA-Images.csv", "userId"),
            IMAGES_CSV + " has no column 'userId'.",
        ),
        (
            lambda root: _rewrite_csv(root / "annotation" / "PARA-UserInfo.csv", "userId"),
            USERINFO_CSV + " has no column 'userId'.",
        ),
    ],
    ids=["images-csv", "userinfo-csv", "score-column", "user-column", "userinfo-user-column"],
)
def test_para_layout_errors_name_the_file_or_column(tmp_path: Path, setup, expected: str) -> None:
    fx = write_para_fixture(tmp_path / "para")
    setup(fx.root)
    assert _error(load_para, fx.root, fold=None) == expected.format(root=fx.root)


def test_missing_root_and_bad_split_raise_dataset_error(tmp_path: Path) -> None:
    for name, loader in (("PARA", load_para), ("LAPIS", load_lapis)):
        assert _error(loader, tmp_path / "nowhere") == (
            f"{name} dataset root {tmp_path / 'nowhere'} does not exist or is not a folder."
        )
    fx = write_para_fixture(tmp_path / "para")
    assert _error(load_para, fx.root, split="validation") == "split must be one of train, test, all (got 'validation')."


def test_captions_match_by_relative_path_or_basename(tmp_path: Path) -> None:
    fx = write_para_fixture(tmp_path / "para")
    captions = write_captions(
        tmp_path / "captions.csv",
        {
            "session1/iaa_pub1_.jpg": "relative to imgs",
            "imgs/session1/iaa_pub2_.jpg": "relative to root",
            "iaa_pub7_.jpg": "basename",
        },
    )
    ds = load_para(fx.root, fold=None, captions=captions)
    by_name = {s.image_path.name: s.caption for s in ds.samples}
    assert by_name["iaa_pub1_.jpg"] == "relative to imgs"
    assert by_name["iaa_pub2_.jpg"] == "relative to root"
    assert by_name["iaa_pub7_.jpg"] == "basename"
    assert by_name["iaa_pub4_.jpg"] is None
    bad = tmp_path / "bad.csv"
    bad.write_text("image,text\na.jpg,x\n", encoding="utf-8")
    assert _error(load_para, fx.root, fold=None, captions=bad) == f"captions file {bad} has no column 'caption'."


# ------------------------------------------------------------------------------------------------ LAPIS


@pytest.mark.parametrize(("response", "score"), [(0, 1.0), (50, 3.0), (100, 5.0), (25, 2.0), (75, 4.0)])
def test_lapis_response_maps_to_one_to_five(tmp_path: Path, response: int, score: float) -> None:
    fx = write_lapis_fixture(tmp_path / "lapis")
    ds = load_lapis(fx.root, fold=None)
    got = {(s.user_id, s.image_path.name): s.score for s in ds.samples}
    rows = [r for r in fx.rows if r["response"] == str(response)]
    assert len(rows) == {0: 1, 25: 4, 50: 2, 75: 5, 100: 3}[response]  # what the fixture writes
    for r in rows:
        assert got[(r["participant_id"], r["file"])] == pytest.approx(score)


def test_lapis_reads_samples_and_profiles(tmp_path: Path) -> None:
    fx = write_lapis_fixture(tmp_path / "lapis")
    ds = load_lapis(fx.root, fold=None)
    assert ds.name == "lapis" and len(ds) == len(fx.rows) and ds.skipped_missing_images == 0
    assert all(s.attributes == {} and s.image_path.parent == fx.root / "images" for s in ds.samples)
    assert ds.user_ids == sorted(LAPIS_USERS)
    p = ds.profiles
    expected_art: dict[str, float | str] = {f"VAIAK{n}": float(n % 7) for n in range(1, 8)}
    expected_art.update({f"2VAIAK{n}": float(n) for n in range(1, 5)})
    expected_art["VAIAK1"] = 6.0  # 9 is out of the 0..6 scale: clipped
    assert p["101"] == Profile(
        name="user-101", age=34, gender="female", education="Master", nationality="Belgian", art_interest=expected_art
    )
    assert p["102"].age == 27  # the first row left it empty, a later row carries it
    assert p["102"].notes == "colour-blind"
    assert p["104"].age is None and p["104"].nationality == "French"  # 250 years: dropped, rest kept
    assert p["105"].to_dict() == {"name": "user-105"}  # nothing usable: the coarsest profile
    assert p["106"].age == 45 and p["106"].gender == "non-binary" and p["106"].education is None
    assert p["106"].art_interest == {"VAIAK1": 2.0, "VAIAK2": 3.0, "VAIAK3": 4.0}


def test_lapis_seeded_split_without_fold_files(tmp_path: Path) -> None:
    fx = write_lapis_fixture(tmp_path / "lapis")
    assert not (fx.root / "userset").exists()
    seen_test: set[str] = set()
    # the seeded split (seed 0) of the 6 users: every fold has a test user
    expected_test = {1: ["101", "104"], 2: ["102", "103"], 3: ["106"], 4: ["105"]}
    for fold in (1, 2, 3, 4):
        train = load_lapis(fx.root, fold=fold, split="train")
        test = load_lapis(fx.root, fold=fold, split="test")
        assert test.user_ids == expected_test[fold]
        assert not set(train.user_ids) & set(test.user_ids)
        assert set(train.user_ids) | set(test.user_ids) == set(LAPIS_USERS)
        seen_test |= set(test.user_ids)
    assert seen_test == set(LAPIS_USERS)


def test_lapis_missing_images_and_layout_errors(tmp_path: Path) -> None:
    fx = write_lapis_fixture(tmp_path / "lapis", missing_images=(2,))
    ds = load_lapis(fx.root, fold=None)
    n_missing = sum(r["file"] == fx.missing[0] for r in fx.rows)
    assert fx.missing == ["lapis_3.jpg"] and n_missing == 3
    assert ds.skipped_missing_images == n_missing and len(ds) == len(fx.rows) - n_missing
    csv_path = fx.root / "annotation" / "LAPIS_individualratings_metaANDdemodata.csv"
    _rewrite_csv(csv_path, "response")
    assert _error(load_lapis, fx.root) == f"LAPIS file {csv_path} has no column 'response'."
    csv_path.unlink()
    assert _error(load_lapis, fx.root) == f"LAPIS file {csv_path} is missing."


# ------------------------------------------------------------------------------------------------ splits, dispatch


def test_user_split_rules(tmp_path: Path) -> None:
    userset = tmp_path / "userset"
    userset.mkdir()
    (userset / "TestUserIDs_Fold1.txt").write_text("u1\nu2\n\n", encoding="utf-8")
    train, test = user_split(tmp_path, ["u1", "u2", "u3", "u4"], fold=1)
    assert (train, test) == (["u3", "u4"], ["u1", "u2"])  # only a test file: train is everybody else
    (userset / "TrainUserIDs_Fold1.txt").write_text("u2\nu3\n", encoding="utf-8")
    train, test = user_split(tmp_path, ["u1", "u2", "u3", "u4"], fold=1)
    assert (train, test) == (["u3"], ["u1", "u2"])  # listed in both: test wins; u4 in neither: left out
    assert seeded_user_split(["b", "a", "c", "a"], 1, seed=3) == seeded_user_split(["a", "b", "c"], 1, seed=3)
    assert _error(seeded_user_split, ["a", "b"], fold=5) == "fold must be 1..4 for test_fraction 0.25 (got 5)."


def test_load_dataset_dispatch_and_unknown_name(tmp_path: Path) -> None:
    fx = write_para_fixture(tmp_path / "para")
    assert load_dataset("PARA", fx.root, fold=1, split="test").user_ids == ["B22", "C32"]
    assert _error(load_dataset, "parra", fx.root) == "unknown dataset 'parra'; did you mean 'para'?"


def test_real_para_folds_are_user_disjoint_and_cover_438_users(shared_data: Path) -> None:
    real_para_splits = shared_data / "para-splits"
    userset = real_para_splits / "userset"
    if not userset.is_dir():
        pytest.skip("public PARA fold files are not present")

    def read(name: str) -> set[str]:
        return {line.strip() for line in (userset / name).read_text().splitlines() if line.strip()}

    everyone = set().union(*(read(f"TestUserIDs_Fold{k}.txt") | read(f"TrainUserIDs_Fold{k}.txt") for k in range(1, 5)))
    assert len(everyone) == 438
    fake_ids = sorted(everyone) + ["not-a-para-user"]
    union_of_tests: set[str] = set()
    for fold in range(1, 5):
        train, test = user_split(real_para_splits, fake_ids, fold)
        assert not set(train) & set(test)
        assert set(train) | set(test) == everyone
        assert set(test) == read(f"TestUserIDs_Fold{fold}.txt")
        union_of_tests |= set(test)
    assert union_of_tests == everyone
