"""``pmllm-batch forget PATH...`` (issue "a newcomer's second hour", item 3), and the README's first command, which
keeps the examples out of the user's own library.

One library is ranked once per module with the demo model (``ranked``): folder ``a`` (make_photo_folder: 10 photos
and a truncated file) and folder ``b`` (exact copies of two of a's photos, and one photo of its own), two profiles.
Every test forgets in its own copy of that database; the photo folders are only read.
"""

from __future__ import annotations

import glob
import json
import re
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from pmllm_batch.db import Store
from tests.helpers import REPO, CLIEnv, isolated_env, tree_digest
from tests.imagegen import make_photo, make_photo_folder, write_truncated_jpeg

TABLES = ("photos", "scores", "features", "photo_embeddings", "photo_links", "profiles", "models", "group_state")


@dataclass(frozen=True)
class Ranked:
    a: Path
    b: Path
    db: Path


@pytest.fixture(scope="module")
def ranked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ranked]:
    base = tmp_path_factory.mktemp("forget")
    with isolated_env(base) as env:
        a, b = base / "a", base / "b"
        files = make_photo_folder(a)
        (a / "bad").mkdir()
        write_truncated_jpeg(a / "bad" / "truncated.jpg")
        b.mkdir()
        shutil.copy(files["landscape.jpg"], b / "landscape-copy.jpg")
        shutil.copy(files["2021/trip/beach.JPG"], b / "beach.JPG")
        make_photo(b / "own.jpg", (320, 240), seed=77)
        for name in ("ana", "bernd"):
            assert env.run_cli("profile", "add", str(REPO / "examples" / "profiles" / f"{name}.toml"))[0] == 0
        code, _, err = env.run_cli("rank", str(a), str(b))
        assert code == 0, err
        yield Ranked(a=a, b=b, db=env.db_path)


@pytest.fixture
def lib(ranked: Ranked, env: CLIEnv) -> Ranked:
    """The module's library with this test's own copy of the database (``env``'s default one)."""
    env.db_path.parent.mkdir(parents=True, exist_ok=True)
    for src in ranked.db.parent.glob(ranked.db.name + "*"):
        if not src.name.endswith(".lock"):
            shutil.copy2(src, env.db_path.parent / src.name)
    return ranked


def rows(env: CLIEnv, sql: str, **params: object) -> list[tuple]:
    with Store(env.db_url) as store, store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def dump(env: CLIEnv) -> dict[str, list[str]]:
    """Every row of every table the forgetting may touch, sorted."""
    return {t: sorted(map(repr, rows(env, f"SELECT * FROM {t}"))) for t in TABLES}


def hashes_under(env: CLIEnv, folder: Path) -> set[str]:
    return {h for (p, h) in rows(env, "SELECT path, content_hash FROM photos") if p.startswith(f"{folder}/")}


