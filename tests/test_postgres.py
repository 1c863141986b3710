"""PostgreSQL for real: a throwaway server, and the rank / daemon / concurrency / kill -9 scenarios against it.

The module starts its own PostgreSQL cluster (``initdb`` + ``pg_ctl`` in a temporary folder, on a free port, as the
``postgres`` user when the tests run as root, because the server refuses to run as root) and gives every test a
fresh database on it. SQLite stays the default everywhere else. The tests skip, saying why, only when the server
binaries are not installed (Debian: ``apt-get install postgresql``); the driver (``psycopg``) is a test dependency.

The scenarios use the real demo model (one shared ONNX cache for the module), so what runs here is what a user runs:
``rank`` twice (the second loads nothing), a move, ``status --check``; then two ``rank`` processes and a ``watch``
daemon racing for the same new library (vision once per photo, every score once), a ``kill -9`` of the daemon while
a burst is being processed (wherever it lands), and a restart that completes the work with every score unique.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pmllm_batch.db.engine import PG_WORK_LOCK_KEY
from tests.helpers import CLIEnv
from tests.helpers import wait_until as _wait_until
from tests.imagegen import make_photo

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "examples" / "profiles"
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------------------------


def _server_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A throwaway PostgreSQL cluster: ``url(name)`` is a fresh database on it."""

    def __init__(self, initdb: str, pg_ctl: str) -> None:
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.root = Path(tempfile.mkdtemp(prefix="pmllm-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = "pmllm"
        self._demote: Callable[[], None] | None = None
        self._count = 0
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as its own user
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

            def demote() -> None:
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)

            self._demote = demote

    def _run(self, *args: str) -> None:
        proc = subprocess.run(list(args), cwd=self.root, preexec_fn=self._demote, capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr}\n{tail}")

    def start(self) -> None:
        self._run(self.initdb, "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync")
        options = (f"-F -p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=60 "
                   "-c synchronous_commit=off -c full_page_writes=off")
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60",
                  "-o", options, "start")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def connect(self, dbname: str = "postgres") -> Any:
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname=dbname, autocommit=True)

    def url(self) -> str:
        self._count += 1
        name = f"lib{self._count}"
        with self.connect() as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    initdb, pg_ctl = _server_bin("initdb"), _server_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed; `apt-get install postgresql`")
    server = PostgresServer(initdb, pg_ctl)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg(pg_server: PostgresServer, env: CLIEnv, model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database on the server, as a URL; the CLI and children use it and the shared model cache."""
    monkeypatch.setenv("PMLLM_PATHS__CACHE_DIR", str(model_cache))
    return pg_server.url()


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------


def wait_until(cond: Callable[[], T], timeout: float, what: str, logs: list[Path] | None = None) -> T:
    """:func:`tests.helpers.wait_until`, failing with the tails of the daemons' logs."""

    def tails() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs or [] if p.exists())

    return _wait_until(cond, timeout, what, context=tails)


