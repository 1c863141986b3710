"""Readers for the personalised-aesthetics datasets in their public layouts, with user-disjoint splits.

Both readers return a :class:`RatingDataset`: one :class:`RatingSample` per (image, rater) pair on the
1..5 scale, plus a :class:`~pmllm_batch.profiles.Profile` per rater built from the dataset's
demographics (``Profile.name`` is ``"user-<id>"``).

PARA (``root/``)::

    annotation/PARA-Images.csv     sessionId, imageName, userId, aestheticScore (1..5, 0.5 steps),
                                   qualityScore, compositionScore, colorScore, dofScore, contentScore,
                                   lightScore, contentPreference, willingnessToShare, ... (extra columns ignored)
    annotation/PARA-UserInfo.csv   userId, age (bins such as "22-25"), gender, EducationalLevel, artExperience,
                                   photographyExperience, personality-E/-A/-N/-O/-C (1..10)
    imgs/<sessionId>/<imageName>
    userset/TrainUserIDs_Fold{k}.txt, userset/TestUserIDs_Fold{k}.txt   (optional; one user id per line)

LAPIS (``root/``)::

    annotation/LAPIS_individualratings_metaANDdemodata.csv
        file, image_id, response (0..100), participant_id, age (years), nationality, demo_gender, demo_edu,
        demo_colorblind, style, genre, VAIAK1..VAIAK7, 2VAIAK1..2VAIAK4 (0..6)
    images/<file>
    userset/...   (optional, same layout as PARA)

Mapping rules (why: the profile is the model's only knowledge of the person, so it must be faithful, but
a messy CSV must never stop a training run):

* LAPIS ``response`` r in 0..100 becomes ``1 + 4 * r / 100`` so both datasets share the 1..5 scale.
* PARA ``personality-E/A/N/O/C`` → ``big_five`` extraversion / agreeableness / neuroticism / openness /
  conscientiousness; LAPIS ``VAIAK*`` / ``2VAIAK*`` → ``art_interest`` under the same keys;
  ``demo_gender`` → ``gender``, ``demo_edu`` → ``education``; a "yes" in ``demo_colorblind`` becomes the note
  ``"colour-blind"``.
* Empty, ``NaN``, ``None``, ``NA`` fields are left out, so a rater with only an age gets a coarse profile.
  Numbers outside the profile's ranges are clipped (Big-Five to 1..10, art interest to 0..6); an implausible
  or unreadable age is dropped. Nothing in a profile column can raise.
* Rows with an empty user id or an unreadable score are skipped and counted in ``skipped_bad_rows``; rows
  whose image file is missing are skipped and counted in ``skipped_missing_images``.
* Wrong layouts (missing root, missing annotation CSV, missing required column, unknown dataset name,
  bad fold) raise :class:`~pmllm_batch.errors.DatasetError` whose message is one sentence naming the culprit.

Zero-shot splits are **by user**: see :func:`user_split`. Test users never appear in ``split="train"``.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO, TypedDict, Unpack, cast

import numpy as np

from pmllm_batch.errors import DatasetError, ProfileError
from pmllm_batch.profiles import Profile

__all__ = [
    "DATASET_CONFIGS",
    "LAPIS_ART_ITEMS",
    "PARA_ATTRIBUTES",
    "DatasetConfig",
    "RatingDataset",
    "RatingSample",
    "ReadOptions",
    "load_dataset",
    "load_lapis",
    "load_para",
    "seeded_user_split",
    "user_split",
]

PARA_ATTRIBUTES = (
    "qualityScore",
    "compositionScore",
    "colorScore",
    "dofScore",
    "contentScore",
    "lightScore",
    "contentPreference",
    "willingnessToShare",
)
PARA_PERSONALITY = {
    "personality-E": "extraversion",
    "personality-A": "agreeableness",
    "personality-N": "neuroticism",
    "personality-O": "openness",
    "personality-C": "conscientiousness",
}
PARA_TEXT_FIELDS = {
    "gender": "gender",
    "EducationalLevel": "education",
    "artExperience": "art_experience",
    "photographyExperience": "photography_experience",
}
LAPIS_ART_ITEMS = tuple(f"VAIAK{i}" for i in range(1, 8)) + tuple(f"2VAIAK{i}" for i in range(1, 5))
LAPIS_TEXT_FIELDS = {"nationality": "nationality", "demo_gender": "gender", "demo_edu": "education"}



class DatasetConfig(TypedDict):
    """One dataset's layout (paths relative to its root) and score conventions."""

    meta_file: str  # the ratings CSV
    user_file: str | None  # the raters' CSV, None when the ratings CSV carries the demographics
    image_dir: str
    raw_score_range: tuple[float, float]  # as the CSV writes scores
    score_range: tuple[float, float]  # after mapping to the 1..5 scale
    lower_better: bool


