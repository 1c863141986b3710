"""Section 9: the Ray engine's scoring throughput with one and two scoring actors, against the local engine, measured
in the same run on the same library (docs/RAY.md, "Throughput").

One library (``n_photos`` photos derived from the bench's real ones) is read and encoded once by the local engine, so
its features are cached; then, round by round (arms alternating in order), four fresh profiles are scored from that
cache for every photo by each arm:

* ``local``: :class:`~pmllm_batch.scorer.batch.LibraryScorer`'s ``score_missing``, models loaded beforehand, torch on
  ``threads`` threads (one: what each actor gets);
* ``ray_1_actor`` / ``ray_2_actors``: :func:`~pmllm_batch.scorer.ray_engine.scoring_throughput` with one and two
  scoring actors (``cpus_per_actor`` each, every actor ready before the first batch), timed on the actors' clocks.

Each arm's figure is its pairs over the median seconds of its rounds. Everything runs in a child process
(``python -m pmllm_batch.bench --ray-worker SPEC RESULT``) that starts its own Ray on this machine's CPUs, on the demo
preset whatever the bench's preset (its actors load the models the way ``rank --engine ray`` does, which the cpu
preset's random weights cannot). Without Ray the section is a reason, not an error. Run it alone with
``pmllm-batch bench --only ray`` (``--quick``: 16 photos, one round, a plumbing check).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .codec import from_json, to_json
from .end_to_end import E2E_PROFILES
from .inputs import find_photos, make_photo_variants
from .library import SectionError, _library_settings, run_worker
from .machine import load_average
from .timing import TimingStats, set_threads, stats

if TYPE_CHECKING:
    from pmllm_batch.config import Settings
    from pmllm_batch.db.records import ProfileRow
    from pmllm_batch.db.store import Store
    from pmllm_batch.scorer.batch import LibraryScorer

Row = tuple[str, str, str]

ARMS = ("local", "ray_1_actor", "ray_2_actors")
RAY_MISSING = 'Ray is not installed (pip install "pmllm-batch[ray]")'
MIN_PAIRS = 256  # the targets are stated at >= 256 pairs
TWO_VS_ONE_TARGET = 1.6  # 2 scoring actors >= 1.6x one
ONE_VS_LOCAL_TARGET = 0.75  # 1 actor within 25 % of the local engine: >= 0.75x its pairs/s
SECTION = "9 ray engine"
WORKER_NICENESS = 0  # the actors' niceness: the local arm's (Ray's default is 15)


@dataclass(frozen=True)
class RaySizes:
    """Photos in the library (x 4 profiles = pairs per arm and round) and rounds per arm."""

    photos: int
    rounds: int


RAY_SIZES = {False: RaySizes(512, 5), True: RaySizes(16, 1)}


@dataclass
class RaySpec:
    """What the child measures: a library of ``n_photos`` in ``work``, ``rounds`` of every arm."""

    work: str
    cache_dir: str  # a model cache (the bench's ONNX export when it is the demo model's; else made on first use)
    photos: list[str]  # source photos the library's variants are made from
    n_photos: int
    rounds: int
    threads: int = 1  # torch threads of the local arm: Ray gives an actor of fewer than 2 CPUs one thread
    cpus_per_actor: float = 0.5  # fractional: Ray Data's own tasks need a CPU (docs/RAY.md)
    score_batch: int = 0  # photos per scoring call, both engines; 0 = the shipped [score] batch_size
    preset: str = "demo"


@dataclass
class ArmResult(TimingStats):
    """One arm: seconds per pass over its rounds (median, min, max), the pairs each pass scored, pairs / median."""

    pairs: int
    pairs_per_s: float
    rounds_pairs_per_s: list[float] = field(default_factory=list)


@dataclass
class RayResult:
    """Section 9's figures (the JSON object ``ray``); ``skipped`` says why nothing was measured."""

    preset: str
    photos: int
    profiles: int
    pairs: int  # per arm and round: photos x profiles
    rounds: int
    skipped: str | None = None
    score_batch: int = 0
    cpus: int = 0  # the CPUs the child's Ray was given (this machine's)
    cpus_per_actor: float = 0.0
    threads: int = 0
    ray_version: str | None = None
    worker_niceness: int | None = None  # of the actors (the local arm runs at this process's, 0)
    ray_start_s: float | None = None
    arms: dict[str, ArmResult] = field(default_factory=dict)
    local_engine_pairs_per_s: float | None = None
    ray_pairs_per_s_1_actor: float | None = None
    ray_pairs_per_s_2_actors: float | None = None
    two_actors_vs_one: float | None = None  # ray_pairs_per_s_2_actors / ray_pairs_per_s_1_actor
    one_actor_vs_local: float | None = None  # ray_pairs_per_s_1_actor / local_engine_pairs_per_s
    load_average_start: list[float] | None = None
    load_average_end: list[float] | None = None


