"""Stale sidecars (item 2): ``xmp`` cleans our marks out of every sidecar in scope that carries them, not only the
sidecars of photos ranked now: keywords of removed profiles go, photos that left the ranking (too small, failed,
missing, unscored by the current model) lose our rating, keywords and namespace, and our fingerprint follows the
model. The user's rating, title, label and keywords stay. Sidecars are read back with exiv2 and compared whole.

One library is ranked once per module with the demo model through the CLI (``scored``, ``[scan] min_side = 24`` set
explicitly: the test photos are small); every test works on its own copy (``library``, from conftest), whose
``env`` runs the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pmllm_batch.config import Settings, XmpSettings
from pmllm_batch.contracts import PhotoStatus
from pmllm_batch.errors import UserError
from pmllm_batch.outputs.bursts import RankingView
from pmllm_batch.outputs.stars import star_label, stars_by_hash
from pmllm_batch.outputs.xmp import refresh_sidecars
from tests.helpers import PROFILES, REPO, Library, Scored, isolated_env, make_library, tree_digest

pytestmark = pytest.mark.integration

CONFIG = "[scan]\nmin_side = 24\n"  # every photo of make_photo_folder is ranked (the smallest is 120 x 90)

USER_SIDECAR = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:darktable="http://darktable.sf.net/"
    xmp:Label="Red"
    xmp:Rating="2"
    darktable:xmp_version="5">
   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">Evening at the lake</rdf:li></rdf:Alt></dc:title>
   <dc:subject><rdf:Bag><rdf:li>holiday</rdf:li></rdf:Bag></dc:subject>
   <lr:hierarchicalSubject><rdf:Bag><rdf:li>places|lake</rdf:li></rdf:Bag></lr:hierarchicalSubject>
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
    base = tmp_path_factory.mktemp("stale-scored")
    with isolated_env(base) as env:
        env.write_config(CONFIG)
        lib = base / "library"
        make_library(lib)
        profiles = [str(REPO / "examples" / "profiles" / f"{name}.toml") for name in PROFILES]
        code, _, err = env.run_cli("profile", "add", *profiles)
        assert code == 0, err
        code, _, err = env.run_cli("rank", str(lib))
        assert code == 0, err
        yield Scored(lib=lib, db=env.db_path)


@pytest.fixture
def lib(library: Library) -> Library:
    """The test's copy, with the module's config (a later ``rank`` must see the same ``min_side``)."""
    library.env.write_config(CONFIG)
    with library.env.store() as store:
        assert len(store.ranking("ana")) == 10
    return library


def sidecar(photo: str | Path) -> Path:
    return Path(f"{photo}.xmp")


def read_exiv2(path: Path) -> dict[str, list[str]]:
    """Every XMP property of a sidecar as exiv2 reads it: key -> items (arrays item by item)."""
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


def user_props(tmp_path: Path) -> dict[str, list[str]]:
    """What exiv2 reads from :data:`USER_SIDECAR` alone: the user's fields, to be found unchanged after our runs."""
    path = tmp_path / "user-only.xmp"
    path.write_text(USER_SIDECAR, encoding="utf-8")
    return read_exiv2(path)


