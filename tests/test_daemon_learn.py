"""The daemon learns a person's stars from their sidecars ([learn] xmp_profile; issue 22).

The pieces in-process (which events are sidecars, which photos a sidecar belongs to, the learner's rules against a
real database), then the must-show end to end: a real :class:`WatchService` with its real observer (inotify, or
polling where there is none) and the stand-in model, no restart in between: our own sidecars store nothing, a
sidecar's stars become ana's rating and move her ranking, a rejection sends the photo to the bottom, cleared stars
are forgotten. Deadlines are hang guards, never claims about speed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from watchdog.events import FileModifiedEvent

from pmllm_batch.daemon.batchlog import RunCounts
from pmllm_batch.daemon.sidecars import SidecarLearner, is_sidecar, photos_of_sidecar
from pmllm_batch.daemon.watcher import PhotoEventHandler, SettleTracker
from pmllm_batch.ratings import ReadResult, cli_rating
from pmllm_batch.scan.plan import PathFilter
from pmllm_batch.scorer.rated import store_ratings
from tests.doubles import demo_fake_loader
from tests.helpers import CLIEnv
from tests.helpers import wait_until as _wait_until
from tests.imagegen import make_photo

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "examples" / "profiles"
HANG_GUARD = 120.0  # seconds: the limit for something that must happen, never a claim about speed


def add_profile(env: CLIEnv, name: str) -> None:
    code, _, err = env.run_cli("profile", "add", str(PROFILES / f"{name}.toml"))
    assert code == 0, err


def sidecar_text(attrs: str) -> str:
    """A sidecar as a photo app writes it (xmp:Rating and friends as attributes)."""
    from pmllm_batch.xmp_engine import NS_URI

    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        f'  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:pmllm="{NS_URI}" {attrs}/>\n'
        " </rdf:RDF>\n</x:xmpmeta>\n"
    )


def write_sidecar(path: Path, attrs: str) -> Path:
    path.write_text(sidecar_text(attrs), encoding="utf-8")
    return path


def set_stars(sidecar: Path, stars: int) -> None:
    """Change ``xmp:Rating`` in an existing sidecar the way digiKam does (exiv2; everything else kept, our
    ``pmllm:writtenRating`` included). 0 = the person cleared the stars."""
    from pmllm_batch.outputs.xmp import parse_sidecar, serialize_sidecar

    xmp = parse_sidecar(sidecar.read_bytes())
    xmp["Xmp.xmp.Rating"] = str(stars)
    sidecar.write_bytes(serialize_sidecar(xmp))


def by_detail(store: Any, profile: str = "ana") -> list[tuple[str, str | None, int]]:
    """The stored ratings as sorted (source, detail file name, stars)."""
    rows = store.ratings(profile).values()
    return sorted((r.source, os.path.basename(r.detail) if r.detail else None, r.stars) for r in rows)


# ---------------------------------------------------------------------------------------------------------------------
# The pieces
# ---------------------------------------------------------------------------------------------------------------------


def test_sidecar_names_and_their_photos(tmp_path: Path) -> None:
    assert is_sidecar("a/IMG_1.jpg.xmp") and is_sidecar("IMG_1.XMP")
    assert not is_sidecar(".IMG_1.jpg.xmp") and not is_sidecar(".xmp") and not is_sidecar("IMG_1.jpg")
    names = ["IMG_1.jpg", "IMG_1.CR2", "IMG_1.xmp", "IMG_1.jpg.xmp", "IMG_10.jpg", "IMG_1.jpg.cr2", "other.jpg"]
    folder = tmp_path
    assert photos_of_sidecar(folder / "IMG_1.jpg.xmp", names) == [folder / "IMG_1.jpg", folder / "IMG_1.jpg.cr2"]
    assert photos_of_sidecar(folder / "IMG_1.xmp", names) == [folder / "IMG_1.CR2", folder / "IMG_1.jpg"]
    assert photos_of_sidecar(folder / "IMG_1.XMP", names) == [folder / "IMG_1.CR2", folder / "IMG_1.jpg"]
    assert photos_of_sidecar(folder / "nothing.xmp", names) == []


def test_sidecar_events_go_to_the_learner_only_while_it_learns(tmp_path: Path) -> None:
    photos = SettleTracker(0.0)
    offered: list[str] = []

    def learner(path: str) -> bool:
        offered.append(path)
        return path.endswith(".xmp")

    handler = PhotoEventHandler(PathFilter([tmp_path]), photos, learner)
    handler.dispatch(FileModifiedEvent(str(tmp_path / "a.jpg.xmp")))
    handler.dispatch(FileModifiedEvent(str(tmp_path / "a.jpg")))
    assert offered == [str(tmp_path / "a.jpg.xmp"), str(tmp_path / "a.jpg")]
    assert photos.waiting_paths() == [str(tmp_path / "a.jpg")]
    # without a learner a sidecar is what it always was: an unknown file the photo tracker sniffs and drops
    plain = SettleTracker(0.0)
    PhotoEventHandler(PathFilter([tmp_path]), plain).dispatch(FileModifiedEvent(str(tmp_path / "a.jpg.xmp")))
    assert plain.waiting_paths() == [str(tmp_path / "a.jpg.xmp")]


@contextmanager
def learner_on(env: CLIEnv, lib: Path, **xmp: Any) -> Iterator[tuple[SidecarLearner, Any, SettleTracker]]:
    """A :class:`SidecarLearner` for ana on ``lib`` with its own store (no daemon around it)."""
    from pmllm_batch.config import load_config
    from pmllm_batch.db import Store

    settings = load_config(overrides={"db": {"url": env.db_url}, "learn": {"xmp_profile": "ana"}, "xmp": xmp,
                                      "watch": {"settle": 0.0, "debounce": 0.0}})
    photos = SettleTracker(0.0)
    with Store(env.db_url) as store:
        yield SidecarLearner(settings, store, PathFilter([lib]), photos, RunCounts()), store, photos


def test_a_shared_sidecar_rates_both_photos_and_clearing_its_stars_forgets_them(
    env: CLIEnv, caplog: pytest.LogCaptureFixture
) -> None:
    lib = env.root / "lib"
    for name, seed in (("IMG_1.jpg", 1), ("IMG_1.png", 2), ("b.jpg", 3)):
        make_photo(lib / name, (48, 36), seed=seed)
    add_profile(env, "ana")
    caplog.set_level(logging.INFO, logger="pmllm_batch")
    shared = write_sidecar(lib / "IMG_1.xmp", 'xmp:Rating="4"')  # Lightroom's naming: a RAW+JPEG pair shares it
    with learner_on(env, lib) as (learner, store, _):
        assert learner.learn([shared]) is True
        assert by_detail(store) == [("xmp-sidecar", "IMG_1.xmp", 4)] * 2
        assert "ana: 2 ratings learned from IMG_1.xmp (4 stars)" in caplog.text
        assert learner.learn([shared]) is False  # the same file again: not even read
        # a verdict from the command line stays whatever the sidecars say (rated as `rate` does, by content)
        report = store_ratings(store, "ana", ReadResult(ratings=[cli_rating(lib / "b.jpg", 3)]))
        assert report.counts.new == 1
        write_sidecar(lib / "b.jpg.xmp", 'xmp:Rating="0"')
        write_sidecar(shared, 'xmp:Rating="0"')  # the person cleared the stars in their app
        assert learner.learn([shared, lib / "b.jpg.xmp"]) is True
        assert by_detail(store) == [("cli", "command line", 3)]
        assert "ana: 2 ratings forgotten (the stars in IMG_1.xmp were cleared)" in caplog.text
        assert learner.counts.as_dict()["ratings_learned"] == 2
        assert learner.counts.as_dict()["ratings_forgotten"] == 2


def test_what_forgets_nothing(env: CLIEnv, caplog: pytest.LogCaptureFixture) -> None:
    lib = env.root / "lib"
    for name, seed in (("a.jpg", 1), ("b.jpg", 2), ("c.jpg", 3)):
        make_photo(lib / name, (48, 36), seed=seed)
    add_profile(env, "ana")
    caplog.set_level(logging.INFO, logger="pmllm_batch")
    a = write_sidecar(lib / "a.jpg.xmp", 'xmp:Rating="5" pmllm:writtenRating="2"')  # ana changed our 2 into a 5
    b = write_sidecar(lib / "b.jpg.xmp", 'xmp:Rating="-1"')
    c = write_sidecar(lib / "c.jpg.xmp", 'xmp:Rating="2"')
    with learner_on(env, lib, overwrite_ratings=True) as (learner, store, _):
        learner.learn([a, b, c])
        assert by_detail(store) == [("xmp-sidecar", "a.jpg.xmp", 5), ("xmp-sidecar", "b.jpg.xmp", -1),
                                    ("xmp-sidecar", "c.jpg.xmp", 2)]
        # with overwrite_ratings our own writes may replace her stars: "ours" again is no sign she cleared them
        write_sidecar(a, 'xmp:Rating="2" pmllm:writtenRating="2"')
        b.unlink()  # deleted (or moved with its photo): forgets nothing
        c.write_text("not xmp at all", encoding="utf-8")  # corrupt: forgets nothing, said once
        learner.learn([a, b, c])
        learner.learn([a, b, c])
        assert [r[2] for r in by_detail(store)] == [5, -1, 2]
        assert caplog.text.count("c.jpg.xmp not learned from") == 1
    with learner_on(env, lib) as (learner, store, _):  # overwrite_ratings off: back to our stars = no own verdict
        learner.learn([a])
        assert [r[2] for r in by_detail(store)] == [-1, 2]


def test_a_deleted_sidecar_lets_the_other_naming_speak(env: CLIEnv) -> None:
    lib = env.root / "lib"
    make_photo(lib / "d.jpg", (48, 36), seed=1)
    add_profile(env, "ana")
    lightroom = write_sidecar(lib / "d.xmp", 'xmp:Rating="3"')
    os.utime(lightroom, (1_700_000_000, 1_700_000_000))  # older: the darktable one below wins while it is there
    darktable = write_sidecar(lib / "d.jpg.xmp", 'xmp:Rating="5"')
    with learner_on(env, lib) as (learner, store, _):
        learner.learn([lightroom, darktable])
        assert by_detail(store) == [("xmp-sidecar", "d.jpg.xmp", 5)]
        darktable.unlink()
        assert learner.learn([darktable]) is True
        assert by_detail(store) == [("xmp-sidecar", "d.xmp", 3)]


def test_a_sidecar_waits_for_its_photo_to_settle_and_our_own_sidecars_store_nothing(env: CLIEnv) -> None:
    from pmllm_batch.outputs.xmp import SidecarContent, merge_sidecar

    lib = env.root / "lib"
    photo = make_photo(lib / "a.jpg", (48, 36), seed=1)
    add_profile(env, "ana")
    sidecar = write_sidecar(lib / "a.jpg.xmp", 'xmp:Rating="4"')
    with learner_on(env, lib) as (learner, store, photos):
        photos.touch(str(photo))  # still being copied
        assert learner.learn([sidecar]) is False and store.ratings("ana") == {}
        assert learner.tracker.waiting_paths() == [str(sidecar)]  # back in the queue, read once the photo settled
        photos.claim(str(photo))
        assert learner.learn([sidecar]) is True
        ours = merge_sidecar(None, SidecarContent(rating=3, rating_profile="ana", model="m", marks=())).data
        assert ours is not None
        make_photo(lib / "b.jpg", (48, 36), seed=2)
        (lib / "b.jpg.xmp").write_bytes(ours)
        assert learner.learn([lib / "b.jpg.xmp"]) is False
        assert by_detail(store) == [("xmp-sidecar", "a.jpg.xmp", 4)]


# ---------------------------------------------------------------------------------------------------------------------
# The start: an unknown profile is one sentence
# ---------------------------------------------------------------------------------------------------------------------


def test_an_unknown_learning_profile_stops_the_daemon_at_start_with_one_sentence(env: CLIEnv) -> None:
    lib = env.root / "lib"
    lib.mkdir()
    add_profile(env, "ana")
    env.write_config('[learn]\nxmp_profile = "ghost"\n')
    code, out, err = env.run_cli("watch", str(lib), "--once")
    assert code == 2 and "Traceback" not in err
    assert "[learn] xmp_profile names the profile 'ghost', which is not stored (stored: ana)" in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    env.write_config('[xmp]\nprofile = "ghost"\n')  # the fallback names the setting it came from
    code, out, err = env.run_cli("watch", str(lib), "--once")
    assert code == 2 and "[xmp] profile ([learn] xmp_profile is not set) names the profile 'ghost'" in err
    env.write_config('[learn]\nxmp_profile = "ana"\n')
    code, out, err = env.run_cli("watch", str(lib), "--once")
    assert code == 0, err


# ---------------------------------------------------------------------------------------------------------------------
# End to end: a running daemon, no restart
# ---------------------------------------------------------------------------------------------------------------------


@contextmanager
def learning_service(env: CLIEnv, lib: Path, *, poll: bool) -> Iterator[Any]:
    """A :class:`WatchService` on ``lib`` in a thread: stand-in models, ``[learn] xmp_profile = "ana"`` and
    ``[xmp] profile = "ana"`` (so the daemon writes sidecars of its own too); inotify, or polling with ``poll``."""
    from pmllm_batch.config import load_config
    from pmllm_batch.daemon.service import WatchService
    from pmllm_batch.db import Store
    from pmllm_batch.scorer import ModelCache

    settings = load_config(overrides={
        "db": {"url": env.db_url},
        "scan": {"min_side": 16},
        "watch": {"settle": 0.2, "debounce": 0.05, "reconcile_interval": 0, "poll": poll, "poll_interval": 0.2},
        "learn": {"xmp_profile": "ana"},
        "xmp": {"profile": "ana"},
        "group": {"enabled": False},
    })
    with Store(env.db_url) as store:
        service = WatchService(settings, store, [lib], models=ModelCache(settings, loader=demo_fake_loader),
                               install_signals=False)
        service.learner.refresh_quiet_s = 0.3  # our sidecars follow a learned verdict after this pause (default 5 s)
        thread = threading.Thread(target=service.run)
        thread.start()
        try:
            yield service
        finally:
            service.request_stop("test over")
            thread.join(timeout=HANG_GUARD)
        assert not thread.is_alive()


def learned_ranking(service: Any) -> list[str] | None:
    """ana's ranking (photo paths, best first) as every output shows it; None until outputs.personal exists."""
    try:
        import pmllm_batch.outputs.personal  # noqa: F401
    except ImportError:
        return None
    from pmllm_batch.db import Store
    from pmllm_batch.outputs.bursts import RankingView

    with Store(service.settings.db_url()) as store:  # another connection, as `rank` from another shell
        view = RankingView(store, group=False, learn=service.settings.learn)
        return [r.path for r in view.ranking("ana")]


