"""Section 8: end to end as a user runs it, and a rank with nothing to do.

* **End to end** (:func:`end_to_end_runs`): ``rank`` of a library of ``n_photos`` new photos for four profiles, from
  an empty database, with the model loaded beforehand (a daemon or a second run pays the load once): scan, hash,
  decode, vision, one-pass scoring of every profile, writes. ``end_to_end_pairs_per_s`` is (photo, profile) pairs
  over that wall time, per LLM stage (float32 and int8), and ``projected_hours_10k_photos_4_profiles`` is 40,000
  pairs at that rate.
* **No-op rank** (:func:`noop_rank`): ``pmllm-batch rank`` as a fresh process (what a cron ``watch --once`` pays) on an
  unchanged library of ``n_noop`` photos, every one already scored for every profile. The library's rows and
  scores are written straight into the database (20,000 encodes would take the bench hours); its files are real
  files on disk that the scan stats. Its small real part was ranked by the same settings first, so the database
  knows their model: nothing loads. The same database times the start-up of ``--version``, ``status`` and
  ``profile list`` (fresh processes, best of three).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .inputs import BENCH_PROFILES, make_photo_variants

# Four people: the bench's three and a fourth (the "4 profiles", so the prefix cost is amortised as in use).
E2E_PROFILES = (*BENCH_PROFILES, dataclasses.replace(BENCH_PROFILES[1], name="dora", age=45, gender="female"))
PAIRS_10K_4 = 10_000 * 4


def _loader(preset: str, quantize: str) -> Any:
    """The ModelCache loader: the scorer's own for demo/smol; the random-weight one for cpu (int8 applied here)."""
    if preset != "cpu":
        return None
    from .library import _random_cpu_loader

    def load(settings: Any, build_tower: bool | None = None) -> Any:
        loaded = _random_cpu_loader(settings, build_tower=build_tower)
        if quantize == "int8":
            from pmllm_batch.model.checkpoint import fingerprint

            from .int8 import quantize_in_place

            model = quantize_in_place(loaded.model)
            loaded = dataclasses.replace(loaded, fingerprint=fingerprint(model, vision_graph_id=loaded.vision.graph_id))
        return loaded

    return load


def end_to_end_runs(spec: dict[str, Any]) -> dict[str, Any]:
    """Spec keys: preset, work, cache_dir, photos, n_photos, threads, checkpoint, quantize (list)."""
    from pmllm_batch.db.store import Store
    from pmllm_batch.model.prompts import render_persona
    from pmllm_batch.scorer.batch import LibraryScorer
    from pmllm_batch.scorer.models import ModelCache

    from .library import _library_settings
    from .timing import set_threads

    preset, threads, n = spec["preset"], int(spec["threads"]), int(spec["n_photos"])
    set_threads(threads)
    work = Path(spec["work"])
    lib = work / "library"
    make_photo_variants([Path(p) for p in spec["photos"]], lib, n)
    out: dict[str, Any] = {"preset": preset, "threads": threads, "photos": n, "profiles": len(E2E_PROFILES)}
    for quantize in spec.get("quantize", ["none"]):
        run_dir = work / f"run-{quantize}"
        settings = _library_settings(run_dir, Path(spec["cache_dir"]), preset, threads, spec.get("checkpoint", ""))
        settings = dataclasses.replace(settings, score=dataclasses.replace(settings.score, quantize=quantize))
        loader = _loader(preset, quantize)
        models = ModelCache(settings, loader=loader) if loader else ModelCache(settings)
        t0 = time.perf_counter()
        models.get()
        load_s = time.perf_counter() - t0
        with Store(settings.db_url()) as store:
            for p in E2E_PROFILES:
                store.upsert_profile(p, render_persona(p))
            scorer = LibraryScorer(settings, store, models=models)
            t = time.perf_counter()
            summary = scorer.run([lib])
            wall = time.perf_counter() - t
            entries, nbytes = store.visual_cache_bytes()
        rate = summary.scored / wall if wall > 0 else 0.0
        out[quantize] = {
            "load_s": load_s,
            "wall_s": wall,
            "encoded": summary.encoded,
            "scored": summary.scored,
            "pairs_per_s": rate,
            "projected_hours_10k_photos_4_profiles": PAIRS_10K_4 / rate / 3600 if rate else None,
            "visual_cache_bytes_per_photo": nbytes / max(entries, 1),
        }
        del models, scorer
    return out


