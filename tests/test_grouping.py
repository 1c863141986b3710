"""Bursts and near-duplicates (issue: real photo libraries): shown once per person, as that person's best.

A crafted library is ranked once per module through the CLI with the demo model: a five-frame handheld burst of one
scene (each frame shifted and cropped a little further, one second apart), six unrelated photos taken during the
burst, and three rendered photos without a capture time. Then every output is read with and without ``--no-group``.
The incremental linking itself is checked on synthetic embeddings through the Store and the scorer's Grouper.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pmllm_batch.config import GroupSettings
from pmllm_batch.db import Store
from pmllm_batch.outputs.bursts import components
from pmllm_batch.scorer.linking import Grouper, pooled_embedding
from tests.helpers import CLIEnv, isolated_env
from tests.imagegen import make_photo

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "photos"
UNRELATED = ("astronaut", "chelsea", "clock", "coffee", "hubble_deep_field", "rocket")
RENDERS = (3, 11, 27)
BURST = [f"burst_{k}.jpg" for k in range(5)]
PROFILES = {
    "ana": dict(age="22-25", gender="female", photography_experience="expert", big_five={"openness": 9}),
    "bernd": dict(age=64, big_five={"openness": 2, "extraversion": 2}),
}


def exif_at(when: str) -> Image.Exif:
    """EXIF with DateTimeOriginal (and DateTime) ``when`` (``YYYY:MM:DD HH:MM:SS``)."""
    exif = Image.Exif()
    exif[0x0132] = when
    exif.get_ifd(0x8769)[0x9003] = when
    return exif


def make_burst_library(lib: Path) -> None:
    lib.mkdir(parents=True)
    scene = Image.open(EXAMPLES / "camera.jpg").convert("RGB")
    w, h = scene.size
    for k, name in enumerate(BURST):  # each frame 1.5 % further right, 1 % lower, 2.5 % tighter; one second apart
        dx, dy, cw, ch = int(w * 0.015 * k), int(h * 0.01 * k), int(w * (1 - 0.025 * k)), int(h * (1 - 0.025 * k))
        frame = scene.crop((dx, dy, dx + cw, dy + ch))
        frame.save(lib / name, quality=95, exif=exif_at(f"2021:05:01 12:00:0{k}"))
    for i, name in enumerate(UNRELATED):  # other scenes, taken during the burst: only the pixels tell them apart
        photo = Image.open(EXAMPLES / f"{name}.jpg").convert("RGB")
        photo.save(lib / f"{name}.jpg", quality=95, exif=exif_at(f"2021:05:01 12:00:0{i + 1}"))
    for seed in RENDERS:  # no capture time at all
        make_photo(lib / f"render_{seed}.png", (320, 240), seed=seed)


@dataclass
class Ranked:
    env: CLIEnv
    lib: Path

    def json(self, *args: str) -> list[dict]:
        code, out, err = self.env.run_cli(*args)
        assert code == 0, err
        return json.loads(out)


@pytest.fixture(scope="module")
def ranked(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[Ranked]:
    base = tmp_path_factory.mktemp("burst")
    with isolated_env(base, {"PMLLM_PATHS__CACHE_DIR": str(model_cache)}) as env:
        lib = base / "library"
        make_burst_library(lib)
        for name, fields in PROFILES.items():
            code, _, err = env.run_cli("profile", "add", str(env.write_profile(name, **fields)))
            assert code == 0, err
        code, out, err = env.run_cli("rank", str(lib), "--json")
        assert code == 0, err
        yield Ranked(env=env, lib=lib)


def names(rows: list[dict]) -> list[str]:
    return [Path(r["path"]).name for r in rows]


# ---------------------------------------------------------------------------------------------------------------------
# Every output, grouped and not
# ---------------------------------------------------------------------------------------------------------------------


def test_a_burst_is_one_entry_per_person_and_five_with_no_group(ranked: Ranked) -> None:
    others = {f"{n}.jpg" for n in UNRELATED} | {f"render_{s}.png" for s in RENDERS}
    for person in PROFILES:
        grouped = ranked.json("export", "--profile", person, "--format", "json")
        shown = names(grouped)
        burst = [r for r in grouped if Path(r["path"]).name in BURST]
        assert len(burst) == 1 and burst[0]["group_size"] == 5
        assert sorted(Path(p).name for p in [burst[0]["path"], *burst[0]["group"]]) == BURST
        # unrelated photos are never merged: each is its own entry, alone
        assert sorted(set(shown) - set(BURST)) == sorted(others) and len(shown) == len(others) + 1
        assert all(r["group_size"] == 1 and r["group"] == [] for r in grouped if r is not burst[0])
        assert [r["rank"] for r in grouped] == list(range(1, len(grouped) + 1))

        every = ranked.json("export", "--profile", person, "--format", "json", "--no-group")
        assert sorted(set(names(every)) & set(BURST)) == BURST and len(every) == len(others) + 5
        assert {r["group_size"] for r in every} == {1}


def test_each_person_sees_their_own_best_frame_of_the_burst(ranked: Ranked) -> None:
    best = {}
    for person in PROFILES:
        every = ranked.json("export", "--profile", person, "--format", "json", "--no-group")
        scores = {Path(r["path"]).name: r["score"] for r in every if Path(r["path"]).name in BURST}
        grouped = ranked.json("export", "--profile", person, "--format", "json")
        (shown,) = [Path(r["path"]).name for r in grouped if Path(r["path"]).name in BURST]
        assert shown == max(scores, key=lambda n: scores[n])  # the person's best of the group represents it
        best[person] = shown
    assert best == {"ana": "burst_1.jpg", "bernd": "burst_2.jpg"}  # the two people's scores differ: so do their picks


def test_rank_albums_report_and_xmp_show_the_burst_once_unless_no_group(ranked: Ranked, tmp_path: Path) -> None:
    n_other = len(UNRELATED) + len(RENDERS)
    code, out, err = ranked.env.run_cli("rank", str(ranked.lib), "--json", "--top", "50")
    assert code == 0, err
    tops = {r["profile"]: r["top"] for r in map(json.loads, out.splitlines()[:-1])}
    assert {p: len(t) for p, t in tops.items()} == {"ana": n_other + 1, "bernd": n_other + 1}
    code, out, err = ranked.env.run_cli("rank", str(ranked.lib), "--top", "50")
    assert "[best of 5 similar]" in out

    code, out, err = ranked.env.run_cli("albums", "--out", str(tmp_path / "albums"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "albums").iterdir()) == ["ana", "bernd"]
    ana_album = sorted(e.name.split("_", 1)[1] for e in (tmp_path / "albums" / "ana").iterdir() if e.is_symlink())
    assert len(ana_album) == n_other + 1 and "burst_1.jpg" in ana_album
    code, out, err = ranked.env.run_cli("albums", "--out", str(tmp_path / "all"), "--no-group")
    assert len([e for e in (tmp_path / "all" / "ana").iterdir() if e.is_symlink()]) == n_other + 5

    report = ranked.json("report", "--out", str(tmp_path / "report"), "--json")
    assert {p: v["ranked"] for p, v in report["people"].items()} == {"ana": n_other + 1, "bernd": n_other + 1}
    assert "best of 5 similar photos" in (tmp_path / "report" / "person-ana.html").read_text(encoding="utf-8")
    report = ranked.json("report", "--out", str(tmp_path / "report-all"), "--json", "--no-group")
    assert {p: v["ranked"] for p, v in report["people"].items()} == {"ana": n_other + 5, "bernd": n_other + 5}

    # XMP: each person's verdict goes to their best frame only (ana's burst_1, bernd's burst_2); no sidecar for the
    # frames nobody is shown. --dry-run: the shared library stays as it is.
    xmp = ranked.json("xmp", "--profile", "ana", "--dry-run", "--json")
    assert (xmp["photos"], xmp["created"]) == (n_other + 2, n_other + 2)
    xmp = ranked.json("xmp", "--profile", "ana", "--dry-run", "--json", "--no-group")
    assert (xmp["photos"], xmp["created"]) == (n_other + 5, n_other + 5)
    assert not list(ranked.lib.glob("*.xmp"))


def test_the_config_can_turn_grouping_off(ranked: Ranked) -> None:
    ranked.env.write_config("[group]\nenabled = false\n")
    try:
        every = ranked.json("export", "--profile", "ana", "--format", "json")
    finally:
        ranked.env.user_config.unlink()
    assert len(every) == len(UNRELATED) + len(RENDERS) + 5


# ---------------------------------------------------------------------------------------------------------------------
# The linking rules and the incremental comparison (synthetic embeddings, no model)
# ---------------------------------------------------------------------------------------------------------------------


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def near(v: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector whose cosine with unit ``v`` is exactly ``cos``."""
    noise = rng.standard_normal(v.shape[0]).astype(np.float32)
    noise = unit(noise - (noise @ v) * v)
    return unit(cos * v + np.sqrt(1 - cos * cos) * noise)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'groups.sqlite'}") as s:
        yield s


