"""Tiny PARA-layout and LAPIS-layout dataset folders for tests (a few users, a few 4x4-pixel images).

Each writer returns a :class:`Fixture` describing exactly what was written, so tests derive their
expectations from it instead of repeating magic numbers.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

PARA_IMAGE_COLUMNS = [
    "sessionId",
    "imageName",
    "userId",
    "aestheticScore",
    "qualityScore",
    "compositionScore",
    "colorScore",
    "dofScore",
    "contentScore",
    "lightScore",
    "isObjectEmphasis",  # a real PARA column the reader must ignore
    "contentPreference",
    "willingnessToShare",
]
PARA_USER_COLUMNS = [
    "userId",
    "age",
    "gender",
    "EducationalLevel",
    "artExperience",
    "photographyExperience",
    "personality-E",
    "personality-A",
    "personality-N",
    "personality-O",
    "personality-C",
]
PARA_USERS = ["A11", "A12", "B21", "B22", "C31", "C32"]
# userId -> row of PARA-UserInfo.csv (C32 is coarse; B22 has out-of-range values and a ">40" age bin)
PARA_USERINFO: dict[str, dict[str, str]] = {
    "A11": {
        "age": "22-25",
        "gender": "female",
        "EducationalLevel": "university",
        "artExperience": "competent",
        "photographyExperience": "expert",
        "personality-E": "7",
        "personality-A": "6",
        "personality-N": "3",
        "personality-O": "9",
        "personality-C": "5",
    },
    "A12": {
        "age": "18-21",
        "gender": "male",
        "EducationalLevel": "senior_high_school",
        "artExperience": "beginner",
        "photographyExperience": "beginner",
        "personality-E": "2",
        "personality-A": "8",
        "personality-N": "6",
        "personality-O": "4",
        "personality-C": "7",
    },
    "B21": {
        "age": "30-34",
        "gender": "male",
        "EducationalLevel": "junior_college",
        "artExperience": "proficient",
        "photographyExperience": "competent",
        "personality-E": "5",
        "personality-A": "5",
        "personality-N": "5",
        "personality-O": "5",
        "personality-C": "5",
    },
    "B22": {
        "age": ">40",
        "gender": "female",
        "EducationalLevel": "university",
        "artExperience": "expert",
        "photographyExperience": "proficient",
        "personality-E": "12",
        "personality-A": "0",
        "personality-N": "4",
        "personality-O": "8",
        "personality-C": "6",
    },
    "C31": {
        "age": "26-29",
        "gender": "female",
        "EducationalLevel": "technical_secondary_school",
        "artExperience": "competent",
        "photographyExperience": "competent",
        "personality-E": "6",
        "personality-A": "7",
        "personality-N": "2",
        "personality-O": "6",
        "personality-C": "8",
    },
    "C32": {
        "age": "",
        "gender": "nan",
        "EducationalLevel": "",
        "artExperience": "NaN",
        "photographyExperience": "",
        "personality-E": "",
        "personality-A": "",
        "personality-N": "",
        "personality-O": "3",
        "personality-C": "",
    },
}
PARA_FOLDS = {
    # fold -> (train ids, test ids) as written to userset/; "Z99" is not in the data and must be ignored
    1: (["A11", "A12", "B21", "C31", "Z99"], ["B22", "C32"]),
    2: (["A12", "B21", "B22", "C32"], ["A11", "C31", "Z99"]),
}

LAPIS_COLUMNS = [
    "file",
    "image_id",
    "response",
    "participant_id",
    "age",
    "nationality",
    "demo_gender",
    "demo_edu",
    "demo_colorblind",
    "style",
    "genre",
    *[f"VAIAK{i}" for i in range(1, 8)],
    *[f"2VAIAK{i}" for i in range(1, 5)],
]
LAPIS_USERS = ["101", "102", "103", "104", "105", "106"]
# participant -> demographics repeated on each of their rows (105 is coarse; 104 has out-of-range values)
LAPIS_DEMO: dict[str, dict[str, str]] = {
    "101": {
        "age": "34",
        "nationality": "Belgian",
        "demo_gender": "female",
        "demo_edu": "Master",
        "demo_colorblind": "No",
    },
    "102": {
        "age": "27",
        "nationality": "Dutch",
        "demo_gender": "male",
        "demo_edu": "Bachelor",
        "demo_colorblind": "Yes",
    },
    "103": {"age": "61", "nationality": "German", "demo_gender": "female", "demo_edu": "PhD", "demo_colorblind": "No"},
    "104": {
        "age": "250",
        "nationality": "French",
        "demo_gender": "male",
        "demo_edu": "Bachelor",
        "demo_colorblind": "",
    },
    "105": {"age": "", "nationality": "", "demo_gender": "NaN", "demo_edu": "", "demo_colorblind": ""},
    "106": {
        "age": "45.0",
        "nationality": "Belgian",
        "demo_gender": "non-binary",
        "demo_edu": "",
        "demo_colorblind": "No",
    },
}


@dataclass
class Fixture:
    """What a fixture writer put on disk.

    Attributes:
        root: Dataset root.
        rows: The rating rows written, as dicts keyed by CSV column.
        images: Image paths relative to ``root`` (every image referenced by a row).
        missing: Relative image paths deleted after writing (their rows must be skipped).
        folds: fold -> (train ids, test ids) written to ``userset/`` (empty for LAPIS).
    """

    root: Path
    rows: list[dict[str, str]]
    images: list[str]
    missing: list[str] = field(default_factory=list)
    folds: dict[int, tuple[list[str], list[str]]] = field(default_factory=dict)

    def rows_of(self, user: str) -> list[dict[str, str]]:
        return [r for r in self.rows if r.get("userId", r.get("participant_id")) == user]


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def _write_image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    Image.new("RGB", (4, 4), (shade % 256, (shade * 7) % 256, (shade * 13) % 256)).save(path, format=fmt)


def write_para_fixture(
    root: Path,
    *,
    with_folds: bool = True,
    missing_images: Sequence[int] = (),
    n_images: int = 10,
    ratings_per_user: int = 5,
) -> Fixture:
    """Write a PARA-layout folder: 6 users, ``n_images`` images in 2 sessions, fold files for folds 1 and 2.

    User ``u`` (index ``k``) rates images ``k, k+1, ..., k+ratings_per_user-1`` (mod ``n_images``) with
    ``aestheticScore = 1 + 0.5 * ((k + j) % 9)``. Attribute ``dofScore`` is left empty on the first row.

    Args:
        root: Folder to create.
        with_folds: Write ``userset/`` fold files (``PARA_FOLDS``).
        missing_images: Indices of images to delete after writing.
        n_images: Number of images.
        ratings_per_user: Ratings per user.

    Returns:
        The fixture description.
    """
    images = [f"session{1 + j * 2 // n_images}/iaa_pub{j + 1}_.jpg" for j in range(n_images)]
    rows: list[dict[str, str]] = []
    for k, uid in enumerate(PARA_USERS):
        for i in range(ratings_per_user):
            j = (k + i) % n_images
            session, name = images[j].split("/")
            score = 1.0 + 0.5 * ((k + j) % 9)
            row = {"sessionId": session, "imageName": name, "userId": uid, "aestheticScore": f"{score:g}"}
            for a, col in enumerate(PARA_IMAGE_COLUMNS[4:]):
                row[col] = str(1 + (k + j + a) % 5)
            row["isObjectEmphasis"] = "1"
            rows.append(row)
    rows[0]["dofScore"] = ""
    _write_csv(root / "annotation" / "PARA-Images.csv", PARA_IMAGE_COLUMNS, rows)
    _write_csv(
        root / "annotation" / "PARA-UserInfo.csv",
        PARA_USER_COLUMNS,
        [{"userId": uid, **PARA_USERINFO[uid]} for uid in PARA_USERS],
    )
    for j, rel in enumerate(images):
        _write_image(root / "imgs" / rel, 20 * j)
    missing = [images[j] for j in missing_images]
    for rel in missing:
        (root / "imgs" / rel).unlink()
    folds: dict[int, tuple[list[str], list[str]]] = {}
    if with_folds:
        (root / "userset").mkdir(parents=True, exist_ok=True)
        for fold, (train, test) in PARA_FOLDS.items():
            # blank lines and trailing spaces are part of the test: the reader must strip them
            (root / "userset" / f"TrainUserIDs_Fold{fold}.txt").write_text("\n".join(train) + "\n\n", encoding="utf-8")
            (root / "userset" / f"TestUserIDs_Fold{fold}.txt").write_text(
                "\n".join(f"{u} " for u in test) + "\n", encoding="utf-8"
            )
            folds[fold] = (train, test)
    return Fixture(root=root, rows=rows, images=images, missing=missing, folds=folds)


LAPIS_RESPONSES = [0, 50, 100, 25, 75, 10, 90, 33, 66, 45]


def write_lapis_fixture(
    root: Path,
    *,
    missing_images: Sequence[int] = (),
    n_images: int = 10,
    ratings_per_user: int = 5,
) -> Fixture:
    """Write a LAPIS-layout folder without fold files: 6 participants, ``n_images`` images.

    Participant index ``k`` rates images ``k .. k+ratings_per_user-1`` (mod ``n_images``) with response
    ``LAPIS_RESPONSES[(k + i) % 10]``, so participant 101 gives 0, 50, 100, 25, 75. VAIAK items: participant
    101 has all 11 (``VAIAK1`` = 9, out of range), 105 none, the others only ``VAIAK1..3``; participant 102's
    first row leaves its age empty (later rows carry it).

    Args:
        root: Folder to create.
        missing_images: Indices of images to delete after writing.
        n_images: Number of images.
        ratings_per_user: Ratings per participant.

    Returns:
        The fixture description.
    """
    images = [f"lapis_{j + 1}.jpg" for j in range(n_images)]
    rows: list[dict[str, str]] = []
    for k, uid in enumerate(LAPIS_USERS):
        for i in range(ratings_per_user):
            j = (k + i) % n_images
            row = {
                "file": images[j],
                "image_id": str(j + 1),
                "response": str(LAPIS_RESPONSES[(k + i) % len(LAPIS_RESPONSES)]),
                "participant_id": uid,
                "style": "impressionism",
                "genre": "landscape",
                **LAPIS_DEMO[uid],
            }
            if uid == "101":
                row.update({f"VAIAK{n}": str(n % 7) for n in range(1, 8)})
                row.update({f"2VAIAK{n}": str(n) for n in range(1, 5)})
                row["VAIAK1"] = "9"
            elif uid != "105":
                row.update({"VAIAK1": "2", "VAIAK2": "3", "VAIAK3": "4"})
            if uid == "102" and i == 0:
                row["age"] = ""
            rows.append(row)
    _write_csv(root / "annotation" / "LAPIS_individualratings_metaANDdemodata.csv", LAPIS_COLUMNS, rows)
    for j, rel in enumerate(images):
        _write_image(root / "images" / rel, 30 * j)
    missing = [images[j] for j in missing_images]
    for rel in missing:
        (root / "images" / rel).unlink()
    return Fixture(root=root, rows=rows, images=images, missing=missing)


def write_captions(path: Path, entries: dict[str, str]) -> Path:
    """Write a captions CSV ``image,caption``."""
    _write_csv(path, ["image", "caption"], ({"image": k, "caption": v} for k, v in entries.items()))
    return path
