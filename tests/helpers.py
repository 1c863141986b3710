"""Test helper in the style of beets' ``TestHelper``: an isolated HOME/XDG world and an in-process CLI runner.

The ``env`` fixture (``tests/conftest.py``) is one of these per test::

    def test_something(env):
        code, out, err = env.run_cli("status")

Inside ``isolated_env`` ``HOME`` and the ``XDG_*`` folders point into the temp dir and every ``PMLLM_*`` variable
is removed, so neither a developer's config nor their database can leak in; the default database is
``env.db_path`` (``$XDG_DATA_HOME/pmllm-batch/library.sqlite``). Extra variables for the world (a shared model cache)
are passed in, so they are restored with the rest.

The environment's user config sets ``[scan] min_side = 24`` (:data:`TEST_MIN_SIDE`): the generated photos are small
(120 x 90 and up) and the shipped default (256, for camera libraries) would skip most of them as too small. Every CLI
test and every ``load_config()`` inside the environment sees it; :meth:`CLIEnv.write_config` keeps it unless the
test's text sets ``min_side`` itself. Tests of the default itself read ``load_config(env={})`` (256).

The xmp and report tests share one kind of library (:func:`ranked_library`, :func:`scored_copy`): ranked once per
module with the demo model through the CLI, then copied for each test (the ``library`` fixture in conftest).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pmllm_batch.db import Store
from pmllm_batch.log import LOGGER_NAME
from tests.imagegen import make_photo_folder, write_truncated_jpeg

T = TypeVar("T")

_XDG_VARS = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME")

# [scan] min_side in every test environment: the suite's generated photos are 120 x 90 and up (the default is 256).
TEST_MIN_SIDE = 24


def with_test_min_side(text: str) -> str:
    """``text`` (a config file) with ``[scan] min_side = TEST_MIN_SIDE`` added, unless it sets ``min_side`` itself or
    is not valid TOML (a test of a broken file gets it as written)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return text
    scan = data.get("scan")
    if isinstance(scan, dict) and "min_side" in scan:
        return text
    key = f"min_side = {TEST_MIN_SIDE}"
    if scan is None:
        return text + ("" if not text or text.endswith("\n") else "\n") + f"[scan]\n{key}\n"
    # a [scan] table without min_side: the key goes right below its header
    return re.sub(r"(?m)^\[scan\][ \t]*(#.*)?$", lambda m: f"{m.group(0)}\n{key}", text, count=1)