def test_item3_forget_removes_a_folders_rows_scores_and_features_never_files(lib: Ranked, env: CLIEnv) -> None:
    before_files = tree_digest(lib.a.parent)
    a_hashes, b_hashes = hashes_under(env, lib.a), hashes_under(env, lib.b)
    assert (len(a_hashes), len(b_hashes), len(a_hashes & b_hashes)) == (11, 3, 2)
    orphans = sorted(a_hashes - b_hashes)  # 8 ok photos and the truncated file (a failed row has a hash too)
    marks = ",".join(f"'{h}'" for h in orphans)
    links = rows(env, f"SELECT count(*) FROM photo_links WHERE hash_a IN ({marks}) OR hash_b IN ({marks})")[0][0]

    code, out, err = env.run_cli("forget", str(lib.a), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report == {"paths": [str(lib.a)], "dry_run": False, "photos": 11, "ok": 10, "scores": 8 * 2,
                      "features": 8, "embeddings": 8, "links": links, "shared": 2}
    # nothing of folder a is left but what b still shows: b's 3 photos keep every score, feature and embedding
    assert [p for (p,) in rows(env, "SELECT path FROM photos ORDER BY path")] == sorted(
        str(p) for p in lib.b.iterdir())
    assert {h for (h,) in rows(env, "SELECT DISTINCT content_hash FROM scores")} == b_hashes
    assert len(rows(env, "SELECT * FROM scores")) == 3 * 2
    assert {h for (h,) in rows(env, "SELECT content_hash FROM features")} == b_hashes
    assert {h for (h,) in rows(env, "SELECT content_hash FROM photo_embeddings")} == b_hashes
    assert not rows(env, f"SELECT * FROM photo_links WHERE hash_a IN ({marks}) OR hash_b IN ({marks})")
    assert len(rows(env, "SELECT * FROM profiles")) == 2  # people are not photos
    assert tree_digest(lib.a.parent) == before_files  # no file was touched

    # b is complete: ranking it again reads nothing and scores nothing
    code, out, err = env.run_cli("rank", str(lib.b), "--json")
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert (summary["new"], summary["encoded"], summary["scored"]) == (0, 0, 0)
    # and a comes back in full when it is ranked again: what was forgotten is read, encoded and scored again
    code, out, err = env.run_cli("rank", str(lib.a), "--json")
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert (summary["new"], summary["failed"], summary["encoded"], summary["scored"]) == (11, 1, 8, 16)


def test_item3_forget_prints_what_it_removed(lib: Ranked, env: CLIEnv) -> None:
    code, out, err = env.run_cli("forget", str(lib.b))
    assert (code, err) == (0, "")
    assert out == (f"forgot 3 photos under {lib.b}\n"
                   "  removed: 2 scores, 1 feature-cache entry, 1 burst embedding, 0 burst links\n"
                   "  kept: the scores of 2 photos whose content is also stored at another path\n"
                   "  no file was touched\n")
    assert env.run_cli("-q", "forget", str(lib.a)) == (0, "", "")  # -q: nothing on success


def test_item3_forget_dry_run_changes_nothing(lib: Ranked, env: CLIEnv) -> None:
    before = dump(env)
    code, out, err = env.run_cli("forget", "--dry-run", str(lib.a))
    assert code == 0, err
    assert out.startswith(f"would forget 11 photos (10 ranked) under {lib.a}\n"
                          "  would remove: 16 scores, 8 feature-cache entries, 8 burst embeddings, ")
    assert out.endswith("  dry run: nothing changed\n")
    code, out, err = env.run_cli("-q", "forget", "--dry-run", "--json", str(lib.a), str(lib.b))
    assert code == 0, err
    assert json.loads(out)["photos"] == 14 and json.loads(out)["dry_run"] is True
    assert dump(env) == before


def test_item3_a_path_not_in_the_library_is_one_sentence_and_exit_2(lib: Ranked, env: CLIEnv) -> None:
    before = dump(env)
    nowhere = lib.a.parent / "never-ranked"
    code, out, err = env.run_cli("forget", str(lib.a), str(nowhere))
    assert (code, out) == (2, "")
    assert err == (f"pmllm-batch: error: {nowhere} is not in the library at {env.db_path}: no photo is stored at or "
                   "under it, so nothing was forgotten.\n")
    # a folder whose name only starts like a stored one is not under it; case matters (/A is not /a)
    assert env.run_cli("forget", str(lib.a) + "-other")[0] == 2
    assert env.run_cli("forget", str(lib.a.parent / "A"))[0] == 2
    assert dump(env) == before


def test_item3_forget_takes_one_file_and_relative_paths(lib: Ranked, env: CLIEnv,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(lib.b)
    code, out, err = env.run_cli("forget", "--json", "own.jpg")
    assert code == 0, err
    assert json.loads(out)["paths"] == [str(lib.b / "own.jpg")]
    assert (json.loads(out)["photos"], json.loads(out)["scores"]) == (1, 2)
    assert str(lib.b / "own.jpg") not in {p for (p,) in rows(env, "SELECT path FROM photos")}


# ---------------------------------------------------------------------------------------------------------------------
# The README's first command
# ---------------------------------------------------------------------------------------------------------------------


def readme_main_command() -> str:
    """The one command after "Run the main job" in the README."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"\*\*Run the main job\*\*.*?```sh\n(.+?)\n```", readme, re.S)
    assert match, "README: no sh block after 'Run the main job'"
    lines = match.group(1).splitlines()
    assert len(lines) == 1, "README: the main job is one command"
    return lines[0]


@pytest.mark.integration
def test_item3_readme_first_command_leaves_no_examples_in_the_users_library(
    env: CLIEnv, tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PMLLM_PATHS__CACHE_DIR", str(model_cache))
    work = tmp_path / "checkout"  # a stand-in for the checkout: its examples, and nothing written into the real one
    work.mkdir()
    (work / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(work)
    ran = []
    for part in readme_main_command().split(" && "):
        words = shlex.split(part)
        if words[:3] == ["python3", "-m", "pip"]:
            continue  # the installs
        assert words[0] == "pmllm-batch", part
        args = [m for w in words[1:] for m in (sorted(glob.glob(w)) if any(c in w for c in "*?[") else [w])]
        code, out, err = env.run_cli(*args)
        assert code == 0, f"{part}: {err}"
        ran.append(args)
    assert any("rank" in a for a in ran) and any("profile" in a for a in ran)
    # the examples were ranked ...
    found = [p for p in work.iterdir() if p.suffix == ".sqlite"]
    assert len(found) == 1, found
    with Store(f"sqlite:///{found[0]}") as store:
        assert len(store.list_profiles()) == 3 and store.status()["photos"]["ok"] == 7
    # ... and the user's own library (the default database) holds none of them
    if env.db_path.exists():
        with env.store() as store:
            assert store.list_profiles() == [] and store.photo_index() == {}
