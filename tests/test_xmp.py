"""XMP sidecars (``pmllm-batch xmp``): stars, keywords and scores next to the photos, read back with exiv2 and with
exiftool as an independent reader; merging with what is there, user ratings, byte-stable re-runs and bad input.

One library is ranked once per module with the demo model through the CLI (``scored``); every test works on its own
copy (``library``, from conftest).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pmllm_batch.config import Settings, XmpSettings
from pmllm_batch.outputs.xmp import refresh_sidecars
from tests.helpers import PROFILES, REPO, CLIEnv, Library, Scored, ranked_library, tree_digest
from tests.imagegen import make_photo_folder

pytestmark = pytest.mark.integration

# 10 photos with the default 10/20/40/20/10 % shares: exactly 1, 2, 4, 2, 1 photos with 5 … 1 stars, by rank.
EXPECTED_STARS = [5, 4, 4, 3, 3, 3, 3, 2, 2, 1]
EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool is not installed (libimage-exiftool-perl)")

USER_SIDECAR = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:darktable="http://darktable.sf.net/"
    xmp:Label="Red"
    darktable:xmp_version="5">
   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">Evening at the lake</rdf:li></rdf:Alt></dc:title>
   <dc:subject><rdf:Bag><rdf:li>holiday</rdf:li></rdf:Bag></dc:subject>
   <darktable:history>
    <rdf:Seq>
     <rdf:li darktable:operation="exposure" darktable:enabled="1" darktable:params="0000803f"/>
    </rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scored]:
    with ranked_library(tmp_path_factory.mktemp("xmp-scored")) as s:
        yield s


def photos_of(lib: Path) -> dict[str, str]:
    return {k: v for k, v in tree_digest(lib).items() if not k.endswith(".xmp")}


def read_exiv2(path: Path) -> dict[str, list[str]]:
    """Every XMP property of a sidecar as exiv2 reads it: key -> items."""
    import exiv2

    image = exiv2.ImageFactory.open(str(path))
    image.readMetadata()
    out: dict[str, list[str]] = {}
    for datum in image.xmpData():
        value = datum.value()
        if datum.typeName() in ("XmpBag", "XmpSeq", "XmpAlt"):
            out[datum.key()] = [value.toString(i) for i in range(value.count())]
        else:
            out[datum.key()] = [datum.toString()]
    return out


def read_exiftool(paths: list[Path]) -> dict[str, dict]:
    """exiftool's reading of the sidecars (-struct, family-1 groups, numbers as numbers): path -> tags."""
    assert EXIFTOOL is not None
    result = subprocess.run(
        [EXIFTOOL, "-j", "-n", "-struct", "-G1", "-XMP:all", *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
    )
    return {item["SourceFile"]: item for item in json.loads(result.stdout)}


def as_list(value: object) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def sidecar(photo: str | Path) -> Path:
    return Path(f"{photo}.xmp")


# ---------------------------------------------------------------------------------------------------------------------
# What is written
# ---------------------------------------------------------------------------------------------------------------------


@needs_exiftool
def test_every_scored_photo_gets_stars_and_every_profiles_keywords_read_back_by_exiv2_and_exiftool(
    library: Library,
) -> None:
    before = photos_of(library.lib)
    summary = library.xmp("--profile", "ana")
    ana = library.ranking("ana")
    assert len(ana) == 10
    assert (summary["photos"], summary["created"], summary["updated"], summary["problems"]) == (10, 10, 0, [])
    assert summary["profiles"] == list(PROFILES)

    # exiv2
    ratings = []
    for item in ana:
        props = read_exiv2(sidecar(item.path))
        ratings.append(int(props["Xmp.xmp.Rating"][0]))
        assert [h.split("|")[1] for h in props["Xmp.lr.hierarchicalSubject"]] == list(PROFILES)
        assert [t.split("/")[1] for t in props["Xmp.digiKam.TagsList"]] == list(PROFILES)
        assert len(props["Xmp.dc.subject"]) == 3
        assert props["Xmp.pmllm.ratingProfile"] == ["ana"]
        assert props["Xmp.pmllm.writtenRating"] == props["Xmp.xmp.Rating"]
    assert ratings == EXPECTED_STARS  # by rank: the top photo has 5 stars
    top = read_exiv2(sidecar(ana[0].path))
    assert "pmllm|ana|5 stars" in top["Xmp.lr.hierarchicalSubject"]
    assert "pmllm/ana/5 stars" in top["Xmp.digiKam.TagsList"]
    assert "pmllm: ana 5 stars" in top["Xmp.dc.subject"]

    # exiftool, independently
    tags = read_exiftool([sidecar(item.path) for item in ana])
    with library.env.store() as store:
        fingerprint = store.status()["current_model"]["fingerprint"]
    others = {name: {r.path: r for r in library.ranking(name)} for name in PROFILES}
    for item, stars in zip(ana, EXPECTED_STARS, strict=True):
        t = tags[str(sidecar(item.path))]
        assert t["XMP-xmp:Rating"] == stars
        hier = as_list(t["XMP-lr:HierarchicalSubject"])
        assert f"pmllm|ana|{stars} star{'s' if stars > 1 else ''}" in hier
        assert len(hier) == len(as_list(t["XMP-digiKam:TagsList"])) == len(as_list(t["XMP-dc:Subject"])) == 3
        assert t["XMP-pmllm:ModelFingerprint"] == fingerprint
        scores = {s["Profile"]: s for s in t["XMP-pmllm:Scores"]}
        assert sorted(scores) == list(PROFILES)
        for name in PROFILES:
            ranked = others[name][item.path]
            assert (scores[name]["Rank"], scores[name]["Score"]) == (ranked.rank, round(ranked.score, 4))
    assert photos_of(library.lib) == before  # photo bytes unchanged
    assert not sidecar(library.lib / "bad" / "truncated.jpg").exists()  # a failed file is not scored


def test_second_run_changes_no_byte(library: Library) -> None:
    first = library.xmp("--profile", "ana")
    assert first["created"] == 10
    sidecars = sorted(library.lib.rglob("*.xmp"))
    stamp = {p: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in sidecars}
    second = library.xmp("--profile", "ana")
    assert (second["created"], second["updated"], second["unchanged"]) == (0, 0, 10)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in sidecars} == stamp
    assert sorted(library.lib.rglob("*.xmp")) == sidecars  # no temporary files left behind
    assert not [p for p in library.lib.rglob(".*.tmp")]


