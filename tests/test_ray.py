"""The Ray engine (``rank --engine ray``): the local engine's scores and failed rows, idempotent re-runs, a worker node
killed mid-run against PostgreSQL, and one sentence when Ray is not installed.

Ray starts once for the session (``ray_session``: ``ray.init(num_cpus=2)`` in a short temporary folder); the CLI runs
in-process and uses it. The node-death test builds its own cluster (``ray.cluster_utils.Cluster``: a head and two
worker nodes on this machine) and runs ``rank`` in a child process that joins it, since one process joins one cluster.
Every test that needs Ray skips, saying why, only when ``import ray`` fails (``pip install "pmllm-batch[ray]"``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from pmllm_batch.db.store import Store
from pmllm_batch.scan.discover import FileEntry
from tests.helpers import CLIEnv, isolated_env
from tests.imagegen import make_bad_files, make_photo_folder
from tests.test_postgres import PostgresServer, pg_server, photos, query  # noqa: F401 - pg_server is a fixture
from tests.test_smol import needs_smol  # smol_cache and smol_gguf are session fixtures in conftest

try:
    import ray

    RAY_MISSING: str | None = None
except ImportError:
    RAY_MISSING = 'Ray is not installed (pip install "pmllm-batch[ray]")'

needs_ray = pytest.mark.skipif(RAY_MISSING is not None, reason=RAY_MISSING or "")

REPO = Path(__file__).resolve().parents[1]
PROFILES = {
    "ana": dict(age="22-25", gender="female", photography_experience="expert", big_five={"openness": 9}),
    "bernd": dict(age=64, big_five={"openness": 2, "extraversion": 2}),
    "coarse": dict(age=35, gender="female"),
}
TOLERANCE = 1e-4


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """Ray for the whole session, on this machine's two cores (the CLI's Ray engine finds it initialised)."""
    if RAY_MISSING is not None:
        pytest.skip(RAY_MISSING)
    folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=folder, logging_level="ERROR", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------------
# One library, both engines
# ---------------------------------------------------------------------------------------------------------------------


def _scores(db: Path) -> dict[tuple[str, str], tuple[float, list[float]]]:
    with Store(f"sqlite:///{db}") as store, store.engine.connect() as conn:
        rows = conn.execute(text("SELECT s.content_hash, p.name, s.score, s.probs_json FROM scores s "
                                 "JOIN profiles p ON p.id = s.profile_id"))
        return {(h, name): (score, json.loads(probs)) for h, name, score, probs in rows}


def _photos(db: Path, last: str = "error_message") -> dict[str, tuple[str, str | None, str | None]]:
    with Store(f"sqlite:///{db}") as store, store.engine.connect() as conn:
        return {r[0]: (r[1], r[2], r[3]) for r in conn.execute(text(
            f"SELECT path, status, error_reason, {last} FROM photos"))}


@contextlib.contextmanager
def phantoms(lib: Path) -> Iterator[dict[str, str]]:
    """Work items a worker cannot read, added to the plan of both engines: a file that vanished after the walk and a
    folder (``open`` fails). Yields path -> the failure reason it must become."""
    from pmllm_batch.scan import plan as plan_module
    from pmllm_batch.scorer import stages

    gone = lib / "vanished.jpg"
    folder = lib / "folder.jpg"
    folder.mkdir(exist_ok=True)
    extra = [FileEntry(gone, lib, 1234, 1), FileEntry(folder, lib, 4096, 1)]
    real = plan_module.plan_scan

    def plan_scan(*args: Any, **kwargs: Any) -> Any:
        plan = real(*args, **kwargs)
        plan.todo = [*plan.todo, *extra]
        plan.entries = [*plan.entries, *extra]
        plan.new += len(extra)
        return plan

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stages, "plan_scan", plan_scan)  # both engines plan through stages.plan
        yield {str(gone): "vanished", str(folder): "unreadable"}
    shutil.rmtree(folder)


@dataclass
class Ranked:
    env: CLIEnv
    lib: Path
    good: dict[str, Path]
    bad: dict[str, Path]  # reason -> path
    unreadable: dict[str, str]  # path -> reason (the phantoms)
    local: dict[str, Any]  # first summaries
    ray: dict[str, Any]
    local_db: Path
    ray_db: Path

    def rank(self, db: Path, engine: str, *extra: str) -> dict[str, Any]:
        code, out, err = self.env.run_cli("--db", str(db), "rank", str(self.lib), "--json", "--engine", engine, *extra)
        assert code == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def n_ok(self) -> int:
        """Photos the local engine stored as ok (the good ones it ranks: some may be skipped, e.g. too small)."""
        return len({h for status, _, h in _photos(self.local_db, "content_hash").values() if status == "ok"})

    def add_profile(self, name: str) -> None:
        for db in (self.local_db, self.ray_db):
            path = self.env.write_profile(name, **PROFILES[name])
            code, _, err = self.env.run_cli("--db", str(db), "profile", "add", str(path))
            assert code == 0, err


@pytest.fixture(scope="module")
def ranked(ray_session: None, model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ranked]:
    """The same library (good photos, every hostile file, two paths no worker can read) and profiles, ranked once
    with each engine into its own database (the ``env`` world, for the module: both runs share it)."""
    base = tmp_path_factory.mktemp("engines")
    with isolated_env(base, {"PMLLM_PATHS__CACHE_DIR": str(model_cache)}) as env:
        lib = base / "library"
        good = make_photo_folder(lib)
        bad = make_bad_files(lib / "bad")
        r = Ranked(env, lib, good, bad, {}, {}, {}, base / "local.sqlite", base / "ray.sqlite")
        for name in ("ana", "bernd"):
            r.add_profile(name)
        with phantoms(lib) as unreadable:
            r.unreadable = unreadable
            r.local = r.rank(r.local_db, "local")
            r.ray = r.rank(r.ray_db, "ray")
        yield r


@needs_ray
@pytest.mark.integration
def test_ray_gives_the_scores_the_local_engine_gives(ranked: Ranked) -> None:
    counts = ("scanned", "new", "changed", "skipped", "failed", "missing", "encoded", "scored", "profiles", "demo")
    assert {k: ranked.ray[k] for k in counts} == {k: ranked.local[k] for k in counts}
    n_ok = ranked.n_ok()
    assert n_ok > 0 and ranked.ray["encoded"] == n_ok and ranked.ray["scored"] == 2 * n_ok
    assert ranked.ray["model"] == ranked.local["model"] and ranked.ray["demo"] is True
    assert ranked.ray.get("note") == ranked.local.get("note")
    local, remote = _scores(ranked.local_db), _scores(ranked.ray_db)
    assert set(remote) == set(local) and len(local) == 2 * n_ok
    for key, (score, probs) in local.items():
        assert remote[key][0] == pytest.approx(score, abs=TOLERANCE), key
        assert remote[key][1] == pytest.approx(probs, abs=TOLERANCE), key


@needs_ray
@pytest.mark.integration
def test_bad_input_through_ray_becomes_the_failed_rows_the_local_engine_writes(ranked: Ranked) -> None:
    local, remote = _photos(ranked.local_db), _photos(ranked.ray_db)
    assert remote == local  # every row: status, reason and message
    failed = {p: why for p, (status, why, _) in remote.items() if status == "failed"}
    expected = {str(path): reason for reason, path in ranked.bad.items()} | ranked.unreadable
    assert failed == expected
    by_path = {f["path"]: (f["reason"], f["message"]) for f in ranked.ray["failures"]}
    assert by_path == {f["path"]: (f["reason"], f["message"]) for f in ranked.local["failures"]}
    assert set(by_path) == set(expected)


@needs_ray
@pytest.mark.integration
def test_a_second_ray_run_does_nothing_and_a_new_profile_is_scored_from_the_cache(ranked: Ranked) -> None:
    again = ranked.rank(ranked.ray_db, "ray")
    assert (again["new"], again["encoded"], again["scored"]) == (0, 0, 0)
    assert again["skipped"] == len(ranked.good) + len(ranked.bad) and again["model"] == ranked.ray["model"]
    assert again["failed"] == len(ranked.bad)
    ranked.add_profile("coarse")  # pairs left over: no vision, every photo scored once for the new profile
    later_local = ranked.rank(ranked.local_db, "local", "--profile", "coarse")
    later_ray = ranked.rank(ranked.ray_db, "ray", "--profile", "coarse")
    n_ok = ranked.n_ok()
    assert (later_ray["encoded"], later_ray["scored"]) == (later_local["encoded"], later_local["scored"]) == (0, n_ok)
    local, remote = _scores(ranked.local_db), _scores(ranked.ray_db)
    assert set(remote) == set(local) and len(local) == 3 * n_ok
    for key, (score, _) in local.items():
        assert remote[key][0] == pytest.approx(score, abs=TOLERANCE), key


@needs_ray
@needs_smol
@pytest.mark.integration  # not `slow` (which the default run deselects): the CI command must run it
@pytest.mark.timeout(1200)  # the first smol test of a session pays for the GGUF conversion (minutes on a busy machine)
def test_smol_through_ray_gives_the_local_scores_failed_rows_and_nothing_to_do_again(
    env: CLIEnv, ray_session: None, smol_cache: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch,
    example_photos: list[Path],
) -> None:
    """The real SmolLM2 (smol preset, its shipped adapter) through both engines: four photos, the hostile files, two
    profiles. Three SmolLM2 loads in all (local; a vision and a scoring actor); the second Ray run loads none."""
    cache = env.root / "cache"  # SmolLM2 as the first smol run converts it (made once per session), the shared tower
    cache.mkdir()
    (cache / "llm").symlink_to(smol_cache / "llm", target_is_directory=True)
    if (model_cache / "onnx").is_dir():
        (cache / "onnx").symlink_to(model_cache / "onnx", target_is_directory=True)
    monkeypatch.setenv("PMLLM_PATHS__CACHE_DIR", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lib = env.root / "lib"
    lib.mkdir()
    for photo in example_photos[:4]:
        shutil.copy2(photo, lib / photo.name)
    bad = make_bad_files(lib / "bad")  # every hostile file of the scan tests: reason -> path
    dbs = {engine: env.root / f"{engine}.sqlite" for engine in ("local", "ray")}
    summaries = {}
    for engine, db in dbs.items():
        for name in ("ana", "bernd"):
            path = env.write_profile(name, **PROFILES[name])
            code, _, err = env.run_cli("--db", str(db), "profile", "add", str(path))
            assert code == 0, err
        summaries[engine] = _smol_rank(env, db, lib, engine)
    n_ok = len(_ok_hashes(dbs["local"]))
    assert n_ok == 4 and summaries["ray"]["scored"] == summaries["local"]["scored"] == 2 * n_ok
    assert summaries["ray"]["model"] == summaries["local"]["model"]
    assert summaries["ray"]["failed"] == summaries["local"]["failed"] == len(bad)
    local, remote = _scores(dbs["local"]), _scores(dbs["ray"])
    assert set(remote) == set(local) and len(local) == 2 * n_ok
    for key, (score, probs) in local.items():
        assert remote[key][0] == pytest.approx(score, abs=TOLERANCE), key
        assert remote[key][1] == pytest.approx(probs, abs=TOLERANCE), key
    assert _photos(dbs["ray"]) == _photos(dbs["local"])  # every row: status, failure reason and message
    failed = {p: why for p, (status, why, _) in _photos(dbs["ray"]).items() if status == "failed"}
    assert failed == {str(path): reason for reason, path in bad.items()}
    again = _smol_rank(env, dbs["ray"], lib, "ray")
    assert (again["new"], again["encoded"], again["scored"]) == (0, 0, 0) and again["failed"] == len(bad)
    assert _scores(dbs["ray"]) == remote


def _smol_rank(env: CLIEnv, db: Path, lib: Path, engine: str) -> dict[str, Any]:
    code, out, err = env.run_cli("--db", str(db), "--preset", "smol", "rank", str(lib), "--json", "--engine", engine)
    assert code == 0, err
    return dict(json.loads(out.strip().splitlines()[-1]))


def _ok_hashes(db: Path) -> set[str]:
    return {h for status, _, h in _photos(db, "content_hash").values() if status == "ok" and h}


# ---------------------------------------------------------------------------------------------------------------------
# A worker node dies mid-run (PostgreSQL)
# ---------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A head (no CPUs: the driver's) and two worker nodes of two CPUs each, all on this machine."""
    from ray.cluster_utils import Cluster

    folder = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", folder)  # the cluster's files (and its address file) stay in there
    # the session's ray.init set RAY_AUTH_MODE=token, whose token lives under a HOME this test does not have
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    c = None
    try:
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        for _ in range(2):
            c.add_node(num_cpus=2)
        c.wait_for_nodes()
        yield c
    finally:
        if c is not None:
            c.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


