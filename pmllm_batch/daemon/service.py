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
4. on SIGTERM/SIGINT: the scorer stops after its in-flight chunk (each chunk is one committed transaction), the
   observer stops, the run is recorded, and the command exits 0. A chunk still running ``stop_grace_s`` seconds
   after the signal is abandoned (its uncommitted pairs are redone by the next start), so the daemon is gone within
   a few seconds whatever the chunk size. A second signal kills at once.

A root that is not there (a NAS not mounted yet, an unplugged disk, or an empty mount point of a folder the database
knows photos under) is not an error for the daemon: it is logged, checked again with back-off (1 s, doubling, at
most every :data:`ROOT_CHECK_MAX_S` seconds), and scanned once it appears; its rows are left as they are meanwhile.
Only mistakes a restart cannot fix exit 2 (a root that is a file, an unknown ``--profile``). With ``--once`` a
missing root is an error, and files still inside the settle window are waited for instead of skipped.

One log line per batch says what happened. ``pmllm-batch status`` works from another shell at any time (WAL).

Based on: immich machine-learning (lazy model load, unload after idle) and beets' resumable import state.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from pmllm_batch.daemon.watcher import EVENT_FILTER, PhotoEventHandler, SettleTracker, watch_for_overflow
from pmllm_batch.db.store import ProfileRow, Store
from pmllm_batch.errors import DBAccessError, ProfileError, UserError
from pmllm_batch.log import get_logger
from pmllm_batch.outputs.xmp import refresh_sidecars
from pmllm_batch.scorer import LibraryScorer, ModelCache, RunSummary
from pmllm_batch.scorer.batch import check_folder

log = get_logger("daemon")

# Set to 1 to make inotify look unavailable (tests, or to check the polling path on a machine that has inotify).
ENV_FORCE_NO_INOTIFY = "PMLLM_FORCE_NO_INOTIFY"
# Errors from inotify_init / inotify_add_watch that mean "use polling instead", not "the folder is bad".
_INOTIFY_LIMIT_ERRNOS = {errno.ENOSPC: "watch limit reached", errno.EMFILE: "instance limit reached",
                         errno.ENFILE: "too many open files", errno.ENOMEM: "out of kernel memory"}
_HEALTH_EVERY_S = 5.0  # how often to check that the observer's threads are still alive
_COUNTERS = ("scanned", "new", "changed", "skipped", "failed", "missing", "encoded", "scored", "moved")
STOP_GRACE_S = 3.0  # after SIGTERM, how long the in-flight chunk may take to commit before it is abandoned
ROOT_CHECK_MAX_S = 60.0  # back-off ceiling between checks of a root that is not there
ONCE_SETTLE_LIMIT_S = 30.0  # --once waits at most max(this, 10 x settle) for files that keep changing
MAX_NAMED_FAILURES = 20  # failed files named in the log per batch
RECENT_DIR_WINDOW_S = 60.0  # a batch with vanished files looks for them in folders created this recently


class _StopNow(BaseException):
    """Raised in the main thread when a stop request outlived its grace period (the chunk is abandoned)."""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _add(total: RunSummary, part: RunSummary) -> None:
    for name in _COUNTERS:
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.model = part.model or total.model
    total.demo = part.demo or total.demo