def our_props(library: Library, photo: str, rating_profile: str, *, user_rating: bool = False) -> dict[str, list[str]]:
    """The exact properties of ours a sidecar of ``photo`` must hold for the library's current rankings (stars from
    each person's whole ranking), as exiv2 reads them; {} when the photo is in no ranking."""
    with library.env.store() as store:
        model = store.current_model()
        assert model is not None
        view = RankingView(store)
        marks = []
        for name in sorted(p.name for p in store.list_profiles()):
            full = view.full(name)
            stars = stars_by_hash(full)
            item = next((r for r in full if photo in view.files(r)), None)
            if item is not None:
                marks.append((name, item.score, item.rank, stars[item.content_hash]))
    if not marks:
        return {}
    flat = [f"pmllm: {name} {star_label(s)}" for name, _, _, s in marks]
    props: dict[str, list[str]] = {}
    rating = next((s for name, _, _, s in marks if name == rating_profile), None)
    if rating is not None and not user_rating:
        props["Xmp.xmp.Rating"] = [str(rating)]
        props["Xmp.pmllm.writtenRating"] = [str(rating)]
        props["Xmp.pmllm.ratingProfile"] = [rating_profile]
    props["Xmp.pmllm.modelFingerprint"] = [model["fingerprint"]]
    props["Xmp.pmllm.writtenKeywords"] = flat
    props["Xmp.pmllm.scores"] = ['type="Seq"']
    for i, (name, score, rank, s) in enumerate(marks, start=1):
        base = f"Xmp.pmllm.scores[{i}]"
        props[base] = ['type="Struct"']
        props[f"{base}/pmllm:profile"] = [name]
        props[f"{base}/pmllm:score"] = [f"{score:.4f}"]
        props[f"{base}/pmllm:rank"] = [str(rank)]
        props[f"{base}/pmllm:stars"] = [str(s)]
    props["Xmp.lr.hierarchicalSubject"] = [f"pmllm|{name}|{star_label(s)}" for name, _, _, s in marks]
    props["Xmp.digiKam.TagsList"] = [f"pmllm/{name}/{star_label(s)}" for name, _, _, s in marks]
    props["Xmp.dc.subject"] = flat
    return props


def merged(user: dict[str, list[str]], ours: dict[str, list[str]]) -> dict[str, list[str]]:
    """A sidecar holding both: the user's keywords first, ours after them."""
    out = {k: list(v) for k, v in user.items()}
    for key, items in ours.items():
        if key in out and key in ("Xmp.dc.subject", "Xmp.lr.hierarchicalSubject", "Xmp.digiKam.TagsList"):
            out[key] += items
        else:
            out[key] = list(items)
    return out


def set_rating_in_app(path: Path, stars: int) -> None:
    """The user changes the rating in a photo app (which rewrites only that attribute)."""
    text = path.read_text(encoding="utf-8")
    new, n = re.subn(r'xmp:Rating="\d"', f'xmp:Rating="{stars}"', text)
    assert n == 1
    path.write_text(new, encoding="utf-8")