def ray_missing() -> str | None:
    """Why the Ray arm cannot run here (Ray or Ray Data not importable), or None."""
    try:
        if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.data") is None:
            return RAY_MISSING
    except (ImportError, ValueError):
        return RAY_MISSING
    return None


def skipped(spec: RaySpec, reason: str) -> RayResult:
    """The section when it could not run: its sizes and the reason; every figure None."""
    n = len(E2E_PROFILES)
    return RayResult(spec.preset, spec.n_photos, n, spec.n_photos * n, spec.rounds, skipped=reason)


# ----------------------------------------------------------------------------------------------------------------------
# The measurement (the child process)
# ----------------------------------------------------------------------------------------------------------------------


def ray_runs(spec: RaySpec) -> RayResult:
    """Measure every arm (see the module's docstring); runs in the child process of :func:`run_ray_child`."""
    import ray

    from pmllm_batch.db.store import Store
    from pmllm_batch.scorer.batch import LibraryScorer
    from pmllm_batch.scorer.models import ModelCache
    from pmllm_batch.scorer.ray_engine import warm_up
    from pmllm_batch.scorer.summary import RunSummary

    work = Path(spec.work)
    load_start = load_average()
    set_threads(spec.threads)
    lib = work / "library"
    make_photo_variants([Path(p) for p in spec.photos], lib, spec.n_photos)
    settings = _arm_settings(spec)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with Store(settings.db_url()) as store:
        models = ModelCache(settings)
        local = LibraryScorer(settings, store, models=models)
        local.sync([lib], RunSummary())  # read and encode once: every arm scores from the cache
        warm_up(models.get())  # as each scoring actor does when it loads
        folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
        try:
            started = _start_ray(cpus, folder)
            seconds, pairs = _rounds(spec, settings, store, local)
        finally:
            ray.shutdown()
            shutil.rmtree(folder, ignore_errors=True)
    arms = {arm: _arm(seconds[arm], pairs) for arm in ARMS}
    local_rate, one, two = (arms[a].pairs_per_s for a in ARMS)
    return RayResult(
        preset=spec.preset, photos=spec.n_photos, profiles=len(E2E_PROFILES), pairs=pairs, rounds=spec.rounds,
        score_batch=int(settings.engine.score_batch_size), cpus=cpus, cpus_per_actor=spec.cpus_per_actor,
        threads=spec.threads, ray_version=str(ray.__version__), worker_niceness=WORKER_NICENESS,
        ray_start_s=started, arms=arms,
        local_engine_pairs_per_s=local_rate, ray_pairs_per_s_1_actor=one, ray_pairs_per_s_2_actors=two,
        two_actors_vs_one=two / one if one else None, one_actor_vs_local=one / local_rate if local_rate else None,
        load_average_start=load_start, load_average_end=load_average(),
    )


def _arm_settings(spec: RaySpec) -> Settings:
    """The library's settings (the bench's: shipped defaults, its own paths, ONNX int8 vision) with the Ray engine's
    keys: both engines score ``score_batch`` photos per call."""
    base = _library_settings(Path(spec.work), Path(spec.cache_dir), spec.preset, spec.threads)
    batch = int(spec.score_batch or base.score.batch_size)
    engine = dataclasses.replace(base.engine, kind="ray", cpus_per_actor=float(spec.cpus_per_actor),
                                 score_batch_size=batch)
    return dataclasses.replace(base, engine=engine, score=dataclasses.replace(base.score, batch_size=batch))


