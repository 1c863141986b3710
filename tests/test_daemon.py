"""The watcher daemon: unit tests of its pieces, then the real thing in a subprocess with real files.

The end-to-end tests start ``python -m pmllm_batch watch`` with the demo model, change the folder the way people
and copy tools do (slow chunked writes, bursts, renames, moves, deletes, in-place edits), and read the database
from this process while the daemon runs, as ``pmllm-batch status`` from another shell would. They poll with
deadlines; a fixed sleep appears only where the point is that nothing happens.

Default run: the in-process tests plus one end-to-end scenario with two daemons (every daemon start pays for
importing torch and loading the model, so the must-show behaviours share them). ``-m slow`` adds 500 files in
bursts and a kill -9 of a larger library.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from watchdog.events import (
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
)

from pmllm_batch.daemon.watcher import PathFilter, PhotoEventHandler, SettleTracker, watch_for_overflow
from tests.helpers import CLIEnv, isolated_env
from tests.imagegen import make_photo

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "examples" / "profiles"
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> Iterator[CLIEnv]:
    with isolated_env(tmp_path) as e:
        yield e


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for every daemon of the session, so the demo's ONNX graph is exported only once."""
    return tmp_path_factory.mktemp("pmllm-cache")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def photo(path: Path, seed: int) -> Path:
    """A small, unique real JPEG (a few KB: the daemon's speed, not the decoder's, is under test)."""
    return make_photo(path, (48, 36), seed=seed)


