"""The outputs layer as pure functions (no model, no CLI): tables, albums, stars, sidecar merging, report page names."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from pmllm_batch.config import XmpSettings
from pmllm_batch.db import PhotoRecord, RankedPhoto, Store
from pmllm_batch.errors import ConfigError, ProfileError
from pmllm_batch.outputs.albums import build_albums
from pmllm_batch.outputs.report import page_names
from pmllm_batch.outputs.stars import stars_by_hash, stars_for_position
from pmllm_batch.outputs.tabular import EXPORT_FIELDS, export_ranking, render_ranking
from pmllm_batch.outputs.xmp import (
    MergeResult,
    ProfileMark,
    SidecarContent,
    SidecarFormatError,
    merge_sidecar,
    parse_sidecar,
    sidecar_path,
)
from pmllm_batch.profiles import Profile

SCORES = {"a.jpg": 4.5, "b.jpg": 3.25, "c.jpg": 2.0}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """Three photo files scored for one profile "ana" (a > b > c), stored through the Store API only."""
    lib = tmp_path / "lib"
    lib.mkdir()
    records = []
    for name in SCORES:
        path = lib / name
        path.write_bytes(f"photo {name}".encode())
        records.append(
            PhotoRecord(
                path=str(path),
                root=str(lib),
                content_hash=hashlib.sha256(path.read_bytes()).hexdigest(),
                size=path.stat().st_size,
                mtime_ns=path.stat().st_mtime_ns,
                taken_at="2020-01-02T03:04:05" if name == "a.jpg" else None,
            )
        )
    with Store(f"sqlite:///{tmp_path / 'db.sqlite'}") as s:
        s.upsert_photos(records)
        pid, _ = s.upsert_profile(Profile(name="ana"), "You are ana.")
        mid = s.ensure_model("fp-outputs", "demo", {})
        rows = [(r.content_hash, pid, SCORES[Path(r.path).name], [0.0] * 5) for r in records if r.content_hash]
        s.add_scores(mid, rows)
        yield s


# ---------------------------------------------------------------------------------------------------------------------
# Tables and albums
# ---------------------------------------------------------------------------------------------------------------------


def test_export_ranking_as_csv_and_json_reads_back_equal(store: Store) -> None:
    table = export_ranking(store, "ana", "csv")
    assert (table.profile, table.fmt, table.rows) == ("ana", "csv", 3)
    rows = list(csv.DictReader(io.StringIO(table.text)))
    assert [Path(r["path"]).name for r in rows] == ["a.jpg", "b.jpg", "c.jpg"]
    assert [float(r["score"]) for r in rows] == [4.5, 3.25, 2.0]
    assert rows[0]["taken_at"] == "2020-01-02T03:04:05" and rows[1]["taken_at"] == ""
    data = json.loads(export_ranking(store, "ana", "json", top=2).text)
    assert [list(d) for d in data] == [list(EXPORT_FIELDS)] * 2 and data[1]["rank"] == 2
    with pytest.raises(ValueError, match="unknown export format"):
        render_ranking([], "xml")
    with pytest.raises(ProfileError):
        export_ranking(store, "zed", "csv")


def test_build_albums_links_the_top_photos_and_reports_vanished_ones(store: Store, tmp_path: Path) -> None:
    (tmp_path / "lib" / "b.jpg").unlink()
    results = build_albums(store, tmp_path / "albums", top=3)
    assert [(r.profile, r.mode, r.entries) for r in results] == [("ana", "symlink", ["001_a.jpg", "003_c.jpg"])]
    assert results[0].skipped == [str(tmp_path / "lib" / "b.jpg")]
    assert (tmp_path / "albums" / "ana" / "001_a.jpg").resolve() == tmp_path / "lib" / "a.jpg"


# ---------------------------------------------------------------------------------------------------------------------
# Stars
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (1, [5]),
        (2, [5, 2]),
        (3, [5, 3, 2]),
        (10, [5, 4, 4, 3, 3, 3, 3, 2, 2, 1]),
        (20, [5, 5, 4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 1, 1]),
    ],
)
def test_stars_follow_the_rank_percentile_and_the_top_photo_has_five(total: int, expected: list[int]) -> None:
    assert [stars_for_position(i, total) for i in range(total)] == expected


def test_stars_spread_over_a_large_ranking_matches_the_shares_exactly() -> None:
    stars = [stars_for_position(i, 1000) for i in range(1000)]
    assert [stars.count(s) for s in (5, 4, 3, 2, 1)] == [100, 200, 400, 200, 100]
    custom = [stars_for_position(i, 8, (25.0, 0.0, 50.0, 0.0, 25.0)) for i in range(8)]
    assert custom == [5, 5, 3, 3, 3, 3, 1, 1]


def test_tied_scores_share_the_stars_of_the_best_placed_one() -> None:
    ranking = [
        RankedPhoto(rank=i + 1, path=f"/p{i}", score=s, content_hash=f"h{i}", taken_at=None, width=None, height=None)
        for i, s in enumerate([4.0, 3.0, 3.0, 3.0, 1.0])
    ]
    assert stars_by_hash(ranking) == {"h0": 5, "h1": 3, "h2": 3, "h3": 3, "h4": 1}


def test_star_shares_must_add_up_to_100() -> None:
    assert XmpSettings().star_shares() == (10.0, 20.0, 40.0, 20.0, 10.0)
    with pytest.raises(ConfigError, match="must add up to 100 percent"):
        XmpSettings(stars_5=20.0)


# ---------------------------------------------------------------------------------------------------------------------
# Sidecars in memory
# ---------------------------------------------------------------------------------------------------------------------


def content(rating: int, **stars: int) -> SidecarContent:
    marks = tuple(ProfileMark(profile=n, score=float(s), rank=6 - s, stars=s) for n, s in sorted(stars.items()))
    return SidecarContent(rating=rating, rating_profile="ana", model="fp", marks=marks)


def props(data: bytes) -> dict[str, str]:
    return {d.key(): d.toString() for d in parse_sidecar(data)}


def test_sidecar_names_follow_the_naming_convention() -> None:
    assert sidecar_path("/x/photo.jpg") == Path("/x/photo.jpg.xmp")
    assert sidecar_path("/x/photo.jpg", "replace") == Path("/x/photo.xmp")
    with pytest.raises(ValueError, match="unknown sidecar naming"):
        sidecar_path("/x/photo.jpg", "prefix")


def test_merging_twice_changes_nothing_and_new_stars_replace_ours_without_duplicates() -> None:
    first = merge_sidecar(None, content(4, ana=4, bob=2), known_profiles=["ana", "bob"])
    assert first.data is not None
    assert merge_sidecar(first.data, content(4, ana=4, bob=2), known_profiles=["ana", "bob"]) == MergeResult(
        data=None, kept_rating=False
    )
    moved = merge_sidecar(first.data, content(5, ana=5, bob=2), known_profiles=["ana", "bob"])
    assert moved.data is not None
    p = props(moved.data)
    assert p["Xmp.xmp.Rating"] == "5"
    assert p["Xmp.lr.hierarchicalSubject"] == "pmllm|ana|5 stars, pmllm|bob|2 stars"
    assert p["Xmp.dc.subject"] == "pmllm: ana 5 stars, pmllm: bob 2 stars"


def test_a_profile_that_no_longer_scores_the_photo_loses_its_keywords() -> None:
    first = merge_sidecar(None, content(4, ana=4, bob=2), known_profiles=["ana", "bob"])
    assert first.data is not None
    second = merge_sidecar(first.data, content(4, ana=4), known_profiles=["ana"])
    assert second.data is not None
    p = props(second.data)
    assert p["Xmp.digiKam.TagsList"] == "pmllm/ana/4 stars" and p["Xmp.dc.subject"] == "pmllm: ana 4 stars"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"plain text",
        b'<?xml version="1.0"?><root/>',
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">',
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"><xmp:Rating><rdf:Bag><rdf:li>1</rdf:li>'
        b"</rdf:Seq></xmp:Rating></rdf:Description></rdf:RDF></x:xmpmeta>",
    ],
    ids=["empty", "text", "xml-not-xmp", "truncated", "mismatched-tags"],
)
def test_a_sidecar_that_is_not_xmp_is_refused_quietly(data: bytes, capfd: pytest.CaptureFixture[str]) -> None:
    logging.getLogger("exiv2").setLevel(logging.DEBUG)
    with pytest.raises(SidecarFormatError):
        merge_sidecar(data, content(3, ana=3))
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")  # libexiv2's own messages do not reach the terminal


def test_report_page_names_are_safe_and_unique() -> None:
    assert page_names(["ana", "Ana", "a b", "a_b", "..", "José"]) == {
        "ana": "person-ana.html",
        "Ana": "person-Ana-2.html",
        "a b": "person-a_b.html",
        "a_b": "person-a_b-2.html",
        "..": "person-profile.html",
        "José": "person-Jos_.html",
    }