def query(server: PostgresServer, url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with server.connect(url.rsplit("/", 1)[1]) as conn:
        try:
            return list(conn.execute(sql, params).fetchall())
        except Exception:  # noqa: BLE001 - tables not created yet
            return []


def photos(folder: Path, n: int, seed: int) -> list[Path]:
    return [make_photo(folder / f"p{seed + i:04d}.jpg", (48, 36), seed=seed + i) for i in range(n)]


def unique_and_complete(server: PostgresServer, url: str, n_photos: int, n_profiles: int) -> bool:
    rows = query(server, url, "SELECT content_hash, profile_id, model_id FROM scores")
    ok = query(server, url, "SELECT COUNT(DISTINCT content_hash) FROM photos WHERE status = 'ok'")
    return bool(ok) and ok[0][0] == n_photos and len(rows) == len(set(rows)) == n_photos * n_profiles


def start(env: CLIEnv, url: str, *args: str, name: str, extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    child = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PMLLM_WATCH__DEBOUNCE": "0.2",
             **(extra or {})}
    log = open(env.root / f"{name}.log", "w")  # noqa: SIM115 - closed when the process is reaped
    proc = subprocess.Popen([sys.executable, "-m", "pmllm_batch", "--db", url, *args], cwd=REPO, env=child,
                            stdout=subprocess.PIPE, stderr=log, text=True)
    proc.log_file = log  # type: ignore[attr-defined]
    return proc


def vision_in_log(path: Path) -> int:
    return sum(int(m) for m in re.findall(r"pmllm_batch\.daemon: .*?; vision (\d+); scored", path.read_text()))


# ---------------------------------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_rank_twice_a_move_and_status_check_on_postgres(env: CLIEnv, pg: str, pg_server: PostgresServer) -> None:
    lib = env.root / "lib"
    files = photos(lib, 6, seed=0)
    code, out, err = env.run_cli("--db", pg, "profile", "add", str(PROFILES / "ana.toml"), str(PROFILES / "bernd.toml"))
    assert (code, out) == (0, "added ana\nadded bernd\n"), err
    code, out, err = env.run_cli("--db", pg, "rank", str(lib), "--json")
    assert code == 0, err
    first = json.loads(out.splitlines()[-1])
    assert (first["new"], first["encoded"], first["scored"], first["demo"]) == (6, 6, 12, True)
    # nothing left to do: nothing loads
    code, out, err = env.run_cli("--db", pg, "-v", "rank", str(lib), "--json")
    second = json.loads(out.splitlines()[-1])
    assert (second["encoded"], second["scored"], second["skipped"]) == (0, 0, 6) and "loaded demo" not in err
    files[0].rename(lib / "renamed.jpg")
    code, out, err = env.run_cli("--db", pg, "rank", str(lib), "--json")
    third = json.loads(out.splitlines()[-1])
    assert (third["new"], third["moved"], third["missing"], third["encoded"], third["scored"]) == (0, 1, 0, 0, 0)
    code, out, err = env.run_cli("--db", pg, "status", "--check", "--json")
    assert code == 0, err
    status = json.loads(out)
    assert status["photos"] == {"ok": 6, "failed": 0, "missing": 0}
    assert status["check"] == {"ok": True, "checked": "unique scores, references"}
    assert status["db"].startswith("postgresql+psycopg://pmllm@127.0.0.1:")
    code, out, err = env.run_cli("--db", pg, "export", "--profile", "ana", "--format", "json")
    assert code == 0 and {r["path"] for r in json.loads(out)} == {str(p) for p in lib.glob("*.jpg")}
    assert unique_and_complete(pg_server, pg, 6, 2)


@pytest.mark.integration
def test_two_ranks_and_a_daemon_on_postgres_run_vision_once_and_survive_kill_9(
    env: CLIEnv, pg: str, pg_server: PostgresServer
) -> None:
    lib = env.root / "lib"
    n = 10
    photos(lib, n, seed=100)
    code, _, err = env.run_cli("--db", pg, "profile", "add", str(PROFILES / "ana.toml"), str(PROFILES / "bernd.toml"))
    assert code == 0, err
    logs = [env.root / f"{name}.log" for name in ("rank1", "rank2", "daemon")]
    procs: list[subprocess.Popen[str]] = []
    daemon: subprocess.Popen[str] | None = None
    try:
        # 1. Two ranks and a daemon start on the same new library while the work lock is held, so all three are
        #    running and waiting when it is released: they race for real.
        with pg_server.connect(pg.rsplit("/", 1)[1]) as holder:
            holder.execute(f"SELECT pg_advisory_lock({PG_WORK_LOCK_KEY})")
            small = {"PMLLM_VISION__BATCH_SIZE": "4", "PMLLM_SCORE__BATCH_SIZE": "4"}
            procs = [start(env, pg, "rank", str(lib), "--json", name="rank1", extra=small),
                     start(env, pg, "rank", str(lib), "--json", name="rank2", extra=small)]
            daemon = start(env, pg, "watch", str(lib), "--settle", "0.3", "--reconcile-interval", "0", name="daemon",
                           extra=small)
            wait_until(lambda: all("waiting until it is done" in p.read_text() for p in logs), 180,
                       "all three to wait for the work lock", logs)
        outs = [p.communicate(timeout=300)[0] for p in procs]
        for p in procs:
            assert p.returncode == 0, [f.read_text() for f in logs]
        wait_until(lambda: "reconcile (initial scan)" in logs[2].read_text(), 120, "the daemon's initial scan", logs)
        encoded = sum(json.loads(out.splitlines()[-1])["encoded"] for out in outs) + vision_in_log(logs[2])
        assert encoded == n  # vision ran once per photo across the three processes
        assert unique_and_complete(pg_server, pg, n, 2)

        # 2. A burst arrives; the daemon is killed -9 while it works on it (wherever that lands).
        photos(lib / "burst", 16, seed=500)
        before = query(pg_server, pg, "SELECT COUNT(*) FROM photos")[0][0]
        wait_until(lambda: query(pg_server, pg, "SELECT COUNT(*) FROM photos")[0][0] > before, 120,
                   "the daemon to commit part of the burst", logs)
        daemon.kill()
        assert daemon.wait(timeout=30) == -signal.SIGKILL
        rows = query(pg_server, pg, "SELECT content_hash, profile_id, model_id FROM scores")
        assert len(rows) == len(set(rows))  # unique at the moment of the kill

        # 3. The next start picks up where it stopped: every photo scored for both profiles, each score once.
        again = start(env, pg, "watch", str(lib), "--once", name="again")
        procs.append(again)
        out, _ = again.communicate(timeout=300)
        assert again.returncode == 0, (env.root / "again.log").read_text()
        assert unique_and_complete(pg_server, pg, n + 16, 2)
        runs = query(pg_server, pg, "SELECT kind, status FROM runs WHERE kind = 'watch' ORDER BY id")
        assert runs[0] == ("watch", "interrupted")  # the killed daemon's run, closed by the next start
    finally:
        for p in [*procs, *([daemon] if daemon is not None else [])]:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
            p.log_file.close()  # type: ignore[attr-defined]


def test_a_version_4_visual_tokens_table_becomes_the_features_table_on_postgres(pg: str) -> None:
    import numpy as np
    from sqlalchemy import create_engine, inspect, text

    from pmllm_batch.db import Store
    from pmllm_batch.db import schema as db_schema

    with Store(pg) as store:
        store.put_features({"ha": np.ones((2, 3), np.float32), "hb": np.zeros((4, 3), np.float32)}, "v")
    engine = create_engine(pg)
    try:
        def names() -> tuple[set[str | None], str | None]:
            found = inspect(engine)
            return {i["name"] for i in found.get_indexes("features")}, found.get_pk_constraint("features")["name"]

        fresh = names()
        with engine.begin() as conn:  # turn it back into what schema version 4 wrote
            conn.execute(text("DROP INDEX ix_features_used_at"))
            conn.execute(text("ALTER TABLE features RENAME TO visual_tokens"))
            conn.execute(text("ALTER TABLE visual_tokens RENAME CONSTRAINT features_pkey TO visual_tokens_pkey"))
            conn.execute(text("CREATE INDEX ix_visual_tokens_used_at ON visual_tokens (used_at)"))
            conn.execute(text("DELETE FROM migrations WHERE version > 4"))
            conn.execute(text("UPDATE meta SET value = '4' WHERE key = 'schema_version'"))
            before = sorted(conn.execute(text("SELECT * FROM visual_tokens")).all())
        with Store(pg) as upgraded:
            assert upgraded.schema_version() == db_schema.latest_version() == 6
            assert upgraded.check()[0] == []
        with engine.connect() as conn:
            assert sorted(conn.execute(text("SELECT * FROM features")).all()) == before and len(before) == 2
        assert not inspect(engine).has_table("visual_tokens")
        assert names() == fresh == ({"ix_features_used_at"}, "features_pkey")
        with Store(pg) as upgraded:
            np.testing.assert_array_equal(upgraded.get_features(["ha"], "v")["ha"], np.ones((2, 3), np.float32))
    finally:
        engine.dispose()