@needs_exiftool
def test_an_existing_sidecar_keeps_title_label_user_keyword_and_darktable_history(library: Library) -> None:
    top = library.ranking("ana")[0].path
    sidecar(top).write_text(USER_SIDECAR, encoding="utf-8")
    summary = library.xmp("--profile", "ana")
    assert (summary["created"], summary["updated"]) == (9, 1)
    t = read_exiftool([sidecar(top)])[str(sidecar(top))]
    assert t["XMP-dc:Title"] == "Evening at the lake"
    assert t["XMP-xmp:Label"] == "Red"
    assert as_list(t["XMP-dc:Subject"])[0] == "holiday" and len(as_list(t["XMP-dc:Subject"])) == 4
    assert t["XMP-darktable:Xmp_version"] == 5
    history = as_list(t["XMP-darktable:History"])
    assert len(history) == 1 and history[0]["Operation"] == "exposure"
    assert t["XMP-xmp:Rating"] == 5  # the sidecar had no rating: ours is written
    props = read_exiv2(sidecar(top))
    assert props["Xmp.darktable.history[1]/darktable:params"] == ["0000803f"]


@needs_exiftool
def test_a_rating_changed_in_a_photo_app_survives_a_rerun_unless_overwrite_ratings(library: Library) -> None:
    from pmllm_batch.outputs.stars import stars_by_hash

    ana = library.ranking("ana")
    top = ana[0].path
    # a rating the user picks that neither ana's (5) nor bernd's stars for this photo would give
    bernd_star = stars_by_hash(library.ranking("bernd"))[ana[0].content_hash]
    user = next(r for r in (1, 2, 3, 4) if r != bernd_star)
    library.xmp("--profile", "ana")
    # The user demotes the top photo in their app (exiftool stands in for it).
    subprocess.run(
        [str(EXIFTOOL), "-q", "-overwrite_original", f"-XMP-xmp:Rating={user}", str(sidecar(top))], check=True
    )
    again = library.xmp("--profile", "ana")
    assert (again["kept_ratings"], again["updated"], again["unchanged"]) == (1, 0, 10)
    assert read_exiv2(sidecar(top))["Xmp.xmp.Rating"] == [str(user)]

    # Another person's stars: every rating we wrote follows, the user's stays.
    other = library.xmp("--profile", "bernd")
    assert other["kept_ratings"] == 1 and other["updated"] + other["unchanged"] == 10
    assert read_exiv2(sidecar(top))["Xmp.xmp.Rating"] == [str(user)]

    forced = library.xmp("--profile", "ana", "--overwrite-ratings")
    assert (forced["kept_ratings"], forced["updated"]) == (0, 10)
    props = read_exiv2(sidecar(top))
    assert props["Xmp.xmp.Rating"] == ["5"] and props["Xmp.pmllm.writtenRating"] == ["5"]


