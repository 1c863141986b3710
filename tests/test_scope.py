"""What an output shows (issue: real photo libraries): ``rank PATH`` only what is under PATH; ``--under``,
``--since`` and ``--until`` on export, albums, report and xmp; exact duplicates list every file; photos too small to
judge are never ranked.

One library of two folders (A and B, real example photos with EXIF capture times, two without a capture time but with
known file times, one exact copy, one 10x15 TIFF) is ranked once per module through the CLI with the demo model:
first ``rank B``, then ``rank A``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import text

from tests.helpers import CLIEnv, isolated_env

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "photos"
# name -> (folder, EXIF capture time or None, file time)
PHOTOS = {
    "astronaut": ("A", "2020:01:15 10:00:00", None),
    "camera": ("A", "2021:06:01 09:30:00", None),
    "chelsea": ("A", None, datetime(2019, 3, 10, 12, 0)),  # no capture time: its file time counts
    "clock": ("B", "2020:07:04 18:00:00", None),
    "coffee": ("B", "2022:12:31 23:59:00", None),
    "rocket": ("B", None, datetime(2022, 12, 31, 8, 0)),
}


def exif_at(when: str) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0132] = when
    exif.get_ifd(0x8769)[0x9003] = when
    return exif


@dataclass
class Library:
    env: CLIEnv
    root: Path
    rank_a: str  # stdout of `rank A --json`, run after `rank B`

    def run(self, *args: str) -> str:
        code, out, err = self.env.run_cli(*args)
        assert code == 0, err
        return out

    def export(self, *args: str) -> list[dict]:
        return json.loads(self.run("export", "--profile", "ana", "--format", "json", *args))


def shown(rows: list[dict]) -> list[str]:
    return sorted(Path(r["path"]).stem for r in rows)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[Library]:
    base = tmp_path_factory.mktemp("scope")
    with isolated_env(base, {"PMLLM_PATHS__CACHE_DIR": str(model_cache)}) as env:
        env.write_config("[scan]\nmin_side = 24\n")  # the shipped default too, but the tests depend on it
        root = base / "photos"
        for name, (folder, when, mtime) in PHOTOS.items():
            target = root / folder / f"{name}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            img = Image.open(EXAMPLES / f"{name}.jpg").convert("RGB")
            img.save(target, quality=95, **({"exif": exif_at(when)} if when else {}))
            if mtime is not None:
                os.utime(target, (mtime.timestamp(), mtime.timestamp()))
        (root / "A" / "copies").mkdir()
        shutil.copy2(root / "A" / "astronaut.jpg", root / "A" / "copies" / "astronaut (1).jpg")  # the same bytes
        Image.new("RGB", (10, 15), (250, 20, 20)).save(root / "A" / "pixel.tiff")  # nothing to judge
        code, _, err = env.run_cli("profile", "add", str(env.write_profile("ana", age=30, gender="female")))
        assert code == 0, err
        code, _, err = env.run_cli("rank", str(root / "B"), "--json")
        assert code == 0, err
        code, rank_a, err = env.run_cli("rank", str(root / "A"), "--json")
        assert code == 0, err
        yield Library(env=env, root=root, rank_a=rank_a)


def test_rank_a_lists_only_the_photos_under_a(library: Library) -> None:
    (ranking,) = [json.loads(line) for line in library.rank_a.splitlines()[:-1]]
    assert shown(ranking["top"]) == ["astronaut", "camera", "chelsea"]
    assert all(r["path"].startswith(str(library.root / "A") + os.sep) for r in ranking["top"])
    assert [r["rank"] for r in ranking["top"]] == [1, 2, 3]
    # the database holds both folders: B is still ranked, and shown when asked for
    assert shown(library.export()) == ["astronaut", "camera", "chelsea", "clock", "coffee", "rocket"]
    assert shown(library.export("--under", str(library.root / "B"))) == ["clock", "coffee", "rocket"]
    b_only = library.run("rank", str(library.root / "B"), "--top", "10")
    assert "/A/" not in b_only and b_only.count("/B/") == 3


def test_exact_duplicates_are_one_row_listing_every_file(library: Library) -> None:
    (row,) = [r for r in library.export() if Path(r["path"]).stem == "astronaut"]
    assert row["paths"] == [str(library.root / "A" / "astronaut.jpg"), str(library.root / "A" / "copies" /
                                                                           "astronaut (1).jpg")]
    csv_text = library.run("export", "--profile", "ana", "--format", "csv")
    assert f"{library.root / 'A' / 'astronaut.jpg'};{library.root / 'A' / 'copies' / 'astronaut (1).jpg'}" in csv_text
    # scoped to the copies folder: the copy is the photo shown, the original still listed
    (copy,) = library.export("--under", str(library.root / "A" / "copies"))
    assert Path(copy["path"]).name == "astronaut (1).jpg" and len(copy["paths"]) == 2


def test_a_tiny_image_is_skipped_as_too_small_and_never_ranked(library: Library) -> None:
    with library.env.store() as store, store.engine.connect() as conn:
        row = conn.execute(text("SELECT status, error_reason, width, height FROM photos WHERE path LIKE '%pixel.tiff'"))
        assert tuple(row.one()) == ("skipped", "too_small", 10, 15)
        assert store.status()["photos"] == {"ok": 7, "failed": 0, "missing": 0, "skipped": 1}
    (ranking,) = [json.loads(line) for line in library.rank_a.splitlines()[:-1]]
    assert "pixel" not in shown(ranking["top"]) and "pixel" not in shown(library.export())
    assert json.loads(library.rank_a.splitlines()[-1])["too_small"] == 1


def test_since_and_until_use_the_capture_date_else_the_file_time(library: Library) -> None:
    assert shown(library.export("--since", "2021-01-01")) == ["camera", "coffee", "rocket"]
    assert shown(library.export("--until", "2020-07-04")) == ["astronaut", "chelsea", "clock"]  # inclusive day
    assert shown(library.export("--since", "2020-01-01", "--until", "2020-12-31")) == ["astronaut", "clock"]
    assert shown(library.export("--since", "2022-12-31T12:00")) == ["coffee"]  # the rocket file is from 08:00
    assert shown(library.export("--under", str(library.root / "A"), "--since", "2021-01-01")) == ["camera"]
    ranks = [r["rank"] for r in library.export("--since", "2021-01-01")]
    assert ranks == [1, 2, 3]  # ranks within what is shown


def test_albums_report_and_xmp_take_the_same_scope(library: Library, tmp_path: Path) -> None:
    b = str(library.root / "B")
    library.run("albums", "--out", str(tmp_path / "albums"), "--under", b, "--until", "2022-01-01")
    assert sorted(e.name.split("_", 1)[1] for e in (tmp_path / "albums" / "ana").iterdir() if e.is_symlink()) == [
        "clock.jpg"]
    report = json.loads(library.run("report", "--out", str(tmp_path / "report"), "--json", "--since", "2021-01-01"))
    assert report["people"]["ana"]["ranked"] == 3
    page = (tmp_path / "report" / "person-ana.html").read_text(encoding="utf-8")
    assert "coffee.jpg" in page and "clock.jpg" not in page and "taken 2021-01-01 00:00:00" in page
    xmp = json.loads(library.run("xmp", "--profile", "ana", "--dry-run", "--json", "--under", str(library.root / "A"),
                                 "--until", "2020-12-31"))
    assert (xmp["photos"], xmp["created"]) == (3, 3)  # astronaut, its copy, chelsea


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "last week"], "--since 'last week' is not a date"),
        (["--since", "2021-02-01", "--until", "2021-01-01"], "is after --until"),
    ],
)
def test_a_bad_date_is_one_sentence_and_exit_2(library: Library, args: list[str], message: str) -> None:
    code, out, err = library.env.run_cli("export", "--profile", "ana", *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_min_side_decides_what_is_too_small_and_a_change_applies_on_the_next_scan(
    env: CLIEnv, tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PMLLM_PATHS__CACHE_DIR", str(model_cache))
    lib = tmp_path / "lib"
    lib.mkdir()
    for name, size in [("big", (200, 150)), ("mid", (120, 80)), ("tiny", (10, 15))]:
        Image.open(EXAMPLES / "coffee.jpg").convert("RGB").resize(size).save(lib / f"{name}.png")
    code, _, err = env.run_cli("profile", "add", str(env.write_profile("ana", age=30)))
    assert code == 0, err

    def ranked(min_side: int) -> tuple[list[str], dict]:
        env.write_config(f"[scan]\nmin_side = {min_side}\n[group]\nenabled = false\n")
        code, out, err = env.run_cli("rank", str(lib), "--json")
        assert code == 0, err
        lines = out.splitlines()
        return shown(json.loads(lines[0])["top"]), json.loads(lines[-1])

    names, summary = ranked(24)
    assert names == ["big", "mid"] and summary["too_small"] == 1 and summary["encoded"] == 2
    names, summary = ranked(100)  # raised: the 120x80 photo is now too small, without being changed
    assert names == ["big"] and summary["too_small"] == 2 and summary["encoded"] == 0
    names, summary = ranked(0)  # 0: every size is ranked
    assert names == ["big", "mid", "tiny"] and summary["too_small"] == 0 and summary["encoded"] == 1