def _abs(path: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def _describe_oserror(exc: OSError) -> str:
    why = _INOTIFY_LIMIT_ERRNOS.get(exc.errno or 0)
    text = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        text += " (raise fs.inotify.max_user_watches)"
    elif exc.errno == errno.EMFILE:
        text += " (raise fs.inotify.max_user_instances)"
    return f"{why}: {text}" if why and why not in text else text


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
        settings: Any,
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
        self.roots = list(dict.fromkeys(_abs(r) for r in roots))
        self.profile_names = list(dict.fromkeys(profile_names)) if profile_names else None
        self.once = once
        self.install_signals = install_signals
        self.models = models or ModelCache(settings, idle_s=float(self.cfg.idle_unload))
        self.scorer = LibraryScorer(settings, store, self.models, should_stop=self.stop_requested)
        self.filter = self.scorer.path_filter(self.roots)
        self.tracker = SettleTracker(
            float(self.cfg.settle), float(self.cfg.debounce), max_batch=max_batch, is_image=self.filter.is_image
        )
        self.totals = RunSummary()
        self.batches = 0
        self.mode = "none"  # "inotify" (or the platform's native observer), "polling", or "none" (--once)
        self._stop = False
        self._stop_reason = ""
        self._rescan_reason: str | None = None
        self._observer: Any = None
        self._watches: dict[Path, Any] = {}
        self._remove_overflow_listener: Callable[[], None] | None = None
        self._profiles: list[ProfileRow] = []
        self._profiles_version: str | None = None
        self._missing_roots: set[Path] = set()
        self._root_wait = 1.0  # seconds until the next check of a missing root (doubles up to ROOT_CHECK_MAX_S)
        self._next_root_check = float("inf")
        self.stop_grace_s = STOP_GRACE_S
        self._main_ident: int | None = None  # the thread that handles signals (SIGUSR1 aborts its chunk)
        self._abort_guard = threading.Lock()
        self._abort_timer: threading.Timer | None = None
        self._finishing = False
        self._cut = False  # a chunk was abandoned after the grace period
        self._next_reconcile = float("inf")
        self._next_health = 0.0
        self.health_every_s = _HEALTH_EVERY_S
        self._last_work = time.monotonic()  # end of the last batch (for the idle unload)
        self._previous_handlers: dict[int, Any] = {}

    # -----------------------------------------------------------------------------------------------------------------
    # Control (safe from signal handlers and other threads: they only set flags)
    # -----------------------------------------------------------------------------------------------------------------

    def stop_requested(self) -> bool:
        """True once a stop was asked for; the scorer polls this between its chunks."""
        return self._stop

    def request_stop(self, reason: str = "stop requested") -> None:
        """Finish the in-flight chunk, commit, and leave the loop."""
        if not self._stop:
            self._stop_reason = reason
        self._stop = True

    def request_rescan(self, reason: str) -> None:
        """Run a full reconcile scan at the next tick (events may have been lost)."""
        self._rescan_reason = reason

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._stop:
            return
        self.request_stop(f"{name} received")
        # A second signal must still work when a batch hangs: hand both back to their default behaviour.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        # A chunk that does not finish within the grace period is abandoned (nothing of it is committed yet).
        timer = threading.Timer(self.stop_grace_s, self._abort_now)
        timer.daemon = True
        self._abort_timer = timer
        timer.start()

    def _abort_now(self) -> None:
        # Timer thread: interrupt the main thread, which raises _StopNow at its next Python instruction.
        with self._abort_guard:
            if self._finishing or self._main_ident is None:
                return
            signal.pthread_kill(self._main_ident, signal.SIGUSR1)

    def _on_abort(self, _signum: int, _frame: FrameType | None) -> None:
        if not self._finishing and self._stop:
            raise _StopNow()

    def _install_signal_handlers(self) -> None:
        if not self.install_signals or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)
        self._previous_handlers[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._on_abort)
        self._main_ident = threading.get_ident()

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers.clear()

    # -----------------------------------------------------------------------------------------------------------------
    # Main loop
    # -----------------------------------------------------------------------------------------------------------------

    @property
    def tick_s(self) -> float:
        """Seconds between loop turns: short enough to notice a settled file or a signal promptly."""
        return min(0.25, max(0.02, float(self.cfg.settle) / 4))

    def run(self) -> RunSummary:
        """Run until stopped (or one reconcile with ``once``); returns the totals of everything done.

        Raises:
            UserError: A root is a file (or, with ``once``, missing), or a named profile does not exist.
        """
        for root in self.roots:
            if self.once or root.exists():
                check_folder(root, "watch")
        self._load_profiles(initial=True)
        run_id = self.store.start_run(
            "watch", {"roots": [str(r) for r in self.roots], "profiles": self.profile_names, "once": self.once}
        )
        status = "failed"
        t0 = time.monotonic()
        self._install_signal_handlers()
        try:
            if not self.once:
                self._start_observer()
            self._reconcile("initial scan" if not self.once else "one-off scan")
            if self.once:
                self._finish_settling()
            interval = float(self.cfg.reconcile_interval)
            self._next_reconcile = time.monotonic() + interval if interval > 0 else float("inf")
            while not self.once and not self._stop:
                self._tick()
                if not self._stop:
                    time.sleep(self.tick_s)
            # A signal is how a daemon is meant to end; only a cut-short one-off scan counts as interrupted.
            status = "interrupted" if self.once and self._stop else "ok"
        except _StopNow:
            self._cut = True
            status = "interrupted" if self.once else "ok"
            log.warning("the batch in flight did not finish within %gs of the stop request; it was abandoned, and "
                        "the work it had not committed yet is redone by the next start", self.stop_grace_s)
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            with self._abort_guard:
                self._finishing = True
            if self._abort_timer is not None:
                self._abort_timer.cancel()
            self._stop_observer()
            self._restore_signal_handlers()
            self.totals.interrupted = status == "interrupted"
            self.totals.elapsed_s = round(time.monotonic() - t0, 3)
            self.totals.profiles = len(self._profiles)
            try:
                self.store.finish_run(run_id, status, {**self.totals.to_dict(), "batches": self.batches,
                                                       "mode": self.mode, "abandoned_chunk": self._cut})
            except DBAccessError as exc:  # keep the error that stopped us, if any, as the one reported
                log.warning("could not record the end of the watch run: %s", exc)
            if self._stop:
                log.info("stopped (%s) after %d batches: %d new, %d missing, vision %d, scored %d pairs",
                         self._stop_reason, self.batches, self.totals.new, self.totals.missing,
                         self.totals.encoded, self.totals.scored)
        return self.totals

    def _finish_settling(self) -> None:
        """``--once``: files the scan found still changing (a copy in progress) are waited for, then read.

        A file that keeps changing for longer than ``max(ONCE_SETTLE_LIMIT_S, 10 x settle)`` is left for the next run.
        """
        if not self.tracker.waiting:
            return
        settle = float(self.cfg.settle)
        log.info("%s changed less than %.1fs ago; waiting for %s to settle",
                 _plural(self.tracker.waiting, "file"), settle, "it" if self.tracker.waiting == 1 else "them")
        limit = max(ONCE_SETTLE_LIMIT_S, 10 * settle)
        deadline = time.monotonic() + limit
        while self.tracker.waiting and not self._stop:
            batch = self.tracker.take_batch()
            if batch:
                self._process_batch(batch)
                continue
            if time.monotonic() > deadline:
                n = self.tracker.waiting
                log.warning("%s still changing after %.0fs; left for the next run",
                            "1 file was" if n == 1 else f"{n} files were", limit)
                return
            time.sleep(self.tick_s)

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_health and not self.once:
            self._next_health = now + self.health_every_s
            self._check_observer()
        if self._missing_roots and now >= self._next_root_check:
            self._check_missing_roots()
        if self._rescan_reason is not None or now >= self._next_reconcile:
            reason = self._rescan_reason or "periodic"
            self._rescan_reason = None
            self._reconcile(reason)
            interval = float(self.cfg.reconcile_interval)
            self._next_reconcile = time.monotonic() + interval if interval > 0 else float("inf")
            return
        if self._stop:
            return
        version = self.store.profiles_version()
        if version != self._profiles_version:
            self._profiles_changed()
            return
        for folder in self.tracker.take_dirs():
            self._expand_dir(folder)
        batch = self.tracker.take_batch()
        if batch:
            self._process_batch(batch)
        elif not self.tracker.waiting and now - self._last_work >= float(self.cfg.idle_unload):
            # The cache counts idle time from its last get(), which is the start of a long scoring pass; idle
            # means "since the last batch ended", so the service gates it.
            self.models.maybe_unload()

    # -----------------------------------------------------------------------------------------------------------------
    # Profiles
    # -----------------------------------------------------------------------------------------------------------------

    def _load_profiles(self, *, initial: bool = False) -> list[ProfileRow]:
        version = self.store.profiles_version()
        if self.profile_names:
            rows = []
            for name in self.profile_names:
                try:
                    rows.append(self.store.get_profile(name))
                except ProfileError:
                    if initial:
                        raise
                    log.warning("profile '%s' no longer exists; not scoring for it", name)
        else:
            rows = self.store.list_profiles()
            if initial and not rows:
                log.warning("no profiles are stored yet: photos are indexed now and scored once a profile is "
                            "added (`pmllm-batch profile add FILE.toml`)")
        self._profiles, self._profiles_version = rows, version
        return rows

    def _profiles_changed(self) -> None:
        before = {p.name: p.persona_hash for p in self._profiles}
        rows = self._load_profiles()
        after = {p.name: p.persona_hash for p in rows}
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        changed = sorted(n for n in set(after) & set(before) if after[n] != before[n])
        parts = [f"{label} {', '.join(names)}" for label, names in
                 (("added", added), ("changed", changed), ("removed", removed)) if names]
        what = "; ".join(parts) or "metadata only"
        summary = RunSummary(profiles=len(rows))
        t0 = time.monotonic()
        if added or changed:
            self._score(summary)
        self._log_batch(f"profiles ({what})", summary, time.monotonic() - t0, files=None)

    # -----------------------------------------------------------------------------------------------------------------
    # Work
    # -----------------------------------------------------------------------------------------------------------------

    def _present(self, root: Path) -> bool:
        """Is ``root`` there to be scanned? Not when it is absent, or an empty folder the database knows photos
        under (the mount point of a disk that is not mounted: scanning it would mark the whole library missing)."""
        if not root.is_dir():
            return False
        try:
            with os.scandir(root) as entries:
                empty = next(entries, None) is None
        except OSError:
            return False
        if not empty:
            return True
        known = self.store.photo_index([str(root)])
        return not any(rec.status != "missing" for rec in known.values())

    def _available_roots(self) -> list[Path]:
        roots = []
        for root in self.roots:
            if self._present(root):
                if root in self._missing_roots:
                    self._missing_roots.discard(root)
                    log.warning("photo folder %s is there now; scanning it", root)
                roots.append(root)
            elif root not in self._missing_roots:
                # An unmounted disk must not turn a whole library "missing"; its rows stay as they are.
                self._missing_roots.add(root)
                what = "is empty although the database knows photos in it" if root.is_dir() else "is not there"
                log.warning("photo folder %s %s (not mounted yet?); leaving its photos as they are and checking "
                            "again in %.0fs, then less often (at most every %.0fs)",
                            root, what, self._root_wait, ROOT_CHECK_MAX_S)
                self._next_root_check = min(self._next_root_check, time.monotonic() + self._root_wait)
        return roots

    def _check_missing_roots(self) -> None:
        """Back-off check of roots that were not there: one that appeared gets a full scan (and its watch)."""
        back = [r for r in sorted(self._missing_roots) if self._present(r)]
        if back:
            self._root_wait = 1.0
            self.request_rescan(f"photo folder {', '.join(map(str, back))} appeared")
        else:
            self._root_wait = min(self._root_wait * 2, ROOT_CHECK_MAX_S)
            log.debug("still not there: %s; next check in %.0fs", ", ".join(map(str, self._missing_roots)),
                      self._root_wait)
        self._next_root_check = time.monotonic() + self._root_wait if self._missing_roots else float("inf")

    def _score(self, summary: RunSummary) -> None:
        # The scorer loads the models only when a pair is left to score (or these settings never loaded them).
        if self._stop or not self._profiles:
            return
        self.scorer.score_profiles(self._profiles, summary)
        if summary.scored or summary.missing:
            self._refresh_sidecars()

    def _refresh_sidecars(self) -> None:
        """``[xmp] profile = "NAME"``: keep that person's stars and everyone's keywords fresh in the sidecars.

        Every sidecar is looked at (new photos move older photos' percentile stars); only changed ones are written.
        A problem is logged and never stops the daemon.
        """
        if not self.settings.xmp.profile:
            return
        try:
            result = refresh_sidecars(self.store, self.settings)
        except UserError as exc:
            log.warning("xmp sidecars not refreshed: %s", exc)
            return
        problems = ", ".join(f"{n} {reason}" for reason, n in result.problem_counts().items())
        log.info(
            "xmp sidecars for %s: %d created, %d updated, %d unchanged%s",
            result.profile,
            result.created,
            result.updated,
            result.unchanged,
            f"; problems: {problems}" if problems else "",
        )

    def _reconcile(self, reason: str) -> None:
        """The source of truth: walk every root, read what changed, mark what is gone, score what is missing.

        Files modified less than ``settle`` seconds ago may still be being written (a copy in progress while the
        daemon starts); they go to the settle tracker instead of being read now.
        """
        t0 = time.monotonic()
        roots = self._available_roots()
        summary = RunSummary(profiles=len(self._profiles))
        if self._missing_roots:
            self._next_root_check = min(self._next_root_check, time.monotonic() + self._root_wait)
        if roots:
            settling = self.scorer.sync(roots, summary, settle_s=float(self.cfg.settle), profiles=self._profiles)
            for path in settling:
                self.tracker.touch(str(path))
            self._score(summary)
        if self._observer is not None:
            self._ensure_watches()
        self._log_batch(f"reconcile ({reason})", summary, time.monotonic() - t0, files=summary.scanned)

    def _expand_dir(self, folder: str) -> None:
        """A folder appeared, vanished or moved: touch every photo below it, on disk and in the database."""
        paths = {str(p) for p in self.filter.files_under(folder)} if os.path.isdir(folder) else set()
        root = self.filter.root_of(folder)
        if root is not None:
            prefix = folder.rstrip(os.sep) + os.sep
            index = self.store.photo_index([str(root)])
            paths.update(p for p, rec in index.items() if p.startswith(prefix) and rec.status != "missing")
        for path in sorted(paths):
            kind = self.filter.classify(path)
            self.tracker.touch(path, sniff=kind == "sniff")

    def _process_batch(self, paths: list[Path]) -> None:
        t0 = time.monotonic()
        summary = RunSummary(profiles=len(self._profiles))
        roots = self._available_roots()
        paths = [p for p in paths if self.filter.root_of(p) in roots]
        if any(not p.exists() for p in paths):
            paths += self._arrivals_for_vanished(paths)
        if paths:
            self.scorer.sync(roots, summary, paths=paths, profiles=self._profiles)
            self._score(summary)
        self._log_batch("batch", summary, time.monotonic() - t0, files=len(paths))

    def _arrivals_for_vanished(self, batch: list[Path]) -> list[Path]:
        """Photos that may be where a batch's vanished files went, so the scan records moves instead of losses.

        Two ways a move reaches the tracker split in two: ``mkdir sub && mv a.jpg sub/`` can move the file before
        the observer watches ``sub`` (only the deletion of ``a.jpg`` is seen, or the arrival is simulated a moment
        later), and a move's two halves can settle at different times. So a batch with a vanished file also takes
        every file still waiting in the tracker and every file in a folder created in the last minute (up to the
        batch limit), as long as it has not been written for ``settle`` seconds (a moved file keeps its old mtime;
        one being written does not qualify and is left to its own events). The scan then matches arrivals to
        vanished files by content.
        """
        seen = {str(p) for p in batch}
        candidates = list(self.tracker.waiting_paths())
        for folder in self.tracker.recent_dirs(within=max(RECENT_DIR_WINDOW_S, 10 * float(self.cfg.settle))):
            if os.path.isdir(folder):
                candidates += [str(p) for p in self.filter.files_under(folder)]
        cutoff = time.time() - float(self.cfg.settle)
        room = max(0, self.tracker.max_batch - len(batch))  # a batch stays bounded; the rest keep their own events
        found: list[Path] = []
        for name in candidates:
            if len(found) >= room:
                break
            if name in seen:
                continue
            seen.add(name)
            kind = self.filter.classify(name)
            if kind is None or (kind == "sniff" and not self.filter.is_image(name)):
                continue  # the tracker's own rule for files whose extension is not an image's
            try:
                st = os.stat(name)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_mtime > cutoff:
                continue
            self.tracker.claim(name)
            found.append(Path(name))
        return found

    def _log_batch(self, what: str, summary: RunSummary, elapsed: float, files: int | None) -> None:
        self._last_work = time.monotonic()
        self.batches += 1
        _add(self.totals, summary)
        head = f"{what} {self.batches}:" if what == "batch" else f"{what}:"
        # "N files" and "N pairs" stay as they are whatever N: log readers parse this line (README, tests).
        counts = (f"{files} files, " if files is not None else "") + (
            f"{summary.new} new, {summary.changed} changed, {summary.missing} missing, {summary.failed} failed; "
            f"vision {summary.encoded}; scored {summary.scored} pairs for {_plural(len(self._profiles), 'profile')} "
            f"in {elapsed:.2f}s"
        )
        moved = f"; {summary.moved} moved or renamed (scores kept)" if summary.moved else ""
        cut = " (stopped mid-way; the rest is picked up by the next scan)" if self._stop else ""
        log.info("%s %s%s%s", head, counts, moved, cut)
        fresh = summary.fresh_failures
        for item in fresh[:MAX_NAMED_FAILURES]:
            log.warning("failed: %s: %s — %s", item["path"], item["reason"] or "unknown", item["message"])
        if len(fresh) > MAX_NAMED_FAILURES:
            log.warning("... and %d more failed files (`pmllm-batch status` lists every one with its reason)",
                        len(fresh) - MAX_NAMED_FAILURES)

    # -----------------------------------------------------------------------------------------------------------------
    # Observer: inotify first, polling as the fallback
    # -----------------------------------------------------------------------------------------------------------------

    def _start_observer(self) -> None:
        self._remove_overflow_listener = watch_for_overflow(
            lambda: self.request_rescan("inotify queue overflow: events were lost")
        )
        if self.cfg.poll:
            self._start_polling("polling was asked for (--poll / watch.poll)", warn=False)
            return
        try:
            self._start_native()
        except OSError as exc:
            self._start_polling(f"inotify is unavailable ({_describe_oserror(exc)})", warn=True)

    def _schedule(self, observer: Any, root: Path) -> Any:
        handler = PhotoEventHandler(self.filter, self.tracker)
        watch = observer.schedule(handler, str(root), recursive=True, event_filter=EVENT_FILTER)
        self._watches[root] = watch
        return watch

    def _start_native(self) -> None:
        if os.environ.get(ENV_FORCE_NO_INOTIFY, "") not in ("", "0"):
            raise OSError(errno.ENOSYS, f"disabled by {ENV_FORCE_NO_INOTIFY}=1")
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        if Observer is PollingObserver:
            raise OSError(errno.ENOSYS, "no native file-system notifications on this platform")
        observer = Observer()  # inotify_init: EMFILE when the instance limit is reached
        self._watches.clear()
        try:
            for root in self.roots:
                if root.is_dir():
                    self._schedule(observer, root)
            observer.start()  # adds the watches: ENOSPC when the watch limit is reached
        except BaseException:
            self._halt(observer)
            self._watches.clear()
            raise
        self._observer = observer
        self.mode = "inotify" if type(observer).__name__ == "InotifyObserver" else type(observer).__name__
        log.info("watching %s with %s; settle %.1fs, %s, models unload after %.0fs idle",
                 ", ".join(map(str, self.roots)), self.mode, self.cfg.settle, self._interval_text(),
                 self.cfg.idle_unload)

    def _start_polling(self, reason: str, *, warn: bool) -> None:
        from watchdog.observers.polling import PollingObserver

        observer = PollingObserver(timeout=float(self.cfg.poll_interval))
        self._watches.clear()
        for root in self.roots:
            if root.is_dir():
                self._schedule(observer, root)
        observer.start()
        self._observer = observer
        self.mode = "polling"
        roots = ", ".join(map(str, self.roots))
        if warn:
            log.warning("%s; falling back to polling every %.1fs (watching %s; settle %.1fs, %s)",
                        reason, self.cfg.poll_interval, roots, self.cfg.settle, self._interval_text())
        else:
            log.info("%s: watching %s by polling every %.1fs; settle %.1fs, %s",
                     reason, roots, self.cfg.poll_interval, self.cfg.settle, self._interval_text())

    def _interval_text(self) -> str:
        interval = float(self.cfg.reconcile_interval)
        return f"full rescan every {interval:.0f}s" if interval > 0 else "no periodic rescan"

    @staticmethod
    def _halt(observer: Any) -> None:
        try:
            observer.stop()
            if observer.is_alive():
                observer.join(timeout=5)
        except (OSError, RuntimeError) as exc:  # a half-started observer; nothing more to release
            log.debug("stopping a half-started observer: %s", exc)

    def _stop_observer(self) -> None:
        if self._observer is not None:
            self._halt(self._observer)
            self._observer = None
        if self._remove_overflow_listener is not None:
            self._remove_overflow_listener()
            self._remove_overflow_listener = None

    def _live_roots(self) -> set[Path]:
        return {_abs(e.watch.path) for e in list(self._observer.emitters) if e.is_alive()}

    def _check_observer(self) -> None:
        """A dead observer or emitter (root removed, inotify error) means events are being lost: repair, rescan."""
        if self._observer is None:
            return
        if not self._observer.is_alive():
            log.warning("the %s observer stopped; switching to polling and rescanning", self.mode)
            self._halt(self._observer)
            self._observer = None
            self._start_polling("the observer stopped", warn=True)
            self.request_rescan("observer restarted")
            return
        dead = [r for r in self.roots if r.is_dir() and r not in self._live_roots()]
        if dead:
            self.request_rescan(f"watch on {', '.join(map(str, dead))} was lost")

    def _ensure_watches(self) -> None:
        """Re-watch roots whose watch died (a folder that was removed and came back, an unmounted disk)."""
        live = self._live_roots()
        for root in self.roots:
            if root in live or not root.is_dir():
                continue
            old = self._watches.pop(root, None)
            try:
                if old is not None:
                    self._observer.unschedule(old)
                self._schedule(self._observer, root)
                log.info("watching %s again", root)
            except OSError as exc:
                if self.mode == "polling":
                    raise
                log.warning("cannot watch %s with inotify (%s)", root, _describe_oserror(exc))
                self._halt(self._observer)
                self._observer = None
                self._start_polling(f"inotify is unavailable ({_describe_oserror(exc)})", warn=True)
                return


__all__ = ["ENV_FORCE_NO_INOTIFY", "WatchService"]