class ReadOptions(TypedDict, total=False):
    """The keyword arguments every reader takes (see :func:`load_para`)."""

    fold: int | None
    split: str
    seed: int
    captions: str | Path | None


# Per-dataset layout and score conventions, kept apart from the code (pyiqa's default_dataset_configs idea).
DATASET_CONFIGS: dict[str, DatasetConfig] = {
    "para": {
        "meta_file": "annotation/PARA-Images.csv",
        "user_file": "annotation/PARA-UserInfo.csv",
        "image_dir": "imgs",
        "raw_score_range": (1.0, 5.0),
        "score_range": (1.0, 5.0),
        "lower_better": False,
    },
    "lapis": {
        "meta_file": "annotation/LAPIS_individualratings_metaANDdemodata.csv",
        "user_file": None,
        "image_dir": "images",
        "raw_score_range": (0.0, 100.0),
        "score_range": (1.0, 5.0),
        "lower_better": False,
    },
}
SPLITS = ("train", "test", "all")

_MISSING = {"", "nan", "none", "null", "na", "n/a", "-", "?"}
_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.\- ]")
_FLOAT_ID = re.compile(r"^-?\d+\.0+$")
_AGE_RANGE = re.compile(r"^(\d{1,3})\s*(?:-|–|~|to)\s*(\d{1,3})$", re.IGNORECASE)
_AGE_PLUS = re.compile(r"^(\d{1,3})\s*\+$")
_AGE_ABOVE = re.compile(r"^(>=|≥|>|over|above)\s*(\d{1,3})$", re.IGNORECASE)
_AGE_BELOW = re.compile(r"^(<=|≤|<|under|below)\s*(\d{1,3})$", re.IGNORECASE)
_YES = {"yes", "y", "true", "1", "1.0"}


@dataclass(frozen=True, slots=True)
class RatingSample:
    """One rating of one image by one person.

    Attributes:
        image_path: Absolute or root-joined path of the image file (it existed when the dataset was read).
        user_id: The rater's id as written in the dataset.
        score: Overall rating on the 1..5 scale.
        attributes: PARA attribute scores on 1..5 (``qualityScore`` … ``willingnessToShare``) that are present
            in the row; ``{}`` for LAPIS.
        caption: Image description from an optional captions file.
    """

    image_path: Path
    user_id: str
    score: float
    attributes: dict[str, float] = field(default_factory=dict)
    caption: str | None = None


@dataclass
class RatingDataset:
    """Ratings of one split of one dataset plus the raters' profiles.

    Attributes:
        name: ``"para"``, ``"lapis"`` or ``"synthetic"`` (a synthetic folder read with :func:`load_para`).
        root: Dataset root folder.
        samples: Ratings in CSV order.
        profiles: ``user_id -> Profile`` for every user that has at least one sample.
        skipped_missing_images: Rating rows dropped because their image file is missing.
        skipped_bad_rows: Rating rows dropped because the user id was empty or the score unreadable.
    """

    name: str
    root: Path
    samples: list[RatingSample]
    profiles: dict[str, Profile]
    skipped_missing_images: int = 0
    skipped_bad_rows: int = 0

    @property
    def user_ids(self) -> list[str]:
        """Sorted ids of the users that have samples."""
        return sorted({s.user_id for s in self.samples})

    def __len__(self) -> int:
        return len(self.samples)


# ----------------------------------------------------------------------------------------------------------------
# Small parsing helpers: every one of them returns None for a missing or unreadable value instead of raising.


def _is_missing(value: str | None) -> bool:
    return value is None or value.strip().lower() in _MISSING