def _start_ray(cpus: int, folder: str) -> float:
    """Start a Ray of ``cpus`` CPUs in this process, its files in ``folder``; the seconds it took."""
    import logging

    import ray
    import ray.data

    # Ray runs its workers at niceness 15 by default: on a shared machine the actors would then yield to every other
    # process while the local arm (this process, niceness 0) does not, and the ratios would measure the neighbours
    os.environ["RAY_worker_niceness"] = str(WORKER_NICENESS)
    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
             _temp_dir=folder)
    # its worker processes and Ray Data's own actors (started by a first dataset) up before anything is timed
    ray.get([ray.remote(num_cpus=0)(_noop).remote() for _ in range(cpus)])
    ray.data.range(2).materialize()
    return time.perf_counter() - t0


def _noop() -> int:
    return 0


def _rounds(spec: RaySpec, settings: Settings, store: Store,
            local: LibraryScorer) -> tuple[dict[str, list[float]], int]:
    """Every arm once per round (order alternating), each on four fresh profiles: seconds per arm, pairs per pass."""
    from pmllm_batch.scorer.ray_engine import scoring_throughput
    from pmllm_batch.scorer.summary import RunSummary

    expected = spec.n_photos * len(E2E_PROFILES)
    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for r in range(spec.rounds):
        for arm in ARMS if r % 2 == 0 else ARMS[::-1]:
            rows = _fresh_profiles(store)
            if arm == "local":
                summary = RunSummary()
                t0 = time.perf_counter()
                local.scoring.score_missing(rows, summary)
                pairs, span = summary.scored, time.perf_counter() - t0
            else:
                tp = scoring_throughput(settings, store, 1 if arm == "ray_1_actor" else 2, rows)
                pairs, span = tp.pairs, tp.seconds
            if pairs != expected or span <= 0:
                raise RuntimeError(f"{arm}, round {r + 1}: scored {pairs} pairs in {span:.3f} s, expected {expected}")
            seconds[arm].append(span)
    return seconds, expected


def _fresh_profiles(store: Store) -> list[ProfileRow]:
    """The four bench profiles with no score yet: removed (with their scores) and added again (new ids, so no
    persona prefix of an earlier round is reused either)."""
    from pmllm_batch.model.prompts import render_persona

    known = {p.name for p in store.list_profiles()}
    for p in E2E_PROFILES:
        if p.name in known:
            store.remove_profile(p.name)
        store.upsert_profile(p, render_persona(p))
    return [store.get_profile(p.name) for p in E2E_PROFILES]


def _arm(seconds: Sequence[float], pairs: int) -> ArmResult:
    st = stats(seconds)
    return ArmResult(*st.parts(), pairs=pairs, pairs_per_s=pairs / st.median_s,
                     rounds_pairs_per_s=[pairs / s for s in seconds])


# ----------------------------------------------------------------------------------------------------------------------
# The parent side: the child process, the checks, the rows
# ----------------------------------------------------------------------------------------------------------------------


def measure_ray(spec: RaySpec, timeout_s: float = 1800) -> RayResult | SectionError:
    """Section 9 in a child process; a reason (``skipped``) without Ray, the child's error when it failed."""
    why = ray_missing()
    if why is not None:
        return skipped(spec, why)
    work = Path(spec.work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = run_worker("--ray-worker", spec, work / "spec.json", work / "result.json", "ray", timeout_s)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return SectionError(str(exc))
    return from_json(RayResult, data)


def worker_main(argv: Sequence[str]) -> int:
    """``python -m pmllm_batch.bench --ray-worker SPEC RESULT``: the child side of :func:`measure_ray`."""
    spec = from_json(RaySpec, json.loads(Path(argv[1]).read_text(encoding="utf-8")))
    Path(argv[2]).write_text(json.dumps(to_json(ray_runs(spec))), encoding="utf-8")
    return 0


def ray_checks(result: RayResult | SectionError | None) -> dict[str, bool | None]:
    """The issue's two targets: pass / fail, None where not applicable (Ray missing, fewer than 256 pairs); no keys
    when the section did not run (``--quick``)."""
    if result is None:
        return {}
    if isinstance(result, SectionError):
        return {"ray_2_actors_at_least_1.6x_1": False, "ray_1_actor_within_25pct_of_local": False}
    enough = result.skipped is None and result.pairs >= MIN_PAIRS
    two, one = result.two_actors_vs_one, result.one_actor_vs_local
    return {
        "ray_2_actors_at_least_1.6x_1": (two is not None and two >= TWO_VS_ONE_TARGET) if enough else None,
        "ray_1_actor_within_25pct_of_local": (one is not None and one >= ONE_VS_LOCAL_TARGET) if enough else None,
    }


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}"