def _start_rank(env: CLIEnv, url: str, lib: Path, address: str, log: Path, cache: Path) -> subprocess.Popen[str]:
    # one actor per pool (Ray Data spreads them over the two worker nodes), small batches: many in flight
    child = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PMLLM_PATHS__CACHE_DIR": str(cache),
             "PMLLM_ENGINE__CPUS_PER_ACTOR": "0.5", "PMLLM_ENGINE__VISION_BATCH_SIZE": "2",
             "PMLLM_ENGINE__SCORE_BATCH_SIZE": "2"}
    with open(log, "a") as err:
        return subprocess.Popen([sys.executable, "-m", "pmllm_batch", "--db", url, "rank", str(lib), "--json",
                                 "--ray-address", address], cwd=REPO, env=child, stdout=subprocess.PIPE, stderr=err,
                                text=True)


@needs_ray
@pytest.mark.integration
def test_a_worker_node_dies_mid_run_and_every_pair_is_scored_exactly_once(
    env: CLIEnv, pg_server: PostgresServer, model_cache: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setenv("PMLLM_SCAN__MIN_SIDE", "0")  # small photos (48 x 36) decode fast; rank them all
    url = pg_server.url()
    lib = env.root / "lib"
    n = 48
    photos(lib, n, seed=700)
    for name in ("ana", "bernd"):
        code, _, err = env.run_cli("--db", url, "profile", "add", str(env.write_profile(name, **PROFILES[name])))
        assert code == 0, err
    log = env.root / "rank.log"

    def scores() -> set[tuple[Any, ...]]:
        return set(query(pg_server, url, "SELECT content_hash, profile_id, model_id, score FROM scores"))

    with cluster(monkeypatch) as c:
        proc = _start_rank(env, url, lib, c.address, log, model_cache)
        deadline = time.monotonic() + 240
        while not query(pg_server, url, "SELECT 1 FROM photos LIMIT 1"):  # the first vision batch is committed
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no photo row was written in time\n" + log.read_text()[-3000:]
            time.sleep(0.02)
        c.remove_node(next(iter(c.worker_nodes)))  # one worker node dies, its actors with it
        before = scores()
        done = len(query(pg_server, url, "SELECT path FROM photos"))
        assert len(before) < 2 * n or done < n, "the run ended before the node died"
        out, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:  # a run that lost its batches: a re-run on the surviving node completes it
            rerun = _start_rank(env, url, lib, c.address, log, model_cache)
            out, _ = rerun.communicate(timeout=300)
            assert rerun.returncode == 0, log.read_text()[-5000:]
    after = scores()
    assert before <= after  # nothing committed before the node died was lost or changed
    rows = query(pg_server, url, "SELECT content_hash, profile_id, model_id FROM scores")
    ok = query(pg_server, url, "SELECT COUNT(DISTINCT content_hash) FROM photos WHERE status = 'ok'")
    assert ok[0][0] == n and len(rows) == len(set(rows)) == 2 * n  # every pair scored exactly once
    assert json.loads(out.strip().splitlines()[-1])["failed"] == 0
    code, out, err = env.run_cli("--db", url, "rank", str(lib), "--json", "--engine", "ray")  # nothing left: no Ray
    again = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and (again["new"], again["encoded"], again["scored"]) == (0, 0, 0), err


# ---------------------------------------------------------------------------------------------------------------------
# Without Ray
# ---------------------------------------------------------------------------------------------------------------------


def test_the_ray_engine_without_ray_installed_is_one_sentence_and_exit_2(
    env: CLIEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("ray", "ray.data"):
        monkeypatch.setitem(sys.modules, name, None)  # `import ray` raises ImportError
    lib = tmp_path / "lib"
    lib.mkdir()
    expected = ('pmllm-batch: error: the Ray engine needs Ray, which is not installed here: '
                'pip install "pmllm-batch[ray]".\n')
    for args in (("--engine", "ray"), ("--ray-address", "auto")):
        code, out, err = env.run_cli("rank", str(lib), *args)
        assert (code, out, err) == (2, "", expected)
    env.write_config('[engine]\nkind = "ray"\n')
    assert env.run_cli("rank", str(lib)) == (2, "", expected)
    assert not env.db_path.exists()  # nothing was opened or created


def test_engine_settings_come_from_config_and_flags(env: CLIEnv) -> None:
    import argparse

    from pmllm_batch.cli.commands.rank import with_engine_options
    from pmllm_batch.config import load_config
    from pmllm_batch.scorer.ray_engine import worker_settings

    env.write_config('[engine]\nkind = "ray"\nscoring_actors = 3\ncpus_per_actor = 0.25\n')
    settings = load_config()
    assert (settings.engine.kind, settings.engine.scoring_actors, settings.engine.cpus_per_actor) == ("ray", 3, 0.25)
    args = argparse.Namespace(engine="local", ray_address=None)
    assert with_engine_options(args, settings).engine.kind == "local"
    args = argparse.Namespace(engine=None, ray_address="10.0.0.1:6379")
    flagged = with_engine_options(args, replace(settings, engine=replace(settings.engine, kind="local")))
    assert (flagged.engine.kind, flagged.engine.address) == ("ray", "10.0.0.1:6379")
    worker = worker_settings(settings)  # what an actor sees: every path resolved here, CPU without GPUs
    assert worker.db.url == settings.db_url() and worker.paths.cache_dir == str(settings.cache_dir())
    assert worker.model.device == "cpu" and worker.vision.providers == ("CPUExecutionProvider",)


def test_a_worker_that_does_not_see_the_library_stops_the_run_in_one_sentence(tmp_path: Path) -> None:
    from pmllm_batch.scorer.ray_engine import WorkerNodeError, _check_node, _last_line

    with pytest.raises(WorkerNodeError, match="does not exist on worker node .*PostgreSQL"):
        _check_node(f"sqlite:///{tmp_path / 'elsewhere.sqlite'}")
    _check_node("postgresql+psycopg://u@h/db")  # a server: nothing to check here
    # what Ray reports (the worker's traceback, Ray's own wrappers and advice) boils down to the worker's error
    report = RuntimeError("ray::MapWorker() (pid=1, ip=10.0.0.2)\n  File \"x.py\", line 3, in read\n"
                          "pmllm_batch.scorer.ray_engine.WorkerNodeError: the photo folder /p is not visible\n"
                          "ray.exceptions.UserCodeException: UDF failed to process a data block.\n"
                          "To change retry attempts, configure `ray.data.DataContext`.")
    assert _last_line(report) == "WorkerNodeError: the photo folder /p is not visible"
