"""``pmllm-batch rate`` and ``profile show``'s ratings (issue 22, "ratings in"), through the real CLI.

One library of five photos is ranked once per module (``ranked``) with the stand-in model of tests/doubles.py (the
pipeline is real, the model a mean colour: no weights to load); each test gets its own copy of the photos and the
database (``lib``), writes sidecars or moves files there, and reads what was stored with ``Store.ratings``. The
sidecar, darktable and digiKam fixtures are those of tests/test_ratings_ingest.py. Tests write only under tmp_path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pmllm_batch.scan import content_hash
from tests.doubles import use_fake_models
from tests.helpers import REPO, CLIEnv, Library, Scored, isolated_env, scored_copy, tree_digest
from tests.imagegen import make_photo
from tests.test_ratings_ingest import (
    DARKTABLE_ATTRS,
    DARKTABLE_NS,
    DIGIKAM_NS,
    DK_DB,
    DT,
    DT_FOLDER,
    PMLLM_NS,
    T0,
    _embed,
    _photo,
    _sidecar,
)

NAMES = ("a", "b", "c", "d", "e")


@pytest.fixture(scope="module")
def ranked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scored]:
    base = tmp_path_factory.mktemp("rate")
    with pytest.MonkeyPatch.context() as mp, isolated_env(base) as env:
        use_fake_models(mp.setattr)
        lib = base / "library"
        lib.mkdir()
        for i, name in enumerate(NAMES):
            make_photo(lib / f"{name}.jpg", (64, 48), seed=10 + i)
        assert env.run_cli("profile", "add", str(REPO / "examples" / "profiles" / "ana.toml"))[0] == 0
        code, _, err = env.run_cli("rank", str(lib))
        assert code == 0, err
        yield Scored(lib=lib, db=env.db_path)


@pytest.fixture
def lib(ranked: Scored, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Library]:
    """This test's copy of the ranked library (photos and database); ``rank`` runs the stand-in model."""
    use_fake_models(monkeypatch.setattr)
    with scored_copy(ranked, tmp_path / "copy") as copy:
        yield copy


def rate(lib: Library, *args: str) -> dict:
    """``rate --profile ana ARGS --json``, which must succeed; its JSON."""
    code, out, err = lib.run("rate", "--profile", "ana", *args, "--json")
    assert code == 0, err
    return json.loads(out)


def stars(env: CLIEnv, *photos: Path, in_library: bool = False) -> dict[str, tuple[int, str]]:
    """Photo name -> (stars, source) of ana's stored ratings of these photos (by their content now)."""
    with env.store() as store:
        stored = store.ratings("ana", in_library=in_library)
    out = {}
    for photo in photos:
        rating = stored.get(content_hash(photo))
        if rating is not None:
            out[photo.name] = (rating.stars, rating.source)
    return out


def show(env: CLIEnv) -> tuple[str, dict]:
    """``profile show ana``: its ratings line (text) and its ratings (JSON)."""
    code, out, err = env.run_cli("profile", "show", "ana")
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("ratings: "))
    code, out, err = env.run_cli("profile", "show", "ana", "--json")
    assert code == 0, err
    return line, json.loads(out)["ratings"]


def error(env: CLIEnv, *args: str) -> str:
    """A command that must fail with exit 2 and one sentence; that sentence."""
    code, out, err = env.run_cli(*args)
    assert code == 2, (out, err)
    assert out == "" and len(err.strip().splitlines()) == 1, err
    return err.strip().removeprefix("pmllm-batch: error: ")


# ---------------------------------------------------------------------------------------------------------------------
# --from-xmp: sidecars in both namings, digiKam's pick label, embedded XMP, what is ours, 0, corrupt sidecars
# ---------------------------------------------------------------------------------------------------------------------


def test_darktable_sidecar_minus_one_is_stored_as_rejected(lib: Library) -> None:
    _sidecar(lib.lib / "a.jpg.xmp", f'xmp:Rating="-1" {DARKTABLE_ATTRS}', namespaces=DARKTABLE_NS)
    code, out, err = lib.run("rate", "--profile", "ana", "--from-xmp", str(lib.lib / "a.jpg"))
    assert code == 0, err
    assert out == "ana: 1 rating stored (1 new, 0 changed, 0 unchanged); 0 cleared; 0 unrated; 0 skipped\n"
    assert stars(lib.env, lib.lib / "a.jpg") == {"a.jpg": (-1, "xmp-sidecar")}
    with lib.env.store() as store:
        (rating,) = store.ratings("ana").values()
    assert rating.detail == str(lib.lib / "a.jpg.xmp")


