"""The watcher daemon: unit tests of its pieces, then the real thing in a subprocess with real files.

The end-to-end tests start ``python -m pmllm_batch watch`` with the demo model, change the folder the way people
and copy tools do (slow chunked writes, bursts, renames, moves, deletes, in-place edits), and read the database
from this process while the daemon runs, as ``pmllm-batch status`` from another shell would. They poll with
deadlines; a fixed sleep appears only where the point is that nothing happens.

Default run: the in-process tests plus one end-to-end scenario with two daemons (every daemon start pays for
importing torch and loading the model, so the must-show behaviours share them): one test per behaviour, in order,
each starting from a settled library and asserting only on what it changes, so a failure names the behaviour and
does not take the following steps with it (after a failure the next step rebuilds the library and its daemon).
``-m slow`` adds 500 files in bursts and a kill -9 of a larger library.

No test asserts how fast something happened: every deadline is a hang guard (``HANG_GUARD``), generous enough for
a machine busy with other work, and a kill or a SIGTERM is asserted only by what holds wherever it lands.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
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

from pmllm_batch.daemon.watcher import PhotoEventHandler, SettleTracker, watch_for_overflow
from pmllm_batch.scan.plan import PathFilter
from tests.doubles import FakeClock, demo_fake_loader
from tests.helpers import CLIEnv, isolated_env
from tests.helpers import wait_until as _wait_until
from tests.imagegen import make_photo

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "examples" / "profiles"
T = TypeVar("T")
HANG_GUARD = 120.0  # seconds: only ever the limit for something that must happen, never a claim about speed
START_GUARD = 300.0  # the same for a daemon start: importing torch, loading (and once exporting) the model


# ---------------------------------------------------------------------------------------------------------------------
# Helpers (the env and model_cache fixtures live in tests/conftest.py)
# ---------------------------------------------------------------------------------------------------------------------


def photo(path: Path, seed: int) -> Path:
    """A small, unique real JPEG (a few KB: the daemon's speed, not the decoder's, is under test)."""
    return make_photo(path, (48, 36), seed=seed)


def wait_until(cond: Callable[[], T], timeout: float, what: str, daemon: Daemon | None = None) -> T:
    """:func:`tests.helpers.wait_until`, failing with the daemon's log (and at once when the daemon exited)."""
    if daemon is None:
        return _wait_until(cond, timeout, what)
    exited = daemon.proc

    def gone() -> str | None:
        return None if exited.poll() is None else f"daemon exited with {exited.returncode}"

    return _wait_until(cond, timeout, what, context=lambda: daemon.log()[-4000:], gone=gone)