def add(grouper: Grouper, store: Store, vectors: dict[str, np.ndarray], taken: dict[str, str] | None = None) -> None:
    """Store embeddings as the scorer does (one token per photo: its pooled embedding is the vector itself)."""
    from pmllm_batch.db import PhotoRecord

    taken = taken or {}
    store.upsert_photos([PhotoRecord(path=f"/lib/{h}.jpg", root="/lib", content_hash=h, size=1, mtime_ns=1,
                                     taken_at=taken.get(h)) for h in vectors])
    grouper.add_tokens({h: v[None, :] for h, v in vectors.items()}, "vis")
    grouper.update("vis")


def groups_of(store: Store, hashes: list[str]) -> list[list[str]]:
    comp = components(hashes, store.group_links("vis"))
    out: dict[str, list[str]] = {}
    for h in hashes:
        out.setdefault(comp[h], []).append(h)
    return sorted(sorted(g) for g in out.values() if len(g) > 1)


def test_links_need_near_identity_and_close_capture_times(store: Store) -> None:
    rng = np.random.default_rng(1)
    g = Grouper(store, GroupSettings(similarity=0.95, similarity_untimed=0.995, seconds=5.0))
    base = unit(rng.standard_normal(64))
    vectors = {
        "a0": base,
        "a1": near(base, 0.97, rng),  # 3 s later, similar: a burst frame
        "far": near(base, 0.999, rng),  # nearly identical but an hour later: another photo of the same view
        "copy": near(base, 0.998, rng),  # no capture time, nearly identical: a resized copy
        "crop": near(base, 0.97, rng),  # no capture time, only similar: not enough without a time
    }
    taken = {"a0": "2021-05-01T12:00:00", "a1": "2021-05-01T12:00:03", "far": "2021-05-01T13:00:00"}
    add(g, store, vectors, taken)
    assert groups_of(store, list(vectors)) == [["a0", "a1", "copy", "far"]]  # "far" joins through the copy only
    pairs = {(a, b) for a, b, _ in store.group_links("vis")}
    assert ("a0", "far") not in pairs and ("a0", "a1") in pairs and ("a0", "copy") in pairs
    assert ("copy", "far") in pairs and not any("crop" in p for p in pairs)


