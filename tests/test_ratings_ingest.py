"""pmllm_batch.ratings: reading the stars a person already set in their photo apps.

The darktable tests read what the real darktable 4.2.1 wrote (tests/fixtures/ratings/darktable, made by
scripts/make_app_fixtures.sh); darktable need not be installed. Tests write only under tmp_path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from pmllm_batch.errors import UserError
from pmllm_batch.ratings import (
    REASONS,
    Rating,
    Skipped,
    cli_rating,
    read_csv,
    read_darktable,
    read_digikam,
    read_xmp,
)
from pmllm_batch.ratings import xmp as ratings_xmp
from pmllm_batch.ratings.darktable import decode_flags
from pmllm_batch.ratings.digikam import parse_identifier, resolve_album_root
from pmllm_batch.ratings.model import map_moved

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "ratings"
DT = FIXTURES / "darktable"
DT_FOLDER = "/tmp/pmllm-ratings-darktable/photos"  # the film roll's folder darktable stored (README.txt)
DK_DB = FIXTURES / "digikam" / "digikam4.db"

T0 = 1_700_000_000 * 10**9  # a fixed modification time (ns)


def _photo(folder: Path, name: str = "photo.jpg") -> Path:
    path = folder / name
    Image.new("RGB", (8, 6), (120, 80, 40)).save(path, quality=80)
    return path


def _sidecar(path: Path, attrs: str, *, namespaces: str = "", mtime_ns: int | None = None, body: str = "") -> Path:
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        f'  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" {namespaces}\n'
        f"   {attrs}>{body}</rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n",
        encoding="utf-8",
    )
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


DARKTABLE_NS = 'xmlns:darktable="http://darktable.sf.net/"'
DARKTABLE_ATTRS = 'darktable:xmp_version="5" darktable:history_end="0" darktable:change_timestamp="-1"'
DIGIKAM_NS = 'xmlns:digiKam="http://www.digikam.org/ns/1.0/"'
PMLLM_NS = f'xmlns:pmllm="{ratings_xmp.NS_URI}"'


# ---------------------------------------------------------------------------------------------------------------------
# XMP sidecars and embedded XMP
# ---------------------------------------------------------------------------------------------------------------------


def test_darktable_sidecar_minus_one_is_rejected(tmp_path: Path) -> None:
    photo = _photo(tmp_path)
    sidecar = _sidecar(tmp_path / "photo.jpg.xmp", f'xmp:Rating="-1" {DARKTABLE_ATTRS}', namespaces=DARKTABLE_NS)
    result = read_xmp([photo])
    assert result.ratings == [Rating(photo, -1, "xmp-sidecar", str(sidecar))]
    assert (result.skipped, result.unrated, result.import_defaults, result.notes) == ([], 0, 0, [])


def test_lightroom_sidecar(tmp_path: Path) -> None:
    photo = _photo(tmp_path, "IMG_0042.jpg")
    sidecar = _sidecar(
        tmp_path / "IMG_0042.xmp",
        'xmp:Rating="4" xmp:CreatorTool="Adobe Photoshop Lightroom Classic 13.0" crs:Version="16.0"',
        namespaces='xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"',
    )
    result = read_xmp([photo])
    assert result.ratings == [Rating(photo, 4, "xmp-sidecar", str(sidecar))]
    assert (result.skipped, result.unrated, result.notes) == ([], 0, [])


def test_both_namings_the_one_modified_last_wins(tmp_path: Path) -> None:
    photo = _photo(tmp_path)
    _sidecar(tmp_path / "photo.jpg.xmp", 'xmp:Rating="2"', mtime_ns=T0)
    newer = _sidecar(tmp_path / "photo.xmp", 'xmp:Rating="4"', mtime_ns=T0 + 10**9)
    result = read_xmp([photo])
    assert result.ratings == [Rating(photo, 4, "xmp-sidecar", str(newer))]
    assert result.notes == [
        f"{photo}: photo.xmp says 4 stars and photo.jpg.xmp says 2 stars; photo.xmp wins because it was modified last"
    ]


def test_both_namings_tie_goes_to_photo_jpg_xmp(tmp_path: Path) -> None:
    photo = _photo(tmp_path)
    appended = _sidecar(tmp_path / "photo.jpg.xmp", 'xmp:Rating="-1"', mtime_ns=T0)
    _sidecar(tmp_path / "photo.xmp", 'xmp:Rating="5"', mtime_ns=T0)
    result = read_xmp([photo])
    assert result.ratings == [Rating(photo, -1, "xmp-sidecar", str(appended))]
    assert result.notes == [
        f"{photo}: photo.jpg.xmp says rejected and photo.xmp says 5 stars; photo.jpg.xmp wins because both were "
        "modified at the same time and the photo.jpg.xmp naming wins a tie"
    ]


def test_both_namings_agreeing_or_one_without_verdict_make_no_note(tmp_path: Path) -> None:
    same = _photo(tmp_path, "same.jpg")
    _sidecar(tmp_path / "same.jpg.xmp", 'xmp:Rating="3"', mtime_ns=T0)
    _sidecar(tmp_path / "same.xmp", 'xmp:Rating="3"', mtime_ns=T0 + 1)
    # darktable's default 1 in the newer photo.jpg.xmp does not override Lightroom's 4 in the older photo.xmp
    mixed = _photo(tmp_path, "mixed.jpg")
    _sidecar(tmp_path / "mixed.jpg.xmp", f'xmp:Rating="1" {DARKTABLE_ATTRS}', namespaces=DARKTABLE_NS,
             mtime_ns=T0 + 10**9)
    lightroom = _sidecar(tmp_path / "mixed.xmp", 'xmp:Rating="4"', mtime_ns=T0)
    result = read_xmp([same, mixed])
    assert result.ratings == [
        Rating(same, 3, "xmp-sidecar", str(tmp_path / "same.xmp")),
        Rating(mixed, 4, "xmp-sidecar", str(lightroom)),
    ]
    assert (result.notes, result.unrated, result.import_defaults) == ([], 0, 0)


def test_digikam_pick_label_rejected(tmp_path: Path) -> None:
    photo = _photo(tmp_path)
    sidecar = _sidecar(tmp_path / "photo.jpg.xmp", 'xmp:Rating="3" digiKam:PickLabel="1" digiKam:ColorLabel="0"',
                       namespaces=DIGIKAM_NS)
    pending = _photo(tmp_path, "pending.jpg")
    _sidecar(tmp_path / "pending.jpg.xmp", 'digiKam:PickLabel="2"', namespaces=DIGIKAM_NS)
    accepted = _photo(tmp_path, "accepted.jpg")
    _sidecar(tmp_path / "accepted.jpg.xmp", 'xmp:Rating="4" digiKam:PickLabel="3"', namespaces=DIGIKAM_NS)
    result = read_xmp([photo, pending, accepted])
    assert result.ratings == [
        Rating(photo, -1, "xmp-sidecar", str(sidecar)),
        Rating(accepted, 4, "xmp-sidecar", str(tmp_path / "accepted.jpg.xmp")),
    ]
    assert result.unrated == 1  # "pending" carries no stars


def _embed(photo: Path, key: str, value: str) -> None:
    import exiv2

    image = exiv2.ImageFactory.open(str(photo))
    image.readMetadata()
    image.xmpData()[key] = value
    image.writeMetadata()


def test_embedded_xmp(tmp_path: Path) -> None:
    photo = _photo(tmp_path)
    _embed(photo, "Xmp.xmp.Rating", "4")
    bare = _photo(tmp_path, "bare.jpg")  # a JPEG without any XMP
    result = read_xmp([photo, bare])
    assert result.ratings == [Rating(photo, 4, "xmp-embedded", "embedded XMP")]
    assert (result.skipped, result.unrated) == ([], 1)
    assert read_xmp([photo], embedded=False).ratings == []


def test_sidecar_verdict_wins_over_embedded(tmp_path: Path) -> None:
    photo = _photo(tmp_path)
    _embed(photo, "Xmp.xmp.Rating", "5")
    sidecar = _sidecar(tmp_path / "photo.jpg.xmp", 'xmp:Rating="2"')
    assert read_xmp([photo]).ratings == [Rating(photo, 2, "xmp-sidecar", str(sidecar))]


def test_rating_we_wrote_is_ignored(tmp_path: Path) -> None:
    ours = _photo(tmp_path, "ours.jpg")
    _sidecar(tmp_path / "ours.jpg.xmp", 'xmp:Rating="3" pmllm:writtenRating="3" pmllm:ratingProfile="anna"',
             namespaces=PMLLM_NS)
    changed = _photo(tmp_path, "changed.jpg")  # the person changed our 3 into a 5 in their app
    sidecar = _sidecar(tmp_path / "changed.jpg.xmp", 'xmp:Rating="5" pmllm:writtenRating="3"', namespaces=PMLLM_NS)
    result = read_xmp([ours, changed])
    assert result.ratings == [Rating(changed, 5, "xmp-sidecar", str(sidecar))]
    assert (result.unrated, result.written_by_us, result.skipped) == (1, 1, [])


def test_our_namespace_matches_the_sidecar_writer() -> None:
    from pmllm_batch import xmp_engine
    from pmllm_batch.outputs import xmp as outputs_xmp

    # one engine, one namespace: the reader and the writer both take it from pmllm_batch.xmp_engine
    assert (ratings_xmp.NS_URI, ratings_xmp.NS_PREFIX) == (xmp_engine.NS_URI, xmp_engine.NS_PREFIX)
    assert outputs_xmp.exiv2_module is ratings_xmp.exiv2_module is xmp_engine.exiv2_module
    assert ratings_xmp.K_WRITTEN == outputs_xmp.K_LAST_RATING


def test_sidecar_written_by_our_writer_is_ours(tmp_path: Path) -> None:
    from pmllm_batch.outputs.xmp import SidecarContent, merge_sidecar

    photo = _photo(tmp_path)
    data = merge_sidecar(None, SidecarContent(rating=4, rating_profile="anna", model="m", marks=())).data
    assert data is not None
    (tmp_path / "photo.jpg.xmp").write_bytes(data)
    result = read_xmp([photo])
    assert (result.ratings, result.unrated, result.written_by_us) == ([], 1, 1)


def test_zero_and_no_rating_are_unrated(tmp_path: Path) -> None:
    zero = _photo(tmp_path, "zero.jpg")
    _sidecar(tmp_path / "zero.jpg.xmp", 'xmp:Rating="0"')
    none = _photo(tmp_path, "none.jpg")
    _sidecar(tmp_path / "none.jpg.xmp", 'xmp:Label="Red"')
    alone = _photo(tmp_path, "alone.jpg")  # no sidecar, no embedded XMP
    result = read_xmp([zero, none, alone])
    assert (result.ratings, result.skipped, result.unrated) == ([], [], 3)


def test_corrupt_sidecar_is_skipped_and_the_others_are_read(tmp_path: Path) -> None:
    first = _photo(tmp_path, "first.jpg")
    _sidecar(tmp_path / "first.jpg.xmp", 'xmp:Rating="5"')
    broken = _photo(tmp_path, "broken.jpg")
    (tmp_path / "broken.jpg.xmp").write_text('<?xml version="1.0"?>\n<x:xmpmeta xmlns:x="adobe:ns:meta/">\n <rdf:RDF')
    notxmp = _photo(tmp_path, "notxmp.jpg")
    (tmp_path / "notxmp.xmp").write_bytes(b"\x89PNG\r\n\x1a\n not a sidecar")
    bad = _photo(tmp_path, "bad.jpg")
    _sidecar(tmp_path / "bad.jpg.xmp", 'xmp:Rating="7"')
    folder = _photo(tmp_path, "folder.jpg")
    (tmp_path / "folder.jpg.xmp").mkdir()
    last = _photo(tmp_path, "last.jpg")
    _sidecar(tmp_path / "last.jpg.xmp", 'xmp:Rating="-1"')
    gone = tmp_path / "gone.jpg"
    result = read_xmp([first, broken, notxmp, bad, folder, last, gone])
    assert [(r.path, r.stars) for r in result.ratings] == [(first, 5), (last, -1)]
    assert [(s.path, s.reason) for s in result.skipped] == [
        (broken, "corrupt_sidecar"),
        (notxmp, "corrupt_sidecar"),
        (bad, "bad_rating"),
        (folder, "sidecar_not_a_file"),
        (gone, "photo_missing"),
    ]
    assert result.skipped[0].message.startswith("broken.jpg.xmp is not well-formed XML")
    assert result.skipped[1].message.startswith("notxmp.xmp is not well-formed XML")
    assert result.skipped[2].message == "bad.jpg.xmp: xmp:Rating is '7', not a whole number in -1..5"
    assert all(s.reason in REASONS for s in result.skipped)
    assert result.unrated == 0


def test_each_photo_once_in_exactly_one_bucket(tmp_path: Path) -> None:
    a = _photo(tmp_path, "a.jpg")
    _sidecar(tmp_path / "a.jpg.xmp", 'xmp:Rating="2"')
    b = _photo(tmp_path, "b.jpg")
    result = read_xmp([a, b, a, str(a), tmp_path / "c.jpg"])
    assert len(result.ratings) + len(result.skipped) + result.unrated == 3


def test_unreadable_photo_without_sidecar_verdict(tmp_path: Path) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not an image at all")
    rated = tmp_path / "rated.jpg"
    rated.write_bytes(b"not an image either, but its sidecar holds a verdict")
    _sidecar(tmp_path / "rated.jpg.xmp", 'xmp:Rating="3"')
    result = read_xmp([junk, rated])
    assert [(s.path, s.reason) for s in result.skipped] == [(junk, "unreadable_photo")]
    assert [(r.path, r.stars) for r in result.ratings] == [(rated, 3)]


# ---------------------------------------------------------------------------------------------------------------------
# darktable: what the real darktable 4.2.1 wrote
# ---------------------------------------------------------------------------------------------------------------------


def test_darktable_fixture_sidecars(tmp_path: Path) -> None:
    photos = DT / "photos"
    result = read_xmp([photos / f"{n}.jpg" for n in "abcd"])
    assert result.ratings == [
        Rating(photos / "a.jpg", 5, "xmp-sidecar", str(photos / "a.jpg.xmp")),
        Rating(photos / "b.jpg", 2, "xmp-sidecar", str(photos / "b.jpg.xmp")),
        Rating(photos / "c.jpg", -1, "xmp-sidecar", str(photos / "c.jpg.xmp")),
    ]
    # d.jpg: darktable's sidecar says xmp:Rating="1", its initial import rating, not the person's verdict
    assert 'xmp:Rating="1"' in (photos / "d.jpg.xmp").read_text()
    assert (result.skipped, result.unrated, result.import_defaults) == ([], 1, 1)
    # with the rule off, darktable's default counts as a 1-star verdict
    assert read_xmp([photos / "d.jpg"], darktable_default=0).ratings == [
        Rating(photos / "d.jpg", 1, "xmp-sidecar", str(photos / "d.jpg.xmp"))
    ]


def test_darktable_fixture_library(tmp_path: Path) -> None:
    db = DT / "config" / "library.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    photos = DT / "photos"
    result = read_darktable(db, moved={DT_FOLDER: photos})
    assert result.ratings == [
        Rating(photos / "a.jpg", 5, "darktable", "library.db image id 1"),
        Rating(photos / "b.jpg", 2, "darktable", "library.db image id 2"),
        Rating(photos / "c.jpg", -1, "darktable", "library.db image id 3"),  # flags 1064: the reject bit 8
    ]
    assert (result.skipped, result.unrated, result.import_defaults) == ([], 1, 1)  # d.jpg: flags 1057, 1 star
    assert result.notes == [
        f"{db}: darktable's import default taken as 1 star(s) (ui_last/import_initial_rating in "
        f"{DT / 'config' / 'darktablerc'})",
        "1 photo(s) at darktable's import default of 1 star(s) counted as unrated",
    ]
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # opened read-only
    # the paths as darktable stored them
    assert [r.path for r in read_darktable(db).ratings] == [Path(DT_FOLDER) / f"{n}.jpg" for n in "abc"]


def test_darktable_library_without_darktablerc_and_other_defaults(tmp_path: Path) -> None:
    db = tmp_path / "library.db"
    shutil.copyfile(DT / "config" / "library.db", db)
    result = read_darktable(db)
    assert [r.stars for r in result.ratings] == [5, 2, -1]
    assert result.notes[0] == f"{db}: darktable's import default taken as 1 star(s) (darktable's factory default; " \
                              "no darktablerc beside it)"
    (tmp_path / "darktablerc").write_text("plugins/x=1\nui_last/import_initial_rating=0\n")
    assert [r.stars for r in read_darktable(db).ratings] == [5, 2, -1, 1]
    assert [r.stars for r in read_darktable(db, darktable_default=2).ratings] == [5, -1, 1]


def test_darktable_flag_encodings() -> None:
    assert decode_flags(1061) == 5
    assert decode_flags(1057) == 1
    assert decode_flags(1064) == -1  # darktable >= 3.0: reject bit, stars 0
    assert decode_flags(8 | 3) == -1  # the reject bit wins over kept stars
    assert decode_flags(6) == -1  # before 3.0: "6 stars" was a reject
    assert decode_flags(1056) == 0
    assert decode_flags(7) is None


def test_darktable_versions_and_old_reject(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "library.db"
    shutil.copyfile(DT / "config" / "library.db", db)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE images SET flags = 6 WHERE filename = 'b.jpg'")  # a pre-3.0 reject
        conn.execute(  # a duplicate (version 1) of a.jpg rated 3: the original's 5 counts
            "INSERT INTO images (group_id, film_id, filename, flags, version, max_version) "
            "SELECT group_id, film_id, filename, (flags & ~7) | 3, 1, 1 FROM images WHERE filename = 'a.jpg'"
        )
    conn.close()
    result = read_darktable(db, moved={DT_FOLDER: tmp_path})
    assert [(r.path.name, r.stars, r.detail) for r in result.ratings] == [
        ("a.jpg", 5, "library.db image id 1"),
        ("b.jpg", -1, "library.db image id 2"),
        ("c.jpg", -1, "library.db image id 3"),
    ]
    assert f"{tmp_path / 'a.jpg'}: darktable holds 2 versions with different ratings; the original's (5 stars, " \
           "image id 1) counts" in result.notes


def test_darktable_not_a_library(tmp_path: Path) -> None:
    text = tmp_path / "library.db"
    text.write_text("hello")
    assert [(s.path, s.reason) for s in read_darktable(text).skipped] == [(text, "unreadable_database")]
    assert [(s.path, s.reason) for s in read_darktable(tmp_path / "none.db").skipped] == [
        (tmp_path / "none.db", "unreadable_database")
    ]
    assert not (tmp_path / "none.db").exists()  # mode=ro creates nothing
    assert [s.reason for s in read_darktable(DK_DB).skipped] == ["not_a_darktable_library"]


# ---------------------------------------------------------------------------------------------------------------------
# digiKam
# ---------------------------------------------------------------------------------------------------------------------

PICS = Path("/home/anna/Pictures")


def test_digikam_fixture() -> None:
    result = read_digikam(DK_DB)
    assert result.ratings == [
        Rating(PICS / "sunset.jpg", 5, "digikam", "digikam4.db image id 1"),
        Rating(PICS / "2024/Holiday/beach.jpg", 3, "digikam", "digikam4.db image id 2"),  # pick "accepted": no stars
        Rating(PICS / "2024/Holiday/blurry.jpg", -1, "digikam", "digikam4.db image id 3"),  # 2 stars, pick rejected
        Rating(PICS / "reject-only.jpg", -1, "digikam", "digikam4.db image id 11"),
        Rating(Path("/srv/photos shared+old/shared.jpg"), 4, "digikam", "digikam4.db image id 12"),  # hidden
        Rating(PICS / "2024/Holiday/one-star.jpg", 1, "digikam", "digikam4.db image id 13"),
    ]
    assert result.skipped == [
        Skipped(
            Path("volumeid:?uuid=0badc0de-0000-4000-8000-00000000dead/DCIM/100CANON/IMG_0001.JPG"),
            "album_root_unknown",
            "digiKam image id 9: the collection 'volumeid:?uuid=0badc0de-0000-4000-8000-00000000dead/DCIM' "
            "(AlbumRoots id 2) is not on this machine; pass roots={2: folder}",
        ),
        Skipped(PICS / "bad.jpg", "bad_rating", "digiKam image id 10 has rating 9, not -1..5"),
    ]
    assert result.unrated == 3  # rating -1, rating 0 (pick pending), no ImageInformation row
    assert result.notes == [
        f"{DK_DB}: 2 trashed or removed entries ignored",
        f"{DK_DB}: collection 'volumeid:?uuid=0badc0de-0000-4000-8000-00000000dead/DCIM' (AlbumRoots id 2) not found "
        "on this machine; 1 rated photo(s) skipped",
    ]


def test_digikam_roots_and_moved(tmp_path: Path) -> None:
    result = read_digikam(DK_DB, roots={2: tmp_path / "card"}, moved={"/home/anna/Pictures": tmp_path / "pics"})
    paths = {r.path: r.stars for r in result.ratings}
    assert paths[tmp_path / "card" / "100CANON" / "IMG_0001.JPG"] == 4
    assert paths[tmp_path / "pics" / "sunset.jpg"] == 5
    assert paths[tmp_path / "pics" / "2024" / "Holiday" / "blurry.jpg"] == -1
    assert [s.reason for s in result.skipped] == ["bad_rating"]


def test_digikam_album_root_identifiers(tmp_path: Path) -> None:
    assert resolve_album_root("volumeid:?path=/home/a/Pictures", "/") == Path("/home/a/Pictures")
    assert resolve_album_root("volumeid:?path=%2Fsrv%2Fa%20b+c", "/") == Path("/srv/a b+c")
    assert resolve_album_root("volumeid:?mountpath=/media/card", "/DCIM") == Path("/media/card/DCIM")
    assert resolve_album_root(f"networkshareid:?mountpath=/no/such/dir&mountpath={tmp_path}", "/") == tmp_path
    assert resolve_album_root("volumeid:?uuid=00000000-0000-0000-0000-00000000beef", "/x") is None
    assert resolve_album_root("mtp:?device=1", "/") is None
    assert parse_identifier("volumeid:?uuid=AB&label=My%20Disk") == ("volumeid", {"uuid": ["AB"], "label": ["My Disk"]})


def test_digikam_not_a_digikam_db() -> None:
    result = read_digikam(DT / "config" / "library.db")
    assert [s.reason for s in result.skipped] == ["not_a_digikam_database"]
    assert result.ratings == []


def test_map_moved_matches_whole_components() -> None:
    moved = {"/photos": Path("/mnt/p"), "/photos/2024/": Path("/fast/2024")}
    assert map_moved("/photos/a.jpg", moved) == Path("/mnt/p/a.jpg")
    assert map_moved("/photos/2024/b.jpg", moved) == Path("/fast/2024/b.jpg")
    assert map_moved("/photos2/c.jpg", moved) == Path("/photos2/c.jpg")


# ---------------------------------------------------------------------------------------------------------------------
# CSV and command line
# ---------------------------------------------------------------------------------------------------------------------


def test_csv_good_rows(tmp_path: Path) -> None:
    sheet = tmp_path / "stars.csv"
    sheet.write_text(
        "\ufeffPath,Stars,comment\n"
        "/photos/a.jpg,5,best\n"
        "\n"
        "# a comment row\n"
        "sub/b.jpg,-1,\n"
        '"/photos/with, comma.jpg",0,clear it\n'
        "/photos/a.jpg,4,changed my mind\n",
        encoding="utf-8",
    )
    result = read_csv(sheet)
    assert result.ratings == [
        Rating(Path("/photos/a.jpg"), 4, "csv", "stars.csv line 7"),
        Rating(tmp_path / "sub" / "b.jpg", -1, "csv", "stars.csv line 5"),
        Rating(Path("/photos/with, comma.jpg"), 0, "csv", "stars.csv line 6"),  # 0 = clear
    ]
    assert result.skipped == []
    assert result.notes == ["/photos/a.jpg: given on lines 2 and 7; line 7 wins"]


def test_csv_without_header_and_other_delimiters(tmp_path: Path) -> None:
    plain = tmp_path / "plain.csv"
    plain.write_text("/p/a.jpg,3\n/p/b.jpg,2\n")
    assert [(r.path, r.stars) for r in read_csv(plain).ratings] == [(Path("/p/a.jpg"), 3), (Path("/p/b.jpg"), 2)]
    semi = tmp_path / "semi.csv"
    semi.write_text("stars;path\n5;/p/c.jpg\n-1;/p/d.jpg\n")
    assert [(r.path, r.stars) for r in read_csv(semi).ratings] == [(Path("/p/c.jpg"), 5), (Path("/p/d.jpg"), -1)]
    tabs = tmp_path / "tabs.tsv"
    tabs.write_text("path\tstars\n/p/e f.jpg\t1\n")
    assert [(r.path, r.stars) for r in read_csv(tabs).ratings] == [(Path("/p/e f.jpg"), 1)]


def test_csv_bad_rows(tmp_path: Path) -> None:
    sheet = tmp_path / "stars.csv"
    sheet.write_text(
        "path,stars\n"
        "/p/ok.jpg,2\n"
        "/p/six.jpg,6\n"
        "/p/half.jpg,2.5\n"
        ",3\n"
        "/p/word.jpg,five\n"
        "/p/short.jpg\n"
        "/p/minus.jpg,-2\n"
        "/p/fine.jpg, 5 \n"
    )
    result = read_csv(sheet)
    assert [(r.path, r.stars) for r in result.ratings] == [(Path("/p/ok.jpg"), 2), (Path("/p/fine.jpg"), 5)]
    assert result.skipped == [
        Skipped(sheet, "bad_row", "line 3: stars '6' is not a whole number in -1..5"),
        Skipped(sheet, "bad_row", "line 4: stars '2.5' is not a whole number in -1..5"),
        Skipped(sheet, "bad_row", "line 5: the path is empty"),
        Skipped(sheet, "bad_row", "line 6: stars 'five' is not a whole number in -1..5"),
        Skipped(sheet, "bad_row", "line 7: expected the columns path and stars, got 1 cell(s)"),
        Skipped(sheet, "bad_row", "line 8: stars '-2' is not a whole number in -1..5"),
    ]


def test_csv_missing_file(tmp_path: Path) -> None:
    result = read_csv(tmp_path / "nope.csv")
    assert [(s.path, s.reason) for s in result.skipped] == [(tmp_path / "nope.csv", "unreadable_file")]


def test_cli_rating(tmp_path: Path) -> None:
    assert cli_rating(tmp_path / "a.jpg", "5") == Rating(tmp_path / "a.jpg", 5, "cli", "command line")
    assert cli_rating(tmp_path / "a.jpg", -1).stars == -1
    assert cli_rating(tmp_path / "a.jpg", 0).stars == 0
    with pytest.raises(UserError, match="from -1"):
        cli_rating(tmp_path / "a.jpg", "6")
