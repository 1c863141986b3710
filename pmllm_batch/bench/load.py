"""Section 7: loading the models for the ONNX vision path with a warm artefact, with and without a torch tower.

Each load runs in a fresh interpreter (``python -m pmllm_batch.bench --load-worker SPEC RESULT``), so its time
includes nothing cached by this process and its resident memory is its own: ``after`` is the shipped loader (no
torch vision tower when the ONNX export exists), ``before`` the same loader told to build the tower anyway, which is
what every load did before (open_clip's tower built and its weights read, then dropped for the ONNX graph). The
two alternate, so a change of machine load hits both.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .codec import from_json, to_json
from .inputs import SEED
from .library import _proc_status_mb, run_worker

if TYPE_CHECKING:
    from pmllm_batch.scorer.models import LoadedModels


@dataclass
class LoadSpec:
    """One load child: the preset's loader, told to build the torch tower (``before``) or not (``after``)."""

    preset: str
    work: str
    cache_dir: str
    threads: int
    seed: int
    checkpoint: str
    build_tower: bool = False


@dataclass
class LoadRun:
    """One load in a fresh interpreter: seconds, RSS after it, and whether a torch tower was built or kept."""

    load_s: float
    rss_mb: float | None
    peak_rss_mb: float | None
    rss_before_load_mb: float | None
    tower_builds: int
    tower_kept: bool
    fingerprint: str


@dataclass
class LoadArm:
    """Medians over an arm's loads (RSS figures: a missing one counts as 0), and the loads themselves."""

    load_s: float
    rss_mb: float
    peak_rss_mb: float
    tower_builds: int  # the most any of its loads built
    runs: list[LoadRun]


@dataclass
class LoadResult:
    """Section 7's figures (the JSON object ``model_load``): ``after`` (no tower) against ``before`` (tower built)."""

    rounds: int
    before: LoadArm
    after: LoadArm
    same_fingerprint: bool
    model_load_s: float  # after.load_s
    model_load_rss_mb: float  # after.rss_mb
    model_load_s_with_tower: float  # before.load_s
    model_load_rss_mb_with_tower: float  # before.rss_mb
    model_load_peak_rss_mb: float  # after.peak_rss_mb
    model_load_peak_rss_mb_with_tower: float  # before.peak_rss_mb


def load_once(spec: LoadSpec) -> LoadRun:
    """One load (in the calling process): seconds, RSS after it, and whether a torch tower was left or built."""
    from unittest import mock

    import open_clip.model
    import torch

    builder = open_clip.model._build_vision_tower
    calls = {"n": 0}

    def counted(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        return builder(*args, **kwargs)

    load = _loader(spec)
    # an untrained adapter (checkpoint "none") is random: the same seed in every child gives the same model, hence
    # the same fingerprint and the ONNX export the warm-up child made
    torch.manual_seed(spec.seed)
    rss0 = _proc_status_mb("VmRSS")
    with mock.patch.object(open_clip.model, "_build_vision_tower", counted):
        t0 = time.perf_counter()
        loaded = load()
        load_s = time.perf_counter() - t0
    return LoadRun(
        load_s=load_s,
        rss_mb=_proc_status_mb("VmRSS"),
        peak_rss_mb=_proc_status_mb("VmHWM"),
        rss_before_load_mb=rss0,
        tower_builds=calls["n"],
        tower_kept=loaded.model.tower is not None,
        fingerprint=loaded.fingerprint,
    )


def _loader(spec: LoadSpec) -> Callable[[], LoadedModels]:
    """The preset's own load (demo/smol: ``load_models``; cpu: the random-weight loader), with the bench's settings."""
    from pmllm_batch.scorer.models import load_models

    from .library import _library_settings, _random_cpu_loader

    settings = _library_settings(Path(spec.work), Path(spec.cache_dir), spec.preset, spec.threads, spec.checkpoint)
    if spec.preset == "cpu":
        return lambda: _random_cpu_loader(settings, build_tower=spec.build_tower)
    return lambda: load_models(settings, build_tower=spec.build_tower)


def worker_main(argv: Sequence[str]) -> int:
    """``python -m pmllm_batch.bench --load-worker SPEC RESULT``."""
    spec = from_json(LoadSpec, json.loads(Path(argv[1]).read_text(encoding="utf-8")))
    Path(argv[2]).write_text(json.dumps(to_json(load_once(spec))), encoding="utf-8")
    return 0


def _child(spec: LoadSpec, timeout_s: float = 600) -> LoadRun:
    work = Path(spec.work)
    work.mkdir(parents=True, exist_ok=True)
    tag = "tower" if spec.build_tower else "no-tower"
    data = run_worker(
        "--load-worker", spec, work / f"load-{tag}.json", work / f"load-{tag}-result.json", "load", timeout_s
    )
    return from_json(LoadRun, data)


def measure_load(
    preset: str,
    work: Path,
    cache_dir: Path,
    threads: int,
    *,
    rounds: int = 1,
    checkpoint: str = "",
    warmup: bool = True,
    seed: int = SEED,
) -> LoadResult:
    """Model load time and RSS for the ONNX backend with a warm artefact, before (tower built) and after (none).

    ``warmup``: one untimed child first, which exports the artefact into ``cache_dir/onnx`` when it is missing (the
    timed children then all find it). Returns medians over ``rounds`` alternating pairs of children.
    """
    base = LoadSpec(preset=preset, work=str(work), cache_dir=str(cache_dir), threads=threads, seed=seed,
                    checkpoint=checkpoint)
    if warmup:
        _child(base)
    runs: dict[str, list[LoadRun]] = {"before": [], "after": []}
    for r in range(rounds):
        order = ("before", "after") if r % 2 == 0 else ("after", "before")
        for arm in order:
            runs[arm].append(_child(dataclasses.replace(base, build_tower=arm == "before")))
    before, after = _arm(runs["before"]), _arm(runs["after"])
    return LoadResult(
        rounds=rounds,
        before=before,
        after=after,
        same_fingerprint=len({x.fingerprint for rows in runs.values() for x in rows}) == 1,
        model_load_s=after.load_s,
        model_load_rss_mb=after.rss_mb,
        model_load_s_with_tower=before.load_s,
        model_load_rss_mb_with_tower=before.rss_mb,
        model_load_peak_rss_mb=after.peak_rss_mb,
        model_load_peak_rss_mb_with_tower=before.peak_rss_mb,
    )


def _arm(rows: list[LoadRun]) -> LoadArm:
    return LoadArm(
        load_s=statistics.median(x.load_s for x in rows),
        rss_mb=statistics.median(x.rss_mb or 0.0 for x in rows),
        peak_rss_mb=statistics.median(x.peak_rss_mb or 0.0 for x in rows),
        tower_builds=max(x.tower_builds for x in rows),
        runs=rows,
    )
