"""The README says what the code does: its exit-code table (issue "a newcomer's second hour", item 7), and its test
command, which is exactly what ``.ci/run`` runs, under ``.ci/fresh-home`` (item 10)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import exc as sa_exc

from pmllm_batch.cli import EXIT_INTERRUPTED
from pmllm_batch.cli.commands import status as status_cmd
from pmllm_batch.errors import DBAccessError, DBUnavailableError, ModelLoadError, UserError
from pmllm_batch.scorer.summary import RunSummary, saved_text
from tests.helpers import REPO, CLIEnv, isolated_env
from tests.imagegen import make_photo

README = REPO / "README.md"
CI_RUN = REPO / ".ci" / "run"
FRESH_HOME = REPO / ".ci" / "fresh-home"


# ---------------------------------------------------------------------------------------------------------------------
# Item 7: the exit-code table
# ---------------------------------------------------------------------------------------------------------------------


def _split_outside(text: str) -> list[str]:
    """``text`` split at ", " outside backticks and parentheses."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == "`":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and depth == 0 and text.startswith(", ", i):
            parts.append(text[start:i])
            start = i + 2
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def exit_table() -> dict[int, list[str]]:
    """exit code -> the examples of its row ("e.g." column), as the README lists them."""
    readme = README.read_text(encoding="utf-8")
    block = re.search(r"^\| exit \| what \| e\.g\. \|\n\|[-| ]+\|\n((?:\|.*\|\n)+)", readme, re.M)
    assert block, "README: no exit-code table (| exit | what | e.g. |)"
    table: dict[int, list[str]] = {}
    for line in block.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 3, line
        table[int(cells[0])] = _split_outside(cells[2])
    return table


Case = Callable[[CLIEnv, Path, pytest.MonkeyPatch], tuple[int, str]]


def _library(env: CLIEnv) -> Path:
    """A stored profile and one photo to rank."""
    lib = env.root / "lib"
    make_photo(lib / "a.jpg", (64, 48))
    code, _, err = env.run_cli("profile", "add", str(env.write_profile("ana", age=30)))
    assert code == 0, err
    return lib


def unknown_profile(env: CLIEnv, tmp: Path, mp: pytest.MonkeyPatch) -> tuple[int, str]:
    _library(env)
    return env.run_cli("export", "--profile", "nobody", "--format", "csv")[::2]


def bad_gender(env: CLIEnv, tmp: Path, mp: pytest.MonkeyPatch) -> tuple[int, str]:
    return env.run_cli("profile", "add", str(env.write_profile("x", gender="banana")))[::2]


def rank_a_file(env: CLIEnv, tmp: Path, mp: pytest.MonkeyPatch) -> tuple[int, str]:
    return env.run_cli("rank", str(_library(env) / "a.jpg"))[::2]


def forget_unknown(env: CLIEnv, tmp: Path, mp: pytest.MonkeyPatch) -> tuple[int, str]:
    _library(env)
    return env.run_cli("forget", str(tmp / "never-ranked"))[::2]


def weights_missing_offline(env: CLIEnv, tmp: Path, mp: pytest.MonkeyPatch) -> tuple[int, str]:
    lib = _library(env)
    mp.setenv("PMLLM_MODEL__OFFLINE", "true")
    return env.run_cli("--preset", "paper", "rank", str(lib))[::2]


def adapter_does_not_fit(env: CLIEnv, tmp: Path, mp: pytest.MonkeyPatch) -> tuple[int, str]:
    lib = _library(env)
    adapter = tmp / "adapter"
    shutil.copytree(REPO / "pmllm_batch" / "assets" / "demo" / "adapter", adapter)
    config = adapter / "pmllm_config.json"
    meta = json.loads(config.read_text())
    meta["base"]["lm"]["hidden_size"] = 4096  # trained for another LLM
    config.write_text(json.dumps(meta))
    return env.run_cli("rank", str(lib), "--checkpoint", str(adapter))[::2]


def not_our_database(env: CLIEnv, tmp: Path, mp: pytest.MonkeyPatch) -> tuple[int, str]:
    other = tmp / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    return env.run_cli("--db", str(other), "status")[::2]


def damaged(env: CLIEnv, tmp: Path, mp: pytest.MonkeyPatch) -> tuple[int, str]:
    from tests.test_hardening import _corrupt_all_but_the_schema

    _library(env)
    _corrupt_all_but_the_schema(env.db_path)
    return env.run_cli("status", "--check")[::2]


def read_only_and_must_write(env: CLIEnv, tmp: Path, mp: pytest.MonkeyPatch) -> tuple[int, str]:
    import pmllm_batch.db.engine as engine

    lib = _library(env)
    real_access, db_dir = os.access, str(env.db_path.parent)

    def read_only(path: object, mode: int, *a: object, **k: object) -> bool:  # root ignores permission bits
        return False if mode & os.W_OK and str(path).startswith(db_dir) else real_access(path, mode, *a, **k)

    mp.setattr(engine.os, "access", read_only)
    return env.run_cli("rank", str(lib))[::2]


def db_folder_missing(env: CLIEnv, tmp: Path, mp: pytest.MonkeyPatch) -> tuple[int, str]:
    return env.run_cli("--db", str(tmp / "no-such-folder" / "library.sqlite"), "profile", "list")[::2]


def server_unreachable(env: CLIEnv, tmp: Path, mp: pytest.MonkeyPatch) -> tuple[int, str]:
    # psycopg comes with the test extra ("pmllm-batch[postgres]"); nothing listens on port 1
    return env.run_cli("--db", "postgresql+psycopg://nobody@127.0.0.1:1/library", "status")[::2]


def disk_full(env: CLIEnv, tmp: Path, mp: pytest.MonkeyPatch) -> tuple[int, str]:
    from pmllm_batch.db import photos, quick

    _library(env)

    def full(*a: object, **k: object) -> None:
        raise sa_exc.OperationalError("SELECT", {}, sqlite3.OperationalError("database or disk is full"))

    mp.setattr(quick, "library_status", lambda url: None)  # a quick read that fails gives way to the Store
    mp.setattr(photos, "count_by_status", full)
    return env.run_cli("status")[::2]


def ctrl_c(env: CLIEnv, tmp: Path, mp: pytest.MonkeyPatch) -> tuple[int, str]:
    def interrupted(args: object, settings: object) -> int:
        raise KeyboardInterrupt(saved_text(RunSummary(encoded=12, scored=40)))

    mp.setattr(status_cmd, "run", interrupted)
    return env.run_cli("status")[::2]


# README example (its words, as written in the e.g. column) -> the case that does it
CASES: dict[str, Case] = {
    "unknown profile": unknown_profile,
    '`gender = "banana"`': bad_gender,
    "`rank FILE.jpg`": rank_a_file,
    "`forget` of a folder the library does not hold": forget_unknown,
    "missing while offline": weights_missing_offline,
    "an adapter that does not fit": adapter_does_not_fit,
    "not a pmllm-batch database": not_our_database,
    "damaged (`status --check`)": damaged,
    "read-only and a command must write": read_only_and_must_write,
    "a `--db` folder that does not exist": db_folder_missing,
    "its server is unreachable": server_unreachable,
    "the disk is full": disk_full,
}
# Ctrl-C's example is the line it prints (without "pmllm-batch: "), for a run that saved 12 photos and 40 pairs
CTRL_C_EXAMPLE = re.compile(r"says what was saved: `(interrupted.+)`")


def test_item7_readme_exit_table_matches_the_code(env: CLIEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    table = exit_table()
    # every exit code the code has is a row, and no row names another
    assert sorted(table) == sorted({UserError.exit_code, ModelLoadError.exit_code, DBAccessError.exit_code,
                                    DBUnavailableError.exit_code, EXIT_INTERRUPTED})
    examples = [(code, example) for code, row in table.items() for example in row]
    unknown = [e for _, e in examples if e not in CASES and not CTRL_C_EXAMPLE.fullmatch(e)]
    assert not unknown, f"README exit-table examples this test cannot run (add a case): {unknown}"
    for i, (code, example) in enumerate(examples):
        match = CTRL_C_EXAMPLE.fullmatch(example)
        case = ctrl_c if match else CASES[example]
        # each case in a world of its own (inside env's: HOME, XDG folders, config)
        with monkeypatch.context() as mp, isolated_env(env.root / f"case-{i}") as world:
            got, err = case(world, world.root, mp)
        assert got == code, f"README says exit {code} for {example!r}; the code exits {got}: {err}"
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        if match:  # the message it shows is the one Ctrl-C prints
            assert err.strip() == f"pmllm-batch: {match.group(1)}"


# ---------------------------------------------------------------------------------------------------------------------
# Item 10: the README's test command is .ci/run's, and the suite runs in a fresh HOME that must stay empty
# ---------------------------------------------------------------------------------------------------------------------


def readme_test_command() -> str:
    match = re.search(r"\*\*Run the tests\*\*.*?```sh\n(.+?)\n```", README.read_text(encoding="utf-8"), re.S)
    assert match, "README: no sh block after 'Run the tests'"
    return match.group(1).strip()


def test_item10_ci_run_runs_the_readme_test_command_in_a_fresh_home() -> None:
    command = readme_test_command()
    lines = [line for line in CI_RUN.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    assert lines[-1] == command  # exactly the README's command, last
    steps = command.split(" && ")
    assert steps[-1] == ".ci/fresh-home python3 -m pytest"
    assert [s for s in steps if s.startswith(("lint-imports", "ruff", "mypy"))] == [
        "lint-imports", "ruff check .", "mypy pmllm_batch"]
    assert os.access(FRESH_HOME, os.X_OK) and os.access(CI_RUN, os.X_OK)


def fresh_home(*script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(FRESH_HOME), "bash", "-c", *script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HOME": "/nonexistent-home"})


def test_item10_fresh_home_fails_naming_what_the_tests_wrote_into_home() -> None:
    ok = fresh_home('test -z "$(ls -A "$HOME")" && [ "$XDG_CACHE_HOME" = "$HOME/.cache" ] '
                    '&& [ "$XDG_CONFIG_HOME" = "$HOME/.config" ] && [ "$XDG_DATA_HOME" = "$HOME/.local/share" ] '
                    '&& [ "$XDG_STATE_HOME" = "$HOME/.local/state" ] && echo clean')
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "clean\n", "")
    wrote = fresh_home('mkdir -p "$XDG_CACHE_HOME/pmllm-batch/llm/SmolLM2-x" && echo 1 > '
                       '"$XDG_CACHE_HOME/pmllm-batch/llm/SmolLM2-x/model.safetensors"; echo $HOME')
    home = wrote.stdout.strip()
    assert wrote.returncode == 1
    assert wrote.stderr == ("fresh-home: the command wrote into HOME (a fresh empty folder for this run): "
                            "~/.cache/pmllm-batch/llm/SmolLM2-x (1 files in all)\n")
    assert not os.path.exists(home)  # removed afterwards
    failed = fresh_home("touch ~/.x; exit 3")  # the command's own failure wins
    assert failed.returncode == 3 and "~/.x" in failed.stderr


def test_item10_pytest_exit_5_is_a_failure_with_a_sentence() -> None:
    nothing = fresh_home("exit 5")  # what `python3 -m pytest` returns when no test ran
    assert nothing.returncode == 5
    assert nothing.stderr == ("fresh-home: no test ran (pytest exit 5: nothing collected, or every test deselected by "
                              "-m/-k)\n")


def test_item10_the_session_runs_in_a_home_of_its_own() -> None:
    # conftest points HOME and the XDG folders into a fresh folder for the whole session, so a plain
    # `python3 -m pytest` (not only .ci/run) leaves the caller's home alone (ONNX Runtime, matplotlib, a GGUF
    # conversion: whatever writes to ~ or $XDG_* writes there).
    from tests.conftest import SESSION_HOME

    assert Path(os.environ["HOME"]) == SESSION_HOME
    for name, rel in (("XDG_CACHE_HOME", ".cache"), ("XDG_CONFIG_HOME", ".config"),
                      ("XDG_DATA_HOME", ".local/share"), ("XDG_STATE_HOME", ".local/state")):
        assert os.environ[name] == str(SESSION_HOME / rel)
