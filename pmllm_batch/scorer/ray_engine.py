"""The Ray engine: the pipeline's stages (:mod:`pmllm_batch.scorer.stages`) on a Ray cluster (docs/RAY.md).

    driver:  plan (database) ─► rows (path, root, size, mtime_ns) + left-over hashes ─► Ray Data
    vision actors:   read (hash, RAW twins, decode) ─► encode ─► write photos + features (own Store)
    scoring actors:  features (cache) ─► project ─► score every missing (photo, profile) pair ─► write scores
    driver:  moves and missing files, failures, bursts, the model made current, the run's summary

The same stage functions as the local engine (:class:`pmllm_batch.scorer.batch.LibraryScorer`), and the same database
rules: only new or changed files are read (the plan comes from the photos table), only missing (photo, profile, model)
pairs are scored, and every write is idempotent (photos by path, features by (content hash, graph), scores unique per
(content hash, profile, model)), so a batch Ray retries after a worker died, or a re-run, duplicates nothing. The
driver holds the library's work lock for the whole run, as ``rank`` does.

Work items travel as rows, never as images: a worker opens the file at the path the driver saw (every node must see
the photos at the same path). Features go from the vision actors to the scoring actors through the feature cache (the
database), so a scoring batch that is retried, or a pair left over from an earlier run (a profile added later), reads
them from where every other engine does.

Each actor loads the models once (:func:`pmllm_batch.scorer.models.load_models`) and opens its own
:class:`~pmllm_batch.db.store.Store`; the scoring actors register the model (fingerprint, vision graph, demo flag) the
way :class:`pmllm_batch.scorer.known.ModelRegistry` does, so a later run with the same settings knows it without
loading anything. Ray itself is imported only when a run needs it (``pip install "pmllm-batch[ray]"``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pmllm_batch.config import Settings
from pmllm_batch.contracts import PhotoStatus
from pmllm_batch.db.records import ProfileRow
from pmllm_batch.db.store import Store
from pmllm_batch.errors import UserError
from pmllm_batch.log import get_logger
from pmllm_batch.profiles import Profile
from pmllm_batch.scan.discover import FileEntry
from pmllm_batch.scan.raw import is_raw
from pmllm_batch.scorer import stages
from pmllm_batch.scorer.batch import LibraryScorer, check_folder
from pmllm_batch.scorer.known import KnownModel, ModelRegistry, model_recipe
from pmllm_batch.scorer.models import ModelCache
from pmllm_batch.scorer.summary import RunSummary, saved_text

if TYPE_CHECKING:
    from ray.data import Dataset
    from tqdm import tqdm

    from pmllm_batch.model.pmllm import PrefixState
    from pmllm_batch.scorer.models import LoadedModels

log = get_logger("scorer.ray")

__all__ = [
    "RAY_EXTRA",
    "RayJob",
    "RayRunError",
    "WorkerNodeError",
    "RayScorer",
    "ScoringStage",
    "Throughput",
    "VisionStage",
    "ray_throughput",
    "require_ray",
    "scoring_throughput",
    "warm_up",
]

RAY_EXTRA = 'pip install "pmllm-batch[ray]"'
# Variables a worker needs to load the models as the driver would (offline flags); passed to every actor.
_FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "TOKENIZERS_PARALLELISM")
_REGISTER_TRIES = 5

Batch = dict[str, np.ndarray]


class RayRunError(UserError):
    """The cluster could not finish a run (a batch failed past Ray's retries, a worker raised). Exit code 75
    (``EX_TEMPFAIL``): what the workers committed is kept, and the same command again does the rest."""

    exit_code = 75


_RAISED = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit))(?:\([^)]*\))?: (.+)$")


def _last_line(exc: BaseException) -> str:
    """What a worker raised, in one line: the last ``SomeError: message`` line of Ray's report that is not one of
    Ray's own wrappers (their message carries the worker's traceback and advice on retries)."""
    texts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts.append(str(current))
        inner = getattr(current, "cause", None)
        current = inner if isinstance(inner, BaseException) else current.__cause__ or current.__context__
    found = ""
    for line in (ln.strip() for text in texts for ln in text.splitlines()):
        match = _RAISED.match(line)
        if match and not match.group(1).startswith("ray.") and "RayTaskError" not in match.group(1) \
                and match.group(1) != "UserCodeException":
            found = f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2)}"
    if not found:
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        found = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return found if len(found) <= 300 else found[:297] + "..."


def require_ray() -> None:
    """Raise one sentence naming the extra unless Ray (with Ray Data) can be imported.

    Raises:
        UserError: Ray is not installed (exit code 2).
    """
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError(f"the Ray engine needs Ray, which is not installed here: {RAY_EXTRA}.") from None


# ----------------------------------------------------------------------------------------------------------------------
# What every actor gets
# ----------------------------------------------------------------------------------------------------------------------


def _absolute_if_local(value: str, *, suffix: str = "") -> str:
    """A relative path that exists from here (ending in ``suffix``), made absolute (workers start in other folders);
    anything else (a preset name, a hub id, "none") as it was."""
    if not value or "://" in value or value.startswith("pkg:") or os.path.isabs(value) or value == "none":
        return value
    if not value.endswith(suffix):
        return value
    candidate = Path(value).expanduser()
    return str(candidate.absolute()) if candidate.exists() else value


def worker_settings(settings: Settings) -> Settings:
    """The settings as a worker must see them: every path resolved here (database URL, data and cache folders,
    local weights), the environment left out; CPU only when the actors reserve no GPU."""
    m = settings.model
    model = dataclasses.replace(
        m, preset=_absolute_if_local(m.preset, suffix=".json"), checkpoint=_absolute_if_local(m.checkpoint),
        vision_checkpoint=_absolute_if_local(m.vision_checkpoint), lm_path=_absolute_if_local(m.lm_path),
    )
    vision = settings.vision
    if settings.engine.gpus_per_actor <= 0:
        model = dataclasses.replace(model, device="cpu")
        vision = dataclasses.replace(vision, providers=("CPUExecutionProvider",))
    return dataclasses.replace(
        settings,
        model=model,
        vision=vision,
        db=dataclasses.replace(settings.db, url=settings.db_url()),
        paths=dataclasses.replace(settings.paths, data_dir=str(settings.data_dir()),
                                  cache_dir=str(settings.cache_dir())),
        environ=None,
    )


@dataclass(frozen=True)
class RayJob:
    """What every actor of a run needs (pickled to each): settings resolved by :func:`worker_settings`, the
    settings' recipe, the profiles to score and the environment to load the models in."""

    settings: Settings
    recipe: str
    profiles: tuple[tuple[int, Profile], ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings, profiles: Sequence[ProfileRow], recipe: str | None = None) -> RayJob:
        env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
        return cls(worker_settings(settings), recipe or model_recipe(settings),
                   tuple((int(p.id), p.profile) for p in profiles), env)


