"""Section 7: loading the models for the ONNX vision path with a warm artefact, with and without a torch tower.

Each load runs in a fresh interpreter (``python -m pmllm_batch.bench --load-worker SPEC RESULT``), so its time
includes nothing cached by this process and its resident memory is its own: ``after`` is the shipped loader (no
torch vision tower when the ONNX export exists), ``before`` the same loader told to build the tower anyway, which is
what every load did before (open_clip's tower built and its weights read, then dropped for the ONNX graph). The
two alternate, so a change of machine load hits both.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pmllm_batch.bench.library import run_worker

from .inputs import SEED


def _proc_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_once(spec: dict[str, Any]) -> dict[str, Any]:
    """One load (in the calling process): seconds, RSS after it, and whether a torch tower was left or built."""
    from unittest import mock

    import open_clip.model

    from pmllm_batch.bench.library import _library_settings, _random_cpu_loader
    from pmllm_batch.scorer.models import load_models

    work = Path(spec["work"])
    settings = _library_settings(
        work, Path(spec["cache_dir"]), spec["preset"], int(spec["threads"]), spec.get("checkpoint", "")
    )
    builder = open_clip.model._build_vision_tower
    calls = {"n": 0}

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return builder(*args, **kwargs)

    build_tower = bool(spec["build_tower"])
    import torch

    # an untrained adapter (checkpoint "none") is random: the same seed in every child gives the same model, hence
    # the same fingerprint and the ONNX export the warm-up child made
    torch.manual_seed(int(spec.get("seed", SEED)))
    rss0 = _proc_status_mb("VmRSS")
    with mock.patch.object(open_clip.model, "_build_vision_tower", counted):
        t0 = time.perf_counter()
        if spec["preset"] == "cpu":
            loaded = _random_cpu_loader(settings, build_tower=build_tower)
        else:
            loaded = load_models(settings, build_tower=build_tower)
        load_s = time.perf_counter() - t0
    return {
        "load_s": load_s,
        "rss_mb": _proc_status_mb("VmRSS"),
        "peak_rss_mb": _proc_status_mb("VmHWM"),
        "rss_before_load_mb": rss0,
        "tower_builds": calls["n"],
        "tower_kept": loaded.model.tower is not None,
        "fingerprint": loaded.fingerprint,
    }


def worker_main(argv: Sequence[str]) -> int:
    """``python -m pmllm_batch.bench --load-worker SPEC RESULT``."""
    spec = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    Path(argv[2]).write_text(json.dumps(load_once(spec)), encoding="utf-8")
    return 0


def _child(spec: dict[str, Any], timeout_s: float = 600) -> dict[str, Any]:
    work = Path(spec["work"])
    work.mkdir(parents=True, exist_ok=True)
    tag = "tower" if spec["build_tower"] else "no-tower"
    return run_worker(
        "--load-worker", spec, work / f"load-{tag}.json", work / f"load-{tag}-result.json", "load", timeout_s
    )


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
) -> dict[str, Any]:
    """Model load time and RSS for the ONNX backend with a warm artefact, before (tower built) and after (none).

    ``warmup``: one untimed child first, which exports the artefact into ``cache_dir/onnx`` when it is missing (the
    timed children then all find it). Returns medians over ``rounds`` alternating pairs of children.
    """
    base = {"preset": preset, "work": str(work), "cache_dir": str(cache_dir), "threads": threads, "seed": seed}
    base["checkpoint"] = checkpoint
    if warmup:
        _child({**base, "build_tower": False})
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for r in range(rounds):
        order = ("before", "after") if r % 2 == 0 else ("after", "before")
        for arm in order:
            runs[arm].append(_child({**base, "build_tower": arm == "before"}))
    out: dict[str, Any] = {"rounds": rounds}
    for arm, rows in runs.items():
        out[arm] = {
            "load_s": statistics.median(x["load_s"] for x in rows),
            "rss_mb": statistics.median(x["rss_mb"] or 0.0 for x in rows),
            "peak_rss_mb": statistics.median(x["peak_rss_mb"] or 0.0 for x in rows),
            "tower_builds": max(x["tower_builds"] for x in rows),
            "runs": rows,
        }
    fps = {x["fingerprint"] for rows in runs.values() for x in rows}
    out["same_fingerprint"] = len(fps) == 1
    out["model_load_s"] = out["after"]["load_s"]
    out["model_load_rss_mb"] = out["after"]["rss_mb"]
    out["model_load_s_with_tower"] = out["before"]["load_s"]
    out["model_load_rss_mb_with_tower"] = out["before"]["rss_mb"]
    out["model_load_peak_rss_mb"] = out["after"]["peak_rss_mb"]
    out["model_load_peak_rss_mb_with_tower"] = out["before"]["peak_rss_mb"]
    return out