def _parse_float(value: str | None) -> float | None:
    if _is_missing(value):
        return None
    assert value is not None
    try:
        x = float(value.strip())
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _norm_id(value: object) -> str:
    """Canonical user id: stripped text; ``"12.0"`` (a numeric id that went through a spreadsheet) → ``"12"``."""
    s = str(value).strip()
    if _FLOAT_ID.match(s):
        s = s.split(".", 1)[0]
    return s


def _profile_name(user_id: str) -> str:
    # Profile names allow letters, digits, space, '.', '_' and '-' (max 64); ids with other characters are
    # mapped to '_' here, while the dict key keeps the exact id.
    return ("user-" + _NAME_BAD_CHARS.sub("_", user_id))[:64]


def _norm_age(value: str | None) -> int | str | None:
    """Years (int) or a bin string accepted by :class:`Profile`; None when absent or implausible."""
    if _is_missing(value):
        return None
    assert value is not None
    s = value.strip()
    num = _parse_float(s)
    if num is not None:
        years = int(round(num))
        return years if 0 < years < 130 else None
    if m := _AGE_RANGE.match(s):
        lo, hi = sorted((int(m.group(1)), int(m.group(2))))
        return f"{lo}-{hi}"
    if m := _AGE_PLUS.match(s):
        return f"{int(m.group(1))}+"
    if m := _AGE_ABOVE.match(s):
        n = int(m.group(2))
        return f"{n}+" if m.group(1) in (">=", "≥") else f"{n + 1}+"
    if m := _AGE_BELOW.match(s):
        n = int(m.group(2))
        hi = n if m.group(1) in ("<=", "≤") else n - 1
        return f"0-{hi}" if hi > 0 else None
    return None


def _clean_text(value: str | None) -> str | None:
    if value is None or _is_missing(value):
        return None
    return value.strip()


def _safe_profile(data: dict[str, object], source: str) -> Profile:
    """Build a Profile, dropping any field the validator still rejects (the data must never stop a run)."""
    try:
        return Profile.from_dict(data, source=source)
    except ProfileError:
        pass
    kept: dict[str, object] = {"name": data["name"]}
    for key, value in data.items():
        if key == "name":
            continue
        if isinstance(value, dict):
            sub: dict[str, object] = {}
            for k, v in value.items():
                try:
                    Profile.from_dict({"name": data["name"], key: {**sub, k: v}}, source=source)
                except ProfileError:
                    continue
                sub[k] = v
            if sub:
                kept[key] = sub
            continue
        try:
            Profile.from_dict({**kept, key: value}, source=source)
        except ProfileError:
            continue
        kept[key] = value
    return Profile.from_dict(kept, source=source)


# ----------------------------------------------------------------------------------------------------------------
# CSV access


class _Table:
    """A CSV file read with the csv module, streamed: rows are lists, never all held in memory at once.

    PARA-Images.csv has ~800k rating rows; holding them as dicts would cost gigabytes, so each pass
    re-reads the file and only the fields that are used are kept by the callers.
    """

    def __init__(self, path: Path, required: Iterable[str], *, what: str) -> None:
        self.path = path
        self.what = what
        if not path.is_file():
            raise DatasetError(f"{what} file {path} is missing.")
        header: list[str] | None = None
        with self._reader() as (_, reader):
            header = next(reader, None)
        if header is None:
            raise DatasetError(f"{what} file {path} is empty (no header row).")
        self.columns = {name.strip(): i for i, name in enumerate(header)}
        for col in required:
            if col not in self.columns:
                raise DatasetError(f"{what} file {path} has no column '{col}'.")

    @contextlib.contextmanager
    def _reader(self) -> Iterator[tuple[TextIO, Iterator[list[str]]]]:
        """Open the file and turn decoding / CSV / OS errors into one-sentence DatasetErrors."""
        try:
            with self.path.open("r", encoding="utf-8-sig", newline="") as fh:
                yield fh, csv.reader(fh)
        except UnicodeDecodeError:
            raise DatasetError(f"{self.what} file {self.path} is not UTF-8 text.") from None
        except csv.Error as exc:
            raise DatasetError(f"{self.what} file {self.path} is not valid CSV ({exc}).") from None
        except OSError as exc:
            raise DatasetError(f"cannot read {self.what} file {self.path}: {exc.strerror or exc}.") from None

    def has(self, column: str) -> bool:
        return column in self.columns

    def getter(self, column: str) -> Callable[[list[str]], str | None]:
        """Return a function reading ``column`` from a row (None when the column or the cell is absent)."""
        idx = self.columns.get(column)
        if idx is None:
            return lambda row: None
        return lambda row: row[idx] if idx < len(row) else None

    def __iter__(self) -> Iterator[list[str]]:
        with self._reader() as (_, reader):
            next(reader, None)  # header
            for row in reader:
                if row:
                    yield row