def stars_of(service: Any) -> dict[str, int]:
    """ana's stored ratings by photo file name, read from another connection."""
    from pmllm_batch.db import Store

    with Store(service.settings.db_url()) as store:
        paths = {h: p for p, h in store.hashes_of_paths(
            [str(p) for p in Path(service.roots[0]).glob("*.jpg")]).items()}
        return {os.path.basename(paths[h]): r.stars for h, r in store.ratings("ana").items() if h in paths}


def settled(service: Any, sidecars: list[Path]) -> Callable[[], bool]:
    """The learner has read every one of ``sidecars`` as it is now, nothing waits in its queue, and no refresh of
    our sidecars is pending (the next edit, like a person's, does not race the daemon's rewrite)."""
    from pmllm_batch.daemon.watcher import file_signature

    def done() -> bool:
        learner = service.learner
        return not learner.tracker.waiting and learner.refresh_due is None and all(
            learner.seen.get(str(s)) == file_signature(str(s)) is not None for s in sidecars)

    return done


@pytest.mark.parametrize("poll", [False, True], ids=["inotify", "polling"])
def test_a_changed_sidecar_changes_anas_ranking_without_a_restart(
    env: CLIEnv, caplog: pytest.LogCaptureFixture, poll: bool
) -> None:
    lib = env.root / "library"
    photos = [make_photo(lib / f"p{i}.jpg", (48, 36), seed=10 + i) for i in range(6)]
    add_profile(env, "ana")
    caplog.set_level(logging.INFO, logger="pmllm_batch")
    sidecars = [p.with_name(p.name + ".xmp") for p in photos]
    with learning_service(env, lib, poll=poll) as service:
        def wait(cond: Callable[[], object], what: str) -> None:
            _wait_until(cond, HANG_GUARD, what, context=lambda: caplog.text[-3000:])

        # 1. the daemon ranks the folder and writes its own stars into a sidecar per photo: no rating of ana's
        wait(lambda: all(s.exists() for s in sidecars), "the daemon's own sidecars")
        wait(settled(service, sidecars), "the learner to read the daemon's own sidecars")
        assert stars_of(service) == {}
        assert "rating learned" not in caplog.text
        before = learned_ranking(service)
        with env.store() as store:
            zero_shot = [r.path for r in store.ranking("ana")]
        assert before is None or before == zero_shot  # nothing rated: exactly the profile's ranking
        first, last = Path(zero_shot[0]), Path(zero_shot[-1])

        def rate(photo: Path, stars: int, stored: Callable[[dict[str, int]], bool], what: str) -> None:
            """Set the stars in ``photo``'s sidecar as her app would; wait until ``stored``, then until our
            sidecars followed her ranking and the learner read them (so the next edit, like hers, comes after)."""
            refreshes = caplog.text.count("xmp sidecars for ana:")
            set_stars(photo.with_name(photo.name + ".xmp"), stars)
            wait(lambda: stored(stars_of(service)), what)
            wait(lambda: caplog.text.count("xmp sidecars for ana:") > refreshes, "our sidecars to follow her ranking")
            wait(settled(service, sidecars), "the learner to read the refreshed sidecars")

        # 2. ana gives the photo she found last 5 stars in her app: learned, said in one line
        rate(last, 5, lambda got: got == {last.name: 5}, "ana's 5 stars to be stored")
        assert f"ana: 1 rating learned from {last.name}.xmp (5 stars)" in caplog.text
        assert stars_of(service) == {last.name: 5}  # the refresh of our sidecars stored nothing and started no loop
        # ... and 2 stars to the profile's favourite: her own verdicts now order the two
        rate(first, 2, lambda got: got.get(first.name) == 2, "ana's 2 stars to be stored")
        ranking = learned_ranking(service)
        if ranking is not None:
            assert ranking.index(str(last)) < ranking.index(str(first))
            assert ranking.index(str(last)) < zero_shot.index(str(last))  # above where it was

        # 3. she rejects it: to the bottom of her ranking
        rate(last, -1, lambda got: got.get(last.name) == -1, "the rejection to be stored")
        ranking = learned_ranking(service)
        if ranking is not None:
            assert ranking[-1] == str(last)

        # 4. she clears the stars: the verdict read from that sidecar is forgotten, hers on the other photo stays
        rate(last, 0, lambda got: last.name not in got, "the cleared stars to be forgotten")
        assert stars_of(service) == {first.name: 2}
        assert f"ana: 1 rating forgotten (the stars in {last.name}.xmp were cleared)" in caplog.text

        # 5. the daemon's refreshes of its own sidecars meanwhile stored nothing and started no loop
        wait(settled(service, sidecars), "the learner to settle")
        assert stars_of(service) == {first.name: 2}
        learned = service.counts.ratings_learned
        assert learned == 3 and service.counts.ratings_forgotten == 1
    assert "learned 3 ratings from sidecars" in caplog.text  # the stopped line