def test_a_new_photo_is_compared_with_candidates_not_the_whole_library(store: Store) -> None:
    rng = np.random.default_rng(2)
    g = Grouper(store, GroupSettings())
    library = {f"p{i:04d}": unit(rng.standard_normal(64)) for i in range(2000)}
    add(g, store, library)
    assert store.group_links("vis") == []  # random photos: nothing alike
    assert g.compared == 2000
    before = g.candidates
    add(g, store, {"dup": near(library["p0042"], 0.999, rng)})  # a near-copy arrives
    assert g.compared == 2001  # only the new photo was compared ...
    assert g.candidates - before < 200  # ... with a few candidates out of 2000
    assert groups_of(store, [*library, "dup"]) == [["dup", "p0042"]]
    assert store.unlinked_hashes("vis") == []


def test_changing_a_threshold_links_everything_again(store: Store) -> None:
    rng = np.random.default_rng(3)
    base = unit(rng.standard_normal(64))
    vectors = {"x": base, "y": near(base, 0.99, rng)}
    add(Grouper(store, GroupSettings()), store, vectors)
    assert store.group_links("vis") == []  # untimed and 0.99 < 0.995
    looser = Grouper(store, GroupSettings(similarity_untimed=0.98))
    looser.update("vis")
    assert [(a, b) for a, b, _ in store.group_links("vis")] == [("x", "y")]
    assert looser.compared == 2


def test_pooled_embeddings_are_unit_vectors_of_at_most_256_dimensions() -> None:
    rng = np.random.default_rng(4)
    small = pooled_embedding(rng.standard_normal((64, 64)))
    wide = pooled_embedding(rng.standard_normal((576, 4096)))
    assert small.shape == (64,) and wide.shape == (256,)
    assert abs(float(np.linalg.norm(small)) - 1) < 1e-5 and abs(float(np.linalg.norm(wide)) - 1) < 1e-5
