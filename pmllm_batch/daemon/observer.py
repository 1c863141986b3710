"""The file-system observer: inotify first, polling as the fallback, supervised while the service runs.

:class:`ObserverSupervisor` starts the platform's native observer (inotify on Linux), or a polling one when polling
was asked for or inotify is unavailable or out of watches; checks that its threads are alive (a dead observer or
emitter means events are being lost: it switches to polling or asks for a rescan); and watches roots again whose
watch died (a folder that was removed and came back, a disk mounted again). Every event goes to a
:class:`PhotoEventHandler`, which only fills the tracker; lost events (an inotify queue overflow) ask for a rescan.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from watchdog.observers.api import BaseObserver, ObservedWatch

from pmllm_batch.config import WatchSettings
from pmllm_batch.daemon.roots import abs_path
from pmllm_batch.daemon.watcher import EVENT_FILTER, PhotoEventHandler, SettleTracker, watch_for_overflow
from pmllm_batch.log import get_logger

if TYPE_CHECKING:
    from pmllm_batch.scorer import PathFilter

log = get_logger("daemon")

# Set to 1 to make inotify look unavailable (tests, or to check the polling path on a machine that has inotify).
ENV_FORCE_NO_INOTIFY = "PMLLM_FORCE_NO_INOTIFY"
# Errors from inotify_init / inotify_add_watch that mean "use polling instead", not "the folder is bad".
_INOTIFY_LIMIT_ERRNOS = {errno.ENOSPC: "watch limit reached", errno.EMFILE: "instance limit reached",
                         errno.ENFILE: "too many open files", errno.ENOMEM: "out of kernel memory"}


def describe_oserror(exc: OSError) -> str:
    """One phrase for an inotify failure, with the kernel limit to raise where there is one."""
    why = _INOTIFY_LIMIT_ERRNOS.get(exc.errno or 0)
    text = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        text += " (raise fs.inotify.max_user_watches)"
    elif exc.errno == errno.EMFILE:
        text += " (raise fs.inotify.max_user_instances)"
    return f"{why}: {text}" if why and why not in text else text


def halt(observer: BaseObserver) -> None:
    """Stop ``observer`` and wait for its thread; a half-started one is released as far as it can be."""
    try:
        observer.stop()
        if observer.is_alive():
            observer.join(timeout=5)
    except (OSError, RuntimeError) as exc:  # a half-started observer; nothing more to release
        log.debug("stopping a half-started observer: %s", exc)


class ObserverSupervisor:
    """Owns the observer of ``roots`` for the service: start, health check, re-watch, stop.

    Args:
        cfg: The ``[watch]`` settings (``poll``, ``poll_interval``, and the values its log lines name).
        roots: The watched folders (absolute); those that are not folders (yet) are left out until they are.
        path_filter: Which paths can be photos (handed to the event handler).
        tracker: Where the event handler puts touched paths.
        request_rescan: Called with a reason whenever events may have been lost (from any thread).
        sidecars: Offered every file path before the photo tracker (see :class:`PhotoEventHandler`).
    """

    def __init__(
        self,
        cfg: WatchSettings,
        roots: list[Path],
        path_filter: PathFilter,
        tracker: SettleTracker,
        request_rescan: Callable[[str], None],
        sidecars: Callable[[str], bool] | None = None,
    ) -> None:
        self.cfg = cfg
        self.roots = roots
        self.filter = path_filter
        self.tracker = tracker
        self.request_rescan = request_rescan
        self.sidecars = sidecars
        self.observer: BaseObserver | None = None
        self.mode = "none"  # "inotify" (or the platform's native observer), "polling", or "none" (not started)
        self._watches: dict[Path, ObservedWatch] = {}
        self._remove_overflow_listener: Callable[[], None] | None = None

    # -- start and stop ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching: polling when asked for, else the native observer, else polling with a warning."""
        self._remove_overflow_listener = watch_for_overflow(
            lambda: self.request_rescan("inotify queue overflow: events were lost")
        )
        if self.cfg.poll:
            self._start_polling("polling was asked for (--poll / watch.poll)", warn=False)
            return
        try:
            self._start_native()
        except OSError as exc:
            self._start_polling(f"inotify is unavailable ({describe_oserror(exc)})", warn=True)

    def stop(self) -> None:
        """Stop the observer and the overflow listener (both may be started again with :meth:`start`)."""
        if self.observer is not None:
            halt(self.observer)
            self.observer = None
        if self._remove_overflow_listener is not None:
            self._remove_overflow_listener()
            self._remove_overflow_listener = None

    def interval_text(self) -> str:
        """How often the service rescans everything, for the log lines that say how it watches."""
        interval = self.cfg.reconcile_interval
        return f"full rescan every {interval:.0f}s" if interval > 0 else "no periodic rescan"

    def _schedule(self, observer: BaseObserver, root: Path) -> ObservedWatch:
        handler = PhotoEventHandler(self.filter, self.tracker, self.sidecars)
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
            halt(observer)
            self._watches.clear()
            raise
        self.observer = observer
        self.mode = "inotify" if type(observer).__name__ == "InotifyObserver" else type(observer).__name__
        log.info("watching %s with %s; settle %.1fs, %s, models unload after %.0fs idle",
                 ", ".join(map(str, self.roots)), self.mode, self.cfg.settle, self.interval_text(),
                 self.cfg.idle_unload)

    def _start_polling(self, reason: str, *, warn: bool) -> None:
        from watchdog.observers.polling import PollingObserver

        observer = PollingObserver(timeout=self.cfg.poll_interval)
        self._watches.clear()
        for root in self.roots:
            if root.is_dir():
                self._schedule(observer, root)
        observer.start()
        self.observer = observer
        self.mode = "polling"
        roots = ", ".join(map(str, self.roots))
        if warn:
            log.warning("%s; falling back to polling every %.1fs (watching %s; settle %.1fs, %s)",
                        reason, self.cfg.poll_interval, roots, self.cfg.settle, self.interval_text())
        else:
            log.info("%s: watching %s by polling every %.1fs; settle %.1fs, %s",
                     reason, roots, self.cfg.poll_interval, self.cfg.settle, self.interval_text())

    def _fall_back_to_polling(self, reason: str) -> None:
        if self.observer is not None:
            halt(self.observer)
            self.observer = None
        self._start_polling(reason, warn=True)

    # -- health -----------------------------------------------------------------------------------------------------

    def _live_roots(self, observer: BaseObserver) -> set[Path]:
        return {abs_path(e.watch.path) for e in list(observer.emitters) if e.is_alive()}

    def check(self) -> None:
        """A dead observer or emitter (root removed, inotify error) means events are being lost: repair, rescan."""
        if self.observer is None:
            return
        if not self.observer.is_alive():
            log.warning("the %s observer stopped; switching to polling and rescanning", self.mode)
            self._fall_back_to_polling("the observer stopped")
            self.request_rescan("observer restarted")
            return
        live = self._live_roots(self.observer)
        dead = [r for r in self.roots if r.is_dir() and r not in live]
        if dead:
            self.request_rescan(f"watch on {', '.join(map(str, dead))} was lost")

    def ensure_watches(self) -> None:
        """Re-watch roots whose watch died (a folder that was removed and came back, an unmounted disk)."""
        observer = self.observer
        if observer is None:
            return
        live = self._live_roots(observer)
        for root in self.roots:
            if root in live or not root.is_dir():
                continue
            old = self._watches.pop(root, None)
            try:
                if old is not None:
                    observer.unschedule(old)
                self._schedule(observer, root)
                log.info("watching %s again", root)
            except OSError as exc:
                if self.mode == "polling":
                    raise
                log.warning("cannot watch %s with inotify (%s)", root, describe_oserror(exc))
                self._fall_back_to_polling(f"inotify is unavailable ({describe_oserror(exc)})")
                return


__all__ = ["ENV_FORCE_NO_INOTIFY", "ObserverSupervisor", "describe_oserror", "halt"]