def _bulk_files(folder: Path, n: int) -> list[Path]:
    """``n`` small distinct files (the no-op scan only stats them; their rows say they are scored photos)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        sub = folder / f"{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir(exist_ok=True)
        p = sub / f"IMG_{i:05d}.jpg"
        p.write_bytes(b"\xff\xd8\xff\xe0" + i.to_bytes(4, "big") + b"\0" * 56)
        paths.append(p)
    return paths


def noop_rank(spec: dict[str, Any]) -> dict[str, Any]:
    """Spec keys: work, cache_dir, photos, n_noop, threads. The demo preset (the CLI's own loader and recipe)."""
    from pmllm_batch.db import PhotoRecord
    from pmllm_batch.db.store import Store

    work = Path(spec["work"])
    root = work / "library"
    make_photo_variants([Path(p) for p in spec["photos"]], root / "real", 4)
    db = work / "library.sqlite"
    config = work / "config.toml"
    config.write_text(
        "[model]\npreset = \"demo\"\noffline = true\ndevice = \"cpu\"\n"
        f"[db]\nurl = \"sqlite:///{db}\"\n"
        f"[paths]\ndata_dir = \"{work / 'data'}\"\ncache_dir = \"{spec['cache_dir']}\"\n"
        "[vision]\nproviders = [\"CPUExecutionProvider\"]\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PMLLM_")}
    env.update({"HOME": str(work / "home"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})

    def cli(*args: str) -> tuple[float, dict[str, Any]]:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pmllm_batch", "--config", str(config), *args], env=env,
                              capture_output=True, text=True, timeout=900, check=False)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"pmllm-batch {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr[-800:]}")
        lines = proc.stdout.strip().splitlines()
        return wall, json.loads(lines[-1]) if "--json" in args and lines else {}

    profiles = work / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    names = []
    for p in E2E_PROFILES:
        (profiles / f"{p.name}.toml").write_text(f"name = \"{p.name}\"\nage = {json.dumps(p.age)}\n", encoding="utf-8")
        names.append(str(profiles / f"{p.name}.toml"))
    cli("profile", "add", *names)
    first_s, first = cli("rank", str(root), "--json", "--top", "1")
    n = int(spec["n_noop"])
    files = _bulk_files(root / "bulk", n)
    with Store(f"sqlite:///{db}") as store:
        model_id = store.current_model_id()
        assert model_id is not None
        records = []
        for i, p in enumerate(files):
            st = p.stat()
            records.append(PhotoRecord(path=str(p), root=str(root), content_hash=f"{i:064x}", size=st.st_size,
                                       mtime_ns=st.st_mtime_ns, width=1024, height=768, format="JPEG"))
        for i in range(0, len(records), 2000):
            store.upsert_photos(records[i : i + 2000])
        for prof in store.list_profiles():
            rows = [(f"{i:064x}", prof.id, 3.0, [0.2] * 5) for i in range(n)]
            for i in range(0, n, 5000):
                store.add_scores(model_id, rows[i : i + 5000])
    runs = []
    for _ in range(int(spec.get("repeats", 2))):
        wall, summary = cli("rank", str(root), "--json", "--top", "1")
        runs.append({"wall_s": wall, "scanned": summary.get("scanned"), "encoded": summary.get("encoded"),
                     "scored": summary.get("scored"), "skipped": summary.get("skipped")})
    # start-up of the commands that never load a model, on this 20,000-photo database (best of three, fresh processes)
    startup = {}
    for name, args in (("version", ("--version",)), ("status", ("status",)), ("profile_list", ("profile", "list"))):
        startup[name] = min(cli(*args)[0] for _ in range(3))
    shutil.rmtree(root / "bulk", ignore_errors=True)
    return {
        "startup_s": startup,
        "photos": n + 4,
        "first_rank_s": first_s,
        "first_rank_scored": first.get("scored"),
        "runs": runs,
        "noop_rank_s": min(r["wall_s"] for r in runs),
    }


def worker_main(argv: list[str]) -> int:
    """``python -m pmllm_batch.bench --e2e-worker SPEC RESULT``."""
    spec = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    result = {"end_to_end": end_to_end_runs(spec["end_to_end"]), "noop": noop_rank(spec["noop"])}
    Path(argv[2]).write_text(json.dumps(result), encoding="utf-8")
    return 0