def wait_until(cond: Callable[[], T], timeout: float, what: str, daemon: Daemon | None = None) -> T:
    """Poll ``cond`` until it returns something truthy; fail with the daemon's log when the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if daemon is not None and daemon.proc.poll() is not None:
            pytest.fail(f"daemon exited with {daemon.proc.returncode} while waiting for {what}\n{daemon.log()}")
        if time.monotonic() > deadline:
            tail = daemon.log()[-4000:] if daemon is not None else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")
        time.sleep(0.02)


BATCH_RE = re.compile(
    r"pmllm_batch\.daemon: (?P<what>.+?): (?:(?P<files>\d+) files, )?(?P<new>\d+) new, (?P<changed>\d+) changed, "
    r"(?P<missing>\d+) missing, (?P<failed>\d+) failed; vision (?P<vision>\d+); scored (?P<scored>\d+) pairs"
)


@dataclass
class Daemon:
    """A ``pmllm-batch watch`` subprocess whose stderr (its log) goes to a file."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    db_path: Path
    started: float = field(default_factory=time.monotonic)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def batches(self) -> list[dict[str, Any]]:
        """Every per-batch log line, parsed."""
        out = []
        for m in BATCH_RE.finditer(self.log()):
            row: dict[str, Any] = {k: int(v) for k, v in m.groupdict().items() if k != "what" and v is not None}
            row["what"] = m.group("what")
            out.append(row)
        return out

    def total(self, key: str) -> int:
        return sum(b[key] for b in self.batches())

    def logged(self, key: str, at_least: int, timeout: float = 20.0) -> int:
        """The log total of ``key`` once it reaches ``at_least``: a batch commits its rows before it logs its line,
        so a test that sees the rows may look at the log a moment too early."""
        wait_until(lambda: self.total(key) >= at_least, timeout, f"the log to count {at_least} {key}", self)
        return self.total(key)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> tuple[int, float]:
        """Send ``sig``; returns (exit code, seconds until exit)."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_daemon(
    env: CLIEnv, cache: Path, lib: Path, *args: str, name: str = "daemon", extra_env: dict[str, str] | None = None
) -> Daemon:
    child_env = dict(os.environ)
    child_env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "PMLLM_PATHS__CACHE_DIR": str(cache),
            "PMLLM_WATCH__DEBOUNCE": "0.2",
            "OMP_NUM_THREADS": "2",
        }
    )
    child_env.update(extra_env or {})
    log_path = env.root / f"{name}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pmllm_batch", "--db", str(env.db_path), "watch", str(lib), *args],
            cwd=REPO,
            env=child_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return Daemon(proc, log_path, env.db_path)


def db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def query(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    if not path.exists():
        return []
    conn = db(path)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []  # tables not created yet (the daemon is still starting)
    finally:
        conn.close()


def current_model(path: Path) -> int | None:
    rows = query(path, "SELECT value FROM meta WHERE key = 'current_model_id'")
    return int(rows[0][0]) if rows and rows[0][0] else None


def ok_hashes(path: Path, root: Path) -> set[str]:
    rows = query(path, "SELECT content_hash FROM photos WHERE status = 'ok' AND path LIKE ?", f"{root}/%")
    return {r[0] for r in rows}


def scored(path: Path, profile: str) -> list[str]:
    """Content hashes scored for ``profile`` under the current model, one entry per score row."""
    mid = current_model(path)
    if mid is None:
        return []
    sql = (
        "SELECT s.content_hash FROM scores s JOIN profiles p ON p.id = s.profile_id "
        "WHERE p.name = ? AND s.model_id = ?"
    )
    rows = query(path, sql, profile, mid)
    return [r[0] for r in rows]


def fully_scored(path: Path, root: Path, profiles: list[str], n_hashes: int) -> bool:
    hashes = ok_hashes(path, root)
    return len(hashes) == n_hashes and all(set(scored(path, p)) >= hashes for p in profiles)


def ranking_paths(env: CLIEnv, profile: str) -> set[str]:
    with env.store() as store:
        return {r.path for r in store.ranking(profile)}


def add_profile(env: CLIEnv, name: str) -> None:
    code, out, err = env.run_cli("--db", str(env.db_path), "profile", "add", str(PROFILES / f"{name}.toml"))
    assert code == 0, err


# ---------------------------------------------------------------------------------------------------------------------
# The pieces, in-process
# ---------------------------------------------------------------------------------------------------------------------


class TestPathFilter:
    def test_keeps_image_extensions_and_sniffs_the_rest(self, tmp_path: Path) -> None:
        f = PathFilter([tmp_path])
        assert f.classify(tmp_path / "a.JPG") == "photo"
        assert f.classify(tmp_path / "deep" / "b.heic") == "photo"
        assert f.classify(tmp_path / "noext") == "sniff"
        assert f.classify(tmp_path / "clip.mov") == "sniff"

    def test_ignores_hidden_paths_and_paths_outside_the_roots(self, tmp_path: Path) -> None:
        f = PathFilter([tmp_path / "lib"])
        assert f.classify(tmp_path / "lib" / ".a.jpg.part") is None
        assert f.classify(tmp_path / "lib" / ".trash" / "a.jpg") is None
        assert f.classify(tmp_path / "elsewhere" / "a.jpg") is None
        assert not f.wanted_dir(tmp_path / "lib" / ".cache")
        assert f.wanted_dir(tmp_path / "lib" / "2024")

    def test_exclude_globs_prune_folders_like_the_scanner(self, tmp_path: Path) -> None:
        f = PathFilter([tmp_path], exclude=["@eaDir", "*.tmp.jpg"], include=["*.jpg"])
        assert f.classify(tmp_path / "@eaDir" / "thumb.jpg") is None
        assert f.classify(tmp_path / "x.tmp.jpg") is None
        assert f.classify(tmp_path / "x.png") is None  # not included
        assert f.classify(tmp_path / "ok" / "x.jpg") == "photo"

    def test_files_under_walks_with_the_same_rules(self, tmp_path: Path) -> None:
        photo(tmp_path / "a" / "1.jpg", 1)
        photo(tmp_path / "a" / ".hidden" / "2.jpg", 2)
        (tmp_path / "a" / ".3.jpg").write_bytes(b"x")
        found = PathFilter([tmp_path]).files_under(tmp_path / "a")
        assert found == [tmp_path / "a" / "1.jpg"]


class TestSettleTracker:
    def test_a_growing_file_is_held_until_it_stops_changing(self, tmp_path: Path) -> None:
        clock = FakeClock()
        tracker = SettleTracker(settle=2.0, debounce=0.0, clock=clock)
        target = tmp_path / "slow.jpg"
        with open(target, "wb") as fh:
            for i in range(5):
                fh.write(b"x" * 100)
                fh.flush()
                tracker.touch(str(target))
                clock.advance(1.5)  # less than settle between writes
                assert tracker.take_batch() == [], f"read after chunk {i} while still being written"
        clock.advance(0.6)  # 2.1 s since the last write
        assert tracker.take_batch() == [target]
        assert tracker.take_batch() == []  # handed out once

    def test_a_size_change_without_an_event_restarts_the_window(self, tmp_path: Path) -> None:
        clock = FakeClock()
        tracker = SettleTracker(settle=1.0, clock=clock)
        target = tmp_path / "a.jpg"
        target.write_bytes(b"1")
        tracker.touch(str(target))
        clock.advance(0.9)
        target.write_bytes(b"12")  # e.g. a polling observer that has not reported it yet
        assert tracker.take_batch() == []
        clock.advance(0.9)
        assert tracker.take_batch() == []
        clock.advance(0.2)
        assert tracker.take_batch() == [target]

    def test_debounce_batches_a_burst_and_max_batch_bounds_it(self, tmp_path: Path) -> None:
        clock = FakeClock()
        tracker = SettleTracker(settle=0.5, debounce=1.0, max_batch=3, clock=clock)
        paths = [tmp_path / f"{i}.jpg" for i in range(5)]
        for p in paths[:2]:
            p.write_bytes(b"x")
            tracker.touch(str(p))
        clock.advance(0.6)
        tracker.touch(str(paths[2]))  # the burst goes on: nothing is handed out yet
        paths[2].write_bytes(b"x")
        assert tracker.take_batch() == []
        for p in paths[3:]:
            p.write_bytes(b"x")
            tracker.touch(str(p))
        clock.advance(1.1)
        first = tracker.take_batch()
        assert first == paths[:3]  # full batch of max_batch, in settle order
        assert tracker.take_batch() == paths[3:]

    def test_deleted_paths_settle_too_and_non_images_are_dropped(self, tmp_path: Path) -> None:
        clock = FakeClock()
        tracker = SettleTracker(settle=0.5, clock=clock)
        notes = tmp_path / "notes.txt"
        notes.write_text("not a photo")
        real = make_photo(tmp_path / "noext", (48, 36), seed=3, fmt="JPEG")
        tracker.touch(str(tmp_path / "gone.jpg"))
        tracker.touch(str(notes), sniff=True)
        tracker.touch(str(real), sniff=True)
        clock.advance(0.6)
        assert sorted(tracker.take_batch()) == sorted([tmp_path / "gone.jpg", real])


class TestEventHandler:
    def test_maps_watchdog_events_to_paths_and_folders(self, tmp_path: Path) -> None:
        tracker = SettleTracker(settle=0.0, clock=FakeClock())
        handler = PhotoEventHandler(PathFilter([tmp_path]), tracker)
        lib = str(tmp_path)
        for event in (
            FileCreatedEvent(f"{lib}/new.jpg"),
            FileModifiedEvent(f"{lib}/new.jpg"),
            FileClosedEvent(f"{lib}/new.jpg"),
            FileMovedEvent(f"{lib}/a.jpg", f"{lib}/sub/b.jpg"),
            FileDeletedEvent(f"{lib}/c.png"),
            FileCreatedEvent(f"{lib}/.partial.jpg"),
            FileMovedEvent(f"{lib}/d.jpg", "/elsewhere/d.jpg"),
            DirDeletedEvent(f"{lib}/album"),
            DirMovedEvent(f"{lib}/x", f"{lib}/y"),
        ):
            handler.dispatch(event)
        assert tracker.take_dirs() == [f"{lib}/album", f"{lib}/x", f"{lib}/y"]
        got = {p.name for p in tracker.take_batch()}
        assert got == {"new.jpg", "a.jpg", "b.jpg", "c.png", "d.jpg"}

    def test_overflow_warning_from_watchdog_asks_for_a_rescan(self) -> None:
        calls: list[int] = []
        remove = watch_for_overflow(lambda: calls.append(1))
        try:
            logging.getLogger("watchdog.observers.inotify_c").warning("Inotify queue overflowed; events were lost")
            logging.getLogger("watchdog.observers.inotify_c").warning("something else")
        finally:
            remove()
        logging.getLogger("watchdog.observers.inotify_c").warning("Inotify queue overflowed; after removal")
        assert calls == [1]


class TestWatchCommand:
    def test_missing_folder_and_unknown_profile_are_one_line_errors(self, env: CLIEnv) -> None:
        code, out, err = env.run_cli("watch", str(env.root / "nope"), "--once")
        assert code == 2 and "does not exist" in err and "Traceback" not in err
        (env.root / "lib").mkdir()
        code, out, err = env.run_cli("watch", str(env.root / "lib"), "--profile", "ghost", "--once")
        assert code == 2 and "ghost" in err and "Traceback" not in err

    def test_once_scans_and_exits_without_loading_a_model_for_an_empty_library(self, env: CLIEnv) -> None:
        add_profile(env, "ana")
        (env.root / "lib").mkdir()
        code, out, err = env.run_cli("--db", str(env.db_path), "watch", str(env.root / "lib"), "--once")
        assert code == 0, err
        assert out.startswith("scanned 0 files") and "loaded" not in err
        run = query(env.db_path, "SELECT kind, status FROM runs ORDER BY id DESC")[0]
        assert run == ("watch", "ok")

    def test_negative_seconds_are_a_usage_error(self, env: CLIEnv) -> None:
        code, _, err = env.run_cli("watch", str(env.root), "--settle", "-1")
        assert code == 2 and "at least 0" in err


def fake_models(settings: Any) -> Any:
    """A stand-in for the demo model with the same interface (tokens = mean colour), for in-process service tests."""
    import numpy as np
    import torch

    from pmllm_batch.runtime.preprocess import PreprocessCfg
    from pmllm_batch.scorer.models import LoadedModels

    class Vision:
        graph_id = "fake-vision"
        preprocess = PreprocessCfg(image_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

        def encode(self, pixels: np.ndarray) -> np.ndarray:
            return pixels.reshape(len(pixels), 3, -1).mean(-1, keepdims=True)  # (B, 3, 1)

    class Model:
        cfg = type("Cfg", (), {"demo": True})

        def encode_prefix(self, profile: Any) -> None:
            return None

        def score_cached(self, prefix: Any, visual: torch.Tensor) -> Any:
            scores = visual.mean(dim=(1, 2))
            return type("Out", (), {"scores": scores, "probs": torch.full((len(scores), 5), 0.2)})

    return LoadedModels(Model(), Vision(), "fake-fingerprint", "fake")


class TestWatchService:
    def test_lost_events_are_caught_by_the_overflow_rescan_and_a_dead_observer_falls_back_to_polling(
        self, env: CLIEnv, caplog: pytest.LogCaptureFixture
    ) -> None:
        from pmllm_batch.config import load_config
        from pmllm_batch.daemon.service import WatchService
        from pmllm_batch.db import Store
        from pmllm_batch.scorer.models import ModelCache

        lib = env.root / "library"
        photo(lib / "a.jpg", seed=1)
        add_profile(env, "ana")
        caplog.set_level(logging.INFO, logger="pmllm_batch")  # after the CLI call, which sets up logging itself
        settings = load_config(overrides={
            "db": {"url": env.db_url},
            "watch": {"settle": 0.2, "debounce": 0.05, "reconcile_interval": 0, "poll_interval": 0.2},
        })
        with Store(env.db_url) as store:
            service = WatchService(settings, store, [lib], models=ModelCache(settings, loader=fake_models),
                                   install_signals=False)
            service.health_every_s = 0.2
            thread = threading.Thread(target=service.run)
            thread.start()
            try:
                wait_until(lambda: fully_scored(env.db_path, lib, ["ana"], 1), 30, "the initial scan")
                assert service.mode == "inotify"

                # events get lost: nothing reaches the tracker while this file is written
                real_touch = service.tracker.touch
                service.tracker.touch = lambda *a, **k: None  # type: ignore[method-assign]
                photo(lib / "lost.jpg", seed=2)
                time.sleep(1.0)  # several settle windows: nothing may happen (no event, no periodic rescan)
                service.tracker.touch = real_touch  # type: ignore[method-assign]
                assert not query(env.db_path, "SELECT id FROM photos WHERE path = ?", str(lib / "lost.jpg"))
                logging.getLogger("watchdog.observers.inotify_c").warning(
                    "Inotify queue overflowed; filesystem events were lost"
                )
                wait_until(lambda: fully_scored(env.db_path, lib, ["ana"], 2), 30, "the rescan after the overflow")
                assert "reconcile (inotify queue overflow" in caplog.text

                # the observer dies (as when inotify fails under it): polling takes over, files still arrive
                service._observer.stop()
                wait_until(lambda: service.mode == "polling", 30, "the switch to polling")
                photo(lib / "after.jpg", seed=3)
                wait_until(lambda: fully_scored(env.db_path, lib, ["ana"], 3), 30, "a file seen by polling")
                assert "switching to polling" in caplog.text
            finally:
                service.request_stop("test over")
                thread.join(timeout=30)
            assert not thread.is_alive()
            assert service.totals.scored == 3


# ---------------------------------------------------------------------------------------------------------------------
# End to end: a real daemon, real files
# ---------------------------------------------------------------------------------------------------------------------


def write_in_chunks(path: Path, data: bytes, chunks: int, pause: float, watch: Callable[[], None]) -> None:
    """Write ``data`` in ``chunks`` pieces with ``pause`` seconds between them, calling ``watch`` while waiting."""
    size = -(-len(data) // chunks)
    with open(path, "wb") as fh:
        for i in range(chunks):
            fh.write(data[i * size : (i + 1) * size])
            fh.flush()
            end = time.monotonic() + pause
            while time.monotonic() < end:
                watch()
                time.sleep(0.05)


@pytest.mark.integration
def test_daemon_keeps_rankings_in_step_with_the_folder_through_a_kill_9_and_a_polling_restart(
    env: CLIEnv, model_cache: Path
) -> None:
    """One library, two daemons: the first (inotify) follows every kind of change and is killed with -9 in the
    middle of a batch; the second (inotify made unavailable, so polling) resumes, keeps following, and stops on
    SIGTERM mid-batch. Two processes instead of one per scenario keep the default suite's time down."""
    lib = env.root / "library"
    outside = env.root / "outside"
    outside.mkdir()
    for i in range(4):
        photo(lib / f"start{i}.jpg", seed=i)
    add_profile(env, "ana")
    # vision chunks of 4: a burst is committed in many transactions, so the kill -9 lands between two of them
    # (the language-model stage keeps its default batch: small LM batches cost far more than small vision ones)
    first = start_daemon(env, model_cache, lib, "--settle", "1.0", "--reconcile-interval", "0", name="first",
                         extra_env={"PMLLM_VISION__BATCH_SIZE": "4"})
    second: Daemon | None = None
    try:
        # 1. The initial reconcile scores what is already there.
        wait_until(lambda: fully_scored(env.db_path, lib, ["ana"], 4), 120, "the initial scan", first)
        assert re.search(r"watching .* with inotify", first.log())

        # 2. A file written slowly in chunks is read once, after it is complete.
        data = photo(env.root / "source.jpg", seed=100).read_bytes()
        slow = lib / "slow.jpg"

        def not_read_yet() -> None:
            assert not query(env.db_path, "SELECT status FROM photos WHERE path = ?", str(slow)), (
                "the daemon read slow.jpg before it was complete"
            )

        t0 = time.monotonic()
        write_in_chunks(slow, data, chunks=8, pause=0.3, watch=not_read_yet)
        assert time.monotonic() - t0 >= 2.0
        wait_until(lambda: fully_scored(env.db_path, lib, ["ana"], 5), 30, "slow.jpg scored", first)
        assert query(env.db_path, "SELECT status, size FROM photos WHERE path = ?", str(slow)) == [("ok", len(data))]

        # 3. Bursts: 60 files in 3 bursts, each scored exactly once.
        n = 5
        for burst in range(3):
            for i in range(20):
                photo(lib / f"burst{burst}" / f"{i:02d}.jpg", seed=1000 + burst * 100 + i)
            n += 20
            time.sleep(0.3)
        wait_until(lambda: fully_scored(env.db_path, lib, ["ana"], n), 90, "60 burst files scored", first)
        rows = scored(env.db_path, "ana")
        assert len(rows) == len(set(rows)) == n
        assert first.logged("vision", n) == n  # every photo went through vision exactly once
        assert first.logged("new", n) == n
        assert first.total("changed") == 0 and first.total("failed") == 0  # nothing was read half-written

        # 4. Rename, move within the tree, move out, delete: rankings follow, scores are kept by content hash.
        (lib / "start0.jpg").rename(lib / "renamed.jpg")
        (lib / "moved").mkdir()
        (lib / "start1.jpg").rename(lib / "moved" / "start1.jpg")
        (lib / "start2.jpg").rename(outside / "start2.jpg")
        (lib / "start3.jpg").unlink()
        expect = {str(p) for p in lib.rglob("*.jpg")}
        wait_until(lambda: ranking_paths(env, "ana") == expect, 30, "rankings to follow the moves", first)
        assert len(scored(env.db_path, "ana")) == n  # nothing rescored
        missing = query(env.db_path, "SELECT path FROM photos WHERE status = 'missing'")
        assert {m[0] for m in missing} == {str(lib / f"start{i}.jpg") for i in range(4)}

        # ... and back in: the photo returns with its old score.
        (outside / "start2.jpg").rename(lib / "start2.jpg")
        expect.add(str(lib / "start2.jpg"))
        wait_until(lambda: ranking_paths(env, "ana") == expect, 30, "start2.jpg back in the ranking", first)
        assert first.total("vision") == n and len(scored(env.db_path, "ana")) == n

        # 5. A file edited in place is a new content hash: scored again, its old version leaves the ranking.
        old_hash = query(env.db_path, "SELECT content_hash FROM photos WHERE path = ?", str(slow))[0][0]
        photo(slow, seed=4242)
        wait_until(
            lambda: query(env.db_path, "SELECT content_hash FROM photos WHERE path = ?", str(slow))[0][0] != old_hash
            and len(scored(env.db_path, "ana")) == n + 1,
            30,
            "the edited file rescored",
            first,
        )
        with env.store() as store:
            assert old_hash not in {r.content_hash for r in store.ranking("ana")}

        # 6. A profile added from another shell is scored for the whole library, without vision.
        vision_before = first.logged("vision", n + 1)  # the edited file was read once more
        add_profile(env, "bernd")
        profiles = ["ana", "bernd"]
        hashes = len(ok_hashes(env.db_path, lib))
        wait_until(lambda: fully_scored(env.db_path, lib, profiles, hashes), 60, "bernd scored", first)
        line = wait_until(lambda: [b for b in first.batches() if "added bernd" in b["what"]], 10, "profile log")
        assert line[0]["vision"] == 0 and line[0]["scored"] == hashes
        assert first.total("vision") == vision_before

        # 7. `status` works from another shell while the daemon runs.
        code, out, err = env.run_cli("--db", str(env.db_path), "status", "--json")
        assert code == 0, err
        status = json.loads(out)
        assert status["photos"]["ok"] == len(expect) and status["last_run"]["kind"] == "watch"
        assert status["last_run"]["status"] == "running"

        # 8. kill -9 in the middle of a batch: some of a new burst is committed, not all of it.
        photos_before = len(query(env.db_path, "SELECT id FROM photos"))
        for i in range(32):
            photo(lib / "burst3" / f"{i:02d}.jpg", seed=3000 + i)
        hashes += 32
        wait_until(lambda: len(query(env.db_path, "SELECT id FROM photos")) > photos_before, 60, "a chunk", first)
        first.proc.kill()
        assert first.proc.wait(timeout=10) == -signal.SIGKILL
        committed = len(query(env.db_path, "SELECT id FROM photos")) - photos_before
        scores_at_kill = len(query(env.db_path, "SELECT id FROM scores"))
        assert not fully_scored(env.db_path, lib, profiles, hashes), "the kill came after the batch had finished"
        assert query(env.db_path, "PRAGMA integrity_check") == [("ok",)]

        # 9. Restart with inotify unavailable: it says so, polls, and resumes only the missing work.
        second = start_daemon(env, model_cache, lib, "--settle", "0.3", "--reconcile-interval", "0",
                              "--poll-interval", "0.3", "--idle-unload", "2", name="second",
                              extra_env={"PMLLM_FORCE_NO_INOTIFY": "1"})
        wait_until(lambda: fully_scored(env.db_path, lib, profiles, hashes), 120, "the resumed burst", second)
        assert "inotify is unavailable" in second.log() and "falling back to polling" in second.log()
        initial = wait_until(lambda: [b for b in second.batches() if "initial" in b["what"]], 10, "initial line")[0]
        assert initial["new"] == 32 - committed  # photos committed before the kill were not read again
        # the killed daemon's run no longer reads "running": the second one closed it as interrupted
        runs = query(env.db_path, "SELECT status, summary_json FROM runs WHERE kind = 'watch' ORDER BY id")
        assert [r[0] for r in runs] == ["interrupted", "running"]
        assert f"its process ({first.proc.pid}) ended without closing the run" in runs[0][1]
        assert scores_at_kill + initial["scored"] == len(query(env.db_path, "SELECT id FROM scores"))
        for p in profiles:
            rows = scored(env.db_path, p)
            assert len(rows) == len(set(rows))  # every photo scored exactly once per profile
            assert set(rows) >= ok_hashes(env.db_path, lib)
        assert query(env.db_path, "PRAGMA integrity_check") == [("ok",)]

        # 10.-12. Polling picks up new files; idle unload; SIGTERM mid-batch.
        _poll_idle_unload_and_sigterm(env, lib, second, profiles, hashes, scores_at_kill)
    finally:
        first.kill()
        if second is not None:
            second.kill()