BATCH_RE = re.compile(
    r"pmllm_batch\.daemon: (?P<what>.+?): (?:(?P<files>\d+) files?, )?(?P<new>\d+) new, (?P<changed>\d+) changed, "
    r"(?P<missing>\d+) missing, (?P<failed>\d+) failed; vision (?P<vision>\d+); scored (?P<scored>\d+) pairs?"
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

    def logged(self, key: str, at_least: int, timeout: float = HANG_GUARD) -> int:
        """The log total of ``key`` once it reaches ``at_least``: a batch commits its rows before it logs its line,
        so a test that sees the rows may look at the log a moment too early."""
        wait_until(lambda: self.total(key) >= at_least, timeout, f"the log to count {at_least} {key}", self)
        return self.total(key)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and return the exit code (the wait is a hang guard, not a speed claim)."""
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=HANG_GUARD)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=HANG_GUARD)


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
            [sys.executable, "-m", "pmllm_batch", "watch", str(lib), *args],  # the default database: env.db_path
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


def count(path: Path, sql: str, *params: Any) -> int:
    rows = query(path, sql, *params)
    return int(rows[0][0]) if rows else 0


def rows_in(path: Path, table: str) -> int:
    return count(path, f"SELECT COUNT(*) FROM {table}")


def duplicate_scores(path: Path) -> int:
    """Score rows beyond the first for one (photo content, profile, model): always 0."""
    return count(path, "SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM scores "
                       "GROUP BY content_hash, profile_id, model_id)")


def photo_row(path: Path, photo_path: Path) -> tuple[str, str | None] | None:
    """(status, content hash) of one photo's row, None when it has none."""
    rows = query(path, "SELECT status, content_hash FROM photos WHERE path = ?", str(photo_path))
    return (rows[0][0], rows[0][1]) if rows else None


def integrity(path: Path) -> list[tuple[Any, ...]]:
    return query(path, "PRAGMA integrity_check")


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
    code, out, err = env.run_cli("profile", "add", str(PROFILES / f"{name}.toml"))
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
        tracker = SettleTracker(settle=0.5, clock=clock, is_image=PathFilter.is_image)
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
        code, out, err = env.run_cli("watch", str(env.root / "lib"), "--once")
        assert code == 0, err
        assert out.startswith("scanned 0 files") and "loaded" not in err
        run = query(env.db_path, "SELECT kind, status FROM runs ORDER BY id DESC")[0]
        assert run == ("watch", "ok")

    def test_negative_seconds_are_a_usage_error(self, env: CLIEnv) -> None:
        code, _, err = env.run_cli("watch", str(env.root), "--settle", "-1")
        assert code == 2 and "at least 0" in err


class TestWatchService:
    def test_lost_events_are_caught_by_the_overflow_rescan_and_a_dead_observer_falls_back_to_polling(
        self, env: CLIEnv, caplog: pytest.LogCaptureFixture
    ) -> None:
        from pmllm_batch.config import load_config
        from pmllm_batch.daemon.service import WatchService
        from pmllm_batch.db import Store
        from pmllm_batch.scorer import ModelCache

        lib = env.root / "library"
        photo(lib / "a.jpg", seed=1)
        add_profile(env, "ana")
        caplog.set_level(logging.INFO, logger="pmllm_batch")  # after the CLI call, which sets up logging itself
        settings = load_config(overrides={
            "db": {"url": env.db_url},
            "watch": {"settle": 0.2, "debounce": 0.05, "reconcile_interval": 0, "poll_interval": 0.2},
        })
        with Store(env.db_url) as store:
            service = WatchService(settings, store, [lib], models=ModelCache(settings, loader=demo_fake_loader),
                                   install_signals=False)
            service.health_every_s = 0.2
            thread = threading.Thread(target=service.run)
            thread.start()
            try:
                wait_until(lambda: fully_scored(env.db_path, lib, ["ana"], 1), HANG_GUARD, "the initial scan")
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
                wait_until(lambda: fully_scored(env.db_path, lib, ["ana"], 2), HANG_GUARD, "the overflow rescan")
                # a batch commits its rows before it logs its line
                wait_until(lambda: "reconcile (inotify queue overflow" in caplog.text, HANG_GUARD, "the rescan's line")

                # the observer dies (as when inotify fails under it): polling takes over, files still arrive
                observer = service.supervisor.observer
                assert observer is not None
                observer.stop()
                wait_until(lambda: service.mode == "polling", HANG_GUARD, "the switch to polling")
                wait_until(lambda: "switching to polling" in caplog.text, HANG_GUARD, "the switch's warning")
                photo(lib / "after.jpg", seed=3)
                wait_until(lambda: fully_scored(env.db_path, lib, ["ana"], 3), HANG_GUARD, "a file seen by polling")
            finally:
                service.request_stop("test over")
                thread.join(timeout=HANG_GUARD)
            assert not thread.is_alive()
            assert service.totals.scored == 3


# ---------------------------------------------------------------------------------------------------------------------
# Item 8: the first batch's model load is announced, [watch] preload, batches numbered from 1
# ---------------------------------------------------------------------------------------------------------------------


@contextmanager
def running_service(
    env: CLIEnv, lib: Path, loader: Callable[[Any], Any], *, once: bool = False, **watch: Any
) -> Iterator[Any]:
    """A :class:`WatchService` on ``lib`` in a thread (fake models from ``loader``), stopped on exit."""
    from pmllm_batch.config import load_config
    from pmllm_batch.daemon.service import WatchService
    from pmllm_batch.db import Store
    from pmllm_batch.scorer import ModelCache

    settings = load_config(overrides={
        "db": {"url": env.db_url},
        "scan": {"min_side": 16},  # the test photos are small
        "watch": {"settle": 0.2, "debounce": 0.05, "reconcile_interval": 0, **watch},
    })
    with Store(env.db_url) as store:
        service = WatchService(settings, store, [lib], once=once, models=ModelCache(settings, loader=loader),
                               install_signals=False)
        thread = threading.Thread(target=service.run)
        thread.start()
        try:
            yield service
        finally:
            service.request_stop("test over")
            thread.join(timeout=HANG_GUARD)
        assert not thread.is_alive()


class TestFirstBatch:
    @pytest.fixture
    def loads(self, caplog: pytest.LogCaptureFixture) -> tuple[list[str], Callable[[Any], Any]]:
        """A fake loader that records, for each load, the log as it stood when the load started."""
        logged_at_load: list[str] = []

        def loader(settings: Any) -> Any:
            logged_at_load.append(caplog.text)
            return demo_fake_loader(settings)

        return logged_at_load, loader

    def test_item8_daemon_says_it_is_loading_the_model_before_the_first_batch(
        self, env: CLIEnv, caplog: pytest.LogCaptureFixture, loads: tuple[list[str], Callable[[Any], Any]]
    ) -> None:
        logged_at_load, loader = loads
        lib = env.root / "library"
        lib.mkdir()
        add_profile(env, "ana")
        caplog.set_level(logging.INFO, logger="pmllm_batch")
        with running_service(env, lib, loader) as service:
            wait_until(lambda: "reconcile (initial scan):" in caplog.text, HANG_GUARD, "the initial scan")
            assert logged_at_load == []  # an empty library loads nothing
            photo(lib / "a.jpg", seed=1)
            wait_until(lambda: "batch 1:" in caplog.text, HANG_GUARD, "the first batch")
            assert fully_scored(env.db_path, lib, ["ana"], 1)
        preset = service.settings.model.preset
        said = (f"loading the {preset} model for the first batch (1 photo waiting); this takes a while the first "
                "time")
        assert len(logged_at_load) == 1 and said in logged_at_load[0]  # said before the load started
        assert caplog.text.count("loading the") == 1

    def test_item8_preload_loads_the_model_at_start(
        self, env: CLIEnv, caplog: pytest.LogCaptureFixture, loads: tuple[list[str], Callable[[Any], Any]]
    ) -> None:
        logged_at_load, loader = loads
        lib = env.root / "library"
        lib.mkdir()
        add_profile(env, "ana")
        caplog.set_level(logging.INFO, logger="pmllm_batch")
        with running_service(env, lib, loader, preload=True) as service:
            wait_until(lambda: "reconcile (initial scan):" in caplog.text, HANG_GUARD, "the initial scan")
            assert len(logged_at_load) == 1 and service.models.loaded  # before any photo
            assert "reconcile (initial scan)" not in logged_at_load[0]  # loaded before the initial scan
            preset = service.settings.model.preset
            assert f"loading the {preset} model at start ([watch] preload = true)" in logged_at_load[0]
            photo(lib / "a.jpg", seed=1)
            wait_until(lambda: "batch 1:" in caplog.text, HANG_GUARD, "the first batch")
            assert fully_scored(env.db_path, lib, ["ana"], 1)
        assert len(logged_at_load) == 1  # the first batch found the models loaded
        assert "for the first batch" not in caplog.text
        # the default loads nothing at start, and --once ignores preload (a one-off scan loads only when needed)
        (env.root / "empty").mkdir()
        for once, preload in ((False, False), (True, True)):
            with running_service(env, env.root / "empty", loader, once=once, preload=preload) as service:
                wait_until(lambda s=service: s.scans == 1, HANG_GUARD, "the initial scan")
                assert not service.models.loaded
        assert len(logged_at_load) == 1

    def test_item8_batches_are_numbered_from_1(
        self, env: CLIEnv, caplog: pytest.LogCaptureFixture, loads: tuple[list[str], Callable[[Any], Any]]
    ) -> None:
        _, loader = loads
        lib = env.root / "library"
        old = photo(lib / "old.jpg", seed=1)
        past = time.time() - 60  # settled before the daemon starts (a file written this instant waits to settle)
        os.utime(old, (past, past))
        add_profile(env, "ana")
        caplog.set_level(logging.INFO, logger="pmllm_batch")
        with running_service(env, lib, loader) as service:
            wait_until(lambda: "reconcile (initial scan): 1 file, 1 new" in caplog.text, HANG_GUARD, "the initial scan")
            photo(lib / "a.jpg", seed=2)
            wait_until(lambda: "batch 1:" in caplog.text, HANG_GUARD, "the first event batch")
            photo(lib / "b.jpg", seed=3)
            wait_until(lambda: "batch 2:" in caplog.text, HANG_GUARD, "the second event batch")
        lines = [r.getMessage() for r in caplog.records if r.name == "pmllm_batch.daemon"]
        numbered = [m.split(":")[0] for m in lines if re.match(r"batch \d+:", m)]
        assert numbered == ["batch 1", "batch 2"], lines
        assert any(m.startswith("batch 1: 1 file, 1 new, ") and "scored 1 pair for 1 profile" in m for m in lines)
        assert (service.scans, service.batches) == (1, 2)
        assert "stopped (test over) after 1 scan and 2 batches: 3 new, 0 missing, vision 3, scored 3 pairs" in lines
        run = query(env.db_path, "SELECT summary_json FROM runs WHERE kind = 'watch' ORDER BY id DESC")[0][0]
        assert (json.loads(run)["batches"], json.loads(run)["scans"]) == (2, 1)


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


# Each behaviour test owns the seed files it changes, so a step that fails leaves the others' files as they were.
SEED_FILES = {"keep/rename.jpg": 1, "keep/into-sub.jpg": 2, "away.jpg": 3, "gone.jpg": 4, "edit.jpg": 5}
# Vision chunks of 4: a burst is committed in many transactions. (The language-model stage keeps its default batch:
# small LM batches cost far more than small vision ones.)
SMALL_VISION_BATCHES = {"PMLLM_VISION__BATCH_SIZE": "4"}
KILL_BURST = 32  # photos dropped right before the kill -9
KILL_AFTER = 4  # score rows of that burst committed when the kill is sent (a vision chunk's worth)


class Scenario:
    """One library, its database and the daemon watching it.

    The ordered end-to-end tests share one (the module's ``scenario``). Each starts from a *settled* library (see
    :meth:`settled`) and asserts only on what changes from there, so no test depends on the counts of the ones
    before it; after a failed test the fixtures rebuild the library, the database and the daemon from scratch.
    """

    def __init__(self, env: CLIEnv, cache: Path) -> None:
        self.env, self.cache = env, cache
        self.db_path = env.db_path
        self.lib = env.root / "library"
        self.outside = env.root / "outside"
        self.daemon: Daemon | None = None
        self.phase = "none"  # "inotify", "killed" (its daemon died by kill -9), "polling", "stopped"
        self.profiles: list[str] = []
        self.scores_at_start = 0  # score rows before the current daemon started
        self.starts = 0
        self.failures_seen = -1  # the session's failure count when a fixture last handed this scenario out

    # -- building ---------------------------------------------------------------------------------------------------
    def reset(self, seed_files: dict[str, int] = SEED_FILES, profiles: Iterable[str] = ("ana",)) -> None:
        """A fresh library of ``seed_files`` (relative path -> image seed) and database, no daemon."""
        self.kill()
        for folder in (self.lib, self.outside):
            shutil.rmtree(folder, ignore_errors=True)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
        self.outside.mkdir(parents=True)
        self.lib.mkdir(parents=True)
        old = time.time() - 3600  # long settled: the initial scan reads them at once, whatever the daemon's settle
        for rel, seed in seed_files.items():
            os.utime(photo(self.lib / rel, seed=seed), (old, old))
        self.profiles = []
        for name in profiles:
            self.add_profile(name)
        self.phase = "none"

    def add_profile(self, name: str) -> None:
        add_profile(self.env, name)
        self.profiles.append(name)

    def _start(self, name: str, *args: str, extra_env: dict[str, str]) -> Daemon:
        self.scores_at_start = rows_in(self.db_path, "scores")
        self.starts += 1
        self.daemon = start_daemon(self.env, self.cache, self.lib, "--reconcile-interval", "0", *args,
                                   name=f"{self.starts}-{name}", extra_env=extra_env)
        return self.daemon

    def start_inotify(self, extra_env: dict[str, str] | None = None) -> Daemon:
        self.phase = "inotify"
        return self._start("inotify", "--settle", "1.0", extra_env={**SMALL_VISION_BATCHES, **(extra_env or {})})

    def start_polling(self, extra_env: dict[str, str] | None = None) -> Daemon:
        """Restart with inotify made unavailable, so the daemon polls; models unload after 2 s idle."""
        self.phase = "polling"
        env = {**SMALL_VISION_BATCHES, "PMLLM_FORCE_NO_INOTIFY": "1", **(extra_env or {})}
        return self._start("polling", "--settle", "0.3", "--poll-interval", "0.3", "--idle-unload", "2",
                           extra_env=env)

    def rebuild(self, phase: str) -> None:
        """A fresh library in ``phase``: its inotify daemon running, that daemon killed in a burst, or polling."""
        self.reset()
        if phase == "polling":
            self.start_polling()
            return
        self.start_inotify()
        if phase == "killed":
            self.settle("the initial scan", START_GUARD)
            kill_mid_burst(self)

    def kill(self) -> None:
        if self.daemon is not None:
            self.daemon.kill()

    def alive(self) -> bool:
        return self.daemon is not None and self.daemon.alive()

    # -- reading ----------------------------------------------------------------------------------------------------
    @property
    def d(self) -> Daemon:
        assert self.daemon is not None
        return self.daemon

    def on_disk(self) -> set[str]:
        return {str(p) for p in self.lib.rglob("*.jpg")}

    def scores(self) -> int:
        return rows_in(self.db_path, "scores")

    def totals(self, *keys: str) -> dict[str, int]:
        return {k: self.d.total(k) for k in keys}

    def settled(self) -> bool:
        """The daemon finished its initial scan, the database matches the folder, every photo is scored for every
        profile, and the daemon logged all it committed."""
        if not any(b["what"] == "reconcile (initial scan)" for b in self.d.batches()):
            return False  # (a restart with nothing left to do would otherwise look settled before it is up)
        ok = dict(query(self.db_path, "SELECT path, content_hash FROM photos WHERE status = 'ok'"))
        if set(ok) != self.on_disk():
            return False
        hashes = set(ok.values())
        if not all(set(scored(self.db_path, p)) >= hashes for p in self.profiles):
            return False
        # a batch commits its rows before it logs its line: wait for the lines of every committed score
        return self.d.total("scored") == self.scores() - self.scores_at_start

    def settle(self, what: str, timeout: float = HANG_GUARD) -> None:
        wait_until(self.settled, timeout, what, self.daemon)

    def assert_consistent(self) -> None:
        """What holds whenever the daemon stopped: one score per photo, profile and model; an intact file."""
        assert duplicate_scores(self.db_path) == 0
        assert integrity(self.db_path) == [("ok",)]


def kill_mid_burst(sc: Scenario) -> int:
    """Drop ``KILL_BURST`` photos, wait until ``KILL_AFTER`` of their score rows are committed, kill -9 the daemon.

    Where in the work the kill lands (a chunk half done, every photo indexed but not scored, all done) is left
    open: the tests assert only what holds wherever it lands. Returns the daemon's exit code."""
    before = sc.scores()
    for i in range(KILL_BURST):
        photo(sc.lib / "burst-kill" / f"{i:02d}.jpg", seed=3000 + i)
    wait_until(lambda: sc.scores() - before >= KILL_AFTER, HANG_GUARD, f"{KILL_AFTER} scores of the burst", sc.d)
    sc.d.proc.kill()
    sc.phase = "killed"
    return sc.d.proc.wait(timeout=HANG_GUARD)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[Scenario]:
    with isolated_env(tmp_path_factory.mktemp("scenario")) as env:
        sc = Scenario(env, model_cache)
        try:
            yield sc
        finally:
            sc.kill()


def _handed_out(sc: Scenario, request: pytest.FixtureRequest, phase: str) -> Scenario:
    """``sc`` in ``phase`` and settled; rebuilt when it is not in that phase, its daemon died, or a test failed
    since it was last handed out (whatever that test left behind is not trusted)."""
    failures = request.session.testsfailed
    rebuilt = sc.phase != phase or failures != sc.failures_seen or (phase != "killed" and not sc.alive())
    if rebuilt:
        sc.rebuild(phase)
    sc.failures_seen = failures
    if phase != "killed":
        sc.settle(f"the library settled under the {phase} daemon", START_GUARD if rebuilt else HANG_GUARD)
    return sc


@pytest.fixture
def inotify_daemon(scenario: Scenario, request: pytest.FixtureRequest) -> Scenario:
    """The scenario's first daemon, following the folder with inotify."""
    return _handed_out(scenario, request, "inotify")


@pytest.fixture
def killed_daemon(scenario: Scenario, request: pytest.FixtureRequest) -> Scenario:
    """The scenario right after its inotify daemon was killed with -9 in a burst (as the kill test leaves it)."""
    return _handed_out(scenario, request, "killed")


@pytest.fixture
def polling_daemon(scenario: Scenario, request: pytest.FixtureRequest) -> Scenario:
    """The scenario's second daemon: inotify unavailable, so it polls; models unload after 2 s idle."""
    return _handed_out(scenario, request, "polling")


# -- the checks the restarted (polling) daemon must pass; the slow kill -9 test runs them on a larger library --------


def check_restart_resumes_only_the_missing_work(sc: Scenario) -> None:
    """After a kill -9, a restarted daemon says it polls, closes the killed run and does only the missing work."""
    first = sc.d
    assert not first.alive()
    indexed = {r[0] for r in query(sc.db_path, "SELECT path FROM photos")}
    not_indexed = len(sc.on_disk() - indexed)
    scores_before = sc.scores()
    second = sc.start_polling()
    sc.settle("every photo scored after the restart", START_GUARD)
    log = second.log()
    assert "inotify is unavailable" in log and "falling back to polling" in log
    initial = [b for b in second.batches() if b["what"] == "reconcile (initial scan)"]
    assert len(initial) == 1, second.log()
    assert initial[0]["new"] == not_indexed  # photos committed before the kill are not read again
    assert scores_before + initial[0]["scored"] == sc.scores()  # only the missing pairs are scored
    # the killed daemon's run no longer reads "running": the second one closed it as interrupted
    runs = query(sc.db_path, "SELECT status, summary_json FROM runs WHERE kind = 'watch' ORDER BY id")
    assert [r[0] for r in runs] == ["interrupted", "running"]
    assert f"its process ({first.proc.pid}) ended without closing the run" in runs[0][1]
    for p in sc.profiles:
        rows = scored(sc.db_path, p)
        assert len(rows) == len(set(rows))  # every photo scored exactly once per profile...
        assert set(rows) >= ok_hashes(sc.db_path, sc.lib)  # ...and none left out
    sc.assert_consistent()


def check_polling_picks_up_new_files(sc: Scenario) -> None:
    before = sc.totals("new", "vision", "changed", "failed")
    scores_before = sc.scores()
    for i in range(3):
        photo(sc.lib / "later" / f"{i}.jpg", seed=900 + i)
    sc.settle("the polled files scored")
    after = sc.totals("new", "vision", "changed", "failed")
    assert {k: after[k] - before[k] for k in after} == {"new": 3, "vision": 3, "changed": 0, "failed": 0}
    assert sc.scores() - scores_before == 3 * len(sc.profiles)


def check_idle_unload_and_reload(sc: Scenario) -> None:
    """Idle, the models are dropped; the next batch loads them once more and scores as before."""
    daemon = sc.d

    def unloaded() -> bool:
        log = daemon.log()
        return log.rfind("models unloaded after 2s idle") > log.rfind("loaded demo") >= 0

    wait_until(unloaded, HANG_GUARD, "the models unloaded after 2 s idle", daemon)
    loads = daemon.log().count("loaded demo")
    before = sc.totals("vision")
    scores_before = sc.scores()
    photo(sc.lib / "after-idle.jpg", seed=950)
    sc.settle("the photo after the idle unload scored")
    assert daemon.log().count("loaded demo") == loads + 1
    assert sc.d.total("vision") == before["vision"] + 1 and sc.scores() == scores_before + len(sc.profiles)


def check_sigterm_mid_burst(sc: Scenario) -> None:
    """SIGTERM while a burst is being scored: exit code 0, and the run's record equals the rows it committed."""
    daemon = sc.d
    before = sc.scores()
    for i in range(24):
        photo(sc.lib / "late" / f"{i:02d}.jpg", seed=5000 + i)
    wait_until(lambda: sc.scores() > before, HANG_GUARD, "the first scores of the burst", daemon)
    code = daemon.stop(signal.SIGTERM)
    sc.phase = "stopped"
    assert code == 0, daemon.log()
    assert "stopped (SIGTERM received)" in daemon.log()
    runs = query(sc.db_path, "SELECT status, summary_json FROM runs WHERE kind = 'watch' ORDER BY id DESC")
    assert runs[0][0] == "ok"
    summary = json.loads(runs[0][1])
    assert summary["mode"] == "polling"
    assert sc.scores_at_start + summary["scored"] == sc.scores() == sc.scores_at_start + daemon.total("scored")
    sc.assert_consistent()


@pytest.mark.integration
class TestInotifyDaemon:
    """The first daemon (inotify) follows every kind of change people and copy tools make; then it is killed."""

    def test_the_initial_scan_scores_what_is_already_there(self, inotify_daemon: Scenario) -> None:
        sc = inotify_daemon
        assert re.search(r"watching .* with inotify", sc.d.log())
        n = len(SEED_FILES)
        initial = [b for b in sc.d.batches() if b["what"] == "reconcile (initial scan)"]
        assert [(b["files"], b["new"], b["vision"], b["scored"], b["failed"]) for b in initial] == [
            (n, n, n, n * len(sc.profiles), 0)
        ]
        for p in sc.profiles:
            assert ranking_paths(sc.env, p) == sc.on_disk()

    def test_a_slowly_written_file_is_read_once_after_it_is_complete(self, inotify_daemon: Scenario) -> None:
        sc = inotify_daemon
        data = photo(sc.env.root / "source.jpg", seed=100).read_bytes()
        slow = sc.lib / "slow.jpg"
        before = sc.totals("new", "vision", "changed", "failed")
        checks: list[None] = []

        def not_read_yet() -> None:
            checks.append(None)
            assert photo_row(sc.db_path, slow) is None, "the daemon read slow.jpg before it was complete"

        # 12 chunks 0.2 s apart: written for longer than the daemon's 1 s settle window
        write_in_chunks(slow, data, chunks=12, pause=0.2, watch=not_read_yet)
        assert len(checks) >= 12  # the database was looked at in every pause
        sc.settle("slow.jpg scored")
        assert query(sc.db_path, "SELECT status, size FROM photos WHERE path = ?", str(slow)) == [("ok", len(data))]
        after = sc.totals("new", "vision", "changed", "failed")
        assert {k: after[k] - before[k] for k in after} == {"new": 1, "vision": 1, "changed": 0, "failed": 0}

    def test_bursts_of_new_files_are_each_scored_exactly_once(self, inotify_daemon: Scenario) -> None:
        sc = inotify_daemon
        before = sc.totals("new", "vision", "changed", "failed")
        scores_before = sc.scores()
        for burst in range(3):  # 60 files in 3 bursts
            for i in range(20):
                photo(sc.lib / f"burst{burst}" / f"{i:02d}.jpg", seed=1000 + burst * 100 + i)
            time.sleep(0.3)  # a pause between bursts, as a copy tool makes
        sc.settle("60 burst files scored")
        after = sc.totals("new", "vision", "changed", "failed")
        # each photo read once, through vision once, never half-written
        assert {k: after[k] - before[k] for k in after} == {"new": 60, "vision": 60, "changed": 0, "failed": 0}
        assert sc.scores() - scores_before == 60 * len(sc.profiles)
        for p in sc.profiles:
            rows = scored(sc.db_path, p)
            assert len(rows) == len(set(rows))

    def test_renamed_and_moved_photos_keep_their_scores(self, inotify_daemon: Scenario) -> None:
        sc = inotify_daemon
        keep = sc.lib / "keep"
        moves = {keep / "rename.jpg": keep / "renamed.jpg", keep / "into-sub.jpg": keep / "sub" / "into-sub.jpg"}
        hashes = {src: photo_row(sc.db_path, src)[1] for src in moves}  # type: ignore[index]
        vision, scores_before = sc.d.total("vision"), sc.scores()
        (keep / "sub").mkdir()
        for src, dst in moves.items():
            src.rename(dst)
        sc.settle("the renamed photos in the database")
        for src, dst in moves.items():
            assert photo_row(sc.db_path, dst) == ("ok", hashes[src])
            # the old path's row is dropped when the move is recognised in one batch; kept as missing otherwise
            assert photo_row(sc.db_path, src) in (None, ("missing", hashes[src]))
        for p in sc.profiles:
            assert ranking_paths(sc.env, p) == sc.on_disk()
        assert (sc.d.total("vision"), sc.scores()) == (vision, scores_before)  # nothing read or scored again

    def test_a_photo_moved_out_and_back_keeps_its_score(self, inotify_daemon: Scenario) -> None:
        sc = inotify_daemon
        away, outside = sc.lib / "away.jpg", sc.outside / "away.jpg"
        content = photo_row(sc.db_path, away)[1]  # type: ignore[index]
        vision, scores_before = sc.d.total("vision"), sc.scores()
        away.rename(outside)
        sc.settle("away.jpg out of the library")
        assert photo_row(sc.db_path, away) == ("missing", content)
        assert all(str(away) not in ranking_paths(sc.env, p) for p in sc.profiles)
        outside.rename(away)
        sc.settle("away.jpg back in the library")
        assert photo_row(sc.db_path, away) == ("ok", content)
        for p in sc.profiles:
            assert ranking_paths(sc.env, p) == sc.on_disk()
        assert (sc.d.total("vision"), sc.scores()) == (vision, scores_before)  # back with its old score

    def test_a_deleted_photo_is_marked_missing(self, inotify_daemon: Scenario) -> None:
        sc = inotify_daemon
        gone = sc.lib / "gone.jpg"
        content = photo_row(sc.db_path, gone)[1]  # type: ignore[index]
        missing, scores_before = sc.d.total("missing"), sc.scores()
        gone.unlink()
        sc.settle("gone.jpg out of the database's ok photos")
        assert photo_row(sc.db_path, gone) == ("missing", content)
        assert sc.d.logged("missing", missing + 1) == missing + 1
        for p in sc.profiles:
            assert ranking_paths(sc.env, p) == sc.on_disk()
        assert sc.scores() == scores_before  # its scores stay, keyed by content, for when it comes back

    def test_an_edited_photo_gets_a_new_hash_and_is_scored_again(self, inotify_daemon: Scenario) -> None:
        sc = inotify_daemon
        edit = sc.lib / "edit.jpg"
        old_hash = photo_row(sc.db_path, edit)[1]  # type: ignore[index]
        before = sc.totals("new", "vision", "changed", "failed")
        scores_before = sc.scores()
        photo(edit, seed=4242)  # rewritten in place: same path, so the folder alone does not show the change
        wait_until(lambda: photo_row(sc.db_path, edit) != ("ok", old_hash), HANG_GUARD, "edit.jpg read again", sc.d)
        sc.settle("the edited photo rescored")
        status, new_hash = photo_row(sc.db_path, edit)  # type: ignore[misc]
        assert status == "ok" and new_hash != old_hash
        after = sc.totals("new", "vision", "changed", "failed")
        assert {k: after[k] - before[k] for k in after} == {"new": 0, "vision": 1, "changed": 1, "failed": 0}
        assert sc.scores() - scores_before == len(sc.profiles)
        with sc.env.store() as store:
            ranked = {r.content_hash for r in store.ranking(sc.profiles[0])}
        assert new_hash in ranked and old_hash not in ranked

    def test_a_profile_added_from_another_shell_is_scored_without_vision(self, inotify_daemon: Scenario) -> None:
        sc = inotify_daemon
        vision = sc.d.total("vision")
        hashes = len(ok_hashes(sc.db_path, sc.lib))
        sc.add_profile("bernd")
        sc.settle("bernd scored for the whole library")
        lines = [b for b in sc.d.batches() if b["what"] == "profiles (added bernd)"]
        assert [(b["vision"], b["scored"]) for b in lines] == [(0, hashes)]
        assert sc.d.total("vision") == vision
        assert len(scored(sc.db_path, "bernd")) == hashes

    def test_status_from_another_shell_reads_the_running_daemon(self, inotify_daemon: Scenario) -> None:
        sc = inotify_daemon
        code, out, err = sc.env.run_cli("status", "--json")
        assert code == 0, err
        status = json.loads(out)
        missing = count(sc.db_path, "SELECT COUNT(*) FROM photos WHERE status = 'missing'")
        assert status["photos"] == {"ok": len(sc.on_disk()), "failed": 0, "missing": missing}
        assert (status["last_run"]["kind"], status["last_run"]["status"]) == ("watch", "running")

    def test_kill_9_in_a_burst_leaves_a_consistent_database(self, inotify_daemon: Scenario) -> None:
        sc = inotify_daemon
        scores_before = sc.scores()
        assert kill_mid_burst(sc) == -signal.SIGKILL
        committed = sc.scores() - scores_before
        assert KILL_AFTER <= committed <= KILL_BURST * len(sc.profiles)
        sc.assert_consistent()


@pytest.mark.integration
class TestPollingRestart:
    """The second daemon: after the kill -9, restarted with inotify unavailable; it polls, idles, stops on SIGTERM."""

    def test_a_restart_after_kill_9_resumes_only_the_missing_work(self, killed_daemon: Scenario) -> None:
        check_restart_resumes_only_the_missing_work(killed_daemon)

    def test_polling_picks_up_new_files(self, polling_daemon: Scenario) -> None:
        check_polling_picks_up_new_files(polling_daemon)

    def test_idle_models_are_unloaded_and_the_next_batch_loads_them_again(self, polling_daemon: Scenario) -> None:
        check_idle_unload_and_reload(polling_daemon)

    def test_sigterm_in_a_burst_exits_0_and_the_run_records_what_was_committed(
        self, polling_daemon: Scenario
    ) -> None:
        check_sigterm_mid_burst(polling_daemon)


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
        wait_until(lambda: "reconcile (initial scan)" in daemon.log(), START_GUARD, "the initial scan", daemon)
        n = 0
        for burst in range(10):  # 10 bursts of 50, into a few folders, with short pauses between them
            for i in range(50):
                photo(lib / f"album{burst % 4}" / f"b{burst:02d}_{i:02d}.jpg", seed=10_000 + n)
                n += 1
            time.sleep(0.2)
        wait_until(lambda: fully_scored(env.db_path, lib, profiles, n), 5 * HANG_GUARD, f"{n} files scored", daemon)
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
        assert daemon.stop(signal.SIGTERM) == 0, daemon.log()
        assert "stopped (SIGTERM received)" in daemon.log()
        assert integrity(env.db_path) == [("ok",)]
    finally:
        daemon.kill()


@pytest.mark.slow
@pytest.mark.integration
def test_kill_9_with_a_larger_library_still_scores_every_photo_once(env: CLIEnv, model_cache: Path) -> None:
    n = 200
    sc = Scenario(env, model_cache)
    sc.reset(seed_files={f"{i:03d}.jpg": i for i in range(n)}, profiles=("ana", "bernd"))
    try:
        # small LM batches too: the initial scan commits its 400 scores in many transactions
        sc.start_inotify(extra_env={"PMLLM_SCORE__BATCH_SIZE": "4"})
        wait_until(lambda: sc.scores() >= KILL_AFTER, START_GUARD, f"{KILL_AFTER} scores of the initial scan", sc.d)
        sc.d.proc.kill()
        assert sc.d.proc.wait(timeout=HANG_GUARD) == -signal.SIGKILL
        assert KILL_AFTER <= sc.scores() <= n * len(sc.profiles)  # wherever in the scan the kill landed
        sc.assert_consistent()
        check_restart_resumes_only_the_missing_work(sc)
        assert {len(scored(sc.db_path, p)) for p in sc.profiles} == {n}
        check_polling_picks_up_new_files(sc)
        check_idle_unload_and_reload(sc)
        check_sigterm_mid_burst(sc)
    finally:
        sc.kill()
