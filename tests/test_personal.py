"""Each person's ranking learned from their own stars, everywhere people look (issue 22): ``personal_ranking``, the
``RankingView`` every output reads, and ``rank`` / ``export`` / ``albums`` / ``report`` / ``xmp`` end to end.

The first half works on synthetic libraries written straight into a database (random scores, embeddings and
ratings); the second on a real small library ranked with the demo preset through the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pmllm_batch.config import LearnSettings
from pmllm_batch.contracts import PhotoRecord
from pmllm_batch.db import Store
from pmllm_batch.db.ratings import RatingInput
from pmllm_batch.learn import TasteState
from pmllm_batch.outputs.bursts import RankingView, TopChange
from pmllm_batch.outputs.personal import Learned, learned_summary, learned_text, personal_ranking
from pmllm_batch.profiles import Profile
from tests.helpers import Library, Scored, ranked_library

# ---------------------------------------------------------------------------------------------------------------------
# Synthetic libraries
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Synthetic:
    store: Store
    hashes: list[str]
    model_id: int


def synthetic(
    folder: Path, n: int, *, seed: int = 0, dim: int = 12, embedded: float = 0.9, model: str = "fp-a",
    vision: str = "vision-a", profiles: tuple[str, ...] = ("ana", "bernd"),
) -> Synthetic:
    """``n`` ok photos scored by one model for ``profiles`` (scores on the 1..5 scale with ties), with unit
    embeddings under ``vision`` for about ``embedded`` of them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    store = Store(f"sqlite:///{folder / 'library.sqlite'}")
    hashes = [f"{seed:04d}{i:036x}" for i in range(n)]
    store.upsert_photos([PhotoRecord(path=f"/library/p{i:05d}.jpg", root="/library", content_hash=h, size=1,
                                     mtime_ns=1) for i, h in enumerate(hashes)])
    for name in profiles:
        store.upsert_profile(Profile(name=name), f"the persona of {name}")
    mid = add_model(store, model, vision, hashes, profiles, seed=seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    keep = rng.random(n) < embedded
    store.put_embeddings(vision, {h: (vectors[i], [0, 0, 0, 0]) for i, h in enumerate(hashes) if keep[i]})
    return Synthetic(store, hashes, mid)


def add_model(store: Store, fingerprint: str, vision: str, hashes: list[str], profiles: tuple[str, ...], *,
              seed: int) -> int:
    """Register a model (current) with its vision graph and give every photo a score for every profile."""
    rng = np.random.default_rng(seed + 1000)
    mid = store.ensure_model(fingerprint, "demo", {"vision_id": vision})
    for name in profiles:
        pid = store.get_profile(name).id
        scores = np.round(rng.uniform(1.0, 5.0, len(hashes)), 1)  # one decimal: ties, broken by path
        store.add_scores(mid, [(h, pid, float(s), [0.2] * 5) for h, s in zip(hashes, scores, strict=True)])
    return mid


def rate(store: Store, profile: str, stars: dict[str, int]) -> None:
    store.set_ratings(profile, [RatingInput(h, s, "cli", None) for h, s in stars.items()])


@pytest.fixture
def lib(tmp_path: Path) -> Iterator[Synthetic]:
    s = synthetic(tmp_path / "lib", 40, seed=3)
    try:
        yield s
    finally:
        s.store.close()


def test_without_ratings_the_ranking_is_exactly_the_stored_one(lib: Synthetic) -> None:
    expected = lib.store.ranking("ana")
    rows, learned = personal_ranking(lib.store, "ana")
    assert rows == expected  # every field: rank, path, score (bit for bit), order
    assert (learned.n_ratings, learned.zero_shot, learned.describe()) == (0, True, "profile only")
    assert lib.store.taste("ana", lib.model_id) is None  # nothing to fit, nothing stored

    # with ratings, --zero-shot and [learn] enabled = false still give exactly the stored ranking
    rate(lib.store, "ana", {lib.hashes[0]: 5, lib.hashes[1]: -1})
    for kwargs in ({"zero_shot": True}, {"learn": LearnSettings(enabled=False)}):
        rows, learned = personal_ranking(lib.store, "ana", **kwargs)
        assert rows == expected and learned.describe() == "profile only" and learned.learned_from == 0
    # another person's ratings change nothing for ana's neighbour
    rows, learned = personal_ranking(lib.store, "bernd")
    assert rows == lib.store.ranking("bernd") and learned.zero_shot


def test_the_words_for_what_a_ranking_learned_from() -> None:
    assert Learned("ana", 3, zero_shot=False, features=True).describe() == "learned from 3 of your ratings"
    assert Learned("ana", 1, zero_shot=False, features=True).describe() == "learned from 1 of your ratings"
    assert Learned("ana").describe() == "profile only" == learned_text(0)
    assert Learned("ana", 2, zero_shot=False, features=False).describe().startswith("ordered by 2 of your ratings")
    assert Learned("ana", 3, zero_shot=False).ranking == "learned" and Learned("ana").ranking == "profile only"
    assert TopChange(10, 4, 4).describe() == "4 photos entered your top 10, 4 left"
    assert TopChange(10, 1, 2).describe() == "1 photo entered your top 10, 2 left"
    assert TopChange(5, 0, 0).describe() == "your top 5 has the same photos"


def _check_verdicts(rows: list, stars: dict[str, int], n: int) -> None:
    assert [r.rank for r in rows] == list(range(1, n + 1))
    assert rows == sorted(rows, key=lambda r: (-r.score, r.path))
    place = {r.content_hash: r.rank for r in rows}
    rated = sorted(stars, key=place.__getitem__)  # best first
    levels = [stars[h] for h in rated]
    assert levels == sorted(levels, key=lambda s: -s if s > 0 else 99)  # higher stars first, rejected last
    rejected = [place[h] for h in stars if stars[h] == -1]
    if rejected:
        assert min(rejected) == n - len(rejected) + 1  # every rejected photo below every other photo


@pytest.mark.parametrize("seed", range(8))
def test_verdicts_win_for_random_ratings_on_a_random_library(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    lib = synthetic(tmp_path, n, seed=seed, dim=int(rng.integers(2, 20)), embedded=float(rng.uniform(0.0, 1.0)))
    try:
        k = int(rng.integers(1, n + 1))
        chosen = rng.choice(n, size=k, replace=False)
        stars = {lib.hashes[i]: int(rng.choice([-1, 1, 2, 3, 4, 5])) for i in chosen}
        rate(lib.store, "ana", stars)
        settings = LearnSettings(lam=float(rng.choice([0.1, 30.0])))
        rows, learned = personal_ranking(lib.store, "ana", learn=settings)
        assert learned.n_ratings == k and not learned.zero_shot
        assert {r.content_hash for r in rows} == set(lib.hashes)
        _check_verdicts(rows, stars, n)
        # the view every output reads: the same order, and a rejected photo never in a top-N
        view = RankingView(lib.store, group=False, learn=settings)
        assert [r.content_hash for r in view.full("ana")] == [r.content_hash for r in rows]
        top = int(rng.integers(1, n + 1))
        shown = view.ranking("ana", top=top)
        assert not {r.content_hash for r in shown} & learned.rejected
        assert [r.content_hash for r in shown] == [r.content_hash for r in rows
                                                   if r.content_hash not in learned.rejected][:top]
        assert all(view.stars("ana")[h] == s for h, s in stars.items())  # their own stars, -1 for a rejection
    finally:
        lib.store.close()


def test_the_taste_is_stored_reused_and_refitted_after_a_new_rating(lib: Synthetic) -> None:
    rate(lib.store, "ana", {lib.hashes[0]: 5, lib.hashes[1]: 3, lib.hashes[2]: -1})
    first, learned = personal_ranking(lib.store, "ana")
    assert learned.refitted and learned.describe() == "learned from 3 of your ratings"
    stored = lib.store.taste("ana", lib.model_id)
    assert stored is not None and stored.n_ratings == 3 and len(stored.ratings_digest) == 64
    state = TasteState.from_dict(json.loads(stored.state_json))
    assert state.model_fingerprint == "fp-a" and state.n_ratings == 3

    again, learned = personal_ranking(lib.store, "ana")  # nothing changed: the stored taste, no fit
    assert not learned.refitted and again == first
    assert lib.store.taste("ana", lib.model_id) == stored

    rate(lib.store, "ana", {lib.hashes[3]: 4})
    _, learned = personal_ranking(lib.store, "ana")
    refitted = lib.store.taste("ana", lib.model_id)
    assert learned.refitted and learned.n_ratings == 4
    assert refitted is not None and refitted.ratings_digest != stored.ratings_digest and refitted.n_ratings == 4
    # only the ratings changed: the feature spec (fitted on the library's embeddings) is the same one
    assert TasteState.from_dict(json.loads(refitted.state_json)).spec == state.spec

    # other learn settings are another fit
    _, learned = personal_ranking(lib.store, "ana", learn=LearnSettings(lam=3.0))
    assert learned.refitted


def test_another_model_has_its_own_taste_row(lib: Synthetic) -> None:
    rate(lib.store, "ana", {lib.hashes[0]: 5, lib.hashes[1]: 2})
    personal_ranking(lib.store, "ana")
    before = lib.store.taste("ana", lib.model_id)
    other = add_model(lib.store, "fp-b", "vision-a", lib.hashes, ("ana", "bernd"), seed=99)
    assert lib.store.taste("ana", other) is None
    rows, learned = personal_ranking(lib.store, "ana")  # the current model is the new one now
    assert learned.refitted and {r.content_hash for r in rows} == set(lib.hashes)
    mine = lib.store.taste("ana", other)
    assert mine is not None and json.loads(mine.state_json)["model_fingerprint"] == "fp-b"
    assert lib.store.taste("ana", lib.model_id) == before  # the first model's taste is left as it was
    _, learned = personal_ranking(lib.store, "ana", model_id=lib.model_id)
    assert not learned.refitted  # and is still valid for that model's ranking


def test_without_embeddings_the_verdicts_alone_reorder_the_ranking(tmp_path: Path) -> None:
    lib = synthetic(tmp_path, 12, seed=5, embedded=0.0)
    try:
        stars = {lib.hashes[0]: 2, lib.hashes[1]: 5, lib.hashes[2]: -1}
        rate(lib.store, "ana", stars)
        rows, learned = personal_ranking(lib.store, "ana")
        assert not learned.features and learned.describe().startswith("ordered by 3 of your ratings")
        _check_verdicts(rows, stars, 12)
        base = {r.content_hash: r.score for r in lib.store.ranking("ana")}
        assert all(r.score == base[r.content_hash] for r in rows if r.content_hash not in stars)  # unrated: as is
    finally:
        lib.store.close()


def test_learned_summary_counts_each_persons_ratings_for_status(lib: Synthetic) -> None:
    assert learned_summary(lib.store) == {"ana": 0, "bernd": 0}
    rate(lib.store, "ana", {lib.hashes[0]: 5, lib.hashes[1]: 3, lib.hashes[2]: -1})
    assert learned_summary(lib.store) == {"ana": 3, "bernd": 0}
    assert learned_summary(lib.store, LearnSettings(enabled=False)) == {"ana": 0, "bernd": 0}


# ---------------------------------------------------------------------------------------------------------------------
# End to end: a real library ranked with the demo preset
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scored]:
    with ranked_library(tmp_path_factory.mktemp("personal-scored")) as s:
        yield s


def _json_tops(out: str) -> dict[str, dict]:
    return {r["profile"]: r for r in map(json.loads, out.splitlines()[:-1])}


@dataclasses.dataclass
class Rated:
    five: str  # paths
    three: str
    rejected: str
    old_top: list[str]  # content hashes of ana's profile-only top 10


def _rate_three(library: Library) -> Rated:
    """ana rates her profile-only #8 five stars, #2 three stars and rejects her #1."""
    code, out, err = library.run("rank", str(library.lib), "--json", "--top", "10")
    assert code == 0, err
    old = _json_tops(out)["ana"]
    assert old["ranking"] == "profile only" and old["learned_from"] == 0
    ranking = library.ranking("ana")
    assert [r.content_hash for r in ranking] == [r["content_hash"] for r in old["top"]]
    five, three, rejected = ranking[7], ranking[1], ranking[0]
    with library.env.store() as store:
        rate(store, "ana", {five.content_hash: 5, three.content_hash: 3, rejected.content_hash: -1})
    return Rated(five.path, three.path, rejected.path, [r.content_hash for r in ranking])


@pytest.mark.integration
def test_rank_follows_anas_stars_and_zero_shot_gives_the_old_order(library: Library) -> None:
    rated = _rate_three(library)
    code, out, err = library.run("rank", str(library.lib), "--top", "10")
    assert code == 0, err
    assert "ana: learned from 3 of your ratings — " in out and "bernd: profile only" in out
    assert re.search(r"ana: learned from 3 of your ratings — \d+ photos? entered your top 10, \d+ left", out)

    code, out, err = library.run("rank", str(library.lib), "--json", "--top", "10")
    assert code == 0, err
    ana = _json_tops(out)["ana"]
    paths = [r["path"] for r in ana["top"]]
    assert (ana["ranking"], ana["learned_from"]) == ("learned", 3)
    assert paths.index(rated.five) < paths.index(rated.three)  # her 5 above her 3
    assert rated.rejected not in paths and len(paths) == 9  # her -1 is out of her top, whatever its size
    assert ana["left_top"] >= 1  # the rejected photo left it

    code, out, err = library.run("rank", str(library.lib), "--json", "--top", "10", "--zero-shot")
    assert code == 0, err
    zero = _json_tops(out)["ana"]
    assert [r["content_hash"] for r in zero["top"]] == rated.old_top  # exactly the old order
    assert zero["ranking"] == "profile only" and zero["top"][0]["path"] == rated.rejected

    # the taste was stored once and is reused: another run does not refit
    with library.env.store() as store:
        model_id = store.current_model_id()
        assert model_id is not None
        stored = store.taste("ana", model_id)
        assert stored is not None and stored.n_ratings == 3
        _, learned = personal_ranking(store, "ana")
        assert not learned.refitted and store.taste("ana", model_id) == stored
        assert store.taste("bernd", model_id) is None


@pytest.mark.integration
def test_albums_report_and_export_leave_the_rejected_photo_out_and_say_what_they_learned(
    library: Library, tmp_path: Path
) -> None:
    rated = _rate_three(library)
    albums = tmp_path / "albums"
    code, out, err = library.run("albums", "--out", str(albums), "--top", "10")
    assert code == 0, err
    assert "; learned from 3 of your ratings" in out.splitlines()[0]  # ana's line; bernd's reads as before
    links = {Path(p.resolve()) for p in (albums / "ana").iterdir() if p.is_symlink()}
    assert Path(rated.rejected) not in links and Path(rated.five) in links and len(links) == 9
    assert len([p for p in (albums / "bernd").iterdir() if p.is_symlink()]) == 10

    code, out, err = library.run("report", "--out", str(tmp_path / "report"), "--top", "10", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["learned"]["ana"] == {"ranking": "learned", "learned_from": 3}
    assert summary["learned"]["bernd"] == {"ranking": "profile only", "learned_from": 0}
    assert summary["people"]["ana"]["shown"] == 9
    index = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert "learned from 3 of your ratings" in index and "profile only" in index
    page = (tmp_path / "report" / "person-ana.html").read_text(encoding="utf-8")
    assert Path(rated.rejected).name not in page and Path(rated.five).name in page

    code, out, err = library.run("export", "--profile", "ana", "--format", "json")
    assert code == 0 and err == "ana: learned from 3 of your ratings\n"
    rows = json.loads(out)
    assert rows[-1]["path"] == rated.rejected and len(rows) == 10  # the whole ranking: rejected at the bottom
    code, out, err = library.run("export", "--profile", "ana", "--format", "json", "--top", "10", "--zero-shot")
    assert code == 0 and err == "ana: profile only\n"
    assert [r["content_hash"] for r in json.loads(out)] == rated.old_top


@pytest.mark.integration
def test_xmp_never_gives_a_rejected_photo_our_five_stars_and_keeps_a_rating_set_in_an_app(library: Library) -> None:
    rated = _rate_three(library)
    # the photo ana rated 3 already has a sidecar with a rating she set in her photo app (2)
    user = Path(f"{rated.three}.xmp")
    user.write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="2"/>'
        "</rdf:RDF></x:xmpmeta>\n", encoding="utf-8")
    summary = library.xmp("--profile", "ana")
    assert summary["problems"] == [] and summary["kept_ratings"] == 1

    def rating(photo: str) -> str | None:
        found = re.search(r'xmp:Rating="(-?\d+)"', Path(f"{photo}.xmp").read_text(encoding="utf-8"))
        return found.group(1) if found else None

    assert rating(rated.rejected) == "-1"  # hers (XMP's "rejected"), never our 5: it was her profile-only #1
    assert rating(rated.five) == "5"
    assert rating(rated.three) == "2"  # the rating she set in her app is never overwritten
    fives = [r.path for r in library.ranking("ana") if Path(f"{r.path}.xmp").exists() and rating(r.path) == "5"]
    assert rated.rejected not in fives
    assert "pmllm|ana|rejected" in Path(f"{rated.rejected}.xmp").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------------
# bench: learn_rerank_s
# ---------------------------------------------------------------------------------------------------------------------


def test_the_learn_bench_times_a_new_rating_to_a_fresh_ranking_of_the_library_it_writes(tmp_path: Path) -> None:
    from pmllm_batch.bench.codec import from_json, to_json
    from pmllm_batch.bench.learn import LearnResult, learn_checks, learn_rerank, learn_rows
    from pmllm_batch.bench.library import SectionError

    result = learn_rerank(tmp_path / "learn", n=300, dim=16, n_ratings=5, repeats=2)
    assert (result.photos, result.embedding_dim, result.ratings_before, result.repeats) == (300, 16, 5, 2)
    assert len(result.cycles_s) == 2 and result.learn_rerank_s > 0 and result.learn_rerank_cpu_s >= 0
    assert from_json(LearnResult, json.loads(json.dumps(to_json(result)))) == result
    rows = learn_rows(result)
    assert len(rows) == 2 and rows[0][0] == "10 learn" and "300 photos" in rows[0][1]
    assert learn_checks(result) == {"learn_rerank_at_most_5s": None}  # not the 20,000 photos on 1 thread
    assert learn_checks(None) == {} and learn_rows(None) == []
    assert learn_checks(SectionError("boom")) == {"learn_rerank_at_most_5s": False}
