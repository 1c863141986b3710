"""Hardening: the stumbles of a new user, a daemon that waits for its NAS, concurrent writers, a damaged database.

One test (or a few) per point of the hardening issue, each asserting the exit code and the exact sentence or the
behaviour. Most run in-process with a stand-in model (:func:`tests.doubles.fake_loader`: tokens are mean colours,
the score their mean) so they cost no model load; the concurrency tests run real separate processes (``python -c``
with the same stand-in) because the work lock is between processes. No test asserts how long anything took: waits
have generous deadlines, and where the point is that something is *interrupted*, the work is made to hang until it is.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from pmllm_batch.cli.app import COMMAND_MODULES, _subparsers_of, build_parser
from pmllm_batch.config import Settings, load_config
from pmllm_batch.db import Store
from pmllm_batch.errors import DBAccessError, DBUnavailableError
from tests import doubles
from tests.doubles import LOADS, SCORE_HOOK, use_fake_models
from tests.helpers import CLIEnv, wait_until
from tests.imagegen import make_photo, write_broken_exif_jpeg, write_truncated_jpeg

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------------------
# The stand-in model (tests/doubles.py; also used by the subprocesses below) and small helpers
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    LOADS.clear()
    SCORE_HOOK.clear()
    use_fake_models(monkeypatch.setattr)
    yield LOADS
    SCORE_HOOK.clear()


def one_line_error(code: int, out: str, err: str, expected_code: int) -> str:
    assert code == expected_code, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pmllm-batch: error: ")
    return lines[0].removeprefix("pmllm-batch: error: ")


def photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    return [make_photo(folder / f"p{i:02d}.jpg", (40, 30), seed=seed + i) for i in range(n)]


def add_profile(env: CLIEnv, name: str, *extra: str, **fields: Any) -> tuple[int, str, str]:
    return env.run_cli(*extra, "profile", "add", str(env.write_profile(name, **fields)))


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def settings_for(env: CLIEnv, **watch: Any) -> Settings:
    """Real settings for an in-process daemon on ``env``'s database (quick batches, no periodic rescan)."""
    return load_config(overrides={"db": {"url": env.db_url}, "watch": {"debounce": 0.05, "reconcile_interval": 0,
                                                                          **watch}})


def score_rows(db: Path) -> list[tuple[str, int, int]]:
    return [tuple(r) for r in rows(db, "SELECT content_hash, profile_id, model_id FROM scores")]


# ---------------------------------------------------------------------------------------------------------------------
# --db: a folder that does not exist, a value that is no URL, the default location
# ---------------------------------------------------------------------------------------------------------------------


def test_a_db_whose_folder_does_not_exist_is_one_sentence_and_creates_nothing(env: CLIEnv) -> None:
    target = env.root / "nonexistent" / "dir" / "lib.sqlite"
    code, out, err = env.run_cli("--db", str(target), "status")
    assert one_line_error(code, out, err, DBAccessError.exit_code) == (
        f"cannot open the database at {target}: the folder {target.parent} does not exist (create it first, or "
        "choose another --db; only the default database folder is created on its own)."
    )
    assert not (env.root / "nonexistent").exists()
    # the same after the command (global options work there too), and for a command that writes
    code, out, err = env.run_cli("profile", "add", str(env.write_profile("ana")), "--db", str(target))
    assert code == DBAccessError.exit_code and "does not exist" in err
    assert not (env.root / "nonexistent").exists()