def test_lightroom_sidecar(lib: Library) -> None:
    _sidecar(lib.lib / "b.xmp", 'xmp:Rating="4" xmp:CreatorTool="Adobe Photoshop Lightroom Classic 13.0"')
    data = rate(lib, "--from-xmp", str(lib.lib))
    assert (data["stored"], data["new"], data["unrated"], data["skipped"]) == (1, 1, 4, [])
    assert stars(lib.env, *lib.lib.glob("*.jpg")) == {"b.jpg": (4, "xmp-sidecar")}


def test_both_namings_the_winner_is_said(lib: Library) -> None:
    _sidecar(lib.lib / "c.jpg.xmp", 'xmp:Rating="2"', mtime_ns=T0)
    _sidecar(lib.lib / "c.xmp", 'xmp:Rating="5"', mtime_ns=T0 + 10**9)
    code, out, err = lib.run("rate", "--profile", "ana", "--from-xmp", str(lib.lib))
    assert code == 0, err
    assert f"  note: {lib.lib / 'c.jpg'}: c.xmp says 5 stars and c.jpg.xmp says 2 stars; c.xmp wins because it was " \
           "modified last" in out.splitlines()
    assert stars(lib.env, lib.lib / "c.jpg") == {"c.jpg": (5, "xmp-sidecar")}


def test_digikam_pick_label_rejected(lib: Library) -> None:
    _sidecar(lib.lib / "d.jpg.xmp", 'xmp:Rating="3" digiKam:PickLabel="1"', namespaces=DIGIKAM_NS)
    rate(lib, "--from-xmp", str(lib.lib / "d.jpg"))
    assert stars(lib.env, lib.lib / "d.jpg") == {"d.jpg": (-1, "xmp-sidecar")}


def test_xmp_embedded_in_a_jpeg_follows_the_changed_file(lib: Library) -> None:
    photo = lib.lib / "e.jpg"
    _embed(photo, "Xmp.xmp.Rating", "4")  # the app wrote into the photo: its content (and hash) changed
    data = rate(lib, "--from-xmp")  # no PATH: every ok photo of the library
    assert (data["stored"], data["by_source"], data["not_ranked_yet"], data["unrated"]) == (
        1, {"xmp-embedded": 1}, 1, 4)
    assert stars(lib.env, photo) == {"e.jpg": (4, "xmp-embedded")}
    assert stars(lib.env, photo, in_library=True) == {}  # the library still holds the old content
    code, _, err = lib.run("rank", str(lib.lib))
    assert code == 0, err
    assert stars(lib.env, photo, in_library=True) == {"e.jpg": (4, "xmp-embedded")}


def test_a_rating_we_wrote_is_ignored(lib: Library) -> None:
    _sidecar(lib.lib / "a.jpg.xmp", 'xmp:Rating="3" pmllm:writtenRating="3"', namespaces=PMLLM_NS)
    _sidecar(lib.lib / "b.jpg.xmp", 'xmp:Rating="5" pmllm:writtenRating="3"', namespaces=PMLLM_NS)  # she changed it
    data = rate(lib, "--from-xmp", str(lib.lib / "a.jpg"), str(lib.lib / "b.jpg"))
    assert (data["stored"], data["unrated"], data["written_by_us"]) == (1, 1, 1)
    assert stars(lib.env, lib.lib / "a.jpg", lib.lib / "b.jpg") == {"b.jpg": (5, "xmp-sidecar")}


def test_the_sidecars_our_xmp_command_wrote_are_not_learned(lib: Library) -> None:
    written = lib.xmp("--profile", "ana")
    assert list(lib.lib.glob("*.jpg.xmp")), written
    code, out, err = lib.run("rate", "--profile", "ana", "--from-xmp", str(lib.lib))
    assert code == 0, err
    assert out.startswith("ana: 0 ratings stored (0 new, 0 changed, 0 unchanged); 0 cleared; 5 unrated (5 that "
                          "pmllm-batch wrote); 0 skipped")
    assert stars(lib.env, *lib.lib.glob("*.jpg")) == {}


def test_zero_is_unrated(lib: Library) -> None:
    _sidecar(lib.lib / "a.jpg.xmp", 'xmp:Rating="0"')
    data = rate(lib, "--from-xmp", str(lib.lib / "a.jpg"))
    assert (data["stored"], data["cleared"], data["unrated"], data["skipped"]) == (0, 0, 1, [])


