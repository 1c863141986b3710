"""CLI in-process: profile management, export, albums, status, and how errors reach the user."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from pathlib import Path

import pytest

from pmllm_batch.cli.commands import status as status_cmd
from pmllm_batch.db import PhotoRecord, Store
from pmllm_batch.errors import DBAccessError
from pmllm_batch.model.prompts import render_persona
from pmllm_batch.profiles import load_profile
from tests.helpers import CLIEnv, tree_digest


def assert_one_line_error(code: int, out: str, err: str, expected_code: int = 2) -> str:
    assert code == expected_code
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pmllm-batch: error: ")
    return lines[0]


def make_library(env: CLIEnv, n: int = 4) -> Path:
    """n real photo files (distinct bytes) plus a duplicate of the first, in <root>/library."""
    lib = env.root / "library"
    (lib / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (lib / f"p{i}.jpg").write_bytes(b"\xff\xd8fake-jpeg-" + bytes([i]) * 100)
    (lib / "sub" / "copy_of_p0.jpg").write_bytes((lib / "p0.jpg").read_bytes())
    return lib


def seed_scores(env: CLIEnv, lib: Path, profiles: dict[str, list[float]]) -> None:
    """Register the library's files as ok photos and score them for each profile (score i-th file)."""
    files = sorted(p for p in lib.rglob("*.jpg"))
    with env.store() as store:
        store.upsert_photos(
            [
                PhotoRecord(
                    path=str(p),
                    root=str(lib),
                    content_hash=hashlib.sha256(p.read_bytes()).hexdigest(),
                    size=p.stat().st_size,
                    mtime_ns=p.stat().st_mtime_ns,
                    taken_at="2021-05-01T12:00:00" if p.name == "p1.jpg" else None,
                )
                for p in files
            ]
        )
        mid = store.ensure_model("fp-test", "demo", {})
        originals = sorted(lib.glob("p*.jpg"))
        for name, scores in profiles.items():
            row_id = store.get_profile(name).id
            rows = [
                (hashlib.sha256(p.read_bytes()).hexdigest(), row_id, s, [1 - s, s])
                for p, s in zip(originals, scores, strict=False)
            ]
            store.add_scores(mid, rows)


# ---------------------------------------------------------------------------------------------------------------------
# profile
# ---------------------------------------------------------------------------------------------------------------------


def test_profile_add_list_show_remove_round_trip(env: CLIEnv) -> None:
    alice = env.write_profile("alice", age=34, gender="female", big_five={"openness": 8})
    bob = env.write_profile("bob", age="22-25")

    code, out, err = env.run_cli("profile", "add", str(alice), str(bob))
    assert (code, err) == (0, "")
    assert out.splitlines() == ["added alice", "added bob"]

    code, out, _ = env.run_cli("profile", "add", str(alice))
    assert (code, out) == (0, "unchanged alice\n")

    code, out, _ = env.run_cli("profile", "list")
    assert code == 0 and [line.split("\t")[0] for line in out.splitlines()] == ["alice", "bob"]
    code, out, _ = env.run_cli("profile", "list", "--json")
    assert code == 0 and [p["name"] for p in json.loads(out)] == ["alice", "bob"]
    assert json.loads(out)[0]["fields"]["big_five"] == {"openness": 8.0}

    persona = render_persona(load_profile(alice))
    code, out, _ = env.run_cli("profile", "show", "alice")
    assert code == 0 and "name: alice" in out and "age: 34" in out and "persona:" in out and persona in out
    code, out, _ = env.run_cli("profile", "show", "alice", "--json")
    detail = json.loads(out)
    assert code == 0 and detail["fields"]["gender"] == "female" and detail["persona"] == persona

    code, out, _ = env.run_cli("profile", "remove", "bob")
    assert (code, out) == (0, "removed bob\n")
    with env.store() as store:
        assert [p.name for p in store.list_profiles()] == ["alice"]

    code, out, err = env.run_cli("profile", "show", "bob")
    line = assert_one_line_error(code, out, err)
    assert line == "pmllm-batch: error: unknown profile 'bob'; known profiles: alice."