def _poll_idle_unload_and_sigterm(
    env: CLIEnv, lib: Path, daemon: Daemon, profiles: list[str], photos: int, scores_before: int
) -> None:
    """The restarted (polling, ``--idle-unload 2``) daemon's last steps, shared by both kill -9 scenarios: polling
    picks up new files; idle unloads the models and the next batch loads them again; SIGTERM mid-batch exits 0
    promptly with what it counted committed. ``photos`` are scored so far, ``scores_before`` existed before it."""
    for i in range(3):
        photo(lib / "later" / f"{i}.jpg", seed=900 + i)
    wait_until(lambda: fully_scored(env.db_path, lib, profiles, photos + 3), 60, "polled files scored", daemon)

    wait_until(lambda: "models unloaded after 2s idle" in daemon.log(), 30, "the idle unload", daemon)
    assert daemon.log().count("loaded demo") == 1

    before = len(query(env.db_path, "SELECT id FROM photos"))
    for i in range(24):
        photo(lib / "late" / f"{i:02d}.jpg", seed=5000 + i)
    wait_until(lambda: len(query(env.db_path, "SELECT id FROM photos")) > before, 60, "a chunk", daemon)
    code, took = daemon.stop(signal.SIGTERM)
    assert code == 0, daemon.log()
    assert took < 5.0
    assert "stopped (SIGTERM received)" in daemon.log()
    assert daemon.log().count("loaded demo") == 2
    run = query(env.db_path, "SELECT status, summary_json FROM runs WHERE kind = 'watch' ORDER BY id DESC")[0]
    assert run[0] == "ok"
    summary = json.loads(run[1])
    assert summary["mode"] == "polling"
    assert scores_before + summary["scored"] == len(query(env.db_path, "SELECT id FROM scores"))
    assert query(env.db_path, "PRAGMA integrity_check") == [("ok",)]