class WorkerNodeError(RuntimeError):
    """This worker node does not see what the driver sees (the library database, a photo folder): a cluster set-up
    mistake, raised so the run stops instead of writing a wrong database or failing every photo."""


def _node() -> str:
    import socket

    return socket.gethostname()


def _check_node(db_url: str) -> None:
    """The driver created the library: a SQLite file missing here means another machine (never create one here)."""
    if db_url.startswith("sqlite:///"):
        path = db_url[len("sqlite:///"):]
        if not os.path.exists(path):
            raise WorkerNodeError(f"the library database {path} does not exist on worker node {_node()}: a cluster of "
                                  "several machines needs a PostgreSQL library")


class _Actor:
    """Loads the models and opens the store once per actor."""

    def __init__(self, job: RayJob) -> None:
        os.environ.update(job.env)
        from pmllm_batch.scorer.models import load_models

        self.job = job
        self.settings = job.settings
        _check_node(job.settings.db_url())
        self.loaded: LoadedModels = load_models(job.settings)
        self.store = Store(job.settings.db_url())
        self.budget = job.settings.vision.cache_budget_bytes

    def __del__(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            try:
                store.close()
            except Exception:  # noqa: BLE001 - the process is going away
                pass


def _column(batch: Batch, name: str, n: int, default: Any) -> list[Any]:
    values = batch.get(name)
    return [default] * n if values is None else list(values)


class VisionStage(_Actor):
    """Ray Data callable class: the read and encode stages over a batch of work-item rows.

    Rows ``kind == "file"`` are read (content hash, RAW twin, decode), those without cached features encoded, and the
    photo rows and features written through the actor's own store (one transaction each); ``kind == "hash"`` rows (a
    photo already in the library whose pairs are left over) pass through. A file that cannot be read is a failed photo
    row with its reason, as in the local engine, never an error of the batch.

    Out: ``kind, path, content_hash, status, reason, message, encoded`` per row (``content_hash`` only for ok photos,
    ``encoded`` 1 on the row whose photo this batch encoded).
    """

    def __call__(self, batch: Batch) -> Batch:
        kinds = [str(k) for k in batch["kind"]]
        n = len(kinds)
        paths = [str(p) for p in _column(batch, "path", n, "")]
        out: dict[str, list[Any]] = {
            "kind": kinds,
            "path": paths,
            "content_hash": [str(h) for h in _column(batch, "content_hash", n, "")],
            "status": [PhotoStatus.OK.value if k == "hash" else "" for k in kinds],
            "reason": [""] * n,
            "message": [""] * n,
            "encoded": [0] * n,
        }
        rows = [i for i, k in enumerate(kinds) if k == "file"]
        if rows:
            roots, sizes, mtimes = batch["root"], batch["size"], batch["mtime_ns"]
            chunk = [FileEntry(Path(paths[i]), Path(str(roots[i])), int(sizes[i]), int(mtimes[i])) for i in rows]
            read = self.read(chunk)
            encoded_now = set(read.encoded)
            for i, prep in zip(rows, read.batch.prepared, strict=True):
                rec = prep.record
                ok = rec.status == PhotoStatus.OK and bool(rec.content_hash)
                out["status"][i] = str(rec.status.value if isinstance(rec.status, PhotoStatus) else rec.status)
                out["content_hash"][i] = rec.content_hash if ok and rec.content_hash else ""
                out["reason"][i] = str(rec.error_reason or "")
                out["message"][i] = str(rec.error_message or "")
                if rec.content_hash in encoded_now:
                    out["encoded"][i] = 1
                    encoded_now.discard(rec.content_hash)
        return {k: np.asarray(v) for k, v in out.items()}

    def read(self, chunk: Sequence[FileEntry]) -> _Read:
        """Read, encode and write one chunk of files (the local engine's ``_process_chunk``, without scoring)."""
        vision = self.loaded.vision
        graph = str(vision.graph_id)
        for root in {e.root for e in chunk}:
            if not root.is_dir():  # not one vanished file: the whole folder is not mounted on this node
                raise WorkerNodeError(f"the photo folder {root} is not visible on worker node {_node()}: every node "
                                      "must see the photos at the same path")
        hashes = [stages.safe_hash(e.path) for e in chunk]
        twins = stages.twins_in(self.store, chunk)
        cached = self.store.cached_hashes([h for h in hashes if h], graph)
        batch = stages.read_batch(chunk, self.settings.scan, hashes=hashes, twins=twins, cached=cached,
                                  preprocess=vision.preprocess)
        features = stages.encode_batch(vision, batch.need_encoding(cached))
        stages.write_features(self.store, features, graph, self.budget)
        stages.write_photos(self.store, batch)
        return _Read(batch, list(features))


@dataclass
class _Read:
    batch: stages.ReadBatch
    encoded: list[str]


def warm_up(loaded: LoadedModels) -> None:
    """Score one photo of zero features against a throwaway persona and forget both: the LLM path's one-time lazy set-up
    (the chat template compiled, the first kernels) then happens when the models load, not in the first batch an
    actor scores. No score, prefix or cache entry is kept."""
    import torch

    features = np.zeros((1, int(loaded.vision.num_features), int(loaded.vision.dim)), dtype=np.float32)
    tokens = stages.project(loaded.model, [features[0]])
    with torch.inference_mode():
        loaded.model.score_cached(loaded.model.encode_prefix("a person"), tokens)


def register_model(store: Store, loaded: LoadedModels, settings: Settings, recipe: str) -> KnownModel:
    """Register the loaded model through :class:`ModelRegistry`, as the local engine does (fingerprint, preset, demo
    flag and note; the recipe with its vision graph). Safe when several actors do it at once: one that lost the race to
    insert the fingerprint finds the other's row on its next try."""
    for attempt in range(_REGISTER_TRIES):
        try:
            return ModelRegistry(store, ModelCache(settings, loader=lambda _: loaded), recipe).loaded()
        except Exception:
            if attempt == _REGISTER_TRIES - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


class ScoringStage(_Actor):
    """Ray Data callable class: the score stage for the ok photos of a batch, every profile of the run.

    Per batch: which (photo, profile) pairs lack a score under this model (only those are scored), their features from
    the cache (a photo whose entry was evicted is decoded and encoded again), the projector once per photo, one
    persona prefix per profile (kept for the actor's life), scores written per profile in one transaction each.

    Out: the rows as they came, plus ``scored`` (new pairs, on the batch's first row), ``reencoded`` (photos whose
    cached features were gone) and the ``fingerprint`` of the model that scored them.
    """

    def __init__(self, job: RayJob) -> None:
        super().__init__(job)
        self.model = register_model(self.store, self.loaded, job.settings, job.recipe)
        self.profiles = dict(job.profiles)
        self._prefixes: dict[int, PrefixState] = {}
        self.batch_size = int(job.settings.score.batch_size)
        warm_up(self.loaded)  # with the model load, not in the first batch

    def _prefix(self, profile_id: int) -> PrefixState:
        if profile_id not in self._prefixes:
            self._prefixes[profile_id] = self.loaded.model.encode_prefix(self.profiles[profile_id])
        return self._prefixes[profile_id]

    def __call__(self, batch: Batch) -> Batch:
        kinds = [str(k) for k in batch["kind"]]
        n = len(kinds)
        statuses = [str(s) for s in _column(batch, "status", n, "")]
        hashes = [str(h) for h in batch["content_hash"]]
        ok = list(dict.fromkeys(h for h, k, s in zip(hashes, kinds, statuses, strict=True)
                                if h and (k == "hash" or s == PhotoStatus.OK)))
        started = time.time()
        scored, reencoded = self.score(ok) if ok else (0, 0)
        out: dict[str, Any] = {name: np.asarray(batch[name]) for name in batch}
        out["scored"] = np.asarray([scored] + [0] * (n - 1), dtype=np.int64)
        out["reencoded"] = np.asarray([reencoded] + [0] * (n - 1), dtype=np.int64)
        out["started"] = np.asarray([started] + [0.0] * (n - 1), dtype=np.float64)  # wall clock: ray_throughput
        out["ended"] = np.asarray([time.time()] + [0.0] * (n - 1), dtype=np.float64)
        out["fingerprint"] = np.asarray([self.model.fingerprint] * n)
        return out

    def score(self, hashes: Sequence[str]) -> tuple[int, int]:
        """Score every missing pair among ``hashes`` for the job's profiles; (pairs written, photos encoded again)."""
        todo: dict[int, list[str]] = {}
        for pid in self.profiles:  # one query per profile (not one per photo and profile)
            done = self.store.scored_among(pid, self.model.id, hashes)
            todo[pid] = [h for h in hashes if h not in done]
        wanted = {h for pending in todo.values() for h in pending}
        need = [h for h in hashes if h in wanted]
        if not need:
            return 0, 0
        features, new = stages.features_for(self.store, need, self.loaded.vision, self.settings.scan)
        stages.write_features(self.store, new, self.model.vision_id, self.budget)
        have = [h for h in need if h in features]
        if not have:
            return 0, len(new)
        row = {h: i for i, h in enumerate(have)}
        tokens = stages.project(self.loaded.model, [features[h] for h in have])  # once per photo, every profile
        written = 0
        for pid, pending in todo.items():
            ready = [h for h in pending if h in row]
            if not ready:
                continue
            rows = stages.score_tokens(self.loaded.model, self._prefix(pid), pid, ready,
                                       tokens[[row[h] for h in ready]], self.batch_size)
            written += stages.write_scores(self.store, self.model.id, rows)
        return written, len(new)


# ----------------------------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class PassResult:
    """What the rows coming back from one pass said."""

    written: dict[str, str] = field(default_factory=dict)  # path -> content hash of every file written as ok
    failures: list[dict[str, str]] = field(default_factory=list)
    encoded: int = 0
    scored: int = 0
    fingerprints: set[str] = field(default_factory=set)  # of the models the scoring actors loaded (one, normally)
    started: float = math.inf  # wall clock: the first scoring call's start, the last one's end (ray_throughput)
    ended: float = 0.0


def _file_row(e: FileEntry) -> dict[str, object]:
    return {"kind": "file", "path": str(e.path), "root": str(e.root), "size": int(e.size),
            "mtime_ns": int(e.mtime_ns), "content_hash": ""}


def _hash_row(h: str) -> dict[str, object]:
    return {"kind": "hash", "path": "", "root": "", "size": 0, "mtime_ns": 0, "content_hash": h}


class RayScorer:
    """``rank`` on a Ray cluster: :meth:`run` does what :meth:`LibraryScorer.run` does, with the read, encode and
    score stages on Ray Data actor pools (``[engine]`` settings: actors, CPUs and GPUs per actor, batch sizes).

    Connects to ``[engine] address`` (or ``$RAY_ADDRESS``, else starts Ray here) unless Ray is already initialised in
    this process (then that Ray is used and left running).
    """

    def __init__(self, settings: Settings, store: Store, *, progress: bool = False) -> None:
        self.settings = settings
        self.store = store
        self.progress = progress
        self.recipe = model_recipe(settings)
        self._started_ray = False
        # profiles, moves and the failure tally as the local engine does them (its models never load here)
        self.local = LibraryScorer(settings, store)

    # -- Ray ----------------------------------------------------------------------------------------------------------

    def connect(self) -> None:
        """Join (or start) the Ray cluster, once; quiet Ray Data's own progress output."""
        require_ray()
        import logging

        import ray
        from ray.data import DataContext

        if not ray.is_initialized():
            address = self.settings.engine.address or None
            try:
                quiet = logging.WARNING if log.isEnabledFor(logging.INFO) else logging.ERROR  # Ray's notes: -v
                ray.init(address=address, include_dashboard=False, logging_level=quiet, configure_logging=True)
            except ConnectionError as exc:
                raise UserError(f"cannot reach the Ray cluster at {address}: {exc}") from None
            self._started_ray = True
        with warnings.catch_warnings():  # Ray Data's default context sets its own deprecated fields
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # rank shows its own (stderr on a terminal), -q none
        ctx.print_on_execution_start = False
        # Ray Data reserves each operator a share of the cluster's CPUs and object store and holds back tasks past it:
        # with a pool using half a small cluster's CPUs (two actors of 0.5 on two CPUs) it kept one batch in flight
        # for the whole pool. Our blocks are rows of paths and hashes (features travel through the database), so there
        # is no memory to protect: the pools' sizes are the limit.
        ctx.op_resource_reservation_enabled = False
        if not log.isEnabledFor(logging.INFO):  # Ray Data's "execution finished" lines and hints only for -v
            logging.getLogger("ray.data").setLevel(logging.WARNING)
            for name in ("ray.data._internal.progress", "ray.data._internal.issue_detection"):
                logging.getLogger(name).setLevel(logging.ERROR)  # "progress bars disabled", "set memory=..."
        self._check_database()
        gpus = float(self.settings.engine.gpus_per_actor)
        if gpus > 0 and float(ray.cluster_resources().get("GPU", 0.0)) < gpus:
            raise UserError(f"[engine] gpus_per_actor is {gpus:g} but the Ray cluster has no GPU to give; set it to 0 "
                            "for CPU actors, or add GPU nodes.")

    def _check_database(self) -> None:
        """A SQLite library is one file on one machine: refuse it when the cluster's nodes are several machines (each
        worker would write into a database of its own at that path)."""
        import ray

        if not self.settings.db_url().startswith("sqlite"):
            return
        hosts = {n.get("NodeManagerAddress") for n in ray.nodes() if n.get("Alive")}
        if len(hosts) > 1:
            raise UserError(f"the Ray cluster spans {len(hosts)} machines, but the library is a SQLite file that only "
                            "this one can write: use a PostgreSQL library that every node can reach ([db] url = "
                            "postgresql+psycopg://USER@HOST/DB, or --db).")

    def close(self) -> None:
        """Shut down the Ray this scorer started (a cluster it joined keeps running)."""
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False

    # -- the run ------------------------------------------------------------------------------------------------------

    def run(self, roots: Sequence[str | Path], profile_names: Sequence[str] | None = None) -> RunSummary:
        """Scan ``roots`` and bring every selected profile's scores up to date on the cluster.

        Raises:
            UserError: A root is missing or not a folder, a named profile is unknown, Ray is missing or unreachable.
            KeyboardInterrupt: Ctrl-C; its message says what was saved before it.
        """
        require_ray()
        t0 = time.perf_counter()
        roots_abs = [Path(os.path.abspath(os.path.expanduser(str(r)))) for r in roots]
        for r in roots_abs:
            check_folder(r)
        profiles = self.local.select_profiles(profile_names)
        summary = RunSummary(profiles=len(profiles))
        run_id = self.store.start_run("rank", {"roots": [str(r) for r in roots_abs], "profiles": profile_names,
                                               "engine": "ray"})
        status = "ok"
        progress = _Progress(self.store)
        connected_before = self._started_ray  # a caller that connected first closes too
        try:
            with self.store.work_lock(on_wait=self.local.say_waiting) as held:
                if held:
                    self._run(roots_abs, profiles, summary, progress)
        except KeyboardInterrupt:
            status = "interrupted"
            summary.interrupted = True
            progress.settle(summary, self._known())
            raise KeyboardInterrupt(saved_text(summary)) from None
        finally:
            summary.elapsed_s = round(time.perf_counter() - t0, 3)
            self.store.finish_run(run_id, status, summary.to_dict())
            if not connected_before:
                self.close()
        return summary

    def _known(self) -> KnownModel | None:
        """The model these settings load, as the database knows it (a fresh look: actors may have registered it)."""
        return ModelRegistry(self.store, ModelCache(self.settings), self.recipe).known()

    def _run(self, roots: list[Path], profiles: list[ProfileRow], summary: RunSummary, progress: _Progress) -> None:
        plan, index, arrived = stages.plan(self.store, roots, self.settings.scan, summary)
        known = self._known()
        progress.start(known, profiles)
        files = [e for e in plan.todo if not is_raw(e.path)]
        raws = [e for e in plan.todo if is_raw(e.path)]
        leftover = self._leftover(profiles, known)
        written: dict[str, str] = {}
        if files or raws or leftover:
            # RAW files in a second pass: whether one is the twin of a JPEG depends on how that JPEG's row turned out
            result = self.process(files, leftover, profiles, summary)
            written.update(result.written)
            if raws:
                written.update(self.process(raws, [], profiles, summary).written)
        stages.settle(self.store, roots, plan, index, arrived, written, summary, full_scan=True)
        model = self._known()
        if model is not None:
            if self.store.ok_hashes():
                ModelRegistry(self.store, ModelCache(self.settings), self.recipe).note(model, summary)
            self._group(model.vision_id)

    def _leftover(self, profiles: Sequence[ProfileRow], model: KnownModel | None) -> list[str]:
        """Ok photos of the library lacking a score for one of ``profiles`` under ``model`` (every ok photo when the
        model is not known yet: the scoring actors skip the pairs that turn out to be scored)."""
        library = self.store.ok_hashes()
        if not library or model is None:
            return library
        lacking: set[str] = set()
        for prof in profiles:
            lacking |= set(library) - self.store.scored_hashes(prof.id, model.id)
        return sorted(lacking)

    def process(self, files: Sequence[FileEntry], hashes: Sequence[str], profiles: Sequence[ProfileRow],
                summary: RunSummary) -> PassResult:
        """One pass on the cluster: read and encode ``files``, then score every missing pair of the photos read and
        of ``hashes`` (photos already in the library) for ``profiles``; the counts go into ``summary``."""
        import ray.data
        from ray.data import ActorPoolStrategy

        result = PassResult()
        rows = [_file_row(e) for e in files] + [_hash_row(h) for h in hashes]
        if not rows:
            return result
        self.connect()
        eng = self.settings.engine
        job = RayJob.build(self.settings, profiles, self.recipe)
        vision_bs = int(eng.vision_batch_size or self.settings.vision.batch_size)
        score_bs = int(eng.score_batch_size or self.settings.score.batch_size)
        cpus, gpus = float(eng.cpus_per_actor), float(eng.gpus_per_actor) or None
        ds: Dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / vision_bs)))
        if files:  # pools at full size from the start: each actor loads the models once, in its constructor
            ds = ds.map_batches(VisionStage, fn_constructor_args=(job,), batch_size=vision_bs, batch_format="numpy",
                                compute=ActorPoolStrategy(size=int(eng.vision_actors)), num_cpus=cpus, num_gpus=gpus,
                                udf_modifying_row_count=False)
        ds = ds.map_batches(ScoringStage, fn_constructor_args=(job,), batch_size=score_bs, batch_format="numpy",
                            compute=ActorPoolStrategy(size=int(eng.scoring_actors)), num_cpus=cpus, num_gpus=gpus,
                            udf_modifying_row_count=False)
        bar = self._bar(len(rows), "rank (ray)")
        try:
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                self._take(out, result, summary)
                if bar is not None:
                    bar.update(len(out["kind"]))
        except (KeyboardInterrupt, UserError):
            raise
        except Exception as exc:  # Ray gave up on a batch (its retries spent), or a worker raised
            log.debug("the Ray run failed", exc_info=True)
            raise RayRunError(f"the run on the Ray cluster failed ({_last_line(exc)}); what the workers committed "
                              "is saved: run the same command again to do the rest.") from None
        finally:
            if bar is not None:
                bar.close()
        if len(result.fingerprints) > 1:
            log.warning("the scoring actors loaded different models (%s): check that every node has the same weights",
                        ", ".join(sorted(result.fingerprints)))
        return result

    def _take(self, out: Batch, result: PassResult, summary: RunSummary) -> None:
        n = len(out["kind"])
        kinds, paths, hashes = out["kind"], out["path"], out["content_hash"]
        statuses = _column(out, "status", n, "")  # a pass of left-over hashes has no vision stage
        reasons, messages = _column(out, "reason", n, ""), _column(out, "message", n, "")
        for i in range(n):
            if str(kinds[i]) != "file":
                continue
            status = str(statuses[i])
            if status == PhotoStatus.OK and str(hashes[i]):
                result.written[str(paths[i])] = str(hashes[i])
            elif status == PhotoStatus.FAILED:
                failure = {"path": str(paths[i]), "reason": str(reasons[i]), "message": str(messages[i])}
                result.failures.append(failure)
                summary.fresh_failures.append(failure)
        encoded = int(np.sum(out["encoded"])) if "encoded" in out else 0
        encoded += int(np.sum(out["reencoded"]))
        scored = int(np.sum(out["scored"]))
        result.encoded += encoded
        result.scored += scored
        summary.encoded += encoded
        summary.scored += scored
        if scored:
            result.started = min(result.started, float(np.min(out["started"][out["started"] > 0])))
            result.ended = max(result.ended, float(np.max(out["ended"])))
        result.fingerprints.update(str(fp) for fp in out["fingerprint"])

    # -- bookkeeping on the driver: the local engine's own ----------------------------------------------------------

    def _group(self, vision_id: str) -> None:
        """Bursts and near-duplicates of the photos encoded on the workers (pooled from the feature cache)."""
        from pmllm_batch.scorer.linking import Grouper

        grouper = Grouper(self.store, self.settings.group)
        grouper.backfill(vision_id, self.store.ok_hashes())
        grouper.update(vision_id)

    def _bar(self, total: int, desc: str) -> tqdm[None] | None:
        if not self.progress or total < 1:
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="item", leave=False)