def test_profile_add_with_a_changed_persona_clears_its_scores(env: CLIEnv) -> None:
    lib = make_library(env)
    alice = env.write_profile("alice", age=34)
    assert env.run_cli("profile", "add", str(alice))[0] == 0
    seed_scores(env, lib, {"alice": [0.1, 0.2, 0.3, 0.4]})
    with env.store() as store:
        assert store.score_counts() == {"alice": 4}

    alice = env.write_profile("alice", age=35)
    code, out, _ = env.run_cli("profile", "add", str(alice))
    assert (code, out) == (0, "updated alice (scores cleared)\n")
    with env.store() as store:
        assert store.score_counts() == {"alice": 0}
        assert store.get_profile("alice").profile.age == 35


def test_malformed_profile_is_one_error_line_and_stores_nothing(env: CLIEnv) -> None:
    good = env.write_profile("alice", age=34)
    bad = env.root / "profiles" / "bad.toml"
    bad.write_text('name = "bob"\nage = [oops\n', encoding="utf-8")
    code, out, err = env.run_cli("profile", "add", str(good), str(bad))
    line = assert_one_line_error(code, out, err)
    # the parser's own words depend on the Python version; where it stopped does not
    pattern = rf"pmllm-batch: error: {re.escape(str(bad))} is not valid TOML: [^\n]+ \(at line 2, column 8\)\."
    assert re.fullmatch(pattern, line), line
    assert out == ""
    assert not env.db_path.exists()  # validated before the database was even opened

    invalid = env.write_profile("carol", big_five={"openness": 42})
    code, out, err = env.run_cli("profile", "add", str(invalid))
    assert assert_one_line_error(code, out, err) == (
        f"pmllm-batch: error: {invalid}: big_five.openness must be a number from 1 to 10."
    )


# ---------------------------------------------------------------------------------------------------------------------
# errors and exit codes
# ---------------------------------------------------------------------------------------------------------------------


def test_unknown_profile_for_export_is_one_error_line(env: CLIEnv) -> None:
    env.run_cli("profile", "add", str(env.write_profile("alice")))
    code, out, err = env.run_cli("export", "--profile", "nobody", "--format", "json")
    line = assert_one_line_error(code, out, err)
    assert line == "pmllm-batch: error: unknown profile 'nobody'; known profiles: alice."
    assert out == ""


def test_unwritable_db_is_one_error_line_with_the_db_exit_code(env: CLIEnv) -> None:
    blocker = env.root / "a-file"
    blocker.write_text("not a folder")
    code, out, err = env.run_cli("--db", str(blocker / "lib.sqlite"), "status")
    line = assert_one_line_error(code, out, err, expected_code=DBAccessError.exit_code)
    assert line == f"pmllm-batch: error: cannot open the database at {blocker}/lib.sqlite: File exists."


def test_bad_config_is_one_error_line(env: CLIEnv) -> None:
    env.write_config("[score]\nbatch_size = -1\n")
    code, out, err = env.run_cli("status")
    line = assert_one_line_error(code, out, err)
    assert line == f"pmllm-batch: error: {env.user_config}: 'score.batch_size' must be at least 1 (got -1)."


