"""The watch service: a file watcher plus a periodic reconcile scan, driving :class:`LibraryScorer`.

Life of the service (everything here runs in the main thread; the observer thread only fills the tracker):

1. start the observer (inotify, or polling when asked for or when inotify is unavailable or out of watches), so
   nothing that changes during step 2 is missed;
2. a reconcile scan: the full incremental scan of :meth:`LibraryScorer.sync` plus scoring of every missing
   (photo, profile) pair. After a crash or ``kill -9`` this is what resumes the work, and idempotent writes keep
   every score unique;
3. a loop of short ticks: settled event paths → one batch (``sync(paths=...)`` then ``score_profiles``), a new
   reconcile every ``reconcile_interval`` seconds or after lost events (inotify overflow, a dead observer),
   re-reading profiles whenever :meth:`Store.profiles_version` changes (the library is scored for them from
   the visual-token cache, without vision), and unloading the models after ``idle_unload`` seconds idle;
   the models load when a photo first needs them (or at start with ``[watch] preload``), and a line says so
   before a load starts, since one takes seconds to a minute; with ``[learn] xmp_profile`` (or ``[xmp] profile``)
   settled sidecar events are that person's stars, learned at once (:mod:`~pmllm_batch.daemon.sidecars`; each
   reconcile also reads the sidecars that changed while nobody watched);
4. on SIGTERM/SIGINT: the scorer stops after its in-flight chunk (each chunk is one committed transaction), the
   observer stops, the run is recorded, and the command exits 0. A chunk still running ``stop_grace_s`` seconds
   after the signal is abandoned (its uncommitted pairs are redone by the next start), so the daemon is gone within
   a few seconds whatever the chunk size. A second signal kills at once.

A root that is not there (a NAS not mounted yet, an unplugged disk, or an empty mount point of a folder the database
knows photos under) is not an error for the daemon: it is logged, checked again with back-off (1 s, doubling, at
most every :data:`ROOT_CHECK_MAX_S` seconds), and scanned once it appears; its rows are left as they are meanwhile.
Only mistakes a restart cannot fix exit 2 (a root that is a file, an unknown ``--profile``). With ``--once`` a
missing root is an error, and files still inside the settle window are waited for instead of skipped.

One log line per batch says what happened: "reconcile (initial scan): ...", then "batch 1: ...", "batch 2: ..."
for the event batches (reconcile scans and profile updates have their own names and are not numbered).
``pmllm-batch status`` works from another shell at any time (WAL).

The pieces, one concern each: :mod:`~pmllm_batch.daemon.signals` (stop requests, signals, the grace timer),
:mod:`~pmllm_batch.daemon.observer` (inotify or polling, health checks, re-watching),
:mod:`~pmllm_batch.daemon.roots` (absent roots and their back-off), :mod:`~pmllm_batch.daemon.profiles` (which
profiles, and what changed), :mod:`~pmllm_batch.daemon.batching` (folder events, moves, ``--once``'s wait) and
:mod:`~pmllm_batch.daemon.batchlog` (the batch line), :mod:`~pmllm_batch.daemon.sidecars` (the person's stars from
their sidecars, and our sidecars kept fresh). This module holds the loop that drives them.

Based on: immich machine-learning (lazy model load, unload after idle) and beets' resumable import state.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from pmllm_batch.config import Settings
from pmllm_batch.daemon.batching import (
    ONCE_SETTLE_LIMIT_S,
    RECENT_DIR_WINDOW_S,
    arrivals_for_vanished,
    expand_dir,
    wait_for_settling,
)
from pmllm_batch.daemon.batchlog import MAX_NAMED_FAILURES, RunCounts, add_summary, log_batch, log_stopped
from pmllm_batch.daemon.loading import LoadAnnouncer
from pmllm_batch.daemon.observer import ENV_FORCE_NO_INOTIFY, ObserverSupervisor
from pmllm_batch.daemon.profiles import ProfileSet
from pmllm_batch.daemon.roots import ROOT_CHECK_MAX_S, RootMonitor, abs_path
from pmllm_batch.daemon.sidecars import SidecarLearner, refresh_xmp_sidecars
from pmllm_batch.daemon.signals import STOP_GRACE_S, StopControl, StopNow
from pmllm_batch.daemon.watcher import SettleTracker
from pmllm_batch.db.store import Store
from pmllm_batch.errors import DBAccessError
from pmllm_batch.log import get_logger
from pmllm_batch.scorer import LibraryScorer, ModelCache, RunSummary, check_folder

log = get_logger("daemon")

_HEALTH_EVERY_S = 5.0  # how often to check that the observer's threads are still alive


class WatchService:
    """Keeps the rankings of ``roots`` fresh until stopped.

    Args:
        settings: Loaded settings; ``settings.watch`` holds the daemon knobs (flags already applied).
        store: The database (this process's only writer to it).
        roots: Folders to watch (recursively).
        profile_names: Only these profiles; None = every stored profile, including ones added later.
        once: Reconcile once and return (no watcher; for cron and tests).
        models: Model cache to use (default: a new one that unloads after ``watch.idle_unload`` seconds).
        max_batch: Paths per event batch at most (bounds latency and the size of one log line's work).
        install_signals: Handle SIGTERM/SIGINT (only possible from the main thread).
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        roots: Sequence[str | Path],
        profile_names: Sequence[str] | None = None,
        *,
        once: bool = False,
        models: ModelCache | None = None,
        max_batch: int = 256,
        install_signals: bool = True,
    ) -> None:
        self.settings = settings
        self.cfg = settings.watch
        self.store = store
        self.roots = list(dict.fromkeys(abs_path(r) for r in roots))
        self.profile_names = list(dict.fromkeys(profile_names)) if profile_names else None
        self.once = once
        self.install_signals = install_signals
        self.models = models or ModelCache(settings, idle_s=self.cfg.idle_unload)
        self.stopper = StopControl()
        self.scorer = LibraryScorer(settings, store, self.models, should_stop=self.stop_requested)
        self.filter = self.scorer.path_filter(self.roots)
        self.tracker = SettleTracker(self.cfg.settle, self.cfg.debounce, max_batch=max_batch,
                                     is_image=self.filter.is_image)
        self.counts = RunCounts()  # event batches (numbered from 1 in the log), reconcile scans, profile updates
        self.learner = SidecarLearner(settings, store, self.filter, self.tracker, self.counts)  # [learn] xmp_profile
        self.supervisor = ObserverSupervisor(self.cfg, self.roots, self.filter, self.tracker, self.request_rescan,
                                             self.learner.offer)
        self.root_monitor = RootMonitor(self.roots, store)
        self.profile_set = ProfileSet(store, self.profile_names)
        self.totals = RunSummary()
        self.loading = LoadAnnouncer(self.models, str(settings.model.preset))
        self.health_every_s = _HEALTH_EVERY_S
        self._rescan_reason: str | None = None
        self._cut = False  # a chunk was abandoned after the grace period
        self._next_reconcile, self._next_health = float("inf"), 0.0

    # control: safe from signal handlers and other threads (they only set flags)

    def stop_requested(self) -> bool:
        """True once a stop was asked for; the scorer polls this between its chunks."""
        return self.stopper.requested

    def request_stop(self, reason: str = "stop requested") -> None:
        """Finish the in-flight chunk, commit, and leave the loop."""
        self.stopper.request(reason)

    def request_rescan(self, reason: str) -> None:
        """Run a full reconcile scan at the next tick (events may have been lost)."""
        self._rescan_reason = reason

    @property
    def stop_grace_s(self) -> float:
        """Seconds the in-flight chunk may run on after SIGTERM/SIGINT before it is abandoned."""
        return self.stopper.grace_s

    @stop_grace_s.setter
    def stop_grace_s(self, seconds: float) -> None:
        self.stopper.grace_s = seconds

    @property
    def mode(self) -> str:
        """How the folders are watched: "inotify" (or the platform's native observer), "polling", or "none"."""
        return self.supervisor.mode

    @property
    def tick_s(self) -> float:
        """Seconds between loop turns: short enough to notice a settled file or a signal promptly."""
        return min(0.25, max(0.02, self.cfg.settle / 4))

    def run(self) -> RunSummary:
        """Run until stopped (or one reconcile with ``once``); returns the totals of everything done.

        Raises:
            UserError: A root is a file (or, with ``once``, missing), or a named profile (``--profile``,
                ``[learn] xmp_profile``) does not exist.
        """
        for root in self.roots:
            if self.once or root.exists():
                check_folder(root, "watch")
        self.profile_set.load(initial=True)
        self.learner.check()
        run_id = self.store.start_run(
            "watch", {"roots": [str(r) for r in self.roots], "profiles": self.profile_names, "once": self.once}
        )
        status = "failed"
        t0 = time.monotonic()
        if self.install_signals:
            self.stopper.install()
        try:
            status = self._work()
        except StopNow:
            self._cut = True
            status = "interrupted" if self.once else "ok"
            log.warning("the batch in flight did not finish within %gs of the stop request; it was abandoned, and "
                        "the work it had not committed yet is redone by the next start", self.stop_grace_s)
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            self._finish(run_id, status, time.monotonic() - t0)
        return self.totals

    def _work(self) -> str:
        """Watch, scan, then loop until stopped; returns the run's status."""
        if not self.once:
            self.supervisor.start()
            if self.cfg.preload:
                self.loading.preload()
        self._reconcile("initial scan" if not self.once else "one-off scan")
        if self.once:
            wait_for_settling(self.tracker, self._process_batch, self.stop_requested, self.cfg.settle, self.tick_s)
        self._schedule_reconcile()
        while not self.once and not self.stopper.requested:
            self._tick()
            if not self.stopper.requested:
                time.sleep(self.tick_s)
        # A signal is how a daemon is meant to end; only a cut-short one-off scan counts as interrupted.
        return "interrupted" if self.once and self.stopper.requested else "ok"

    def _finish(self, run_id: int, status: str, elapsed: float) -> None:
        """Stop watching, hand the signals back and record the run (whatever ended it)."""
        self.stopper.disarm()
        self.supervisor.stop()
        self.stopper.restore()
        self.totals.interrupted = status == "interrupted"
        self.totals.elapsed_s = round(elapsed, 3)
        self.totals.profiles = len(self.profile_set.rows)
        try:
            self.store.finish_run(run_id, status, {**self.totals.to_dict(), **self.counts.as_dict(),
                                                   "mode": self.mode, "abandoned_chunk": self._cut})
        except DBAccessError as exc:  # keep the error that stopped us, if any, as the one reported
            log.warning("could not record the end of the watch run: %s", exc)
        if self.stopper.requested:
            log_stopped(self.stopper.reason, self.totals, scans=self.scans, batches=self.batches,
                        profile_updates=self.counts.profile_updates, learned=self.counts.ratings_learned)

    def _schedule_reconcile(self) -> None:
        interval = self.cfg.reconcile_interval
        self._next_reconcile = time.monotonic() + interval if interval > 0 else float("inf")

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_health and not self.once:
            self._next_health = now + self.health_every_s
            self.supervisor.check()
        if self.root_monitor.due(now) and (back := self.root_monitor.check()):
            self.request_rescan(f"photo folder {', '.join(map(str, back))} appeared")
        if self._rescan_reason is not None or now >= self._next_reconcile:
            reason = self._rescan_reason or "periodic"
            self._rescan_reason = None
            self._reconcile(reason)
            self._schedule_reconcile()
            return
        if self.stopper.requested:
            return
        if self.profile_set.changed():
            self._profiles_changed()
            return
        for folder in self.tracker.take_dirs():
            self._expand_dir(folder)
        batch = self.tracker.take_batch()
        if batch:
            self._process_batch(batch)
        elif not self.tracker.waiting:
            self.models.maybe_unload()  # idle counts from the end of the last batch (ModelCache.touch)
        self.learner.tick()  # sidecars that settled: the person's stars

    def _profiles_changed(self) -> None:
        change = self.profile_set.reload()
        summary = RunSummary(profiles=len(self.profile_set.rows))
        t0 = time.monotonic()
        self.loading.doing(lambda: f"to score the library for the profile change ({change.what})")
        if change.rescore:
            self._score(summary)
        self._log_batch(f"profiles ({change.what})", summary, time.monotonic() - t0, files=None)

    def _score(self, summary: RunSummary) -> None:
        # The scorer loads the models only when a pair is left to score (or these settings never loaded them).
        if self.stopper.requested or not self.profile_set.rows:
            return
        self.scorer.score_profiles(self.profile_set.rows, summary)
        if summary.scored or summary.missing:
            refresh_xmp_sidecars(self.store, self.settings)

    def _reconcile(self, reason: str) -> None:
        """The source of truth: walk every root, read what changed, mark what is gone, score what is missing.

        Files modified less than ``settle`` seconds ago may still be being written (a copy in progress while the
        daemon starts); they go to the settle tracker instead of being read now.
        """
        t0 = time.monotonic()
        roots = self.root_monitor.available()
        summary = RunSummary(profiles=len(self.profile_set.rows))
        self.loading.for_scan(reason, summary)
        self.root_monitor.rearm()
        if roots:
            settling = self.scorer.sync(roots, summary, settle_s=self.cfg.settle, profiles=self.profile_set.rows)
            for path in settling:
                self.tracker.touch(str(path))
            self._score(summary)
            self.learner.catch_up(roots, reason)
        self.supervisor.ensure_watches()
        self._log_batch(f"reconcile ({reason})", summary, time.monotonic() - t0, files=summary.scanned)

    def _expand_dir(self, folder: str) -> None:  # a folder appeared, vanished or moved: touch every photo below it
        expand_dir(folder, self.tracker, self.filter, self.store)

    def _process_batch(self, paths: list[Path]) -> None:
        t0 = time.monotonic()
        summary = RunSummary(profiles=len(self.profile_set.rows))
        roots = self.root_monitor.available()
        paths = [p for p in paths if self.filter.root_of(p) in roots]
        if any(not p.exists() for p in paths):
            paths += arrivals_for_vanished(paths, self.tracker, self.filter, self.cfg.settle)
        self.loading.for_batch(self.batches + 1, len(paths))
        if paths:
            self.scorer.sync(roots, summary, paths=paths, profiles=self.profile_set.rows)
            self._score(summary)
            self.learner.photos_read(paths)
        self._log_batch("batch", summary, time.monotonic() - t0, files=len(paths))

    def _log_batch(self, what: str, summary: RunSummary, elapsed: float, files: int | None) -> None:
        self.models.touch()  # the work ended: the models' idle time counts from now
        add_summary(self.totals, summary)
        log_batch(self.counts.record(what), summary, files=files, profiles=len(self.profile_set.rows),
                  elapsed=elapsed, stopped=self.stopper.requested)

    @property
    def batches(self) -> int:
        return self.counts.batches

    @property
    def scans(self) -> int:
        return self.counts.scans

__all__ = [
    "ENV_FORCE_NO_INOTIFY", "MAX_NAMED_FAILURES", "ONCE_SETTLE_LIMIT_S", "RECENT_DIR_WINDOW_S", "ROOT_CHECK_MAX_S",
    "STOP_GRACE_S", "WatchService", "refresh_xmp_sidecars",
]