def test_a_corrupt_sidecar_is_skipped_and_the_others_are_stored(lib: Library) -> None:
    _sidecar(lib.lib / "a.jpg.xmp", 'xmp:Rating="5"')
    (lib.lib / "b.jpg.xmp").write_text('<?xml version="1.0"?>\n<x:xmpmeta xmlns:x="adobe:ns:meta/">\n <rdf:RDF')
    _sidecar(lib.lib / "c.jpg.xmp", 'xmp:Rating="-1"')
    code, out, err = lib.run("rate", "--profile", "ana", "--from-xmp", str(lib.lib))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "ana: 2 ratings stored (2 new, 0 changed, 0 unchanged); 0 cleared; 2 unrated; 1 skipped"
    assert lines[1].startswith(f"  skipped {lib.lib / 'b.jpg'} (corrupt_sidecar): b.jpg.xmp is not well-formed XML")
    assert stars(lib.env, *lib.lib.glob("*.jpg")) == {"a.jpg": (5, "xmp-sidecar"), "c.jpg": (-1, "xmp-sidecar")}
    data = rate(lib, "--from-xmp", str(lib.lib))
    assert (data["unchanged"], [(s["path"], s["reason"]) for s in data["skipped"]]) == (
        2, [(str(lib.lib / "b.jpg"), "corrupt_sidecar")])


# ---------------------------------------------------------------------------------------------------------------------
# darktable and digiKam: what they wrote, read-only
# ---------------------------------------------------------------------------------------------------------------------


def test_darktable_library_and_sidecars_default_is_no_verdict_reject_bit_is(lib: Library) -> None:
    photos = DT / "photos"
    before = tree_digest(DT)
    db = DT / "config" / "library.db"
    code, out, err = lib.run("rate", "--profile", "ana", "--from-darktable", str(db), "--moved",
                             f"{DT_FOLDER}={photos}")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "ana: 3 ratings stored (3 new, 0 changed, 0 unchanged); 0 cleared; 1 unrated (1 at " \
                       "darktable's import default); 0 skipped"
    assert lines[1] == "  3 of them are not ranked yet: they count once `rank` has scored them"
    assert f"  note: {db}: darktable's import default taken as 1 star(s) (ui_last/import_initial_rating in " \
           f"{DT / 'config' / 'darktablerc'})" in lines
    expected = {"a.jpg": (5, "darktable"), "b.jpg": (2, "darktable"), "c.jpg": (-1, "darktable")}
    assert stars(lib.env, *photos.glob("*.jpg")) == expected  # d.jpg's 1 star is darktable's default
    # the sidecars darktable wrote say the same (a newer verdict replaces the stored one, here with the same stars)
    data = rate(lib, "--from-xmp", str(photos))
    assert (data["unchanged"], data["import_defaults"], data["by_source"]) == (3, 1, {"xmp-sidecar": 3})
    assert {k: v[0] for k, v in stars(lib.env, *photos.glob("*.jpg")).items()} == {k: v[0] for k, v in
                                                                                   expected.items()}
    assert tree_digest(DT) == before  # nothing written beside the photos or into darktable's library


def test_digikam_database(lib: Library, tmp_path: Path) -> None:
    pics, card = tmp_path / "pics", tmp_path / "card"
    (pics / "2024" / "Holiday").mkdir(parents=True)
    sunset = _photo(pics, "sunset.jpg")
    blurry = make_photo(pics / "2024" / "Holiday" / "blurry.jpg", (32, 24), seed=3)
    (card / "100CANON").mkdir(parents=True)
    canon = make_photo(card / "100CANON" / "IMG_0001.JPG", (32, 24), seed=4)
    before = hashlib.sha256(DK_DB.read_bytes()).hexdigest()
    data = rate(lib, "--from-digikam", str(DK_DB), "--moved", f"/home/anna/Pictures={pics}", "--digikam-root",
                f"2={card}")
    assert stars(lib.env, sunset, blurry, canon) == {
        "sunset.jpg": (5, "digikam"), "blurry.jpg": (-1, "digikam"), "IMG_0001.JPG": (4, "digikam")}
    assert (data["stored"], data["unrated"], data["not_ranked_yet"]) == (3, 3, 3)
    reasons = sorted(s["reason"] for s in data["skipped"])
    assert reasons == ["bad_rating"] + ["photo_missing"] * 4  # beach, reject-only, shared, one-star: not here
    assert data["notes"][-1] == "4 photos the database names are not on disk and not in the library: if their " \
                                "folder moved (or the database comes from another computer), pass --moved OLD=NEW"
    # without --digikam-root the collection on a missing volume is skipped, and the sentence names the option
    data = rate(lib, "--from-digikam", str(DK_DB))
    (unknown,) = [s for s in data["skipped"] if s["reason"] == "album_root_unknown"]
    assert unknown["message"].endswith("is not on this machine; pass --digikam-root 2=FOLDER")
    assert hashlib.sha256(DK_DB.read_bytes()).hexdigest() == before