def test_a_sidecar_with_a_rating_but_none_of_ours_counts_as_the_users(library: Library) -> None:
    top = library.ranking("ana")[0].path
    sidecar(top).write_text(USER_SIDECAR.replace('xmp:Label="Red"', 'xmp:Label="Red" xmp:Rating="2"'), "utf-8")
    summary = library.xmp("--profile", "ana")
    assert summary["kept_ratings"] == 1
    props = read_exiv2(sidecar(top))
    assert props["Xmp.xmp.Rating"] == ["2"] and "Xmp.pmllm.writtenRating" not in props
    assert "pmllm|ana|5 stars" in props["Xmp.lr.hierarchicalSubject"]  # keywords still say what we think


def test_replace_naming_writes_photo_xmp_and_dry_run_writes_nothing(library: Library) -> None:
    before = tree_digest(library.lib)
    dry = library.xmp("--profile", "coarse", "--naming", "replace", "--dry-run")
    assert (dry["dry_run"], dry["created"]) == (True, 10)
    assert tree_digest(library.lib) == before

    summary = library.xmp("--profile", "coarse", "--naming", "replace")
    assert summary["created"] == 10
    landscape = library.lib / "landscape.jpg"
    assert (library.lib / "landscape.xmp").is_file() and not sidecar(landscape).exists()
    assert read_exiv2(library.lib / "landscape.xmp")["Xmp.pmllm.ratingProfile"] == ["coarse"]


def test_paths_limit_which_folders_get_sidecars(library: Library) -> None:
    trip = library.lib / "2021" / "trip"
    summary = library.xmp("--profile", "ana", str(trip))
    assert summary["photos"] == summary["created"] == 2
    assert sorted(p.name for p in library.lib.rglob("*.xmp")) == ["beach.JPG.xmp", "night.tiff.xmp"]


def test_plain_text_output_names_the_counts(library: Library) -> None:
    code, out, err = library.run("xmp", "--profile", "ana")
    assert (code, err) == (0, "")
    assert out == (
        "stars for ana, keywords for ana, bernd, coarse (append naming): 10 photos; 10 sidecars created, "
        "0 updated, 0 unchanged, 0 user ratings kept, 0 skipped\n"
    )


def test_plain_text_output_counts_one_in_the_singular(library: Library) -> None:
    top = library.ranking("ana")[0].path
    code, out, err = library.run("xmp", "--profile", "ana", top)
    assert (code, err) == (0, "")
    assert out.endswith(": 1 photo; 1 sidecar created, 0 updated, 0 unchanged, 0 user ratings kept, 0 skipped\n")
    edited = sidecar(top).read_text(encoding="utf-8").replace('xmp:Rating="5"', 'xmp:Rating="2"')
    sidecar(top).write_text(edited, encoding="utf-8")  # the user demotes it in a photo app
    code, out, err = library.run("xmp", "--profile", "ana", top, "--dry-run")
    assert (code, err) == (0, "")
    assert out.endswith(
        ": 1 photo; 0 sidecars would be created, 0 would be updated, 1 unchanged, 1 user rating kept, 0 skipped "
        "(dry run: nothing was written)\n"
    )


