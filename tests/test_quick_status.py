"""Issue 24, item 11 (start-up): ``status`` and ``profile list`` read an up-to-date SQLite library without SQLAlchemy.

The quick read (:mod:`pmllm_batch.db.quick`) must print exactly what the Store path prints, be the path actually taken,
and step aside for anything else (another schema version, another backend, ``--check``, a missing file). No test here
times anything: the figures are ``bench``'s ``startup_s``.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pmllm_batch.db import PhotoRecord, Store, quick
from pmllm_batch.db.schema import latest_version
from tests.helpers import Library, Scored, ranked_library

REPO = Path(__file__).resolve().parents[1]

# Every output the quick read serves: status as text and JSON, with and without -v, and profile list.
QUICK_COMMANDS = [
    ("status",),
    ("status", "--json"),
    ("status", "-v"),
    ("-v", "status", "--json"),
    ("profile", "list"),
    ("profile", "list", "--json"),
]


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scored]:
    """A library ranked with the demo model through the CLI (the ``library`` fixture hands each test a copy)."""
    with ranked_library(tmp_path_factory.mktemp("quick-status")) as s:
        yield s


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def _enrich(library: Library) -> None:
    """What a lived-in library also holds: EXIF warnings, a skipped photo, a second failure, evicted cache entries, a
    "running" run whose process is gone (reads as interrupted), and ratings when the schema has them."""
    lib, url = library.lib, library.env.db_url
    with Store(url) as store:
        ok = [rec for rec in store.photo_index().values() if rec.status == "ok"]
        store.upsert_photos([
            PhotoRecord(path=str(lib / "b-warn.jpg"), root=str(lib), content_hash=ok[0].content_hash, size=1,
                        mtime_ns=1, exif_warning="exif: Possibly corrupted IFD"),
            PhotoRecord(path=str(lib / "a-warn.jpg"), root=str(lib), content_hash=ok[1].content_hash, size=1,
                        mtime_ns=1, exif_warning="exif: bad tag"),
            PhotoRecord(path=str(lib / "tiny.jpg"), root=str(lib), content_hash="f" * 64, size=1, mtime_ns=1,
                        status="skipped", error_reason="too_small", error_message="8 x 8 pixels: too small."),
            PhotoRecord(path=str(lib / "a-broken.jpg"), root=str(lib), content_hash=None, size=3, mtime_ns=1,
                        status="failed", error_reason="truncated", error_message=None),
        ])
        run_id = store.start_run("watch", {"paths": [str(lib)]})
    with sqlite3.connect(library.env.db_path) as conn:
        conn.execute("UPDATE runs SET pid = ?, host = ? WHERE id = ?", (_dead_pid(), socket.gethostname(), run_id))
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('visual_cache_evicted', '3')")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "ratings" in tables:
            (pid,) = conn.execute("SELECT id FROM profiles ORDER BY name LIMIT 1").fetchone()
            conn.execute("INSERT INTO ratings (content_hash, profile_id, stars, source, detail, rated_at) "
                         "VALUES (?, ?, 4, 'cli', NULL, '2026-01-02 03:04:05.000000')", (ok[0].content_hash, pid))
    conn.close()


def _store_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quick, "library_status", lambda url: None)
    monkeypatch.setattr(quick, "profile_listing", lambda url: None)


def test_the_quick_read_knows_the_latest_schema_version() -> None:
    # Bump quick.SCHEMA_VERSION with every migration (and read the new tables there if status shows them).
    assert quick.SCHEMA_VERSION == latest_version()


@pytest.mark.parametrize("url", [
    "sqlite:////tmp/lib/library.sqlite", "sqlite:///relative/lib.sqlite", "sqlite:////tmp/a b/x+y_z-1.~v2.sqlite",
    "sqlite:////tmp/a%20b/x.sqlite", "sqlite:////tmp/x.sqlite?mode=ro", "sqlite:////tmp/é/x.sqlite",
    "sqlite:////tmp/x#y.sqlite", "sqlite:///:memory:", "sqlite://", "sqlite:///file:x.db?uri=true",
    "sqlite+pysqlite:////tmp/x.sqlite", "postgresql://user@host/library", "not a url ::",
])
def test_a_plain_sqlite_url_names_the_file_sqlalchemy_opens(url: str) -> None:
    from sqlalchemy.engine import make_url

    database = quick.sqlite_database(url)
    if database is None:
        return  # the Store path reads it
    parsed = make_url(url)
    assert (parsed.get_backend_name(), parsed.drivername, parsed.database) == ("sqlite", "sqlite", database)
    assert parsed.render_as_string(hide_password=True) == url  # the "database:" line status prints


def test_plain_sqlite_urls_take_the_quick_read() -> None:
    assert quick.sqlite_database("sqlite:////home/ana/.local/share/pmllm-batch/library.sqlite") is not None
    for url in ("sqlite:////tmp/x.sqlite?mode=ro", "sqlite:///:memory:", "postgresql://u@h/db", "sqlite://"):
        assert quick.sqlite_database(url) is None, url


def test_status_and_profile_list_print_the_same_on_both_paths(library: Library, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    _enrich(library)
    url = library.env.db_url
    quick_status, quick_listing = quick.library_status(url), quick.profile_listing(url)
    assert quick_status is not None and quick_listing is not None  # the quick read serves this library
    with Store(url) as store:
        assert quick_status == store.status()
        assert quick_listing == (store.list_profiles(), store.score_counts())
    status = json.loads(library.run("status", "--json")[1])
    assert status["last_run"]["status"] == "interrupted"
    assert len(status["exif_warnings"]) == len(status["failures"]) == 2
    assert status["photos"]["missing"] and status["photos"]["skipped"] and status["visual_cache"]["evicted"] == 3
    # each person's ranking: learned from their ratings of photos in the library (the rated content is ok), or not
    first, *others = sorted(status["ratings"])
    assert status["ratings"] == {first: 1, **{name: 0 for name in others}} and others
    text = library.run("status")[1]
    assert f"  {first}: learned from 1 of your ratings\n" in text
    assert all(f"  {name}: profile only\n" in text for name in others)

    quick_outputs = [library.run(*args) for args in QUICK_COMMANDS]
    _store_path_only(monkeypatch)
    store_outputs = [library.run(*args) for args in QUICK_COMMANDS]
    for args, fast, full in zip(QUICK_COMMANDS, quick_outputs, store_outputs, strict=True):
        assert fast == full, args
        assert fast[0] == 0 and fast[1], args
        if "--json" in args:
            assert json.loads(fast[1]) == json.loads(full[1])


def test_status_and_profile_list_import_no_sqlalchemy(library: Library) -> None:
    before = sorted(p.name for p in library.env.db_path.parent.iterdir())
    code = (
        "import sys\n"
        "from pmllm_batch.cli import main\n"
        f"for args in {QUICK_COMMANDS!r}:\n"
        "    assert main(list(args)) == 0, args\n"
        "heavy = sorted(m for m in ('sqlalchemy', 'numpy', 'torch', 'PIL') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ), check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[-1] == "HEAVY []"
    assert proc.stdout.startswith("database: sqlite:///")
    # Nothing is left next to the database (a read-only SQLite connection would leave -wal and -shm files).
    assert sorted(p.name for p in library.env.db_path.parent.iterdir()) == before


def test_an_older_schema_takes_the_store_path_which_upgrades_it(library: Library) -> None:
    url = library.env.db_url
    with sqlite3.connect(library.env.db_path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(quick.SCHEMA_VERSION - 1),))
    conn.close()
    assert quick.library_status(url) is None and quick.profile_listing(url) is None
    code, out, err = library.run("status")
    assert code == 0 and out.startswith(f"database: {url}\n"), err
    assert quick.library_status(url) is not None  # the Store brought it to this schema


def test_other_databases_and_check_take_the_store_path(library: Library, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = library.env.root / "nothing-here.sqlite"
    for url in (f"sqlite:///{missing}", "sqlite://", "postgresql://nobody@127.0.0.1:1/library",
                f"sqlite:///{library.env.db_path}?mode=ro"):
        assert quick.library_status(url) is None and quick.profile_listing(url) is None, url
    assert not missing.exists()  # the quick read never creates a database

    def refuse(url: str) -> None:
        raise AssertionError("status --check must read through the Store")

    monkeypatch.setattr(quick, "library_status", refuse)
    code, out, err = library.run("status", "--check")
    assert code == 0 and "check: ok (" in out, err


def test_a_missing_database_is_the_same_one_error_as_before(library: Library) -> None:
    missing = library.env.root / "nothing-here.sqlite"
    for args in (("status",), ("profile", "list")):
        code, out, err = library.run("--db", str(missing), *args)
        assert (code, out) == (4, "") and err.startswith(f"pmllm-batch: error: there is no database at {missing}")
    assert not missing.exists()