def xmp_json(library: Library, *args: str) -> dict:
    code, out, err = library.run("xmp", *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_item2_profile_remove_then_xmp_drops_that_persons_keywords(lib: Library, tmp_path: Path) -> None:
    landscape = str(lib.lib / "landscape.jpg")
    sidecar(landscape).write_text(USER_SIDECAR, encoding="utf-8")  # the user's app wrote one first
    first = xmp_json(lib, "--profile", "ana")
    assert (first["created"], first["updated"], first["cleaned"]) == (9, 1, 0)
    assert "pmllm|coarse|" in " ".join(read_exiv2(sidecar(landscape))["Xmp.lr.hierarchicalSubject"])

    code, _, err = lib.run("profile", "remove", "coarse")
    assert code == 0, err
    summary = xmp_json(lib, "--profile", "ana")
    assert summary["profiles"] == ["ana", "bernd"]
    assert (summary["photos"], summary["updated"], summary["deleted"], summary["problems"]) == (10, 10, 0, [])
    assert (summary["cleaned"], summary["cleaned_counts"]) == (10, {"removed_profile": 10})

    user = user_props(tmp_path)
    with lib.env.store() as store:
        photos = [p for r in store.ranking("ana") for p in (r.paths or (r.path,))]
    assert len(photos) == 10
    for photo in photos:
        props = read_exiv2(sidecar(photo))
        if photo == landscape:  # the user's rating (2, with no rating of ours before it), title, keywords stay
            assert props == merged(user, our_props(lib, photo, "ana", user_rating=True))
        else:
            assert props == our_props(lib, photo, "ana")
        assert "coarse" not in json.dumps(props)

    again = xmp_json(lib, "--profile", "ana")
    assert (again["unchanged"], again["cleaned"]) == (10, 0)


def test_item2_photo_that_left_the_ranking_loses_our_rating_but_keeps_the_users(lib: Library, tmp_path: Path) -> None:
    folder = lib.lib
    small, palette, web, gray = (str(folder / n) for n in ("small.png", "palette.gif", "web.webp", "gray.png"))
    sidecar(palette).write_text(USER_SIDECAR, encoding="utf-8")  # a user's sidecar (rating 2) before our first run
    first = xmp_json(lib, "--profile", "ana")
    assert (first["created"], first["updated"]) == (9, 1)
    assert read_exiv2(sidecar(palette))["Xmp.xmp.Rating"] == ["2"]  # the user's, with no rating of ours before it
    set_rating_in_app(sidecar(web), 1 if read_exiv2(sidecar(web))["Xmp.xmp.Rating"] != ["1"] else 2)
    users_web_rating = read_exiv2(sidecar(web))["Xmp.xmp.Rating"]

    # small.png (120 x 90) and palette.gif (200 x 150) become too small, web.webp is cut off, gray.png is deleted
    lib.env.write_config("[scan]\nmin_side = 160\n")
    Path(web).write_bytes(Path(web).read_bytes()[:300])
    Path(gray).unlink()
    code, _, err = lib.run("rank", str(folder))
    assert code == 0, err
    with lib.env.store() as store:
        index = store.photo_index()
        assert len(store.ranking("ana")) == 6
    assert [index[p].status for p in (small, palette, web, gray)] == [
        PhotoStatus.SKIPPED, PhotoStatus.SKIPPED, PhotoStatus.FAILED, PhotoStatus.MISSING]

    summary = xmp_json(lib, "--profile", "ana")
    assert (summary["photos"], summary["created"], summary["deleted"], summary["problems"]) == (10, 0, 2, [])
    assert summary["updated"] + summary["unchanged"] == 8
    assert summary["kept_ratings"] == 0  # no rating of ours competes with the user's on a photo that left
    assert (summary["cleaned"], summary["cleaned_counts"]) == (4, {"left_ranking": 4})
    assert {Path(c["path"]).name: c["deleted"] for c in summary["cleaned_sidecars"]} == {
        "small.png": True, "palette.gif": False, "web.webp": False, "gray.png": True}

    # Only our marks were there: the sidecar is gone. The user's fields stay, exactly, and nothing of ours.
    assert not sidecar(small).exists() and not sidecar(gray).exists()
    assert read_exiv2(sidecar(palette)) == user_props(tmp_path)
    assert read_exiv2(sidecar(web)) == {"Xmp.xmp.Rating": users_web_rating}
    # The photos still ranked carry exactly the new rankings' marks.
    with lib.env.store() as store:
        ranked = [r.path for r in store.ranking("ana")]
    for photo in ranked:
        assert read_exiv2(sidecar(photo)) == our_props(lib, photo, "ana")

    # Cleaned sidecars carry nothing of ours any more: the next run does not count them, and changes no byte.
    before = tree_digest(folder)
    again = xmp_json(lib, "--profile", "ana")
    assert (again["photos"], again["unchanged"], again["cleaned"]) == (6, 6, 0)
    assert tree_digest(folder) == before


def test_item2_fingerprint_follows_the_model(lib: Library) -> None:
    first = xmp_json(lib, "--profile", "bernd")
    assert first["created"] == 10
    old = first["model"]
    # Another model becomes current; it has scored 8 of the 10 photos so far (in another order).
    left = {str(lib.lib / "small.png"), str(lib.lib / "alpha.png")}
    with lib.env.store() as store:
        ids = {p.name: p.id for p in store.list_profiles()}
        rows = [(r.content_hash, ids[name], 6.0 - r.score, [0.2] * 5)
                for name in PROFILES for r in store.ranking(name) if r.path not in left]
        new_id = store.ensure_model("fp-another-model", "demo", {"demo": True})
        store.add_scores(new_id, rows)
        assert store.current_model_id() == new_id

    summary = xmp_json(lib, "--profile", "bernd")
    assert summary["model"] == "fp-another-model" != old
    assert (summary["photos"], summary["updated"], summary["deleted"], summary["problems"]) == (10, 8, 2, [])
    assert summary["cleaned_counts"] == {"left_ranking": 2}
    sidecars = sorted(lib.lib.rglob("*.xmp"))
    assert len(sidecars) == 8 and not any(sidecar(p).exists() for p in left)
    for path in sidecars:
        photo = str(path)[: -len(".xmp")]
        props = read_exiv2(path)
        assert props["Xmp.pmllm.modelFingerprint"] == ["fp-another-model"]
        assert props == our_props(lib, photo, "bernd")


def test_item2_summary_counts_cleaned_sidecars(lib: Library) -> None:
    code, out, err = lib.run("xmp", "--profile", "ana")
    assert (code, err) == (0, "")
    assert out == (
        "stars for ana, keywords for ana, bernd, coarse (append naming): 10 photos; 10 sidecars created, "
        "0 updated, 0 unchanged, 0 user ratings kept, 0 skipped\n"
    )
    small = lib.lib / "small.png"
    top = next(r.path for r in lib.ranking("ana") if r.path != str(small))
    set_rating_in_app(sidecar(top), 1)  # demoted in a photo app: the user's now (ours for the top photo is 5)
    code, _, err = lib.run("profile", "remove", "coarse")
    assert code == 0, err
    lib.env.write_config("[scan]\nmin_side = 100\n")  # small.png (120 x 90) leaves the ranking
    code, _, err = lib.run("rank", str(lib.lib))
    assert code == 0, err

    before = tree_digest(lib.lib)
    code, out, err = lib.run("xmp", "--profile", "ana", "--dry-run")
    assert (code, err) == (0, "")
    assert out == (
        "stars for ana, keywords for ana, bernd (append naming): 10 photos; 0 sidecars would be created, "
        "9 would be updated, 1 would be deleted, 0 unchanged, 1 user rating kept, 0 skipped "
        "(dry run: nothing was written)\n"
        "10 sidecars would be cleaned: 9 lost a removed person's keywords, 1 left the ranking "
        "(1 sidecar would be deleted: it held only our marks)\n"
    )
    assert tree_digest(lib.lib) == before

    code, out, err = lib.run("xmp", "--profile", "ana")
    assert (code, err) == (0, "")
    assert out == (
        "stars for ana, keywords for ana, bernd (append naming): 10 photos; 0 sidecars created, 9 updated, "
        "1 deleted, 0 unchanged, 1 user rating kept, 0 skipped\n"
        "10 sidecars cleaned: 9 lost a removed person's keywords, 1 left the ranking "
        "(1 sidecar deleted: it held only our marks)\n"
    )
    assert not sidecar(small).exists()
    assert read_exiv2(sidecar(top))["Xmp.xmp.Rating"] == ["1"]

    summary = xmp_json(lib, "--profile", "ana")
    assert (summary["photos"], summary["unchanged"], summary["kept_ratings"]) == (9, 9, 1)
    assert (summary["cleaned"], summary["cleaned_counts"], summary["cleaned_sidecars"]) == (0, {}, [])
    code, out, _ = lib.run("xmp", "--profile", "ana")
    assert out.endswith("9 photos; 0 sidecars created, 0 updated, 9 unchanged, 1 user rating kept, 0 skipped\n")


def test_item2_the_daemons_refresh_cleans_stale_sidecars_the_same_way(lib: Library) -> None:
    on = dataclasses.replace(Settings(), xmp=XmpSettings(profile="coarse"))
    with lib.env.store() as store:
        first = refresh_sidecars(store, on)
        assert (first.created, first.cleaned) == (10, [])
        store.remove_profile("coarse")  # the daemon's rating profile is gone: its refresh fails with one sentence
        with pytest.raises(UserError):
            refresh_sidecars(store, on)
        second = refresh_sidecars(store, dataclasses.replace(on, xmp=XmpSettings(profile="bernd")))
    assert (second.updated, second.cleaned_counts()) == (10, {"removed_profile": 10})
    assert second.cleaned_text() == "10 sidecars cleaned: 10 lost a removed person's keywords"
    for path in sorted(lib.lib.rglob("*.xmp")):
        assert read_exiv2(path) == our_props(lib, str(path)[: -len(".xmp")], "bernd")