def test_db_flag_and_env_choose_the_database(env: CLIEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    other = env.root / "elsewhere.sqlite"
    assert env.run_cli("--db", str(other), "profile", "add", str(env.write_profile("alice")))[0] == 0
    assert other.exists() and not env.db_path.exists()
    monkeypatch.setenv("PMLLM_DB__URL", f"sqlite:///{other}")
    code, out, _ = env.run_cli("profile", "list")
    assert (code, out) == (0, "alice\t0 scored\n")


def test_ctrl_c_exits_130_and_bugs_keep_their_traceback(env: CLIEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(args, settings):
        raise KeyboardInterrupt

    monkeypatch.setattr(status_cmd, "run", interrupted)
    code, _, err = env.run_cli("status")
    assert code == 130 and err.strip() == "pmllm-batch: interrupted"

    def buggy(args, settings):
        raise RuntimeError("a bug")

    monkeypatch.setattr(status_cmd, "run", buggy)
    with pytest.raises(RuntimeError, match="a bug"):
        env.run_cli("status")


def test_usage_errors_and_help_return_argparse_codes(env: CLIEnv) -> None:
    code, _, err = env.run_cli("export", "--format", "xml", "--profile", "a")
    assert code == 2
    # argparse's own words (how it quotes the choices) vary between Python versions
    assert err.splitlines()[-1].startswith("pmllm-batch export: error: argument --format: invalid choice: ")
    code, out, _ = env.run_cli("--help")
    assert code == 0 and "profile" in out and "albums" in out


# ---------------------------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------------------------


def test_export_json_and_csv_equal_the_store_ranking(env: CLIEnv) -> None:
    lib = make_library(env)
    env.run_cli("profile", "add", str(env.write_profile("alice")))
    seed_scores(env, lib, {"alice": [0.25, 0.875, 0.5, 0.5]})
    with env.store() as store:
        ranking = store.ranking("alice")
    assert len(ranking) == 4  # p0 and its copy are one content hash
    expected = [
        {"rank": r.rank, "path": r.path, "score": r.score, "content_hash": r.content_hash, "taken_at": r.taken_at}
        for r in ranking
    ]
    # an exact duplicate lists every file: p0 and its copy share a content hash, so that row names both
    all_paths = {r.path: sorted(r.paths) if getattr(r, "paths", None) else [r.path] for r in ranking}
    assert sorted(len(v) for v in all_paths.values()) == [1, 1, 1, 2]

    code, out, err = env.run_cli("export", "--profile", "alice", "--format", "json")
    assert (code, err) == (0, "")
    exported = json.loads(out)
    assert [{k: row[k] for k in expected[0]} for row in exported] == expected
    assert [sorted(row["paths"]) for row in exported] == [all_paths[e["path"]] for e in expected]
    assert [(row["group_size"], row["group"]) for row in exported] == [(1, [])] * 4  # nothing grouped here

    code, out, _ = env.run_cli("export", "--profile", "alice", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["rank", "path", "score", "content_hash", "taken_at", "paths", "group_size", "group"]
    assert [
        {
            "rank": int(r["rank"]),
            "path": r["path"],
            "score": float(r["score"]),
            "content_hash": r["content_hash"],
            "taken_at": r["taken_at"] or None,
        }
        for r in rows
    ] == expected
    assert [sorted(r["paths"].split(";")) for r in rows] == [all_paths[e["path"]] for e in expected]

    code, out, _ = env.run_cli("export", "--profile", "alice", "--format", "json", "--top", "2")
    assert code == 0 and [{k: row[k] for k in expected[0]} for row in json.loads(out)] == expected[:2]


def test_export_out_writes_only_that_file(env: CLIEnv) -> None:
    lib = make_library(env)
    env.run_cli("profile", "add", str(env.write_profile("alice")))
    seed_scores(env, lib, {"alice": [0.1, 0.2, 0.3, 0.4]})
    out_dir = env.root / "exports"
    out_dir.mkdir()
    before = tree_digest(env.root / "library")
    code, out, err = env.run_cli("export", "--profile", "alice", "--format", "json", "--out", str(out_dir / "a.json"))
    assert (code, out, err) == (0, "", "")
    assert sorted(os.listdir(out_dir)) == ["a.json"]
    assert [r["score"] for r in json.loads((out_dir / "a.json").read_text())] == [0.4, 0.3, 0.2, 0.1]
    assert tree_digest(env.root / "library") == before

    target = env.root / "no" / "dir" / "a.csv"
    code, out, err = env.run_cli("export", "--profile", "alice", "--out", str(target))
    line = assert_one_line_error(code, out, err)
    assert line == f"pmllm-batch: error: cannot write {target}: No such file or directory."


# ---------------------------------------------------------------------------------------------------------------------
# albums
# ---------------------------------------------------------------------------------------------------------------------


def test_albums_make_symlinks_then_copies_and_never_touch_the_library(env: CLIEnv) -> None:
    lib = make_library(env)
    env.run_cli("profile", "add", str(env.write_profile("alice")), str(env.write_profile("bob")))
    seed_scores(env, lib, {"alice": [0.9, 0.1, 0.5, 0.3], "bob": [0.1, 0.9, 0.2, 0.3]})
    before = tree_digest(lib)
    albums = env.root / "albums"

    code, out, err = env.run_cli("albums", "--out", str(albums), "--top", "3")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"alice: 3 photos in {albums / 'alice'} (symlinks)",
        f"bob: 3 photos in {albums / 'bob'} (symlinks)",
    ]
    alice = albums / "alice"
    entries = sorted(p.name for p in alice.iterdir() if p.name != ".pmllm-album.json")
    assert entries == ["001_p0.jpg", "002_p2.jpg", "003_p3.jpg"]
    assert all((alice / e).is_symlink() for e in entries)
    assert os.readlink(alice / "001_p0.jpg") == str(lib / "p0.jpg")  # shortest path of the duplicated content
    assert json.loads((alice / ".pmllm-album.json").read_text())["files"] == entries
    assert sorted(p.name for p in (albums / "bob").iterdir())[0] == ".pmllm-album.json"

    # Re-run as copies of the top 2 for alice only: old entries go, bob's album is left as it was.
    code, out, _ = env.run_cli("albums", "--out", str(albums), "--top", "2", "--profile", "alice", "--copy")
    assert code == 0 and out == f"alice: 2 photos in {alice} (copies)\n"
    entries = sorted(p.name for p in alice.iterdir() if p.name != ".pmllm-album.json")
    assert entries == ["001_p0.jpg", "002_p2.jpg"]
    assert not any((alice / e).is_symlink() for e in entries)
    assert (alice / "001_p0.jpg").read_bytes() == (lib / "p0.jpg").read_bytes()
    assert len([p for p in (albums / "bob").iterdir() if p.is_symlink()]) == 3

    assert tree_digest(lib) == before


def test_albums_refuse_to_write_inside_a_photo_folder(env: CLIEnv) -> None:
    lib = make_library(env)
    env.run_cli("profile", "add", str(env.write_profile("alice")))
    seed_scores(env, lib, {"alice": [0.9, 0.1, 0.5, 0.3]})
    before = tree_digest(lib)
    for out_dir in (lib / "albums", lib, env.root):
        code, out, err = env.run_cli("albums", "--out", str(out_dir))
        assert assert_one_line_error(code, out, err) == (
            f"pmllm-batch: error: --out {out_dir} overlaps the scanned photo folder {lib}; "
            "albums must go in a folder outside your photo folders."
        )
    assert tree_digest(lib) == before


def test_albums_never_replace_a_file_they_did_not_make(env: CLIEnv) -> None:
    lib = make_library(env)
    env.run_cli("profile", "add", str(env.write_profile("alice")))
    seed_scores(env, lib, {"alice": [0.9, 0.1, 0.5, 0.3]})
    album = env.root / "albums" / "alice"
    album.mkdir(parents=True)
    (album / "001_p0.jpg").write_bytes(b"mine")
    code, out, err = env.run_cli("albums", "--out", str(env.root / "albums"))
    assert assert_one_line_error(code, out, err) == (
        f"pmllm-batch: error: {album / '001_p0.jpg'} already exists and was not made by pmllm-batch; "
        "move it away or choose another --out."
    )
    assert (album / "001_p0.jpg").read_bytes() == b"mine"
    assert sorted(os.listdir(album)) == ["001_p0.jpg"]


def test_albums_for_an_unknown_profile_write_nothing(env: CLIEnv) -> None:
    env.run_cli("profile", "add", str(env.write_profile("alice")))
    code, out, err = env.run_cli("albums", "--out", str(env.root / "albums"), "--profile", "zed")
    assert assert_one_line_error(code, out, err) == "pmllm-batch: error: unknown profile 'zed'; known profiles: alice."
    assert not (env.root / "albums").exists()


# ---------------------------------------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------------------------------------


def test_status_lists_counts_and_failures(env: CLIEnv) -> None:
    lib = make_library(env)
    env.run_cli("profile", "add", str(env.write_profile("alice")))
    seed_scores(env, lib, {"alice": [0.9, 0.1]})
    with Store(env.db_url) as store:
        store.upsert_photos(
            [
                PhotoRecord(
                    path=str(lib / "broken.jpg"),
                    root=str(lib),
                    content_hash=None,
                    size=3,
                    mtime_ns=1,
                    status="failed",
                    error_reason="truncated",
                    error_message="the image data ends early.",
                )
            ]
        )
    code, out, err = env.run_cli("status")
    assert (code, err) == (0, "")
    assert "photos: 5 ok, 1 failed, 0 missing" in out
    assert "profiles: 1" in out and "scores (current model): 2" in out
    assert f"  {lib / 'broken.jpg'}: truncated — the image data ends early." in out.splitlines()

    code, out, _ = env.run_cli("status", "--json")
    data = json.loads(out)
    assert code == 0 and data["photos"] == {"ok": 5, "failed": 1, "missing": 0}
    assert data["failures"] == [
        {"path": str(lib / "broken.jpg"), "reason": "truncated", "message": "the image data ends early."}
    ]