# ---------------------------------------------------------------------------------------------------------------------
# --from-csv and --stars
# ---------------------------------------------------------------------------------------------------------------------


def test_from_csv(lib: Library, tmp_path: Path) -> None:
    rate(lib, "--stars", "2", str(lib.lib / "c.jpg"))
    sheet = tmp_path / "stars.csv"
    sheet.write_text(f"path,stars\n{lib.lib / 'a.jpg'},5\n{lib.lib / 'b.jpg'},-1\n{lib.lib / 'c.jpg'},0\n"
                     f"{lib.lib / 'd.jpg'},seven\n", encoding="utf-8")
    data = rate(lib, "--from-csv", str(sheet))
    assert (data["stored"], data["new"], data["cleared"], data["by_source"]) == (2, 2, 1, {"csv": 2})
    assert data["skipped"] == [{"path": str(sheet), "reason": "bad_row",
                                "message": "line 5: stars 'seven' is not a whole number in -1..5"}]
    assert stars(lib.env, *lib.lib.glob("*.jpg")) == {"a.jpg": (5, "csv"), "b.jpg": (-1, "csv")}


def test_stars_change_and_zero_clears(lib: Library) -> None:
    a, b = lib.lib / "a.jpg", lib.lib / "b.jpg"
    data = rate(lib, "--stars", "3", str(a), str(b))
    assert (data["new"], data["by_source"]) == (2, {"cli": 2})
    data = rate(lib, "--stars", "-1", str(a))
    assert (data["changed"], data["new"]) == (1, 0)
    assert stars(lib.env, a, b) == {"a.jpg": (-1, "cli"), "b.jpg": (3, "cli")}
    code, out, err = lib.run("rate", "--profile", "ana", "--stars", "0", str(a))
    assert code == 0, err
    assert out == "ana: 0 ratings stored (0 new, 0 changed, 0 unchanged); 1 cleared; 0 unrated; 0 skipped\n"
    assert stars(lib.env, a, b) == {"b.jpg": (3, "cli")}
    assert lib.run("-q", "rate", "--profile", "ana", "--stars", "0", str(b)) == (0, "", "")
    assert stars(lib.env, a, b) == {}


def test_a_moved_photo_keeps_its_rating(lib: Library) -> None:
    rate(lib, "--stars", "5", str(lib.lib / "a.jpg"))
    (lib.lib / "sub").mkdir()
    moved = lib.lib / "sub" / "renamed.jpg"
    os.rename(lib.lib / "a.jpg", moved)
    code, _, err = lib.run("rank", str(lib.lib))
    assert code == 0, err
    assert stars(lib.env, moved, in_library=True) == {"renamed.jpg": (5, "cli")}
    with lib.env.store() as store:
        assert str(lib.lib / "a.jpg") not in store.photo_index()  # the old path is gone: the move was seen
    line, ratings = show(lib.env)
    assert line == "ratings: 1 (cli 1)"
    assert ratings == {"total": 1, "by_source": {"cli": 1}, "in_library": 1}


def test_rating_a_photo_not_in_the_library_yet_then_ranking_it(lib: Library) -> None:
    new = make_photo(lib.lib / "new.jpg", (64, 48), seed=99)
    rate(lib, "--stars", "2", str(lib.lib / "b.jpg"))
    code, out, err = lib.run("rate", "--profile", "ana", "--stars", "4", str(new))
    assert code == 0, err
    assert out.splitlines()[1] == "  1 of them is not ranked yet: it counts once `rank` has scored it"
    assert stars(lib.env, new) == {"new.jpg": (4, "cli")}
    assert stars(lib.env, new, in_library=True) == {}
    line, ratings = show(lib.env)
    assert line == "ratings: 2 (cli 2); 1 of them waits for `rank` (its photo is not in the library)"
    assert ratings == {"total": 2, "by_source": {"cli": 2}, "in_library": 1}
    code, _, err = lib.run("rank", str(lib.lib))
    assert code == 0, err
    assert stars(lib.env, new, in_library=True) == {"new.jpg": (4, "cli")}
    assert show(lib.env)[0] == "ratings: 2 (cli 2)"


