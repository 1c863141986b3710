"""What the tool says, one test per wording fixed in "a newcomer's second hour" (item 9).

Each test pins the sentence a newcomer reads: singular counts, a persona whose notes end a sentence, a missing
profile name said in words, what Ctrl-C saved, "did you mean" for an unknown profile name, and a scan summary whose
parts add up to the files scanned.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest

from pmllm_batch.cli.commands import summary_line
from pmllm_batch.daemon.batchlog import log_batch, log_stopped
from pmllm_batch.db import Store
from pmllm_batch.errors import ProfileError
from pmllm_batch.model.prompts import render_persona
from pmllm_batch.profiles import Profile
from pmllm_batch.scorer import RunSummary, saved_text
from tests.doubles import LOADS, SCORE_HOOK, use_fake_models
from tests.helpers import CLIEnv
from tests.imagegen import make_photo

# The test suite's parser of the daemon's batch line (tests/test_daemon.py), kept in step with the line.
from tests.test_daemon import BATCH_RE


@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    LOADS.clear()
    SCORE_HOOK.clear()
    use_fake_models(monkeypatch.setattr)
    yield
    SCORE_HOOK.clear()


def one_line_error(code: int, err: str) -> str:
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0].removeprefix("pmllm-batch: error: ")


# ---------------------------------------------------------------------------------------------------------------------
# "1 files", "after 1 batches"
# ---------------------------------------------------------------------------------------------------------------------


def test_item9_the_daemon_log_says_1_file_1_pair_and_1_batch(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pmllm_batch")
    one = RunSummary(new=1, encoded=1, scored=1)
    log_batch("batch 1:", one, files=1, profiles=1, elapsed=0.5, stopped=False)
    log_batch("batch 2:", RunSummary(new=2, encoded=2, scored=4), files=2, profiles=2, elapsed=0.5, stopped=False)
    log_stopped("SIGTERM received", one, scans=1, batches=1)
    log_stopped("SIGTERM received", RunSummary(), scans=2, batches=3, profile_updates=1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "batch 1: 1 file, 1 new, 0 changed, 0 missing, 0 failed; vision 1; scored 1 pair for 1 profile in 0.50s",
        "batch 2: 2 files, 2 new, 0 changed, 0 missing, 0 failed; vision 2; scored 4 pairs for 2 profiles in 0.50s",
        "stopped (SIGTERM received) after 1 scan and 1 batch: 1 new, 0 missing, vision 1, scored 1 pair",
        "stopped (SIGTERM received) after 2 scans, 3 batches and 1 profile update: 0 new, 0 missing, vision 0, "
        "scored 0 pairs",
    ]
    # log readers keep parsing the line, whatever the count
    parsed = [m.groupdict() for m in BATCH_RE.finditer("\n".join(f"pmllm_batch.daemon: {line}" for line in lines))]
    assert [(p["what"], p["files"], p["scored"]) for p in parsed] == [("batch 1", "1", "1"), ("batch 2", "2", "4")]


# ---------------------------------------------------------------------------------------------------------------------
# The persona: a note ends its sentence
# ---------------------------------------------------------------------------------------------------------------------


def test_item9_a_profile_note_without_punctuation_ends_with_a_period() -> None:
    text = render_persona(Profile(name="mia", notes="finds grey pictures boring"))
    assert "Notes: finds grey pictures boring. Judge every photo as this person would." in text
    for note in ("likes red.", "likes red!", "really?", 'says "wow."', "(likes red.)"):
        rendered = render_persona(Profile(name="mia", notes=f"  {note}  "))
        assert f"Notes: {note} Judge every photo" in rendered  # already a sentence: left as written
    assert ".." not in render_persona(Profile(name="mia", notes="likes red."))
    assert "Notes: likes red. Judge" in render_persona(Profile(name="mia", notes="likes red;"))


# ---------------------------------------------------------------------------------------------------------------------
# A profile without a name
# ---------------------------------------------------------------------------------------------------------------------


def test_item9_a_profile_without_a_name_says_it_needs_one(env: CLIEnv) -> None:
    with pytest.raises(ProfileError) as caught:
        Profile.from_dict({"age": 30}, source="mia.toml")
    assert str(caught.value) == 'mia.toml: a profile needs a name (a line such as name = "mia").'
    path = env.root / "nameless.toml"
    path.write_text('age = 30\nnotes = "finds grey pictures boring"\n', encoding="utf-8")
    code, _, err = env.run_cli("profile", "add", str(path))
    line = one_line_error(code, err)
    assert line == f'{path}: a profile needs a name (a line such as name = "mia").'
    assert "None" not in line
    # a name that is there but wrong still says what a name may hold
    with pytest.raises(ProfileError, match=r"'name' must be 1-64 letters.*\(got 'a/b'\)"):
        Profile.from_dict({"name": "a/b"}, source="x.toml")


# ---------------------------------------------------------------------------------------------------------------------
# Ctrl-C
# ---------------------------------------------------------------------------------------------------------------------


def test_item9_ctrl_c_says_what_was_saved() -> None:
    assert saved_text(RunSummary()) == (
        "0 photos through vision and 0 scored (photo, profile) pairs were saved; run the same command again to do "
        "the rest"
    )
    assert saved_text(RunSummary(encoded=1, scored=1)).startswith(
        "1 photo through vision and 1 scored (photo, profile) pair were saved; "
    )


def test_item9_ctrl_c_in_rank_prints_what_was_saved(env: CLIEnv, fake_models: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(4):
        make_photo(env.root / "lib" / f"p{i}.jpg", (64, 48), seed=i)
    assert env.run_cli("profile", "add", str(env.write_profile("ana")))[0] == 0
    chunks: list[int] = []

    def ctrl_c_on_second_chunk() -> None:
        chunks.append(1)
        if len(chunks) == 2:
            raise KeyboardInterrupt

    SCORE_HOOK.append(ctrl_c_on_second_chunk)
    monkeypatch.setenv("PMLLM_SCORE__BATCH_SIZE", "2")
    monkeypatch.setenv("PMLLM_SCAN__MIN_SIDE", "16")
    code, out, err = env.run_cli("rank", str(env.root / "lib"))
    assert (code, out) == (130, "")
    assert err.strip() == ("pmllm-batch: interrupted: 4 photos through vision and 2 scored (photo, profile) pairs "
                           "were saved; run the same command again to do the rest")


# ---------------------------------------------------------------------------------------------------------------------
# "did you mean" for an unknown profile name
# ---------------------------------------------------------------------------------------------------------------------


def test_item9_an_unknown_profile_name_suggests_the_close_one(env: CLIEnv) -> None:
    assert env.run_cli("profile", "add", str(env.write_profile("mia")), str(env.write_profile("ana")))[0] == 0
    with Store(env.db_url) as store:
        with pytest.raises(ProfileError) as caught:
            store.get_profile("Mia")
        assert str(caught.value) == "unknown profile 'Mia' (did you mean 'mia'?); known profiles: ana, mia."
        with pytest.raises(ProfileError) as caught:
            store.get_profile("zed")
        assert str(caught.value) == "unknown profile 'zed'; known profiles: ana, mia."  # nothing close: no guess
    code, _, err = env.run_cli("export", "--profile", "Mia")
    assert one_line_error(code, err) == "unknown profile 'Mia' (did you mean 'mia'?); known profiles: ana, mia."
    code, _, err = env.run_cli("profile", "show", "Mia")
    assert "(did you mean 'mia'?)" in one_line_error(code, err)


# ---------------------------------------------------------------------------------------------------------------------
# The scan summary: each scanned file in one bucket
# ---------------------------------------------------------------------------------------------------------------------

SUMMARY_RE = re.compile(r"^scanned (?P<n>\d+) files? \((?P<failed>\d+) failed\): (?P<parts>[^;]+); ", re.M)


def buckets(line: str) -> tuple[int, int, dict[str, int]]:
    """(files scanned, failed, {bucket: count}) of a summary line."""
    m = SUMMARY_RE.search(line)
    assert m, line
    parts = {}
    for part in m["parts"].split(", "):
        count, word = part.split(" ", 1)
        parts[word] = int(count)
    return int(m["n"]), int(m["failed"]), parts


def _summary(**counts: int) -> dict[str, object]:
    return {**RunSummary().to_dict(), **counts}


def test_item9_the_scan_summary_counts_each_file_once() -> None:
    line = summary_line(_summary(scanned=108, skipped=108, failed=3, elapsed_s=0.1))
    assert line == ("scanned 108 files (3 failed): 0 new, 0 changed, 108 unchanged; 0 missing; vision encodes 0; "
                    "scored 0 (photo, profile) pairs in 0.1s")
    # a move found in this scan is a bucket of its own; unchanged files read again (a stale skip) are "re-checked"
    line = summary_line(_summary(scanned=10, new=2, moved=1, changed=1, skipped=5, missing=1, encoded=3, scored=3))
    assert buckets(line) == (10, 0, {"new": 2, "moved": 1, "changed": 1, "unchanged": 5, "re-checked": 1})
    assert "; 1 missing; " in line
    n, _, parts = buckets(summary_line(_summary(scanned=1, new=1, encoded=1, scored=1)))
    assert n == sum(parts.values()) == 1


def test_item9_a_real_scan_summary_adds_up(env: CLIEnv, fake_models: None, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = env.root / "lib"
    for i in range(3):
        make_photo(lib / f"p{i}.jpg", (64, 48), seed=i)
    (lib / "notes.jpg").write_text("a shopping list, not a photo\n", encoding="utf-8")
    assert env.run_cli("profile", "add", str(env.write_profile("ana")))[0] == 0
    monkeypatch.setenv("PMLLM_SCAN__MIN_SIDE", "16")
    seen = []
    for min_side in ("16", "16", "60"):  # first run, a rerun, then a rerun whose skip rule changed
        monkeypatch.setenv("PMLLM_SCAN__MIN_SIDE", min_side)
        code, out, err = env.run_cli("rank", str(lib))
        assert code == 0, err
        n, failed, parts = buckets(out)
        assert n == sum(parts.values()) == 4 and failed == 1, out
        seen.append(parts)
    assert seen[0]["new"] == 4 and seen[1]["unchanged"] == 4
    assert seen[2]["re-checked"] == 3  # the three photos are judged again against the new min_side


def test_item6_rank_note_names_the_preset_and_follows_the_demo_flag(env: CLIEnv) -> None:
    """The demo model's note names its preset and says what is real; the gallery reads the same stored sentence."""
    from pmllm_batch.model.factory import model_cfg_for
    from pmllm_batch.model.presets import demo_note

    lib = env.root / "library"
    make_photo(lib / "a.jpg", seed=1)
    make_photo(lib / "b.jpg", seed=2)
    code, _, err = env.run_cli("profile", "add", str(env.write_profile("ana", age=30)))
    assert code == 0, err
    code, out, err = env.run_cli("rank", str(lib))
    assert code == 0, err
    cfg, _ = model_cfg_for("demo", "none")
    note = demo_note(cfg)
    assert note == ("demo: a tiny model trained on a synthetic task — scores show the mechanism, not anyone's real "
                    "taste.")
    assert f"note: {note}" in out.splitlines()
    with Store(env.db_url) as store:
        current = store.current_model()
    assert current is not None and current["demo"] and current["note"] == note
    smol, _ = model_cfg_for("smol", "none")
    assert demo_note(smol) == ("smol: a real LLM (SmolLM2-135M-Instruct) with an adapter trained on a synthetic "
                               "task — scores show the mechanism, not anyone's real taste.")
    cpu, _ = model_cfg_for("cpu", "none")
    assert demo_note(cpu) is None  # a model whose config is not a demo gets no note