@dataclass
class CLIEnv:
    """Paths of one isolated environment plus helpers that act inside it."""

    root: Path
    home: Path
    config_home: Path
    data_home: Path
    cache_home: Path

    @property
    def db_path(self) -> Path:
        """Where the default settings put the database."""
        return self.data_home / "pmllm-batch" / "library.sqlite"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    @property
    def user_config(self) -> Path:
        """The XDG user config file (not created until :meth:`write_config`)."""
        return self.config_home / "pmllm-batch" / "config.toml"

    def variables(self) -> dict[str, str]:
        """HOME and the XDG folders of this environment, as :func:`isolated_env` sets them."""
        return {
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.config_home),
            "XDG_DATA_HOME": str(self.data_home),
            "XDG_CACHE_HOME": str(self.cache_home),
        }

    def store(self) -> Store:
        """A Store on the default database (close it, or use it as a context manager)."""
        return Store(self.db_url)

    def run_cli(self, *args: str) -> tuple[int, str, str]:
        """Run ``pmllm-batch *args`` in-process; returns (exit code, stdout, stderr)."""
        from pmllm_batch.cli import main

        out, err = io.StringIO(), io.StringIO()
        logger = logging.getLogger(LOGGER_NAME)
        # log.setup_logging binds its handler to whatever sys.stderr is when it first runs; point it at our buffer.
        handlers = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
        previous = [h.stream for h in handlers]
        try:
            for h in handlers:
                h.setStream(err)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(list(args))
        finally:
            for h, stream in zip(handlers, previous, strict=True):
                h.setStream(stream)
            for h in logger.handlers:  # created during this run (bound to our buffer): hand back to the real stderr
                if isinstance(h, logging.StreamHandler) and h not in handlers:
                    h.setStream(sys.stderr)
        return code, out.getvalue(), err.getvalue()

    def write_profile(self, name: str, **fields: Any) -> Path:
        """Write ``<root>/profiles/<name>.toml`` with ``name`` and the given fields (tables as dicts)."""
        path = self.root / "profiles" / f"{name}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_toml({"name": name, **fields}), encoding="utf-8")
        return path

    def write_config(self, text: str) -> Path:
        """Write the XDG user config file: ``text``, plus the test environment's ``[scan] min_side`` (see
        :func:`with_test_min_side`)."""
        self.user_config.parent.mkdir(parents=True, exist_ok=True)
        self.user_config.write_text(with_test_min_side(text), encoding="utf-8")
        return self.user_config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def to_toml(data: dict[str, Any]) -> str:
    """Minimal TOML writer for flat keys plus one level of tables (enough for profiles and configs)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for key, table in data.items():
        if isinstance(table, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def isolated_env(base: Path, environ: Mapping[str, str] | None = None) -> Iterator[CLIEnv]:
    """Point HOME and XDG folders into ``base``, drop ``PMLLM_*`` variables, set ``environ`` (e.g.
    ``{"PMLLM_PATHS__CACHE_DIR": …}``), write a user config with ``[scan] min_side = TEST_MIN_SIDE``; restore
    everything on exit."""
    env = CLIEnv(
        root=base,
        home=base / "home",
        config_home=base / "xdg-config",
        data_home=base / "xdg-data",
        cache_home=base / "xdg-cache",
    )
    for folder in (env.home, env.config_home, env.data_home, env.cache_home):
        folder.mkdir(parents=True, exist_ok=True)
    if not env.user_config.exists():  # a second isolated_env on the same base keeps what a test wrote there
        env.write_config("")
    saved = dict(os.environ)
    try:
        for name in list(os.environ):
            if name.startswith("PMLLM_"):
                del os.environ[name]
        os.environ.update(env.variables())
        os.environ.pop("XDG_STATE_HOME", None)
        os.environ.update(environ or {})
        yield env
    finally:
        os.environ.clear()
        os.environ.update(saved)


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (and link targets), to prove a tree was not touched."""
    digest: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            digest[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            digest[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            digest[rel] = "dir"
    return digest


def wait_until(
    cond: Callable[[], T],
    timeout: float,
    what: str,
    *,
    context: Callable[[], str] | None = None,
    gone: Callable[[], str | None] | None = None,
) -> T:
    """Poll ``cond`` until it returns something truthy (``timeout`` is a hang guard, never a speed check).

    Args:
        context: text appended to the failure (a log tail), read only when the test fails.
        gone: returns a sentence when waiting is pointless (a daemon that exited), else None.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        reason = gone() if gone is not None else None
        if reason is not None:
            pytest.fail(f"{reason} while waiting for {what}\n{context() if context else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{context() if context else ''}")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------------------------------
# A ranked library to write next to (xmp and report tests)
# ---------------------------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
PROFILES = ("ana", "bernd", "coarse")  # examples/profiles/<name>.toml


@dataclass(frozen=True)
class Scored:
    """A module's ranked library (read-only)."""

    lib: Path
    db: Path


@dataclass
class Library:
    """A test's private copy: its CLI environment and its photo folder."""

    env: CLIEnv
    lib: Path

    def run(self, *args: str) -> tuple[int, str, str]:
        return self.env.run_cli(*args)

    def xmp(self, *args: str) -> dict:
        code, out, err = self.run("xmp", *args, "--json")
        assert code == 0, err
        return json.loads(out)

    def ranking(self, profile: str) -> list:
        with self.env.store() as store:
            return store.ranking(profile)


def make_library(lib: Path) -> None:
    """10 good photos (several formats, one nested folder) and one truncated file."""
    make_photo_folder(lib)
    (lib / "bad").mkdir()
    write_truncated_jpeg(lib / "bad" / "truncated.jpg")


@contextlib.contextmanager
def ranked_library(base: Path, populate: Callable[[Path], None] = make_library) -> Iterator[Scored]:
    """``populate(base/library)``, store the three example profiles and rank it with the demo model via the CLI."""
    with isolated_env(base) as env:
        lib = base / "library"
        populate(lib)
        profiles = [str(REPO / "examples" / "profiles" / f"{name}.toml") for name in PROFILES]
        code, _, err = env.run_cli("profile", "add", *profiles)
        assert code == 0, err
        code, _, err = env.run_cli("rank", str(lib))
        assert code == 0, err
        yield Scored(lib=lib, db=env.db_path)


@contextlib.contextmanager
def scored_copy(scored: Scored, base: Path) -> Iterator[Library]:
    """A copy of a ranked library under ``base``, its database pointing there (the original's rows marked missing),
    so a test can write next to the photos without touching the module's library."""
    with isolated_env(base) as env:
        lib = base / "library"
        shutil.copytree(scored.lib, lib)
        env.db_path.parent.mkdir(parents=True, exist_ok=True)
        for src in scored.db.parent.glob(scored.db.name + "*"):
            shutil.copy2(src, env.db_path.parent / src.name)
        with env.store() as store:
            old = store.photo_index()
            moved = [
                dataclasses.replace(rec, path=str(lib / Path(p).relative_to(scored.lib)), root=str(lib))
                for p, rec in old.items()
            ]
            store.upsert_photos(moved)
            store.mark_missing(list(old))
        try:
            yield Library(env=env, lib=lib)
        finally:
            for folder in [lib, *lib.rglob("*")]:  # undo read-only folders so the temp dir can be removed
                if folder.is_dir():
                    folder.chmod(0o755)