def test_profile_show_without_ratings_and_with_several_sources(lib: Library) -> None:
    assert show(lib.env) == ("ratings: none yet (`pmllm-batch rate` stores them)",
                             {"total": 0, "by_source": {}, "in_library": 0})
    _sidecar(lib.lib / "a.jpg.xmp", 'xmp:Rating="5"')
    _sidecar(lib.lib / "b.jpg.xmp", 'xmp:Rating="4"')
    rate(lib, "--from-xmp", str(lib.lib))
    rate(lib, "--stars", "1", str(lib.lib / "c.jpg"))
    assert show(lib.env)[0] == "ratings: 3 (xmp-sidecar 2, cli 1)"


def test_rate_never_writes_beside_the_photos(lib: Library) -> None:
    _sidecar(lib.lib / "a.jpg.xmp", 'xmp:Rating="5"')
    (lib.lib / "b.jpg.xmp").write_text("not xmp")
    before = tree_digest(lib.lib)
    rate(lib, "--from-xmp", str(lib.lib))
    rate(lib, "--stars", "3", str(lib.lib / "c.jpg"))
    assert tree_digest(lib.lib) == before


# ---------------------------------------------------------------------------------------------------------------------
# Mistakes: one sentence, exit 2, nothing stored
# ---------------------------------------------------------------------------------------------------------------------


def test_unknown_profile(lib: Library) -> None:
    assert error(lib.env, "rate", "--profile", "nobody", "--stars", "3", str(lib.lib / "a.jpg")) == (
        "unknown profile 'nobody'; known profiles: ana.")


def test_mistakes_are_one_sentence_and_store_nothing(lib: Library, tmp_path: Path) -> None:
    a = str(lib.lib / "a.jpg")
    ana = ("rate", "--profile", "ana")
    assert "(none was given)" in error(lib.env, *ana)
    assert "(--from-xmp and --from-csv were given)" in error(lib.env, *ana, "--from-xmp", "--from-csv", "x.csv")
    assert error(lib.env, *ana, "--stars", "3").startswith("--stars needs the photos to rate")
    assert error(lib.env, *ana, "--stars", "7", a).startswith("stars must be a whole number from -1 (rejected) to 5")
    assert error(lib.env, *ana, "--stars", "3", a, str(lib.lib / "nope.jpg")) == (
        f"{lib.lib / 'nope.jpg'}: no such photo, neither in the library nor on disk; nothing was stored.")
    assert error(lib.env, *ana, "--stars", "3", str(lib.lib)).startswith(f"--stars rates photo files, and {lib.lib} "
                                                                          "is a folder")
    assert error(lib.env, *ana, "--from-csv", str(tmp_path / "none.csv")) == (
        f"there is no CSV file at {tmp_path / 'none.csv'} (--from-csv).")
    assert error(lib.env, *ana, "--from-darktable", str(tmp_path / "library.db")) == (
        f"there is no darktable library at {tmp_path / 'library.db'} (--from-darktable).")
    assert error(lib.env, *ana, "--from-darktable", str(DK_DB)) == (
        f"cannot read ratings from {DK_DB}: the database has no darktable images / film_rolls tables.")
    assert error(lib.env, *ana, "--from-xmp", str(tmp_path / "nowhere")).startswith(
        f"there is no file or folder at {tmp_path / 'nowhere'}")
    assert error(lib.env, *ana, "--from-xmp", "--moved", "a=b").startswith("--moved rewrites folders")
    assert error(lib.env, *ana, "--from-digikam", str(DK_DB), "--digikam-root", "x=y").startswith(
        "--digikam-root takes ID=FOLDER with a whole-number id")
    assert stars(lib.env, *lib.lib.glob("*.jpg")) == {}


def test_a_database_that_is_not_one_is_a_mistake(lib: Library, tmp_path: Path) -> None:
    text = tmp_path / "digikam4.db"
    shutil.copyfile(REPO / "README.md", text)
    assert error(lib.env, "rate", "--profile", "ana", "--from-digikam", str(text)).startswith(
        f"cannot read ratings from {text}: the digiKam database cannot be opened (")


def test_the_text_report_names_twenty_skipped_items_and_counts_the_rest() -> None:
    from pmllm_batch.cli.commands.rate import describe

    skipped = [{"path": f"/p/{i}.jpg", "reason": "photo_missing", "message": "gone"} for i in range(25)]
    data = {"profile": "ana", "stored": 0, "new": 0, "changed": 0, "unchanged": 0, "cleared": 0, "by_source": {},
            "not_ranked_yet": 0, "unrated": 0, "import_defaults": 0, "written_by_us": 0, "skipped": skipped,
            "notes": []}
    lines = describe(data).splitlines()
    assert lines[0].endswith("; 25 skipped") and len(lines) == 1 + 20 + 1
    assert lines[-1] == "  ... and 5 more skipped (--json lists them all)"
