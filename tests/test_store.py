"""Store: scores, rankings, profiles, the feature cache, migrations, SQLite settings and concurrency."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Connection, text

from pmllm_batch.contracts import PhotoStatus
from pmllm_batch.db import PhotoRecord, Store, persona_digest
from pmllm_batch.db import schema as db_schema
from pmllm_batch.errors import DBAccessError, ProfileError
from pmllm_batch.profiles import Profile


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "db" / "library.sqlite"


@pytest.fixture
def store(db_path: Path):
    s = Store(f"sqlite:///{db_path}")
    yield s
    s.close()


def photo(path: str, content_hash: str | None, status: str = "ok", root: str = "/lib", **kw) -> PhotoRecord:
    return PhotoRecord(path=path, root=root, content_hash=content_hash, size=10, mtime_ns=1, status=status, **kw)


def count(db_path: Path, sql: str) -> int:
    con = sqlite3.connect(db_path)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def seeded(store: Store) -> tuple[int, int]:
    """Photos a..d (b and b2 share content), profile alice, one model; returns (profile id, model id)."""
    store.upsert_photos(
        [photo("/lib/a.jpg", "ha"), photo("/lib/b.jpg", "hb"), photo("/lib/x/b2.jpg", "hb"), photo("/lib/c.jpg", "hc")]
    )
    pid, _ = store.upsert_profile(Profile(name="alice", age=30), "persona alice v1")
    mid = store.ensure_model("fp-1", "demo", {"note": "test"})
    return pid, mid


# ---------------------------------------------------------------------------------------------------------------------
# Scores and rankings
# ---------------------------------------------------------------------------------------------------------------------


def test_add_scores_keeps_one_row_per_hash_profile_model(store: Store, db_path: Path) -> None:
    pid, mid = seeded(store)
    rows = [("ha", pid, 0.9, [0.1, 0.9]), ("hb", pid, 0.5, [0.5, 0.5]), ("ha", pid, 0.9, [0.1, 0.9])]
    assert store.add_scores(mid, rows) == 2
    assert store.add_scores(mid, rows) == 0
    assert store.add_scores(mid, [("hc", pid, 0.1, [1.0, 0.0]), ("ha", pid, 0.7, [0.3, 0.7])]) == 1
    assert count(db_path, "SELECT count(*) FROM scores") == 3
    assert count(db_path, "SELECT count(*) FROM (SELECT DISTINCT content_hash, profile_id, model_id FROM scores)") == 3
    # the first write wins: a repeated batch never overwrites
    assert {r.content_hash: r.score for r in store.ranking("alice")}["ha"] == 0.9
    assert store.scored_hashes(pid, mid) == {"ha", "hb", "hc"}


def test_add_scores_rejects_non_finite_scores(store: Store) -> None:
    pid, mid = seeded(store)
    with pytest.raises(ValueError):
        store.add_scores(mid, [("ha", pid, float("nan"), [])])


def test_ranking_sorts_by_score_then_path_and_cuts_at_top(store: Store) -> None:
    pid, mid = seeded(store)
    store.upsert_photos([photo("/lib/aa.jpg", "haa")])
    store.add_scores(mid, [("hc", pid, 0.8, [0.2]), ("ha", pid, 0.5, [0.5]), ("haa", pid, 0.5, [0.5])])
    store.add_scores(mid, [("hb", pid, 0.9, [0.1])])
    ranking = store.ranking("alice")
    assert [(r.rank, r.path, r.score) for r in ranking] == [
        (1, "/lib/b.jpg", 0.9),
        (2, "/lib/c.jpg", 0.8),
        (3, "/lib/a.jpg", 0.5),  # tie with aa.jpg: path order decides
        (4, "/lib/aa.jpg", 0.5),
    ]
    assert [r.path for r in store.ranking("alice", top=2)] == ["/lib/b.jpg", "/lib/c.jpg"]
    assert ranking[0].content_hash == "hb"


def test_ranking_reads_the_current_model_only(store: Store) -> None:
    pid, m1 = seeded(store)
    store.add_scores(m1, [("ha", pid, 0.9, [0.9]), ("hb", pid, 0.1, [0.1])])
    m2 = store.ensure_model("fp-2", "demo", {})
    assert store.current_model_id() == m2
    assert store.ranking("alice") == []  # nothing scored by the new model yet
    store.add_scores(m2, [("hb", pid, 0.7, [0.7])])
    assert [(r.path, r.score) for r in store.ranking("alice")] == [("/lib/b.jpg", 0.7)]
    assert [r.path for r in store.ranking("alice", model_id=m1)] == ["/lib/a.jpg", "/lib/b.jpg"]
    # ensuring an existing fingerprint makes it current again, without a second row
    assert store.ensure_model("fp-1", "demo", {}) == m1
    assert store.current_model_id() == m1
    assert store.status()["models"] == 2
    # a model registered without make_current leaves rankings alone
    store.ensure_model("fp-eval", "demo", {}, make_current=False)
    assert store.current_model_id() == m1


def test_ranking_hides_missing_and_failed_photos(store: Store) -> None:
    pid, mid = seeded(store)
    store.add_scores(mid, [("ha", pid, 0.9, [0.9]), ("hc", pid, 0.3, [0.3])])
    store.upsert_photos([photo("/lib/c.jpg", "hc", status="failed", error_reason="truncated", error_message="x.")])
    store.mark_missing(["/lib/a.jpg"])
    assert store.ranking("alice") == []
    assert store.score_counts() == {"alice": 0}


def test_ranking_lists_duplicate_content_once_under_its_shortest_path(store: Store) -> None:
    pid, mid = seeded(store)
    # hb now lives at /lib/b.jpg, /lib/x/b2.jpg, /lib/zz.jpg (longer) and /lib/0.jpg (as short as b.jpg)
    store.upsert_photos([photo("/lib/zz.jpg", "hb"), photo("/lib/0.jpg", "hb")])
    store.add_scores(mid, [("hb", pid, 0.6, [0.6])])
    ranking = store.ranking("alice")
    assert len(ranking) == 1
    # /lib/0.jpg and /lib/b.jpg are equally short; "0" < "b" lexicographically
    assert ranking[0].path == "/lib/0.jpg"
    assert store.photos_by_hash(["hb"]) == {"hb": ["/lib/0.jpg", "/lib/b.jpg", "/lib/x/b2.jpg", "/lib/zz.jpg"]}
    assert store.score_counts() == {"alice": 1}


def test_unknown_profile_names_the_known_ones(store: Store) -> None:
    seeded(store)
    store.upsert_profile(Profile(name="bob"), "persona bob")
    with pytest.raises(ProfileError, match=r"^unknown profile 'carol'; known profiles: alice, bob\.$"):
        store.ranking("carol")
    with pytest.raises(ProfileError):
        store.get_profile("carol")
    with pytest.raises(ProfileError):
        store.remove_profile("carol")


# ---------------------------------------------------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------------------------------------------------


def test_changed_persona_clears_that_profiles_scores_only(store: Store) -> None:
    pid, mid = seeded(store)
    bob_id, _ = store.upsert_profile(Profile(name="bob"), "persona bob")
    store.add_scores(mid, [("ha", pid, 0.9, [0.9]), ("ha", bob_id, 0.2, [0.2])])
    before = store.get_profile("alice").updated_at
    version = store.profiles_version()
    assert version == "2"  # one bump per profile added (alice, bob)

    assert store.upsert_profile(Profile(name="alice", age=30), "persona alice v1") == (pid, False)
    assert store.scored_hashes(pid, mid) == {"ha"}
    assert store.profiles_version() == version

    time.sleep(0.01)
    assert store.upsert_profile(Profile(name="alice", age=31), "persona alice v2") == (pid, True)
    assert store.scored_hashes(pid, mid) == set()
    assert store.scored_hashes(bob_id, mid) == {"ha"}
    row = store.get_profile("alice")
    assert row.persona == "persona alice v2" and row.profile.age == 31
    assert row.updated_at > before
    assert store.profiles_version() == "3"


def test_profiles_version_changes_on_add_and_remove(store: Store, db_path: Path) -> None:
    v0 = store.profiles_version()
    pid, _ = store.upsert_profile(Profile(name="alice"), "p")
    v1 = store.profiles_version()
    mid = store.ensure_model("fp", "demo", {})
    store.upsert_photos([photo("/lib/a.jpg", "ha")])
    store.add_scores(mid, [("ha", pid, 0.5, [0.5])])
    store.remove_profile("alice")
    v2 = store.profiles_version()
    assert (v0, v1, v2) == ("0", "1", "2")
    assert store.list_profiles() == []
    assert count(db_path, "SELECT count(*) FROM scores") == 0


def test_list_profiles_round_trips_fields(store: Store) -> None:
    alice = Profile(name="alice", age="22-25", big_five={"openness": 8.0}, art_interest={"museums": 5.0})
    store.upsert_profile(alice, "persona")
    store.upsert_profile(Profile(name="bob"), "persona bob")
    rows = store.list_profiles()
    assert [r.name for r in rows] == ["alice", "bob"]
    assert rows[0].profile == alice
    assert rows[0].persona_hash == persona_digest("persona")
    assert len(rows[0].persona_hash) == 64


# ---------------------------------------------------------------------------------------------------------------------
# Photos
# ---------------------------------------------------------------------------------------------------------------------


def test_upsert_photos_updates_by_path_and_keeps_first_seen(store: Store, db_path: Path) -> None:
    store.upsert_photos([photo("/lib/a.jpg", "h1", width=10), photo("/other/b.jpg", "h2", root="/other")])
    store.upsert_photos([photo("/lib/a.jpg", "h1b", width=20, taken_at="2020-01-01T10:00:00")])
    index = store.photo_index()
    assert set(index) == {"/lib/a.jpg", "/other/b.jpg"}
    assert index["/lib/a.jpg"].content_hash == "h1b" and index["/lib/a.jpg"].width == 20
    assert index["/lib/a.jpg"].taken_at == "2020-01-01T10:00:00"
    assert set(store.photo_index(roots=["/other"])) == {"/other/b.jpg"}
    assert count(db_path, "SELECT count(*) FROM photos") == 2
    assert count(db_path, "SELECT count(*) FROM photos WHERE first_seen <= last_seen") == 2
    assert store.photo_roots() == ["/lib", "/other"]


def test_identical_files_at_two_paths_are_two_rows(store: Store) -> None:
    store.upsert_photos(
        [photo("/lib/a.jpg", "same"), photo("/lib/b.jpg", "same"), photo("/lib/bad.jpg", None, "failed")]
    )
    assert len(store.photo_index()) == 3
    assert store.ok_hashes() == ["same"]


def test_mark_missing_keeps_scores_and_a_reappearing_file_ranks_again(store: Store) -> None:
    pid, mid = seeded(store)
    store.add_scores(mid, [("ha", pid, 0.9, [0.9])])
    assert store.mark_missing(["/lib/a.jpg", "/lib/nope.jpg"]) == 1
    assert store.mark_missing(["/lib/a.jpg"]) == 0
    assert store.photo_index()["/lib/a.jpg"].status is PhotoStatus.MISSING  # records read back carry the enum
    assert store.ranking("alice") == []
    assert store.scored_hashes(pid, mid) == {"ha"}
    # moved: a new path with the same content comes back with its score, no re-scoring needed
    store.upsert_photos([photo("/lib/moved/a.jpg", "ha")])
    assert [(r.path, r.score) for r in store.ranking("alice")] == [("/lib/moved/a.jpg", 0.9)]


def test_upsert_rejects_unknown_status(store: Store) -> None:
    with pytest.raises(ValueError):
        store.upsert_photos([photo("/lib/a.jpg", "h", status="weird")])


def test_the_current_model_carries_its_stored_demo_flag(store: Store) -> None:
    assert store.current_model() is None
    seeded(store)  # registered as preset "demo" without a flag (as before the flag was stored): a demo
    assert store.current_model() == {"id": 1, "fingerprint": "fp-1", "preset": "demo", "demo": True, "note": "test",
                                     "settings": {}}
    store.ensure_model("fp-smol", "smol", {"demo": True})
    assert store.current_model() == {"id": 2, "fingerprint": "fp-smol", "preset": "smol", "demo": True, "note": "",
                                     "settings": {}}
    store.ensure_model("fp-real", "paper", {"demo": False})
    assert store.status()["current_model"] == {"id": 3, "fingerprint": "fp-real", "preset": "paper", "demo": False,
                                               "note": "", "settings": {}}


# ---------------------------------------------------------------------------------------------------------------------
# Feature cache
# ---------------------------------------------------------------------------------------------------------------------


def test_features_round_trip_through_float16(store: Store) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 8)).astype(np.float32)
    b = rng.standard_normal((2, 3, 4)).astype(np.float32)
    store.put_features({"ha": a, "hb": b}, "vision-1")
    got = store.get_features(["ha", "hb", "hz"], "vision-1")
    assert set(got) == {"ha", "hb"}
    assert got["ha"].dtype == np.float32 and got["ha"].shape == (5, 8) and got["hb"].shape == (2, 3, 4)
    np.testing.assert_array_equal(got["ha"], a.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(got["hb"], b, rtol=1e-3, atol=1e-3)
    assert store.get_features(["ha"], "vision-2") == {}
    assert store.feature_cache_bytes() == (2, (5 * 8 + 2 * 3 * 4) * 2)
    # idempotent: a second put of the same key changes nothing
    store.put_features({"ha": np.zeros((5, 8), np.float32)}, "vision-1")
    assert store.feature_cache_bytes() == (2, (5 * 8 + 2 * 3 * 4) * 2)
    np.testing.assert_array_equal(store.get_features(["ha"], "vision-1")["ha"], got["ha"])


# ---------------------------------------------------------------------------------------------------------------------
# Runs and status
# ---------------------------------------------------------------------------------------------------------------------


def test_status_reports_counts_failures_and_last_run(store: Store, db_path: Path) -> None:
    pid, mid = seeded(store)
    store.upsert_photos(
        [photo("/lib/bad.jpg", None, "failed", error_reason="truncated", error_message="the file is truncated.")]
    )
    store.mark_missing(["/lib/c.jpg"])
    store.add_scores(mid, [("ha", pid, 0.9, [0.9])])
    store.put_features({"ha": np.ones((2, 2), np.float32)}, "v")
    run_id = store.start_run("scan", {"roots": ["/lib"]})
    assert store.status()["last_run"]["status"] == "running"
    store.finish_run(run_id, "ok", {"scanned": 5})
    status = store.status()
    assert status["photos"] == {"ok": 3, "failed": 1, "missing": 1}
    assert status["profiles"] == 1 and status["models"] == 1 and status["scores_current_model"] == 1
    assert status["visual_cache"] == {"entries": 1, "bytes": 8, "evicted": 0}
    assert status["failures"] == [{"path": "/lib/bad.jpg", "reason": "truncated", "message": "the file is truncated."}]
    assert status["last_run"]["kind"] == "scan" and status["last_run"]["status"] == "ok"
    assert status["last_run"]["summary"] == {"scanned": 5} and status["last_run"]["args"] == {"roots": ["/lib"]}
    assert status["db"] == f"sqlite:///{db_path}"
    with pytest.raises(ValueError):
        store.finish_run(run_id, "running", {})


def test_the_byte_budget_evicts_the_least_recently_used_entries_and_counts_them(store: Store) -> None:
    tokens = {h: np.full((10, 40), i, np.float32) for i, h in enumerate(["ha", "hb", "hc", "hd"])}  # 800 B each
    assert store.put_features({"ha": tokens["ha"]}, "v", budget_bytes=2000) == 0
    assert store.put_features({"hb": tokens["hb"]}, "v", budget_bytes=2000) == 0
    assert set(store.get_features(["ha"], "v")) == {"ha"}  # read: "ha" is now used more recently than "hb"
    assert store.put_features({"hc": tokens["hc"]}, "v", budget_bytes=2000) == 1
    assert store.cached_hashes(["ha", "hb", "hc"], "v") == {"ha", "hc"}
    assert store.feature_cache_bytes() == (2, 1600)
    # a batch larger than the budget keeps only what fits, newest last in, oldest out first
    assert store.put_features({"hd": tokens["hd"]}, "v", budget_bytes=800) == 2
    assert store.cached_hashes(["ha", "hb", "hc", "hd"], "v") == {"hd"}
    np.testing.assert_array_equal(store.get_features(["hd"], "v")["hd"], tokens["hd"])
    assert store.status()["visual_cache"] == {"entries": 1, "bytes": 800, "evicted": 3}
    # no budget: nothing goes
    assert store.put_features({"ha": tokens["ha"], "hb": tokens["hb"]}, "v") == 0
    assert store.feature_cache_bytes() == (3, 2400)


def _as_version(db_path: Path, version: int, *sql: str) -> None:
    """Turn a current database back into what schema ``version`` wrote: ``sql``, then forget the later migrations."""
    con = sqlite3.connect(db_path)
    for statement in sql:
        con.execute(statement)
    con.execute("DELETE FROM migrations WHERE version > ?", (version,))
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    con.commit()
    con.close()


# Schema 5 renamed the feature cache's table: before it, it was visual_tokens.
TO_VISUAL_TOKENS = ("DROP INDEX ix_features_used_at", "ALTER TABLE features RENAME TO visual_tokens",
                    "CREATE INDEX ix_visual_tokens_used_at ON visual_tokens (used_at)")


def _tables_and_indexes(db_path: Path) -> set[tuple[str, str]]:
    con = sqlite3.connect(db_path)
    try:
        return set(con.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))
    finally:
        con.close()


def test_a_version_3_cache_gains_the_budget_columns_and_keeps_its_entries(store: Store, db_path: Path) -> None:
    store.put_features({"ha": np.ones((4, 4), np.float32)}, "v")
    store.close()
    _as_version(db_path, 3, *TO_VISUAL_TOKENS, "DROP INDEX ix_visual_tokens_used_at",
                "ALTER TABLE visual_tokens DROP COLUMN nbytes", "ALTER TABLE visual_tokens DROP COLUMN used_at")
    with Store(f"sqlite:///{db_path}") as upgraded:
        assert upgraded.schema_version() == db_schema.latest_version()
        np.testing.assert_array_equal(upgraded.get_features(["ha"], "v")["ha"], np.ones((4, 4), np.float32))
        # the old entry is sized, so the budget counts it
        assert upgraded.put_features({"hb": np.ones((4, 4), np.float32)}, "v", budget_bytes=32) == 1
        assert upgraded.cached_hashes(["ha", "hb"], "v") == {"hb"}


def test_a_version_4_visual_tokens_table_becomes_the_features_table_with_its_rows(store: Store, db_path: Path) -> None:
    fresh = _tables_and_indexes(db_path)
    cached = {h: np.full((3, 8), i, np.float32) for i, h in enumerate(["ha", "hb", "hc"])}
    store.put_features(cached, "vision-1")
    store.put_features({"ha": np.zeros((2, 8), np.float32)}, "vision-2")
    store.get_features(["hb"], "vision-1")  # hb becomes the most recently used entry
    store.close()
    _as_version(db_path, 4, *TO_VISUAL_TOKENS)
    con = sqlite3.connect(db_path)
    before = con.execute("SELECT * FROM visual_tokens ORDER BY content_hash, vision_id").fetchall()
    con.close()
    assert len(before) == 4
    with Store(f"sqlite:///{db_path}") as upgraded:
        assert upgraded.schema_version() == db_schema.latest_version() == 6
    # every column of every row kept (the LRU times too), under the same table and index names a new database has
    con = sqlite3.connect(db_path)
    try:
        assert con.execute("SELECT * FROM features ORDER BY content_hash, vision_id").fetchall() == before
        assert con.execute("SELECT name FROM migrations WHERE version = 5").fetchall() == [("0005_features_table",)]
    finally:
        con.close()
    assert _tables_and_indexes(db_path) == fresh
    assert len(list(db_path.parent.glob("library.sqlite.v4-*.bak"))) == 1
    with Store(f"sqlite:///{db_path}") as upgraded:
        assert upgraded.feature_cache_bytes() == (4, (3 * 3 * 8 + 2 * 8) * 2)
        got = upgraded.get_features(["ha", "hb", "hc"], "vision-1")
        assert sorted(got) == ["ha", "hb", "hc"]
        for h, arr in cached.items():
            np.testing.assert_array_equal(got[h], arr)
        np.testing.assert_array_equal(upgraded.get_features(["ha"], "vision-2")["ha"], np.zeros((2, 8), np.float32))
        assert upgraded.check()[0] == []
    assert len(list(db_path.parent.glob("library.sqlite.v*.bak"))) == 1  # the migration ran once


def test_the_features_migration_merges_a_visual_tokens_table_left_beside_a_features_table(
    store: Store, db_path: Path
) -> None:
    store.put_features({"ha": np.ones((2, 2), np.float32)}, "v")
    store.close()
    # an old visual_tokens table next to the new one (e.g. a rename that a backend without transactional DDL left
    # half done): its entries missing from features are kept, then it goes
    _as_version(db_path, 4, "CREATE TABLE visual_tokens AS SELECT * FROM features",
                "UPDATE visual_tokens SET content_hash = 'hb'", "INSERT INTO visual_tokens SELECT * FROM features")
    with Store(f"sqlite:///{db_path}") as upgraded:
        assert upgraded.cached_hashes(["ha", "hb"], "v") == {"ha", "hb"}
        assert upgraded.feature_cache_bytes() == (2, 16)
    assert ("table", "visual_tokens") not in _tables_and_indexes(db_path)


# ---------------------------------------------------------------------------------------------------------------------
# Schema, migrations, SQLite settings
# ---------------------------------------------------------------------------------------------------------------------


def test_schema_version_and_migration_are_recorded(store: Store, db_path: Path) -> None:
    assert store.schema_version() == db_schema.latest_version()
    con = sqlite3.connect(db_path)
    try:
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            str(db_schema.latest_version()),
        )
        assert [r[0] for r in con.execute("SELECT name FROM migrations ORDER BY version")] == [
            m.name for m in db_schema.MIGRATIONS
        ]
    finally:
        con.close()


def test_database_with_a_newer_schema_is_refused(store: Store, db_path: Path) -> None:
    store.close()
    con = sqlite3.connect(db_path)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(DBAccessError, match=r"schema version 99, newer than this pmllm-batch understands"):
        Store(f"sqlite:///{db_path}")


def test_new_migration_runs_once_after_a_backup(store: Store, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store.upsert_profile(Profile(name="alice"), "p")
    store.close()
    calls = []

    def add_column(conn: Connection) -> None:
        calls.append(1)
        cols = [r[1] for r in conn.exec_driver_sql("PRAGMA table_info(photos)")]
        if "rating" not in cols:  # idempotent
            conn.exec_driver_sql("ALTER TABLE photos ADD COLUMN rating INTEGER")

    old = db_schema.latest_version()
    monkeypatch.setattr(
        db_schema, "MIGRATIONS", [*db_schema.MIGRATIONS, db_schema.Migration(old + 1, "9999_rating", add_column)]
    )
    with Store(f"sqlite:///{db_path}") as upgraded:
        assert upgraded.schema_version() == old + 1
        assert [p.name for p in upgraded.list_profiles()] == ["alice"]
    with Store(f"sqlite:///{db_path}"):
        pass
    assert calls == [1]
    backups = list(db_path.parent.glob(f"library.sqlite.v{old}-*.bak"))
    assert len(backups) == 1
    con = sqlite3.connect(backups[0])
    try:
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(old),)
    finally:
        con.close()


def test_a_version_1_database_gains_the_run_owner_columns_and_keeps_its_rows(store: Store, db_path: Path) -> None:
    store.upsert_profile(Profile(name="alice"), "p")
    run_id = store.start_run("rank", {"folder": "/photos"})
    store.finish_run(run_id, "ok", {"scored": 3})
    store.close()
    con = sqlite3.connect(db_path)  # turn it back into what schema version 1 wrote
    con.execute("ALTER TABLE runs DROP COLUMN pid")
    con.execute("ALTER TABLE runs DROP COLUMN host")
    con.execute("DELETE FROM migrations WHERE name = '0002_run_owner'")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with Store(f"sqlite:///{db_path}") as upgraded:
        assert upgraded.schema_version() == db_schema.latest_version()
        last = upgraded.status()["last_run"]
        assert (last["id"], last["status"], last["summary"], last["pid"]) == (run_id, "ok", {"scored": 3}, None)
        assert [p.name for p in upgraded.list_profiles()] == ["alice"]
        new = upgraded.start_run("rank", {})
        assert upgraded.status()["last_run"]["pid"] == os.getpid() and new == run_id + 1
    assert len(list(db_path.parent.glob("library.sqlite.v1-*.bak"))) == 1


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.skipif(os.name != "posix", reason="process probing is POSIX-only")
def test_a_run_whose_process_died_reads_as_interrupted_and_the_next_run_closes_it(store: Store, db_path: Path) -> None:
    killed = store.start_run("watch", {})
    alive = store.start_run("rank", {})  # this very process: still running
    dead = _dead_pid()
    con = sqlite3.connect(db_path)
    con.execute("UPDATE runs SET pid = ? WHERE id = ?", (dead, killed))
    con.commit()
    con.close()
    con = sqlite3.connect(db_path)
    con.execute("UPDATE runs SET id = 100 WHERE id = ?", (killed,))  # make the dead run the last one
    con.commit()
    # read-only: status reports it, without writing
    last = store.status()["last_run"]
    assert (last["id"], last["status"]) == (100, "interrupted")
    assert f"its process ({dead}) ended without closing the run" in last["summary"]["reason"]
    assert con.execute("SELECT status FROM runs WHERE id = 100").fetchone() == ("running",)
    # the next run on this host closes it for good
    store.start_run("rank", {})
    assert con.execute("SELECT status, finished_at IS NOT NULL FROM runs WHERE id = 100").fetchone() == (
        "interrupted",
        1,
    )
    assert con.execute("SELECT status FROM runs WHERE id = ?", (alive,)).fetchone() == ("running",)  # still alive
    con.close()


def test_sqlite_pragmas_are_set(store: Store) -> None:
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL


def test_path_under_a_regular_file_is_a_db_access_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(DBAccessError, match=r"^cannot open the database at .*not-a-folder/lib\.sqlite: .+\.$"):
        Store(f"sqlite:///{blocker}/lib.sqlite")


def test_a_file_that_is_not_a_database_is_a_db_access_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DBAccessError, match=r"^cannot open the database at .*junk\.sqlite: file is not a database\.$"):
        Store(f"sqlite:///{junk}")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_folder_is_a_db_access_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(DBAccessError, match="cannot open the database at"):
            Store(f"sqlite:///{folder}/lib.sqlite")
    finally:
        folder.chmod(0o700)


def test_writing_a_read_only_database_is_a_db_access_error(store: Store, db_path: Path) -> None:
    # Root ignores permission bits, so open the file read-only instead of chmod-ing it.
    store.upsert_profile(Profile(name="alice"), "p")
    with Store(f"sqlite:///file:{db_path}?mode=ro&uri=true") as ro:
        assert [p.name for p in ro.list_profiles()] == ["alice"]  # reading works
        with pytest.raises(
            DBAccessError, match=r"^cannot write the database at .*attempt to write a readonly database"
        ):
            ro.upsert_profile(Profile(name="bob"), "p")
    with pytest.raises(DBAccessError, match="^cannot open the database at file:"):
        Store(f"sqlite:///file:{db_path.parent}/absent.sqlite?mode=ro&uri=true")


def test_someone_elses_database_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE songs (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(
        DBAccessError, match=r"is not a pmllm-batch database \(it holds other tables: songs\); choose another --db\.$"
    ):
        Store(f"sqlite:///{other}")


def test_invalid_url_is_a_db_access_error() -> None:
    with pytest.raises(DBAccessError, match=r"^cannot open the database at nosuchdriver://x/y: .+\.$"):
        Store("nosuchdriver://x/y")


def test_in_memory_database_works() -> None:
    with Store("sqlite://") as s:
        pid, mid = seeded(s)
        s.add_scores(mid, [("ha", pid, 0.5, [0.5])])
        assert [r.path for r in s.ranking("alice")] == ["/lib/a.jpg"]


# ---------------------------------------------------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------------------------------------------------


def test_second_store_reads_while_a_write_transaction_is_open(store: Store, db_path: Path) -> None:
    pid, mid = seeded(store)
    store.add_scores(mid, [("ha", pid, 0.9, [0.9])])
    writer = sqlite3.connect(db_path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute(
            "INSERT INTO photos (path, root, content_hash, size, mtime_ns, status, first_seen, last_seen, updated_at)"
            " VALUES ('/lib/new.jpg', '/lib', 'hn', 1, 1, 'ok', '2024-01-01', '2024-01-01', '2024-01-01')"
        )
        start = time.monotonic()
        with Store(f"sqlite:///{db_path}") as reader:
            assert reader.status()["photos"]["ok"] == 4  # the uncommitted row is invisible
            assert [r.path for r in reader.ranking("alice")] == ["/lib/a.jpg"]
        assert time.monotonic() - start < 5  # did not wait for the writer's lock
        writer.execute("COMMIT")
    finally:
        writer.close()
    assert store.status()["photos"]["ok"] == 5


def test_reader_sees_consistent_counts_while_another_store_writes(store: Store, db_path: Path) -> None:
    errors: list[BaseException] = []
    batches, per_batch = 20, 25

    def write() -> None:
        try:
            with Store(f"sqlite:///{db_path}") as w:
                for b in range(batches):
                    w.upsert_photos([photo(f"/lib/{b}/{i}.jpg", f"h{b}-{i}") for i in range(per_batch)])
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    seen = []
    while thread.is_alive():
        n = store.status()["photos"]["ok"]
        assert n % per_batch == 0  # one transaction per batch: never half a batch
        seen.append(n)
    thread.join()
    assert not errors
    assert seen == sorted(seen)
    assert store.status()["photos"]["ok"] == batches * per_batch