def test_a_db_value_that_is_no_url_and_no_file_name_is_one_sentence(
    env: CLIEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(env.root)
    before = sorted(os.listdir(env.root))
    code, out, err = env.run_cli("--db", "not a url ::", "status")
    assert one_line_error(code, out, err, DBAccessError.exit_code) == (
        "cannot open the database at 'not a url ::': it is neither a database URL (dialect://..., e.g. "
        "postgresql://user@host/library) nor a usable SQLite file name (a new file's name may not contain ':')."
    )
    assert sorted(os.listdir(env.root)) == before


def test_a_command_that_only_reads_does_not_create_a_database_for_a_typo(env: CLIEnv) -> None:
    typo = env.root / "libary.sqlite"
    for args in (["status"], ["export", "--profile", "ana"], ["profile", "list"]):
        code, out, err = env.run_cli("--db", str(typo), *args)
        assert one_line_error(code, out, err, DBAccessError.exit_code) == (
            f"there is no database at {typo} yet (check --db; `pmllm-batch profile add` or `rank` creates it)."
        )
    assert not typo.exists()
    code, out, err = env.run_cli("--db", str(env.root), "status")
    assert one_line_error(code, out, err, DBAccessError.exit_code) == (
        f"cannot open the database at {env.root}: it is a folder; give a file in it, e.g. "
        f"--db {env.root / 'library.sqlite'}."
    )
    assert env.run_cli("--db", str(typo), "profile", "add", str(env.write_profile("ana")))[0] == 0  # this creates
    assert typo.is_file()


def test_only_the_default_database_location_is_created_on_its_own(env: CLIEnv) -> None:
    assert not env.db_path.parent.exists()
    code, out, err = env.run_cli("status")
    assert (code, err) == (0, "")
    assert env.db_path.is_file() and "photos: 0 ok" in out


# ---------------------------------------------------------------------------------------------------------------------
# A read-only database can still be read
# ---------------------------------------------------------------------------------------------------------------------


def _seed_library(env: CLIEnv, fake_models: list[int], n: int = 3) -> Path:
    lib = env.root / "lib"
    photos(lib, n)
    assert add_profile(env, "ana", age=30)[0] == 0
    code, _, err = env.run_cli("rank", str(lib))
    assert code == 0, err
    return lib


def test_a_read_only_database_is_read_and_a_write_names_the_permission_problem(
    env: CLIEnv, fake_models: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = _seed_library(env, fake_models)
    # What a read-only mount looks like to this process (root ignores permission bits, so they are faked here; the
    # next test uses a real read-only mount where it can).
    import pmllm_batch.db.engine as engine

    real_access = os.access
    db_dir = str(env.db_path.parent)

    def read_only_access(path: Any, mode: int, *a: Any, **k: Any) -> bool:
        if mode & os.W_OK and str(path).startswith(db_dir):
            return False
        return real_access(path, mode, *a, **k)

    monkeypatch.setattr(engine.os, "access", read_only_access)
    code, out, err = env.run_cli("status")
    assert (code, err) == (0, "")
    assert "photos: 3 ok" in out and "database is read-only for this user" in out
    code, out, err = env.run_cli("export", "--profile", "ana", "--format", "json")
    assert code == 0, err
    assert len(json.loads(out)) == 3
    code, out, err = env.run_cli("rank", str(lib))
    assert one_line_error(code, out, err, DBAccessError.exit_code) == (
        f"cannot write the database at {env.db_path}: it is read-only for this user (the file or its folder is not "
        "writable, or the disk is mounted read-only); status, export and report can still read it."
    )
    with Store(env.db_url) as store:
        assert store.read_only and [p.name for p in store.list_profiles()] == ["ana"]


def _read_only_runner(folder: Path) -> list[str] | None:
    """A command prefix that runs a program with ``folder`` mounted read-only, or None where that is impossible."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        for f in folder.iterdir():
            f.chmod(0o444)
        return []
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro {folder} {folder} && true"],
                           capture_output=True)
    if probe.returncode != 0:
        return None
    return ["unshare", "-m", "sh", "-c", f'mount --bind -o ro "{folder}" "{folder}" && exec "$@"', "sh"]


@pytest.mark.integration
def test_a_database_on_a_real_read_only_mount_is_read(env: CLIEnv, fake_models: list[int]) -> None:
    _seed_library(env, fake_models)
    with Store(env.db_url):
        pass  # closing the last connection checkpoints the WAL and removes -wal/-shm, as after a clean shutdown
    assert not (env.db_path.parent / "library.sqlite-shm").exists()
    prefix = _read_only_runner(env.db_path.parent)
    if prefix is None:
        pytest.skip("cannot mount a folder read-only here (no mount namespace) and root ignores permission bits")
    child = dict(os.environ)
    try:
        reads = [["status", "--json"], ["export", "--profile", "ana", "--format", "csv"]]
        if "report" in COMMAND_MODULES:
            reads.append(["report", "--out", str(env.root / "gallery")])
        for args in reads:
            proc = subprocess.run([*prefix, sys.executable, "-m", "pmllm_batch", "--db", str(env.db_path), *args],
                                  cwd=REPO, env=child, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
            if args[0] == "status":
                status = json.loads(proc.stdout)
                assert status["photos"]["ok"] == 3 and status["read_only"] is True
            elif args[0] == "export":
                assert len(proc.stdout.strip().splitlines()) == 1 + 3  # header + 3 photos
            else:
                assert (env.root / "gallery" / "index.html").is_file()
        proc = subprocess.run([*prefix, sys.executable, "-m", "pmllm_batch", "--db", str(env.db_path), "profile",
                               "remove", "ana"], cwd=REPO, env=child, capture_output=True, text=True, timeout=120)
        assert proc.returncode == DBAccessError.exit_code
        assert proc.stderr.strip() == (
            f"pmllm-batch: error: cannot write the database at {env.db_path}: it is read-only for this user (the "
            "file or its folder is not writable, or the disk is mounted read-only); status, export and report can "
            "still read it."
        )
    finally:
        env.db_path.parent.chmod(0o755)


# ---------------------------------------------------------------------------------------------------------------------
# -q, watch --once and the settle window, no model when nothing needs scoring
# ---------------------------------------------------------------------------------------------------------------------


def test_quiet_prints_nothing_on_success(env: CLIEnv, fake_models: list[int]) -> None:
    lib = env.root / "lib"
    photos(lib, 2)
    assert add_profile(env, "ana", "-q") == (0, "", "")
    for args in (["-q", "watch", str(lib), "--once"], ["watch", str(lib), "--once", "-q"], ["-q", "rank", str(lib)],
                 ["profile", "remove", "ana", "-q"]):
        code, out, err = env.run_cli(*args)
        assert (code, out, err) == (0, "", ""), args


def test_watch_once_waits_out_the_settle_window_instead_of_skipping(
    env: CLIEnv, fake_models: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    lib = env.root / "lib"
    files = photos(lib, 5)
    # "just copied in": every mtime is inside the settle window of the scan (set ahead, so a slow machine cannot
    # let the window pass before the scan starts)
    ahead = time.time_ns() + 3_600 * 10**9
    for f in files:
        os.utime(f, ns=(ahead, ahead))
    assert add_profile(env, "ana")[0] == 0
    caplog.set_level(logging.INFO, logger="pmllm_batch")
    code, out, err = env.run_cli("watch", str(lib), "--once", "--settle", "0.5")
    assert code == 0, err
    assert out.startswith("scanned 5 files (0 failed): 5 new, 0 changed, 0 unchanged; 0 missing; vision encodes 5; "
                          "scored 5 (photo, profile) pairs in "), out
    assert "5 files changed less than 0.5s ago; waiting for them to settle" in caplog.text
    assert rows(env.db_path, "SELECT COUNT(*) FROM photos WHERE status = 'ok'") == [(5,)]


def test_nothing_loads_when_nothing_needs_scoring(env: CLIEnv, fake_models: list[int]) -> None:
    lib = env.root / "lib"
    photos(lib, 3)
    assert add_profile(env, "ana")[0] == 0
    assert env.run_cli("watch", str(lib), "--once")[0] == 0
    assert len(fake_models) == 1
    for args in (["watch", str(lib), "--once"], ["rank", str(lib), "--json"]):
        code, out, err = env.run_cli(*args)
        assert code == 0, err
        assert len(fake_models) == 1, f"{args} loaded the model although every pair was scored"
    assert json.loads(out.splitlines()[-1])["scored"] == 0
    # a copy of a known photo is indexed from the cache without loading; a new profile needs the model again
    make_photo(lib / "copy.jpg", (40, 30), seed=0)
    assert env.run_cli("rank", str(lib))[0] == 0 and len(fake_models) == 1
    assert add_profile(env, "bob")[0] == 0
    assert env.run_cli("rank", str(lib))[0] == 0 and len(fake_models) == 2


# ---------------------------------------------------------------------------------------------------------------------
# The daemon: a root that is not there yet, SIGTERM mid-chunk, moves, failures by name
# ---------------------------------------------------------------------------------------------------------------------


def test_watch_of_a_root_that_is_a_file_exits_2_but_an_absent_one_is_waited_for(
    env: CLIEnv, fake_models: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    from pmllm_batch.daemon.service import WatchService

    afile = env.root / "photo.jpg"
    make_photo(afile, (40, 30))
    code, out, err = env.run_cli("watch", str(afile))
    assert one_line_error(code, out, err, 2) == (
        f"{afile} is a file, not a folder: watch takes photo folders (pmllm-batch watch {env.root} for the folder "
        "that holds it)."
    )
    code, out, err = env.run_cli("rank", str(afile))
    assert one_line_error(code, out, err, 2) == (
        f"{afile} is a file, not a folder: rank takes photo folders (pmllm-batch rank {env.root} for the folder "
        "that holds it)."
    )

    assert add_profile(env, "ana")[0] == 0
    caplog.set_level(logging.INFO, logger="pmllm_batch")
    nas = env.root / "nas"  # not mounted yet
    settings = settings_for(env, settle=0.2, poll_interval=0.2)
    with Store(env.db_url) as store:
        service = WatchService(settings, store, [nas], install_signals=False)
        thread = threading.Thread(target=service.run)
        thread.start()
        try:
            wait_until(lambda: "is not there (not mounted yet?)" in caplog.text, 30, "the absent root to be logged")
            assert thread.is_alive()
            photos(nas, 2)  # the NAS appears
            wait_until(lambda: rows(env.db_path, "SELECT COUNT(*) FROM scores") == [(2,)], 60, "its photos scored")
            assert f"photo folder {nas} is there now; scanning it" in caplog.text
        finally:
            service.request_stop("test over")
            thread.join(timeout=60)
        assert not thread.is_alive()


def test_an_empty_mount_point_does_not_turn_the_library_missing(
    env: CLIEnv, fake_models: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    from pmllm_batch.daemon.service import WatchService

    nas = env.root / "nas"
    files = photos(nas, 2)
    assert add_profile(env, "ana")[0] == 0
    assert env.run_cli("rank", str(nas))[0] == 0
    for f in files:
        f.unlink()  # the disk is unmounted: an empty mount point is left behind
    caplog.set_level(logging.INFO, logger="pmllm_batch")
    with Store(env.db_url) as store:
        WatchService(settings_for(env), store, [nas], once=True, install_signals=False).run()
    assert "is empty although the database knows photos in it" in caplog.text
    assert rows(env.db_path, "SELECT status, COUNT(*) FROM photos GROUP BY status") == [("ok", 2)]


def test_sigterm_stops_the_daemon_even_in_the_middle_of_a_chunk_and_the_rest_is_redone(
    env: CLIEnv, fake_models: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    from pmllm_batch.daemon.service import WatchService

    lib = env.root / "lib"
    photos(lib, 6)
    assert add_profile(env, "ana")[0] == 0
    caplog.set_level(logging.INFO, logger="pmllm_batch")
    entered = threading.Event()
    released = threading.Event()  # never set: the chunk hangs until the service abandons it

    def hang() -> None:
        entered.set()
        deadline = time.monotonic() + 120  # a safety net for a broken abort; reaching it fails the test below
        while not released.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        raise AssertionError("the hanging chunk was not abandoned after SIGTERM")

    SCORE_HOOK.append(hang)

    def send_sigterm() -> None:
        if entered.wait(120):
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=send_sigterm, daemon=True).start()
    before = signal.getsignal(signal.SIGTERM)
    with Store(env.db_url) as store:
        service = WatchService(settings_for(env, settle=0.1), store, [lib])  # main thread: real signal handlers
        service.stop_grace_s = 0.3
        service.run()  # returns (instead of hanging) because the chunk was abandoned
    assert signal.getsignal(signal.SIGTERM) is before  # handlers handed back
    assert "did not finish within 0.3s of the stop request; it was abandoned" in caplog.text
    run = rows(env.db_path, "SELECT status, summary_json FROM runs WHERE kind = 'watch'")[-1]
    assert run[0] == "ok" and json.loads(run[1])["abandoned_chunk"] is True
    assert score_rows(env.db_path) == []  # nothing of the hanging chunk was committed
    assert rows(env.db_path, "PRAGMA integrity_check") == [("ok",)]
    # the next start picks up the pairs that were not committed, each once
    SCORE_HOOK.clear()
    code, out, err = env.run_cli("watch", str(lib), "--once")
    assert code == 0, err
    scores = score_rows(env.db_path)
    assert len(scores) == len(set(scores)) == 6


def test_a_move_into_a_folder_the_observer_does_not_watch_yet_is_a_move_not_a_missing_file(
    env: CLIEnv, fake_models: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    """``mkdir sub && mv a.jpg sub/`` can beat the observer's watch on ``sub``: only the deletion is reported.

    The race is replayed by hand: the folder's event is expanded while it is still empty, the file moves in, and
    the batch holds only the vanished path. The batch must look in the new folder and record a move.
    """
    from pmllm_batch.daemon.service import WatchService

    lib = env.root / "lib"
    files = photos(lib, 2)
    os.utime(files[0], (time.time() - 60, time.time() - 60))  # an old photo, as moved ones are
    assert add_profile(env, "ana")[0] == 0
    assert env.run_cli("watch", str(lib), "--once")[0] == 0
    before = score_rows(env.db_path)
    assert len(before) == 2
    caplog.set_level(logging.INFO, logger="pmllm_batch")
    caplog.clear()
    with Store(env.db_url) as store:
        service = WatchService(settings_for(env, settle=0.2), store, [lib], once=True, install_signals=False)
        service.profile_set.load(initial=True)
        sub = lib / "sub"
        sub.mkdir()
        service.tracker.touch_dir(str(sub))
        for folder in service.tracker.take_dirs():
            service._expand_dir(folder)  # nothing below it yet
        assert service.tracker.waiting == 0
        files[0].rename(sub / "moved.jpg")
        service._process_batch([files[0]])
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("batch ")]
    assert "0 missing" in line and "1 moved or renamed (scores kept)" in line, line
    assert rows(env.db_path, "SELECT status FROM photos WHERE path = ?", str(sub / "moved.jpg")) == [("ok",)]
    assert not rows(env.db_path, "SELECT id FROM photos WHERE path = ?", str(files[0]))
    assert sorted(score_rows(env.db_path)) == sorted(before)  # same content, same scores: nothing rescored


def test_a_rename_is_logged_as_a_move_and_failed_files_are_named(
    env: CLIEnv, fake_models: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    from pmllm_batch.daemon.service import WatchService

    lib = env.root / "lib"
    files = photos(lib, 3)
    assert add_profile(env, "ana")[0] == 0
    caplog.set_level(logging.INFO, logger="pmllm_batch")
    with Store(env.db_url) as store:
        service = WatchService(settings_for(env, settle=0.2), store, [lib], install_signals=False)
        thread = threading.Thread(target=service.run)
        thread.start()
        try:
            wait_until(lambda: rows(env.db_path, "SELECT COUNT(*) FROM scores") == [(3,)], 60, "the initial scan")
            files[0].rename(lib / "renamed.jpg")
            (lib / "sub").mkdir()
            files[1].rename(lib / "sub" / "moved.jpg")
            write_truncated_jpeg(lib / "broken.jpg")
            wait_until(lambda: rows(env.db_path, "SELECT COUNT(*) FROM photos WHERE status = 'failed'") == [(1,)]
                       and len(rows(env.db_path, "SELECT id FROM photos WHERE path LIKE ?", f"{lib}/sub/%")) == 1
                       and not rows(env.db_path, "SELECT id FROM photos WHERE path = ?", str(files[0])),
                       60, "the moves and the broken file")
            wait_until(lambda: re.search(r"; 2 moved or renamed \(scores kept\)", caplog.text)
                       or caplog.text.count("1 moved or renamed (scores kept)") >= 2, 30, "the moves in the log")
        finally:
            service.request_stop("test over")
            thread.join(timeout=60)
    batch_lines = [r.getMessage() for r in caplog.records if "moved or renamed" in r.getMessage()]
    assert batch_lines and all(" 0 missing" in line for line in batch_lines), batch_lines
    assert f"failed: {lib / 'broken.jpg'}: truncated — image data is corrupt or truncated" in caplog.text \
        or f"failed: {lib / 'broken.jpg'}: truncated — image data is truncated" in caplog.text
    code, out, err = env.run_cli("status", "--json")
    status = json.loads(out)
    assert status["photos"] == {"ok": 3, "failed": 1, "missing": 0}  # moved-away paths are not "missing"
    assert len(score_rows(env.db_path)) == 3  # nothing rescored


def test_rank_counts_a_move_as_moved_not_as_new_and_missing(env: CLIEnv, fake_models: list[int]) -> None:
    lib = env.root / "lib"
    files = photos(lib, 3)
    assert add_profile(env, "ana")[0] == 0
    assert env.run_cli("rank", str(lib))[0] == 0
    files[0].rename(lib / "renamed.jpg")
    files[1].unlink()
    code, out, err = env.run_cli("rank", str(lib), "--json")
    s = json.loads(out.splitlines()[-1])
    assert (s["new"], s["moved"], s["missing"], s["encoded"], s["scored"]) == (0, 1, 1, 0, 0)
    assert rows(env.db_path, "SELECT path, status FROM photos ORDER BY path") == [
        (str(files[1]), "missing"), (str(files[2]), "ok"), (str(lib / "renamed.jpg"), "ok")]
    code, out, _ = env.run_cli("rank", str(lib))
    assert "scanned 2 files (0 failed): 0 new, 0 changed, 2 unchanged; 0 missing; vision encodes 0; scored 0 " \
           "(photo, profile) pairs in" in out


# ---------------------------------------------------------------------------------------------------------------------
# profile add: names that exist, vocabularies, every problem at once
# ---------------------------------------------------------------------------------------------------------------------


def test_profile_add_refuses_another_file_with_a_stored_name_unless_replace(env: CLIEnv) -> None:
    ana = env.write_profile("ana", age=30)
    assert env.run_cli("profile", "add", str(ana)) == (0, "added ana\n", "")
    other = env.root / "elsewhere" / "ana.toml"
    other.parent.mkdir()
    other.write_text('name = "ana"\nage = 61\n', encoding="utf-8")
    code, out, err = env.run_cli("profile", "add", str(other))
    assert one_line_error(code, out, err, 2) == (
        f"a profile named 'ana' already exists (added from {ana}), and {other} would replace it: pass --replace to "
        "replace it and clear its scores, or give the new profile another name."
    )
    with Store(env.db_url) as store:
        assert store.get_profile("ana").profile.age == 30
    # the same content from another file is harmless; the file it came from may change it; --replace replaces
    same = env.root / "elsewhere" / "same.toml"
    same.write_text('name = "ana"\nage = 30\n', encoding="utf-8")
    assert env.run_cli("profile", "add", str(same)) == (0, "unchanged ana\n", "")
    ana.write_text('name = "ana"\nage = 31\n', encoding="utf-8")
    assert env.run_cli("profile", "add", str(ana)) == (0, "updated ana (scores cleared)\n", "")
    assert env.run_cli("profile", "add", str(other), "--replace") == (0, "updated ana (scores cleared)\n", "")
    with Store(env.db_url) as store:
        assert store.get_profile("ana").profile.age == 61
        assert store.profile_sources() == {"ana": str(other)}


def test_profile_values_are_checked_against_the_vocabularies_with_did_you_mean(env: CLIEnv) -> None:
    bad = env.write_profile("ana", gender="banana", art_experience="guru")
    code, out, err = env.run_cli("profile", "add", str(bad))
    assert one_line_error(code, out, err, 2) == (
        f"{bad} has 2 problems: gender \"banana\" is not one of female, male, non-binary, other; art_experience "
        "\"guru\" is not one of beginner, competent, proficient, expert."
    )
    typo = env.write_profile("bob", gender="femal", photography_experience="profficient")
    code, out, err = env.run_cli("profile", "add", str(typo))
    assert one_line_error(code, out, err, 2) == (
        f"{typo} has 2 problems: gender \"femal\" is not one of female, male, non-binary, other (did you mean "
        "'female'?); photography_experience \"profficient\" is not one of beginner, competent, proficient, expert "
        "(did you mean 'proficient'?)."
    )
    good = env.write_profile("carol", gender="Female", education="Senior High School", art_experience="EXPERT")
    assert env.run_cli("profile", "add", str(good)) == (0, "added carol\n", "")
    with Store(env.db_url) as store:
        p = store.get_profile("carol").profile
    assert (p.gender, p.education, p.art_experience) == ("female", "senior_high_school", "expert")
    assert not env.run_cli("profile", "list")[1].startswith(("ana", "bob"))


def test_a_profile_file_with_five_mistakes_reports_all_five(env: CLIEnv) -> None:
    bad = env.root / "five.toml"
    bad.write_text(
        'name = "dora"\nage = 200\ngender = "banana"\ncolour = "blue"\n[big_five]\nopeness = 5\nextraversion = 42\n',
        encoding="utf-8",
    )
    good = env.write_profile("erik", age=40)
    code, out, err = env.run_cli("profile", "add", str(good), str(bad))
    assert one_line_error(code, out, err, 2) == (
        f"{bad} has 5 problems: unknown field 'colour' (the fields are name, age, gender, education, art_experience, "
        "photography_experience, nationality, notes, big_five, art_interest); 'age' 200 is not a plausible age in "
        "years; gender \"banana\" is not one of female, male, non-binary, other; unknown Big-Five trait 'openess' "
        "(did you mean 'openness'?); big_five.extraversion must be a number from 1 to 10."
    )
    assert env.run_cli("profile", "list")[1].startswith("no profiles yet")  # the good file was not stored either


# ---------------------------------------------------------------------------------------------------------------------
# Options: after the command, help everywhere, words
# ---------------------------------------------------------------------------------------------------------------------


def test_global_options_are_accepted_after_the_command(env: CLIEnv) -> None:
    parser = build_parser()
    args = parser.parse_args(["export-onnx", "--preset", "cpu", "--out", "x"])
    assert (args.command, args.preset, args.out) == ("export-onnx", "cpu", "x")
    args = parser.parse_args(["-v", "rank", "lib", "--db", "a.sqlite", "-v", "--config", "c.toml", "-q"])
    assert (args.db, args.config, args.verbose, args.quiet) == ("a.sqlite", "c.toml", 2, True)
    args = parser.parse_args(["--db", "first.sqlite", "profile", "list", "--db", "second.sqlite"])
    assert args.db == "second.sqlite"  # the one nearer the end wins, as with any repeated option
    assert parser.parse_args(["bench", "--preset", "cpu"]).bench_preset == "cpu"  # bench keeps its own --preset
    other = env.root / "other.sqlite"
    assert env.run_cli("profile", "add", str(env.write_profile("ana")), "--db", str(other))[0] == 0
    assert other.exists() and not env.db_path.exists()


def test_every_option_has_help_and_help_texts_print_clean() -> None:
    parser = build_parser()
    missing = [
        f"{sub.prog} {action.option_strings or action.dest}"
        for sub in [parser, *_subparsers_of(parser)]
        for action in sub._actions
        if not action.help and not isinstance(action, (argparse_help(), argparse_subparsers()))
    ]
    assert missing == []
    for sub in [parser, *_subparsers_of(parser)]:
        assert "%%" not in sub.format_help(), sub.prog
    evaluate = next(s for s in _subparsers_of(parser) if s.prog.endswith(" eval"))
    assert "bootstrap 95% CI" in " ".join(evaluate.format_help().split())


def argparse_help() -> type:
    import argparse

    return argparse._HelpAction


def argparse_subparsers() -> type:
    import argparse

    return argparse._SubParsersAction


def test_counts_read_as_words(env: CLIEnv, fake_models: list[int], caplog: pytest.LogCaptureFixture) -> None:
    lib = env.root / "lib"
    photos(lib, 1)
    assert add_profile(env, "ana")[0] == 0
    code, out, _ = env.run_cli("rank", str(lib))
    assert "scanned 1 file (0 failed): 1 new, 0 changed, 0 unchanged; 0 missing; vision encodes 1; scored 1 " \
           "(photo, profile) pair in " in out
    caplog.set_level(logging.INFO, logger="pmllm_batch")
    assert env.run_cli("watch", str(lib), "--once")[0] == 0
    assert "scored 0 pairs for 1 profile in" in caplog.text


# ---------------------------------------------------------------------------------------------------------------------
# Ctrl-C, rank of a file
# ---------------------------------------------------------------------------------------------------------------------


def test_ctrl_c_during_rank_says_what_was_saved(
    env: CLIEnv, fake_models: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = env.root / "lib"
    photos(lib, 4)
    assert add_profile(env, "ana")[0] == 0
    chunks: list[int] = []

    def ctrl_c_on_second_chunk() -> None:
        chunks.append(1)
        if len(chunks) == 2:
            raise KeyboardInterrupt

    SCORE_HOOK.append(ctrl_c_on_second_chunk)
    monkeypatch.setenv("PMLLM_SCORE__BATCH_SIZE", "2")
    code, out, err = env.run_cli("rank", str(lib))
    monkeypatch.delenv("PMLLM_SCORE__BATCH_SIZE")
    assert code == 130 and out == ""
    assert err.strip() == (
        "pmllm-batch: interrupted: 4 photos through vision and 2 scored (photo, profile) pairs were saved; "
        "run the same command again to do the rest"
    )
    assert len(score_rows(env.db_path)) == 2
    assert rows(env.db_path, "SELECT status FROM runs")[-1] == ("interrupted",)
    SCORE_HOOK.clear()
    code, out, err = env.run_cli("rank", str(lib), "--json")
    s = json.loads(out.splitlines()[-1])
    assert (code, s["encoded"], s["scored"]) == (0, 0, 2)


# ---------------------------------------------------------------------------------------------------------------------
# Garbage EXIF: scored with a warning; unreadable pixels: failed
# ---------------------------------------------------------------------------------------------------------------------


def test_a_jpeg_with_garbage_exif_is_scored_with_a_warning_but_broken_pixels_fail(
    env: CLIEnv, fake_models: list[int]
) -> None:
    lib = env.root / "lib"
    lib.mkdir()
    write_broken_exif_jpeg(lib / "garbage-exif.jpg")
    write_truncated_jpeg(lib / "truncated.jpg")
    assert add_profile(env, "ana")[0] == 0
    code, out, err = env.run_cli("rank", str(lib), "--json")
    assert code == 0, err
    s = json.loads(out.splitlines()[-1])
    assert (s["scanned"], s["failed"], s["encoded"], s["scored"]) == (2, 1, 1, 1)
    got = {Path(p).name: (st, reason, warning) for p, st, reason, warning in
           rows(env.db_path, "SELECT path, status, error_reason, exif_warning FROM photos")}
    status, reason, warning = got["garbage-exif.jpg"]
    assert (status, reason) == ("ok", None)
    assert warning.startswith("exif: EXIF data is unreadable (SyntaxError: not a TIFF file")
    assert warning.endswith("the pixels are fine and the photo is shown as stored, without rotation")
    assert got["truncated.jpg"][:2] == ("failed", "truncated")
    assert rows(env.db_path, "SELECT width, height FROM photos WHERE path LIKE '%garbage-exif.jpg'") == [(160, 120)]


# ---------------------------------------------------------------------------------------------------------------------
# Concurrency: two ranks and a watch on one database run vision once per photo and never duplicate a score
# ---------------------------------------------------------------------------------------------------------------------


def _fake_cli(env: CLIEnv, *args: str, name: str) -> subprocess.Popen[str]:
    code = "import sys; from tests.doubles import main_with_fake_models; " \
           "sys.exit(main_with_fake_models(sys.argv[1:]))"
    child = {**os.environ, "PMLLM_VISION__BATCH_SIZE": "2", "PMLLM_SCORE__BATCH_SIZE": "2", "PYTHONUNBUFFERED": "1"}
    log = open(env.root / f"{name}.log", "w")  # noqa: SIM115 - closed with the process below
    proc = subprocess.Popen([sys.executable, "-c", code, "--db", str(env.db_path), *args], cwd=REPO, env=child,
                            stdout=subprocess.PIPE, stderr=log, text=True)
    proc.log_file = log  # type: ignore[attr-defined]
    return proc


@pytest.mark.integration
def test_two_ranks_and_a_watch_at_once_run_vision_once_per_photo(env: CLIEnv) -> None:
    lib = env.root / "lib"
    n = 12
    photos(lib, n)
    assert add_profile(env, "ana")[0] == 0
    assert add_profile(env, "bob")[0] == 0
    # Hold the work lock while the three start, so all of them are running and waiting when it is released: the
    # race is certain, not left to the scheduler.
    with Store(env.db_url) as store, store.work_lock() as held:
        assert held
        procs = [_fake_cli(env, "rank", str(lib), "--json", name="rank1"),
                 _fake_cli(env, "rank", str(lib), "--json", name="rank2"),
                 _fake_cli(env, "-v", "watch", str(lib), "--once", name="watch")]
        logs = [env.root / f"{name}.log" for name in ("rank1", "rank2", "watch")]
        wait_until(lambda: all("waiting until it is done" in p.read_text() for p in logs), 120,
                   "all three to wait for the lock")
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p in procs:
        p.log_file.close()  # type: ignore[attr-defined]
        assert p.returncode == 0, [f.read_text() for f in logs]
    encoded = sum(json.loads(out.splitlines()[-1])["encoded"] for out in outs[:2])
    encoded += int(re.search(r"vision encodes (\d+)", outs[2]).group(1))  # type: ignore[union-attr]
    assert encoded == n  # every photo through vision exactly once, whoever got there first
    scores = score_rows(env.db_path)
    assert len(scores) == len(set(scores)) == 2 * n
    assert rows(env.db_path, "SELECT COUNT(*) FROM features") == [(n,)]


# ---------------------------------------------------------------------------------------------------------------------
# Damage: a corrupt file, status --check, a full disk
# ---------------------------------------------------------------------------------------------------------------------


def _corrupt_all_but_the_schema(db: Path) -> None:
    """Overwrite every page but those ``Store`` needs to open the file (header, meta, migrations) with garbage."""
    con = sqlite3.connect(db)
    # every page of the schema table and of meta/migrations (their b-trees may span several pages)
    names = ("sqlite_schema", "sqlite_master", "meta", "migrations")
    keep = {1} | {r[0] for r in con.execute(
        "SELECT pageno FROM dbstat WHERE name IN (?, ?, ?, ?) OR name IN "
        "(SELECT name FROM sqlite_master WHERE tbl_name IN ('meta', 'migrations'))", names)}
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("PRAGMA journal_mode = DELETE")
    con.close()
    data = bytearray(db.read_bytes())
    rng = np.random.default_rng(0)
    for page in range(1, len(data) // page_size + 1):
        if page not in keep:
            start = (page - 1) * page_size
            data[start : start + page_size] = rng.integers(0, 256, page_size, dtype=np.uint8).tobytes()
    db.write_bytes(bytes(data))


def test_a_corrupt_database_is_one_sentence_and_status_check_names_the_damage(
    env: CLIEnv, fake_models: list[int]
) -> None:
    _seed_library(env, fake_models, n=4)
    code, out, err = env.run_cli("status", "--check")
    assert code == 0 and "check: ok (SQLite integrity and foreign keys, unique scores, references)" in out
    _corrupt_all_but_the_schema(env.db_path)
    code, out, err = env.run_cli("status")
    assert one_line_error(code, out, err, DBAccessError.exit_code) == (
        f"cannot read the database at {env.db_path}: database disk image is malformed (the file is damaged: "
        "`pmllm-batch status --check` says more; restore it from a backup, e.g. a library.sqlite.v*.bak next to it, "
        "or move it aside to start a new one)."
    )
    code, out, err = env.run_cli("status", "--check")
    line = one_line_error(code, out, err, DBAccessError.exit_code)
    assert line.startswith(f"the database at {env.db_path} is damaged: SQLite integrity check: ")
    assert line.endswith("; restore it from a backup (a library.sqlite.v*.bak next to it, if any) or move it aside to "
                         "start a new one.")
    code, out, err = env.run_cli("rank", str(env.root / "lib"))
    assert code == DBAccessError.exit_code and "malformed" in err and "Traceback" not in err


def test_a_full_disk_stops_the_run_with_one_sentence_and_an_intact_database(
    env: CLIEnv, fake_models: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pmllm_batch.db.engine as engine

    lib = env.root / "lib"
    n = 12
    photos(lib, n)
    assert add_profile(env, "ana")[0] == 0
    pages = rows(env.db_path, "PRAGMA page_count")[0][0]
    # SQLite's own limit on the file's size reports exactly what a full disk does (SQLITE_FULL)
    real_hooks = engine._install_sqlite_hooks

    def hooks_with_a_small_disk(eng: Any, **kw: Any) -> None:
        real_hooks(eng, **kw)

        @engine.event.listens_for(eng, "connect")
        def _small(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute(f"PRAGMA max_page_count = {pages + 8}")

    monkeypatch.setattr(engine, "_install_sqlite_hooks", hooks_with_a_small_disk)
    monkeypatch.setattr(doubles, "TOKEN_SHAPE", (64, 32))  # ~4 KB of tokens per photo: pages fill up
    monkeypatch.setenv("PMLLM_VISION__BATCH_SIZE", "2")
    code, out, err = env.run_cli("rank", str(lib))
    assert one_line_error(code, out, err, DBUnavailableError.exit_code) == (
        f"cannot write the database at {env.db_path}: database or disk is full (free some space and run it again; "
        "everything committed before is kept)."
    )
    assert rows(env.db_path, "PRAGMA integrity_check") == [("ok",)]
    cached = rows(env.db_path, "SELECT COUNT(*) FROM features")[0][0]
    assert 0 < cached < n  # some batches were committed before the disk filled up, not all
    monkeypatch.setattr(engine, "_install_sqlite_hooks", real_hooks)  # space was freed
    code, out, err = env.run_cli("rank", str(lib), "--json")
    assert code == 0, err
    s = json.loads(out.splitlines()[-1])
    assert s["encoded"] == n - cached  # nothing committed before was lost or redone
    scores = score_rows(env.db_path)
    assert len(scores) == len(set(scores)) == n


@pytest.fixture(autouse=True)
def _no_leftover_hooks() -> Iterator[None]:
    yield
    SCORE_HOOK.clear()


def test_an_unreachable_database_server_is_a_temporary_failure(env: CLIEnv) -> None:
    pytest.importorskip("psycopg")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg://pmllm@127.0.0.1:{port}/library"
    code, out, err = env.run_cli("--db", url, "status")
    line = one_line_error(code, out, err, DBUnavailableError.exit_code)  # 75: a service manager restarts the daemon
    assert line.startswith(f"cannot open the database at {url}: connection failed: ")
    assert line.endswith("Connection refused (is the database server running and reachable? nothing was lost: run it "
                         "again once it is).")