def _kill_restart_and_fall_back_to_polling(env: CLIEnv, cache: Path, n: int) -> None:
    lib = env.root / "library"
    for i in range(n):
        photo(lib / f"{i:03d}.jpg", seed=i)
    add_profile(env, "ana")
    add_profile(env, "bernd")
    profiles = ["ana", "bernd"]
    # small chunks: many commits per scan, so the kill lands between two of them
    small_batches = {"PMLLM_VISION__BATCH_SIZE": "4", "PMLLM_SCORE__BATCH_SIZE": "4"}
    first = start_daemon(env, cache, lib, "--settle", "0.3", "--reconcile-interval", "0", name="first",
                         extra_env=small_batches)
    second: Daemon | None = None
    try:
        # kill -9 once some, but not all, of the initial work is committed: in the middle of the scan
        def partly_done() -> bool:
            photos = len(query(env.db_path, "SELECT id FROM photos"))
            scores = len(query(env.db_path, "SELECT id FROM scores"))
            return 0 < photos < n or 0 < scores < n * len(profiles)

        wait_until(partly_done, 120, "the first daemon to be mid-batch", first)
        first.proc.kill()
        assert first.proc.wait(timeout=10) == -signal.SIGKILL
        scores_before = len(query(env.db_path, "SELECT id FROM scores"))
        photos_before = len(query(env.db_path, "SELECT id FROM photos"))
        assert scores_before < n * len(profiles)
        assert query(env.db_path, "PRAGMA integrity_check") == [("ok",)]

        # restart with inotify unavailable: it says so, polls, and resumes where the first one died
        second = start_daemon(env, cache, lib, "--settle", "0.3", "--reconcile-interval", "0",
                              "--poll-interval", "0.3", "--idle-unload", "2", name="second",
                              extra_env={**small_batches, "PMLLM_FORCE_NO_INOTIFY": "1"})
        wait_until(lambda: fully_scored(env.db_path, lib, profiles, n), 120, "every photo scored", second)
        assert "inotify is unavailable" in second.log() and "falling back to polling" in second.log()
        initial = wait_until(lambda: [b for b in second.batches() if "initial" in b["what"]], 10, "initial line")[0]
        assert initial["new"] == n - photos_before  # photos committed before the kill were not read again
        assert scores_before + initial["scored"] == n * len(profiles)  # only the missing pairs were scored
        for p in profiles:
            rows = scored(env.db_path, p)
            assert len(rows) == len(set(rows)) == n  # every photo scored exactly once per profile
        assert query(env.db_path, "PRAGMA integrity_check") == [("ok",)]

        _poll_idle_unload_and_sigterm(env, lib, second, profiles, n, scores_before)
    finally:
        first.kill()
        if second is not None:
            second.kill()