class _Progress:
    """What the database held when the run started, so an interrupted run can say what the workers saved (they
    commit batches the driver has not heard back about yet)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.features = 0
        self.scores: int | None = None
        self.profiles: list[ProfileRow] = []

    def start(self, model: KnownModel | None, profiles: Sequence[ProfileRow]) -> None:
        self.features = self.store.feature_cache_bytes()[0]
        self.profiles = list(profiles)
        self.scores = self._pairs(model.id) if model is not None else None

    def _pairs(self, model_id: int) -> int:
        names = {p.name for p in self.profiles}
        return sum(n for name, n in self.store.score_counts(model_id).items() if name in names)

    def settle(self, summary: RunSummary, model: KnownModel | None) -> None:
        try:
            summary.encoded = max(summary.encoded, self.store.feature_cache_bytes()[0] - self.features)
            if model is not None and self.scores is not None:
                summary.scored = max(summary.scored, self._pairs(model.id) - self.scores)
        except Exception:  # noqa: BLE001 - the counts from the rows already seen stand
            pass


# ----------------------------------------------------------------------------------------------------------------------
# Throughput (the bench)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    """One scoring pass: the pairs its actors wrote and the seconds they took, from the first scoring call's start to
    the last one's end on the actors' clocks (model loads and Ray's start-up left out; the feature reads, persona
    prefixes and writes in)."""

    actors: int
    pairs: int
    seconds: float

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.pairs and self.seconds > 0 else 0.0


@contextlib.contextmanager
def _pools_ready_first(timeout_s: int = 600) -> Iterator[None]:
    """Ray Data hands out batches as soon as one actor of a pool is ready (the others still loading the models), so a
    throughput measured without waiting would time one actor doing the work of several: wait for every actor first."""
    from ray.data import DataContext

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = DataContext.get_current()
    before = ctx.wait_for_min_actors_s
    ctx.wait_for_min_actors_s = timeout_s
    try:
        yield
    finally:
        ctx.wait_for_min_actors_s = before


def scoring_throughput(settings: Settings, store: Store, n_actors: int,
                       profiles: Sequence[ProfileRow] | None = None) -> Throughput:
    """Score every (photo, profile) pair that ``store``'s library lacks for ``profiles`` (default: every profile)
    with ``n_actors`` scoring actors, from the feature cache, and time it (:class:`Throughput`).

    The library's features must be cached (rank it first, with either engine); every actor of the pool is ready
    before the first batch is handed out. Uses Ray as it finds it (an initialised Ray, ``[engine] address``, else a
    local one, shut down again).
    """
    engine = dataclasses.replace(settings.engine, kind="ray", scoring_actors=int(n_actors))
    scorer = RayScorer(dataclasses.replace(settings, engine=engine), store)
    scorer.connect()
    try:
        rows = list(profiles) if profiles is not None else store.list_profiles()
        with _pools_ready_first():
            result = scorer.process([], scorer._leftover(rows, scorer._known()), rows, RunSummary())
    finally:
        scorer.close()
    span = result.ended - result.started if result.scored else 0.0
    return Throughput(int(n_actors), result.scored, max(span, 0.0))


def ray_throughput(settings: Settings, photos_dir: str | Path, n_actors: int, *,
                   profiles: Iterable[Profile] | None = None) -> float:
    """Scoring throughput of ``n_actors`` scoring actors, in (photo, profile) pairs per second.

    Ranks ``photos_dir`` once into a throwaway SQLite library (so the features are cached), then adds the other
    profiles and scores every pair from the cache with :func:`scoring_throughput`. Uses Ray as it finds it (an
    initialised Ray, ``[engine] address``, else a local one). 64 photos and the default profiles (4 scored) make 256
    pairs. The bench's Ray arm (:mod:`pmllm_batch.bench.ray`) measures the same way, against the local engine.
    """
    import tempfile

    from pmllm_batch.model.prompts import render_persona

    people = list(profiles) if profiles is not None else _bench_profiles()
    with tempfile.TemporaryDirectory(prefix="pmllm-ray-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.sqlite'}"
        engine = dataclasses.replace(settings.engine, kind="ray", scoring_actors=int(n_actors))
        bench = dataclasses.replace(settings, db=dataclasses.replace(settings.db, url=url), engine=engine)
        with Store(url) as store:
            store.upsert_profile(people[0], render_persona(people[0]))
            scorer = RayScorer(bench, store)
            scorer.connect()
            try:
                scorer.run([photos_dir])  # reads, encodes and scores the first profile: the features are cached
                for person in people[1:]:
                    store.upsert_profile(person, render_persona(person))
                return scoring_throughput(bench, store, n_actors).pairs_per_s
            finally:
                scorer.close()


def _bench_profiles() -> list[Profile]:
    return [
        Profile(name="bench-a", age="22-25", gender="female", photography_experience="expert",
                big_five={"openness": 9.0}),
        Profile(name="bench-b", age=64, big_five={"openness": 2.0, "extraversion": 2.0}),
        Profile(name="bench-c", age=35, gender="male"),
        Profile(name="bench-d", age=17, photography_experience="beginner"),
        Profile(name="bench-e", age=45, gender="female", big_five={"conscientiousness": 8.0}),
    ]