# ---------------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------------


def test_read_only_folder_corrupt_sidecar_and_deleted_photo_are_counted_and_nothing_else_is_touched(
    library: Library,
) -> None:
    lib = library.lib
    trip = lib / "2021" / "trip"
    (lib / "gray.png").unlink()  # deleted since the ranking
    corrupt = sidecar(lib / "small.png")
    corrupt.write_bytes(b"this is not XML <rdf:RDF")
    half = sidecar(lib / "web.webp")
    half.write_text(USER_SIDECAR[: len(USER_SIDECAR) // 2], encoding="utf-8")  # truncated XMP
    trip.chmod(0o555)
    before = tree_digest(lib)

    code, out, err = library.run("xmp", "--profile", "ana", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["problem_counts"] == {"photo_missing": 1, "corrupt_sidecar": 2, "read_only_folder": 2}
    reasons = {Path(p["path"]).name: p["reason"] for p in summary["problems"]}
    assert reasons == {
        "gray.png": "photo_missing",
        "small.png": "corrupt_sidecar",
        "web.webp": "corrupt_sidecar",
        "beach.JPG": "read_only_folder",
        "night.tiff": "read_only_folder",
    }
    assert all(p["message"] for p in summary["problems"])
    assert summary["created"] == 5 and summary["photos"] == 10

    after = tree_digest(lib)
    new = sorted(set(after) - set(before))
    assert new == sorted(
        f"{name}.xmp" for name in ("alpha.png", "landscape.jpg", "odd_size.jpeg", "palette.gif", "portrait.jpg")
    )
    assert {k: v for k, v in after.items() if k in before} == before  # nothing that was there changed
    assert sorted(os.listdir(trip)) == ["beach.JPG", "night.tiff"]

    code, out, _ = library.run("xmp", "--profile", "ana")
    assert code == 0
    assert "skipped: photo_missing 1, corrupt_sidecar 2, read_only_folder 2" in out
    assert f"  {lib / 'gray.png'}: photo_missing — the photo is no longer on disk" in out


def test_a_sidecar_marked_read_only_is_left_alone(library: Library) -> None:
    target = sidecar(library.ranking("ana")[0].path)
    target.write_text(USER_SIDECAR, encoding="utf-8")
    target.chmod(0o444)
    summary = library.xmp("--profile", "ana")
    assert summary["problem_counts"] == {"read_only_sidecar": 1}
    assert target.read_text(encoding="utf-8") == USER_SIDECAR


def test_a_sidecar_the_photo_app_saves_during_the_merge_is_left_as_the_app_wrote_it(
    library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pmllm_batch.outputs.xmp as xmp_module

    target = sidecar(library.ranking("ana")[0].path)
    target.unlink(missing_ok=True)
    check = xmp_module._write_problem  # runs after our merge was computed, before it is written

    def app_saves_meanwhile(folder: Path, path: Path, *args: object) -> object:
        if path == target and not target.exists():  # digiKam writes the person's stars while we merge
            target.write_text(USER_SIDECAR, encoding="utf-8")
        return check(folder, path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(xmp_module, "_write_problem", app_saves_meanwhile)
    summary = library.xmp("--profile", "ana")
    assert summary["problem_counts"] == {"changed_while_writing": 1}
    assert target.read_text(encoding="utf-8") == USER_SIDECAR  # the app's write survives
    monkeypatch.undo()
    again = library.xmp("--profile", "ana")  # the next run merges it, keeping the person's rating
    assert again["problem_counts"] == {} and 'xmp:Rating="' in target.read_text(encoding="utf-8")


def test_an_unknown_profile_is_one_sentence_and_writes_nothing(library: Library) -> None:
    before = tree_digest(library.lib)
    code, out, err = library.run("xmp", "--profile", "zed")
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.splitlines() == ["pmllm-batch: error: unknown profile 'zed'; known profiles: ana, bernd, coarse."]
    code, _, err = library.run("xmp")
    assert code == 2 and "--profile NAME" in err
    code, _, err = library.run("xmp", "--profile", "ana", str(library.lib / "nope"))
    assert code == 2 and err.strip().endswith("does not exist.")
    assert tree_digest(library.lib) == before


def test_star_shares_that_do_not_add_up_are_a_config_error(library: Library) -> None:
    library.env.write_config("[xmp]\nstars_5 = 50.0\n")
    code, out, err = library.run("xmp", "--profile", "ana")
    assert code == 2 and "Traceback" not in err
    assert "must add up to 100 percent (got 140)" in err


# ---------------------------------------------------------------------------------------------------------------------
# Daemon hook and configuration
# ---------------------------------------------------------------------------------------------------------------------


def test_refresh_sidecars_follows_the_xmp_section(library: Library) -> None:
    off = Settings()
    with library.env.store() as store:
        nothing = refresh_sidecars(store, off)
        assert (nothing.profile, nothing.photos) == ("", 0)
        assert not list(library.lib.rglob("*.xmp"))

        on = dataclasses.replace(off, xmp=XmpSettings(profile="bernd", naming="replace"))
        first = refresh_sidecars(store, on)
        assert (first.profile, first.created, first.problems) == ("bernd", 10, [])
        again = refresh_sidecars(store, on, paths=[library.lib / "2021"])
        assert (again.photos, again.unchanged) == (2, 2)
    assert len(list(library.lib.rglob("*.xmp"))) == 10 and (library.lib / "landscape.xmp").is_file()


def test_star_cut_points_come_from_the_config(library: Library) -> None:
    library.env.write_config(
        "[xmp]\nstars_5 = 50.0\nstars_4 = 0.0\nstars_3 = 0.0\nstars_2 = 0.0\nstars_1 = 50.0\n"
    )
    library.xmp("--profile", "ana")
    ratings = [int(read_exiv2(sidecar(item.path))["Xmp.xmp.Rating"][0]) for item in library.ranking("ana")]
    assert ratings == [5] * 5 + [1] * 5


def test_new_sidecars_get_the_usual_file_permissions(library: Library) -> None:
    library.xmp("--profile", "ana")
    mode = stat.S_IMODE(sidecar(library.lib / "landscape.jpg").stat().st_mode)
    assert mode == 0o666 & ~_umask()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_the_daemon_keeps_sidecars_fresh_when_xmp_profile_is_set(env: CLIEnv, tmp_path: Path) -> None:
    lib = tmp_path / "watched"
    make_photo_folder(lib)
    code, _, err = env.run_cli("profile", "add", str(REPO / "examples" / "profiles" / "ana.toml"))
    assert code == 0, err
    env.write_config('[xmp]\nprofile = "ana"\n')
    before = photos_of(lib)
    code, _, err = env.run_cli("watch", str(lib), "--once", "--settle", "0")
    assert code == 0, err
    with env.store() as store:
        ranking = store.ranking("ana")
    assert len(ranking) == 10  # make_photo_folder's 10 photos
    assert sorted(p.name for p in lib.rglob("*.xmp")) == sorted(f"{Path(r.path).name}.xmp" for r in ranking)
    stars = {r.path: read_exiv2(sidecar(r.path))["Xmp.xmp.Rating"] for r in ranking}
    assert stars[ranking[0].path] == ["5"]
    assert all(v[0] in {"1", "2", "3", "4", "5"} for v in stars.values())
    assert photos_of(lib) == before  # only sidecars were added
    # without the key the daemon writes none
    other = tmp_path / "plain"
    make_photo_folder(other)
    env.write_config("")
    code, _, err = env.run_cli("watch", str(other), "--once", "--settle", "0")
    assert code == 0, err
    assert not list(other.rglob("*.xmp"))