# ---------------------------------------------------------------------------------------------------------------------
# Stress (run with -m slow)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.integration
def test_500_files_dropped_in_bursts_are_scored_exactly_once_and_the_db_matches_the_folder(
    env: CLIEnv, model_cache: Path
) -> None:
    lib = env.root / "library"
    lib.mkdir()
    profiles = ["ana", "bernd"]
    for name in profiles:
        add_profile(env, name)
    daemon = start_daemon(env, model_cache, lib, "--settle", "0.5", "--reconcile-interval", "0")
    try:
        wait_until(lambda: "reconcile (initial scan)" in daemon.log(), 120, "the initial scan", daemon)
        n = 0
        for burst in range(10):  # 10 bursts of 50, into a few folders, with short pauses between them
            for i in range(50):
                photo(lib / f"album{burst % 4}" / f"b{burst:02d}_{i:02d}.jpg", seed=10_000 + n)
                n += 1
            time.sleep(0.2)
        wait_until(lambda: fully_scored(env.db_path, lib, profiles, n), 300, f"{n} files scored", daemon)
        on_disk = {str(p) for p in lib.rglob("*.jpg")}
        in_db = {r[0] for r in query(env.db_path, "SELECT path FROM photos WHERE status = 'ok'")}
        assert in_db == on_disk and len(on_disk) == 500
        assert not query(env.db_path, "SELECT path FROM photos WHERE status != 'ok'")
        for p in profiles:
            rows = scored(env.db_path, p)
            assert len(rows) == len(set(rows)) == 500
        assert daemon.logged("new", 500) == 500 and daemon.logged("vision", 500) == 500  # each file read once
        assert daemon.total("changed") == 0 and daemon.total("failed") == 0
        assert max(b.get("files", 0) for b in daemon.batches()) <= 256  # batched, each batch bounded
        code, took = daemon.stop(signal.SIGTERM)
        assert code == 0 and took < 5.0, daemon.log()
        assert query(env.db_path, "PRAGMA integrity_check") == [("ok",)]
    finally:
        daemon.kill()


@pytest.mark.slow
@pytest.mark.integration
def test_kill_9_with_a_larger_library_still_scores_every_photo_once(env: CLIEnv, model_cache: Path) -> None:
    _kill_restart_and_fall_back_to_polling(env, model_cache, n=200)
