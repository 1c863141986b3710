"""The main job end to end (issue 3): rank folders of real files for several profiles through the CLI and
check rows in the database, incremental counters, moves, failures and one-sentence errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from sqlalchemy import text

from pmllm_batch.errors import DBAccessError, ModelLoadError
from tests.imagegen import make_bad_files, make_photo_folder


def _summary(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _score_rows(env) -> list[tuple[str, str]]:
    with env.store() as store, store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT s.content_hash, p.name FROM scores s JOIN profiles p ON p.id = s.profile_id"))]


def _photos(env) -> dict[str, tuple[str, str | None, str | None]]:
    with env.store() as store, store.engine.connect() as conn:
        return {r[0]: (r[1], r[2], r[3]) for r in conn.execute(text(
            "SELECT path, status, error_reason, content_hash FROM photos"))}


def _add_profiles(env, *names: str) -> None:
    specs = {
        "ana": dict(age="22-25", gender="female", photography_experience="expert", big_five={"openness": 9}),
        "bernd": dict(age=64, big_five={"openness": 2, "extraversion": 2}),
        "coarse": dict(age=35, gender="female"),
    }
    for name in names:
        code, _, err = env.run_cli("profile", "add", str(env.write_profile(name, **specs[name])))
        assert code == 0, err


@pytest.mark.integration
def test_rank_scores_every_photo_once_per_profile_and_records_every_bad_file(env, tmp_path):
    lib = tmp_path / "library"
    good = make_photo_folder(lib)
    bad = make_bad_files(lib / "bad")
    _add_profiles(env, "ana", "bernd")
    code, stdout, err = env.run_cli("rank", str(lib), "--json", "--top", "3")
    assert code == 0, err
    summary = _summary(stdout)
    assert summary["scanned"] == len(good) + len(bad)
    assert summary["failed"] == len(bad)
    assert summary["encoded"] == len(good)
    assert summary["scored"] == 2 * len(good)
    assert summary["demo"] is True
    photos = _photos(env)
    for reason, path in bad.items():
        status, why, _ = photos[str(path)]
        assert (status, why) == ("failed", reason)
    ok_hashes = {h for p, (s, _, h) in photos.items() if s == "ok"}
    assert len(ok_hashes) == len(good)
    rows = _score_rows(env)
    assert len(rows) == len(set(rows)) == 2 * len(good)
    assert {h for h, _ in rows} == ok_hashes
    # one JSON object per profile ranking before the summary
    rankings = [json.loads(line) for line in stdout.strip().splitlines()[:-1]]
    assert {r["profile"] for r in rankings} == {"ana", "bernd"}
    assert all(len(r["top"]) == 3 for r in rankings)

    # a second run does nothing new
    code, stdout, err = env.run_cli("rank", str(lib), "--json")
    second = _summary(stdout)
    assert (second["encoded"], second["scored"], second["new"]) == (0, 0, 0)
    assert second["skipped"] == len(good) + len(bad) and second["failed"] == len(bad)

    # a third profile: no vision, every photo scored once
    _add_profiles(env, "coarse")
    code, stdout, err = env.run_cli("rank", str(lib), "--json")
    third = _summary(stdout)
    assert third["encoded"] == 0 and third["scored"] == len(good)
    assert len(_score_rows(env)) == 3 * len(good)

    # moving a file inside the root keeps its scores (no vision, no scoring) and the ranking follows
    moved = lib / "moved" / "landscape-renamed.jpg"
    moved.parent.mkdir()
    shutil.move(good["landscape.jpg"], moved)
    code, stdout, err = env.run_cli("rank", str(lib), "--json")
    fourth = _summary(stdout)
    moves = (fourth["encoded"], fourth["scored"], fourth["new"], fourth["missing"], fourth["moved"])
    assert moves == (0, 0, 0, 0, 1)  # a move, not a new photo plus a missing one
    code, stdout, _ = env.run_cli("export", "--profile", "ana", "--format", "json")
    exported = json.loads(stdout)
    paths = {r["path"] for r in exported}
    assert str(moved) in paths and str(good["landscape.jpg"]) not in paths
    # export matches the database ranking
    with env.store() as store:
        ranking = store.ranking("ana")
    assert [(r["rank"], r["path"], r["content_hash"]) for r in exported] == [
        (r.rank, r.path, r.content_hash) for r in ranking]
    assert [r["score"] for r in exported] == pytest.approx([r.score for r in ranking])


@pytest.mark.integration
def test_profiles_rank_the_same_photos_differently(env, tmp_path, example_photos):
    lib = tmp_path / "ex"
    lib.mkdir()
    for p in example_photos:
        shutil.copy(p, lib / p.name)
    # the README's example people (examples/profiles), as the main command ranks them
    examples = Path(__file__).resolve().parents[1] / "examples" / "profiles"
    code, _, err = env.run_cli("profile", "add", str(examples / "ana.toml"), str(examples / "bernd.toml"))
    assert code == 0, err
    code, stdout, err = env.run_cli("rank", str(lib), "--json", "--top", "20")
    assert code == 0, err
    tops = {r["profile"]: [x["content_hash"] for x in r["top"]] for r in map(json.loads, stdout.splitlines()[:-1])}
    assert sorted(tops["ana"]) == sorted(tops["bernd"])
    assert tops["ana"] != tops["bernd"]


def test_a_file_vanishing_during_the_run_is_a_failed_row(env, tmp_path, monkeypatch):
    from pmllm_batch.config import load_config
    from pmllm_batch.db import Store
    from pmllm_batch.scan import plan
    from pmllm_batch.scorer import batch

    lib = tmp_path / "lib"
    files = make_photo_folder(lib)
    victim = files["small.png"]
    real_discover = plan.discover

    def discover_then_delete(*a, **kw):
        entries = list(real_discover(*a, **kw))
        victim.unlink()  # gone after the walk, before decoding
        return iter(entries)

    monkeypatch.setattr(plan, "discover", discover_then_delete)
    _add_profiles(env, "coarse")
    settings = load_config(overrides={"db": {"url": env.db_url}})
    with Store(env.db_url) as store:
        summary = batch.LibraryScorer(settings, store).run([lib])
    assert summary.failed == 1
    assert summary.failures[0]["path"] == str(victim) and summary.failures[0]["reason"] == "vanished"
    assert summary.scored == len(files) - 1


def test_rank_of_the_shared_camera_samples_never_crashes(env, exif_samples):
    samples = exif_samples / "jpg"
    _add_profiles(env, "coarse")
    code, stdout, err = env.run_cli("rank", str(samples), "--json")
    assert code == 0, err
    s = _summary(stdout)
    photos = _photos(env)
    ok = [p for p, (st, _, _) in photos.items() if st == "ok"]
    failed = {p: why for p, (st, why, _) in photos.items() if st == "failed"}
    # all 88 files below jpg/ (the hostile tests/ and invalid/ samples included) decode: none crashes, none fails;
    # one, tests/67-0_length_string.jpg (an EXIF test file whose 4032 x 2012 pixels are all grey 137), is blank
    assert (s["scanned"], s["new"], s["failed"], s["blank"], s["encoded"]) == (88, 88, 0, 1, 87)
    assert (len(photos), len(ok), failed) == (88, 87, {})
    assert photos[str(samples / "tests" / "67-0_length_string.jpg")][:2] == ("skipped", "blank")
    assert s["scored"] == len({photos[p][2] for p in ok}) == 87


@pytest.mark.parametrize("case", ["unknown_profile", "malformed_profile", "unwritable_db", "offline_weights"])
def test_user_mistakes_are_one_sentence_and_nonzero(env, tmp_path, case, monkeypatch):
    lib = tmp_path / "lib"
    make_photo_folder(lib)
    if case == "unknown_profile":
        _add_profiles(env, "coarse")
        args = ["rank", str(lib), "--profile", "nobody"]
        expected = (2, re.escape("unknown profile 'nobody'; known profiles: coarse."))
    elif case == "malformed_profile":
        bad = tmp_path / "bad.toml"
        bad.write_text("name = 'x'\nage = [1, 2\n")
        args = ["profile", "add", str(bad)]
        # the parser's own words after the colon depend on the Python version
        expected = (2, re.escape(f"{bad} is not valid TOML: ") + r"[^\n]+\.")
    elif case == "unwritable_db":
        blocker = tmp_path / "file"
        blocker.write_text("x")
        args = ["--db", str(blocker / "sub" / "db.sqlite"), "rank", str(lib)]
        db = blocker / "sub" / "db.sqlite"
        expected = (DBAccessError.exit_code, re.escape(f"cannot open the database at {db}: Not a directory."))
    else:
        _add_profiles(env, "coarse")
        monkeypatch.setenv("PMLLM_MODEL__OFFLINE", "true")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        args = ["--preset", "cpu", "rank", str(lib)]
        # every missing piece in one sentence, each with the command that fetches it
        expected = (ModelLoadError.exit_code, re.escape(
            "model weights are missing and offline = true: open_clip weights ViT-B-32/openai (get it with "
            "`hf download timm/vit_base_patch32_clip_224.openai open_clip_model.safetensors`, or set "
            "model.vision_checkpoint to a local copy); the LLM Qwen/Qwen2.5-0.5B-Instruct (get it with "
            "`hf download Qwen/Qwen2.5-0.5B-Instruct`, or set model.lm_path to a local copy)."
        ))
    code, out, err = env.run_cli(*args)
    assert "Traceback" not in err and out == ""
    assert code == expected[0], err
    assert re.fullmatch("pmllm-batch: error: " + expected[1] + "\n", err), err


def _scores(env, db: Path) -> dict[tuple[str, str], float]:
    from pmllm_batch.db import Store

    with Store(f"sqlite:///{db}") as store, store.engine.connect() as conn:
        return {(r[0], r[1]): float(r[2]) for r in conn.execute(text(
            "SELECT s.content_hash, p.name, s.score FROM scores s JOIN profiles p ON p.id = s.profile_id"))}


@pytest.mark.integration
def test_one_pass_under_a_cache_budget_evicts_and_scores_stay_right(env, tmp_path):
    lib = tmp_path / "library"
    good = make_photo_folder(lib)
    n = len(good)
    # The fp32 vision graph: the int8 one quantises activations per batch, so a photo encoded again in another batch
    # gets slightly different tokens (up to ~0.02 in score), which would hide what this test checks.
    env.write_config('[vision]\nvariant = "fp32"\n')
    # reference: an unbounded cache, both profiles from the start
    ref = tmp_path / "ref.sqlite"
    code, _, err = env.run_cli("--db", str(ref), "profile", "add", str(env.write_profile("ana", age=30)),
                               str(env.write_profile("bernd", age=70, big_five={"openness": 1})))
    assert code == 0, err
    code, stdout, err = env.run_cli("--db", str(ref), "rank", str(lib), "--json")
    assert code == 0, err
    assert (_summary(stdout)["encoded"], _summary(stdout)["scored"]) == (n, 2 * n)
    with env.store().__class__(f"sqlite:///{ref}") as store:
        entries, nbytes = store.feature_cache_bytes()
    assert entries == n
    per_photo = nbytes // n
    # a budget of two and a half photos: the cache overflows inside the first vision batch
    env.write_config(f'[vision]\nvariant = "fp32"\ncache_budget_mb = {2.5 * per_photo / 2**20!r}\n')
    code, _, err = env.run_cli("profile", "add", str(env.write_profile("ana", age=30)))
    assert code == 0, err
    code, stdout, err = env.run_cli("rank", str(lib), "--json")
    assert code == 0, err
    first = _summary(stdout)
    # one pass: every photo went through vision once and was scored from memory, though its tokens are gone now
    assert (first["encoded"], first["scored"]) == (n, n)
    code, stdout, err = env.run_cli("status", "--json")
    cache = json.loads(stdout)["visual_cache"]
    assert (cache["entries"], cache["evicted"], cache["bytes"]) == (2, n - 2, 2 * per_photo)
    code, stdout, err = env.run_cli("status")
    assert "visual-token cache: 2 entries, " in stdout and f"; {n - 2} evicted (least recently used first)" in stdout
    # a profile added later: the evicted photos are read again and encoded, the two cached ones are not
    code, _, err = env.run_cli("profile", "add", str(env.write_profile("bernd", age=70, big_five={"openness": 1})))
    assert code == 0, err
    code, stdout, err = env.run_cli("rank", str(lib), "--json")
    assert code == 0, err
    second = _summary(stdout)
    assert (second["encoded"], second["scored"]) == (n - 2, n)
    got, want = _scores(env, env.db_path), _scores(env, ref)
    assert set(got) == set(want) and len(got) == 2 * n
    bad = {k: (got[k], want[k]) for k in want if abs(got[k] - want[k]) >= 1e-4}
    assert not bad