def ray_rows(result: RayResult | SectionError | None) -> list[Row]:
    """Section 9's table rows (none when it did not run)."""
    if result is None:
        return []
    if isinstance(result, SectionError):
        return [(SECTION, "FAILED", result.error.splitlines()[-1][:150])]
    what = f"{result.photos} photos x {result.profiles} profiles ({result.pairs} pairs) from the feature cache"
    if result.skipped is not None:
        return [(SECTION, what, f"not run: {result.skipped}")]
    rows = [(SECTION, what + ", pairs/s: local engine / Ray 1 actor / Ray 2 actors",
             f"{_f(result.local_engine_pairs_per_s)} / {_f(result.ray_pairs_per_s_1_actor)} / "
             f"{_f(result.ray_pairs_per_s_2_actors)}")]
    two, one = result.two_actors_vs_one, result.one_actor_vs_local
    rows.append((SECTION, "2 actors vs 1 (target >= 1.6x) / 1 actor vs local (target >= 0.75x)",
                 f"{'n/a' if two is None else f'{two:.2f}x'} / {'n/a' if one is None else f'{one:.2f}x'}"))
    rows.append((SECTION, "Ray CPUs, CPUs / threads / niceness per actor (local: 1 thread, 0), score batch, rounds",
                 f"{result.cpus}, {result.cpus_per_actor:g} / {result.threads} / {result.worker_niceness}, "
                 f"{result.score_batch}, {result.rounds}"))
    rows.append((SECTION, "load average at start / end of the section",
                 f"{result.load_average_start} / {result.load_average_end}"))
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# This section alone: pmllm-batch bench --only ray
# ----------------------------------------------------------------------------------------------------------------------


def run_only(out_dir: str | os.PathLike[str] = "bench-out", quick: bool = False, *, photos: str | None = None,
             as_json: bool = False, progress: Callable[[str], None] | None = None) -> int:
    """Measure section 9 alone, print it (table or JSON) and write ``bench-ray[-quick].json``; exit status 1 when a
    target that applies fails."""
    sizes = RAY_SIZES[quick]
    with tempfile.TemporaryDirectory(prefix="pmllm-bench-ray-") as tmp:
        spec = RaySpec(work=str(Path(tmp) / "ray"), cache_dir=str(Path(tmp) / "cache"),
                       photos=[str(p) for p in find_photos(photos)], n_photos=sizes.photos, rounds=sizes.rounds)
        (progress or (lambda _m: None))(f"Ray engine vs local engine: {spec.n_photos} photos x "
                                        f"{len(E2E_PROFILES)} profiles, {spec.rounds} round(s) (section 9)")
        t0 = time.perf_counter()
        result = measure_ray(spec)
    checks = ray_checks(result)
    data = {"ray": to_json(result), "checks": checks, "elapsed_s": time.perf_counter() - t0,
            "command": "pmllm-batch bench --only ray" + (" --quick" if quick else "")}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench-ray{'-quick' if quick else ''}.json").write_text(json.dumps(data, indent=2) + "\n",
                                                                     encoding="utf-8")
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        for sec, fig, val in ray_rows(result):
            sys.stdout.write(f"{sec}  {fig}  {val}\n")
        word = {True: "pass", False: "FAIL", None: "n/a"}
        sys.stdout.write("checks: " + ", ".join(f"{k} {word[v]}" for k, v in checks.items()) + "\n")
    return 1 if any(v is False for v in checks.values()) else 0