def _check_root(root: str | Path, dataset: str) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{dataset} dataset root {path} does not exist or is not a folder.")
    return path


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {', '.join(SPLITS)} (got {split!r}).")
    return split


# ----------------------------------------------------------------------------------------------------------------
# User-disjoint splits


def seeded_user_split(
    all_user_ids: Iterable[object], fold: int, seed: int = 0, test_fraction: float = 0.25
) -> tuple[list[str], list[str]]:
    """User-disjoint split without fold files.

    The sorted unique ids are permuted with ``numpy.random.default_rng(seed)`` and cut into
    ``round(1 / test_fraction)`` interleaved chunks (``perm[k-1::n_chunks]``); chunk ``fold`` is the test set.
    For one seed the test sets of folds 1..n_chunks therefore partition the users, like k-fold CV.

    Args:
        all_user_ids: Every user id of the dataset (duplicates and order do not matter).
        fold: 1-based fold number, 1..n_chunks.
        seed: Permutation seed.
        test_fraction: Fraction of users in the test set; 0.25 gives 4 folds.

    Returns:
        ``(train_ids, test_ids)``, both sorted.

    Raises:
        DatasetError: ``fold`` or ``test_fraction`` out of range.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction must be between 0 and 1 (got {test_fraction}).")
    n_chunks = max(2, int(round(1.0 / test_fraction)))
    if not 1 <= fold <= n_chunks:
        raise DatasetError(f"fold must be 1..{n_chunks} for test_fraction {test_fraction} (got {fold}).")
    ids = sorted({_norm_id(u) for u in all_user_ids} - {""})
    perm = np.random.default_rng(seed).permutation(len(ids))
    test_set = {ids[i] for i in perm[fold - 1 :: n_chunks]}
    return [u for u in ids if u not in test_set], [u for u in ids if u in test_set]


def _read_id_file(path: Path) -> set[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read user-fold file {path}: {exc}.") from None
    return {_norm_id(line) for line in text.splitlines() if line.strip()}


def user_split(
    root: str | Path, all_user_ids: Iterable[object], fold: int, seed: int = 0, test_fraction: float = 0.25
) -> tuple[list[str], list[str]]:
    """Train/test user ids for one fold, never overlapping.

    If ``root/userset/TrainUserIDs_Fold{fold}.txt`` and ``TestUserIDs_Fold{fold}.txt`` exist they are used
    exactly (one id per line, blank lines ignored; ids that are not in ``all_user_ids`` are ignored; an id
    listed in both files counts as test; users of the data listed in neither file are left out of both).
    If only one of the two exists, the other is "every other user". Without fold files the split is
    :func:`seeded_user_split`. ``seed`` and ``test_fraction`` only matter in that case.

    Args:
        root: Dataset root (its ``userset/`` folder is looked at).
        all_user_ids: Every user id present in the data.
        fold: 1-based fold number.
        seed: Seed of the fallback split.
        test_fraction: Test fraction of the fallback split.

    Returns:
        ``(train_ids, test_ids)``, both sorted.

    Raises:
        DatasetError: the ``userset`` folder has fold files, but not for ``fold``; or a bad fold number.
    """
    ids = sorted({_norm_id(u) for u in all_user_ids} - {""})
    userset = Path(root) / "userset"
    train_file = userset / f"TrainUserIDs_Fold{fold}.txt"
    test_file = userset / f"TestUserIDs_Fold{fold}.txt"
    if train_file.is_file() or test_file.is_file():
        present = set(ids)
        test_listed = _read_id_file(test_file) if test_file.is_file() else None
        train_listed = _read_id_file(train_file) if train_file.is_file() else None
        test_set = present & test_listed if test_listed is not None else present - (train_listed or set())
        train_set = (present & train_listed if train_listed is not None else present) - test_set
        return [u for u in ids if u in train_set], [u for u in ids if u in test_set]
    if userset.is_dir():
        folds = sorted(
            int(m.group(1)) for p in userset.glob("TestUserIDs_Fold*.txt") if (m := re.search(r"Fold(\d+)", p.name))
        )
        if folds:
            raise DatasetError(f"{userset} has no fold-{fold} files (folds there: {', '.join(str(f) for f in folds)}).")
    return seeded_user_split(ids, fold, seed=seed, test_fraction=test_fraction)


def _selected_users(root: Path, all_ids: Iterable[str], fold: int | None, split: str, seed: int) -> set[str] | None:
    """Users of the requested split; None means every user (fold None or split "all")."""
    if fold is None or split == "all":
        return None
    train, test = user_split(root, all_ids, fold, seed=seed)
    return set(train) if split == "train" else set(test)


# ----------------------------------------------------------------------------------------------------------------
# Captions


def _read_captions(path: str | Path, root: Path) -> dict[str, str]:
    p = Path(path).expanduser()
    if not p.is_file() and not p.is_absolute() and (root / p).is_file():
        p = root / p
    table = _Table(p, ("image", "caption"), what="captions")
    get_image, get_caption = table.getter("image"), table.getter("caption")
    captions: dict[str, str] = {}
    for row in table:
        image, caption = _clean_text(get_image(row)), _clean_text(get_caption(row))
        if image and caption:
            captions[image.replace("\\", "/")] = caption
    return captions


def _caption_for(captions: dict[str, str], image_path: Path, root: Path, image_dir: Path) -> str | None:
    # Accept the path relative to the dataset root, relative to the image folder, or the bare file name.
    for base in (root, image_dir):
        try:
            key = image_path.relative_to(base).as_posix()
        except ValueError:
            continue
        if key in captions:
            return captions[key]
    return captions.get(image_path.name)


class _ImageChecker:
    """Caches ``is_file`` per image (an image is rated by ~25 people in PARA) and counts misses."""

    def __init__(self) -> None:
        self._seen: dict[str, Path | None] = {}

    def __call__(self, path: Path) -> Path | None:
        key = str(path)
        if key not in self._seen:
            self._seen[key] = path if path.is_file() else None
        return self._seen[key]


# ----------------------------------------------------------------------------------------------------------------
# PARA


def _para_profiles(table: _Table) -> dict[str, Profile]:
    get_uid = table.getter("userId")
    get_age = table.getter("age")
    text_getters = {dst: table.getter(src) for src, dst in PARA_TEXT_FIELDS.items()}
    trait_getters = {dst: table.getter(src) for src, dst in PARA_PERSONALITY.items()}
    profiles: dict[str, Profile] = {}
    for row in table:
        uid = _norm_id(get_uid(row) or "")
        if not uid or uid in profiles:
            continue
        data: dict[str, object] = {"name": _profile_name(uid)}
        age = _norm_age(get_age(row))
        if age is not None:
            data["age"] = age
        for dst, get in text_getters.items():
            if (text := _clean_text(get(row))) is not None:
                data[dst] = text
        big_five = {}
        for dst, get in trait_getters.items():
            if (x := _parse_float(get(row))) is not None:
                big_five[dst] = min(10.0, max(1.0, x))
        if big_five:
            data["big_five"] = big_five
        profiles[uid] = _safe_profile(data, source=f"{table.path} user {uid}")
    return profiles


def load_para(
    root: str | Path,
    *,
    fold: int | None = 1,
    split: str = "train",
    seed: int = 0,
    captions: str | Path | None = None,
) -> RatingDataset:
    """Read a PARA-layout folder (also the layout written by the synthetic generator).

    Args:
        root: Dataset root holding ``annotation/`` and ``imgs/``.
        fold: 1-based user fold (fold files in ``userset/`` or a seeded split); None means all users.
        split: ``"train"``, ``"test"`` or ``"all"``.
        seed: Seed of the fallback split when there are no fold files.
        captions: Optional CSV ``image,caption`` (image = path relative to root or to ``imgs/``, or a file name).

    Returns:
        The selected ratings and the profiles of their raters.

    Raises:
        DatasetError: missing root, missing annotation CSV, missing required column, bad split or fold.
    """
    split = _check_split(split)
    base = _check_root(root, "PARA")
    cfg = DATASET_CONFIGS["para"]
    images = _Table(base / cfg["meta_file"], ("sessionId", "imageName", "userId", "aestheticScore"), what="PARA")
    user_file = cfg["user_file"]
    assert user_file is not None  # PARA's raters are in a file of their own
    users = _Table(base / user_file, ("userId",), what="PARA user-info")
    get_session, get_name = images.getter("sessionId"), images.getter("imageName")
    get_uid, get_score = images.getter("userId"), images.getter("aestheticScore")
    attr_getters = {a: images.getter(a) for a in PARA_ATTRIBUTES if images.has(a)}
    image_dir = base / cfg["image_dir"]
    caption_map = _read_captions(captions, base) if captions is not None else None

    all_ids = {uid for row in images if (uid := _norm_id(get_uid(row) or ""))}
    selected = _selected_users(base, all_ids, fold, split, seed)
    user_profiles = _para_profiles(users)

    check = _ImageChecker()
    samples: list[RatingSample] = []
    missing = bad = 0
    lo, hi = cfg["score_range"]
    for row in images:
        uid = _norm_id(get_uid(row) or "")
        score = _parse_float(get_score(row))
        session, name = _clean_text(get_session(row)), _clean_text(get_name(row))
        if not uid or score is None or not name:
            bad += 1
            continue
        if selected is not None and uid not in selected:
            continue
        path = check(image_dir / session / name if session else image_dir / name)
        if path is None:
            missing += 1
            continue
        attributes = {}
        for attr, get in attr_getters.items():
            if (x := _parse_float(get(row))) is not None:
                attributes[attr] = min(hi, max(lo, x))
        caption = _caption_for(caption_map, path, base, image_dir) if caption_map else None
        samples.append(RatingSample(path, uid, min(hi, max(lo, score)), attributes, caption))
    profiles = {
        uid: user_profiles.get(uid) or Profile(name=_profile_name(uid)) for uid in sorted({s.user_id for s in samples})
    }
    return RatingDataset("para", base, samples, profiles, skipped_missing_images=missing, skipped_bad_rows=bad)


# ----------------------------------------------------------------------------------------------------------------
# LAPIS


def load_lapis(
    root: str | Path,
    *,
    fold: int | None = 1,
    split: str = "train",
    seed: int = 0,
    captions: str | Path | None = None,
) -> RatingDataset:
    """Read a LAPIS-layout folder.

    Profile fields are merged over all rows of a participant (first non-empty value wins), because the
    demographics are repeated on every rating row and some rows leave them blank.

    Args:
        root: Dataset root holding ``annotation/`` and ``images/``.
        fold: 1-based user fold (fold files in ``userset/`` or a seeded split); None means all users.
        split: ``"train"``, ``"test"`` or ``"all"``.
        seed: Seed of the fallback split when there are no fold files.
        captions: Optional CSV ``image,caption`` (image = path relative to root or to ``images/``, or a file name).

    Returns:
        The selected ratings (``response`` 0..100 mapped to ``1 + 4 * response / 100``) and the raters' profiles.

    Raises:
        DatasetError: missing root, missing annotation CSV, missing required column, bad split or fold.
    """
    split = _check_split(split)
    base = _check_root(root, "LAPIS")
    cfg = DATASET_CONFIGS["lapis"]
    table = _Table(base / cfg["meta_file"], ("file", "participant_id", "response"), what="LAPIS")
    get_file, get_uid, get_resp = table.getter("file"), table.getter("participant_id"), table.getter("response")
    get_age, get_cb = table.getter("age"), table.getter("demo_colorblind")
    text_getters = {dst: table.getter(src) for src, dst in LAPIS_TEXT_FIELDS.items()}
    art_getters = {item: table.getter(item) for item in LAPIS_ART_ITEMS if table.has(item)}
    image_dir = base / cfg["image_dir"]
    caption_map = _read_captions(captions, base) if captions is not None else None

    all_ids = {uid for row in table if (uid := _norm_id(get_uid(row) or ""))}
    selected = _selected_users(base, all_ids, fold, split, seed)

    fields: dict[str, dict[str, object]] = {}
    check = _ImageChecker()
    samples: list[RatingSample] = []
    missing = bad = 0
    rlo, rhi = cfg["raw_score_range"]
    for row in table:
        uid = _norm_id(get_uid(row) or "")
        response = _parse_float(get_resp(row))
        file = _clean_text(get_file(row))
        if not uid or response is None or not file:
            bad += 1
            continue
        if selected is not None and uid not in selected:
            continue
        _merge_lapis_fields(fields.setdefault(uid, {}), row, get_age, get_cb, text_getters, art_getters)
        path = check(image_dir / file)
        if path is None:
            missing += 1
            continue
        score = 1.0 + 4.0 * (min(rhi, max(rlo, response)) - rlo) / (rhi - rlo)
        caption = _caption_for(caption_map, path, base, image_dir) if caption_map else None
        samples.append(RatingSample(path, uid, score, {}, caption))
    profiles = {}
    for uid in sorted({s.user_id for s in samples}):
        data = {"name": _profile_name(uid), **fields.get(uid, {})}
        profiles[uid] = _safe_profile(data, source=f"{table.path} participant {uid}")
    return RatingDataset("lapis", base, samples, profiles, skipped_missing_images=missing, skipped_bad_rows=bad)


def _merge_lapis_fields(
    data: dict[str, object],
    row: list[str],
    get_age: Callable[[list[str]], str | None],
    get_cb: Callable[[list[str]], str | None],
    text_getters: dict[str, Callable[[list[str]], str | None]],
    art_getters: dict[str, Callable[[list[str]], str | None]],
) -> None:
    """Fill the profile fields of one participant from one row, keeping values already found."""
    if "age" not in data and (age := _norm_age(get_age(row))) is not None:
        data["age"] = age
    for dst, get in text_getters.items():
        if dst not in data and (text := _clean_text(get(row))) is not None:
            data[dst] = text
    if "notes" not in data and (cb := _clean_text(get_cb(row))) is not None and cb.lower() in _YES:
        data["notes"] = "colour-blind"
    art = cast("dict[str, float | str]", data.setdefault("art_interest", {}))  # only set here
    for item, get in art_getters.items():
        if item in art:
            continue
        raw = get(row)
        if (x := _parse_float(raw)) is not None:
            art[item] = min(6.0, max(0.0, x))
        elif (text := _clean_text(raw)) is not None:
            art[item] = text
    if not art:
        del data["art_interest"]


# ----------------------------------------------------------------------------------------------------------------
# Dispatch


def _load_synthetic(root: str | Path, **kw: Unpack[ReadOptions]) -> RatingDataset:
    # The synthetic generator writes the PARA layout on purpose, so the PARA reader is the one code path.
    return replace(load_para(root, **kw), name="synthetic")


_LOADERS: dict[str, Callable[..., RatingDataset]] = {
    "para": load_para,
    "lapis": load_lapis,
    "synthetic": _load_synthetic,
}


def load_dataset(name: str, root: str | Path, **kw: Unpack[ReadOptions]) -> RatingDataset:
    """Read a dataset by name: ``"para"``, ``"lapis"`` or ``"synthetic"``.

    Args:
        name: Dataset name (case-insensitive).
        root: Dataset root.
        **kw: Passed to the reader (``fold``, ``split``, ``seed``, ``captions``).

    Returns:
        The dataset; a synthetic folder is read with :func:`load_para` and named ``"synthetic"``.

    Raises:
        DatasetError: unknown name (with a suggestion), or any reader error.
    """
    key = name.strip().lower()
    loader = _LOADERS.get(key)
    if loader is None:
        close = difflib.get_close_matches(key, list(_LOADERS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known datasets are {', '.join(_LOADERS)}."
        raise DatasetError(f"unknown dataset '{name}'{hint}")
    return loader(root, **kw)
