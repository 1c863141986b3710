"""File-system events → settled, debounced batches of photo paths.

Three small pieces, none of which reads a photo or touches the database:

* a path filter (:class:`pmllm_batch.scan.plan.PathFilter`, handed in by the service from the scorer) decides
  which paths can be photos, with the same rules as the scanner's walk; files with an unknown extension are kept
  only if ``is_image`` (magic bytes) says so once they have settled.
* :class:`SettleTracker` holds the paths that events touched. A path is *settled* once its size and mtime have
  not changed, and no event has touched it, for ``settle`` seconds; a copy still being written keeps changing
  and so is never read half-done. Settled paths are handed out in batches once events have been quiet for
  ``debounce`` seconds (or the batch is full, or it has waited long enough), so a burst becomes a few batches.
* :class:`PhotoEventHandler` is the watchdog handler: it runs in the observer's thread and only feeds the
  tracker. Directory events are recorded as folders for the service to expand (a folder moved out of the tree
  yields a single event, not one per photo).

Inotify queue overflows are not reported to handlers by watchdog; :func:`watch_for_overflow` listens for the
warning watchdog logs instead, so the service can rescan.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from pmllm_batch.log import get_logger

if TYPE_CHECKING:
    from pmllm_batch.scorer import PathFilter

log = get_logger("daemon.watcher")

# Only these reach the handler. Opened / closed-without-writing are left out on purpose: the scorer reading a
# photo produces them, and listening would make every batch schedule itself again.
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileAttribEvent,
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]

# Loggers through which watchdog reports a kernel event-queue overflow (events were lost).
_OVERFLOW_LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify")

Signature = tuple[int, int, int] | None  # (size, mtime_ns, inode); None = the path does not exist


def file_signature(path: str) -> Signature:
    """(size, mtime_ns, inode) of ``path``, None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


# ---------------------------------------------------------------------------------------------------------------------
# Settle and debounce
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _Pending:
    signature: Signature  # last stat seen
    stable_since: float  # clock time of the last change (stat or event)
    sniff: bool  # unknown extension: keep only if its magic bytes are an image's


class SettleTracker:
    """Paths waiting for their file to stop changing; thread-safe (the observer thread adds, the service takes).

    Args:
        settle: Seconds a path must stay unchanged (same size, mtime and inode, and no new event) to be read.
        debounce: Seconds without any event before settled paths are handed out as one batch.
        max_batch: Paths per batch at most; a full batch is handed out without waiting for quiet.
        max_delay: A settled path waits at most this long for quiet (default ``max(10 * debounce, 5)``), so a
            folder that never stops changing still gets processed.
        clock: Monotonic clock (tests pass a fake one).
        is_image: Decides, once a path touched with ``sniff=True`` has settled, whether its bytes are an image's
            (:meth:`pmllm_batch.scan.plan.PathFilter.is_image`); None keeps every such path.
    """

    def __init__(
        self,
        settle: float,
        debounce: float = 0.0,
        *,
        max_batch: int = 256,
        max_delay: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        is_image: Callable[[str], bool] | None = None,
    ) -> None:
        self.settle = float(settle)
        self.debounce = float(debounce)
        self.max_batch = max(1, int(max_batch))
        self.max_delay = float(max_delay) if max_delay is not None else max(10.0 * self.debounce, 5.0)
        self._clock = clock
        self._is_image = is_image
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._settled: dict[str, float] = {}  # path -> when it settled (insertion order = batch order)
        self._dirs: dict[str, None] = {}  # folders touched by directory events, in order
        self._recent_dirs: dict[str, float] = {}  # folder -> its last directory event (see recent_dirs)
        self._last_event = -float("inf")
        self.events = 0  # how many events touched the tracker (for tests and logs)

    # -- producers (observer thread) --------------------------------------------------------------------------------

    def touch(self, path: str, *, sniff: bool = False) -> None:
        """Record an event for ``path``: it must now stay unchanged for ``settle`` seconds before it is read."""
        now = self._clock()
        sig = file_signature(path)  # the state this event left behind, so the window starts at the event, not later
        with self._lock:
            self.events += 1
            if not sniff:
                # Churn of files that are probably not photos (a log, a database, a video being written) must not
                # hold every photo batch back until max_delay.
                self._last_event = now
            self._settled.pop(path, None)  # it changed again: back to waiting
            entry = self._pending.get(path)
            if entry is None:
                self._pending[path] = _Pending(sig, now, sniff)
            else:
                entry.signature, entry.stable_since = sig, now
                entry.sniff = entry.sniff and sniff

    def touch_dir(self, path: str) -> None:
        """Record a directory event; the service expands the folder (:meth:`take_dirs`)."""
        with self._lock:
            self.events += 1
            self._last_event = self._clock()
            self._dirs[path] = None
            self._recent_dirs[path] = self._last_event

    # -- consumer (service thread) ----------------------------------------------------------------------------------

    def take_dirs(self) -> list[str]:
        """Folders touched by directory events since the last call."""
        with self._lock:
            dirs = list(self._dirs)
            self._dirs.clear()
        return dirs

    def recent_dirs(self, within: float) -> list[str]:
        """Folders with a directory event in the last ``within`` seconds (older ones are forgotten).

        A file moved into a folder that was created a moment earlier can arrive before the observer watches that
        folder: the source side reports a deletion and nothing reports the arrival. The service looks in these
        folders before it calls a vanished file missing (:func:`pmllm_batch.daemon.batching.arrivals_for_vanished`).
        """
        now = self._clock()
        with self._lock:
            for path, when in list(self._recent_dirs.items()):
                if now - when > within:
                    del self._recent_dirs[path]
            return list(self._recent_dirs)

    def waiting_paths(self) -> list[str]:
        """Paths settling or settled but not handed out yet."""
        with self._lock:
            return [*self._pending, *self._settled]

    def claim(self, path: str) -> None:
        """Take ``path`` out of the tracker: the service reads it now, in another batch."""
        with self._lock:
            self._pending.pop(path, None)
            self._settled.pop(path, None)

    @property
    def waiting(self) -> int:
        """Paths not handed out yet (settling or settled)."""
        with self._lock:
            return len(self._pending) + len(self._settled)

    def _check(self, now: float) -> None:
        # stat outside the lock: a slow disk must not block the observer thread
        with self._lock:
            items = list(self._pending.items())
        stats = [(path, entry, file_signature(path)) for path, entry in items]
        with self._lock:
            for path, entry, sig in stats:
                if self._pending.get(path) is not entry:
                    continue  # re-touched while we were looking
                if sig != entry.signature:
                    entry.signature, entry.stable_since = sig, now
                    continue
                if now - entry.stable_since < self.settle:
                    continue
                del self._pending[path]
                if entry.sniff and sig is not None and self._is_image is not None and not self._is_image(path):
                    continue  # a settled non-image (sidecar, video …): never a photo
                self._settled[path] = now

    def take_batch(self) -> list[Path]:
        """Settled paths ready to process now (possibly none), in the order they settled.

        Stats every waiting path, moves those unchanged for ``settle`` seconds to the settled set, and hands out
        up to ``max_batch`` of them when events have been quiet for ``debounce`` seconds, the batch is full, or the
        oldest has waited ``max_delay`` seconds.
        """
        now = self._clock()
        self._check(now)
        with self._lock:
            if not self._settled:
                return []
            oldest = next(iter(self._settled.values()))
            quiet = now - self._last_event >= self.debounce
            if not (quiet or len(self._settled) >= self.max_batch or now - oldest >= self.max_delay):
                return []
            paths = list(self._settled)[: self.max_batch]
            for p in paths:
                del self._settled[p]
        return [Path(p) for p in paths]


# ---------------------------------------------------------------------------------------------------------------------
# The watchdog handler
# ---------------------------------------------------------------------------------------------------------------------


class PhotoEventHandler(FileSystemEventHandler):
    """Feeds photo paths from watchdog events into a :class:`SettleTracker`; does no other work.

    Args:
        path_filter: Which paths can be photos.
        tracker: Where touched paths go.
        sidecars: Offered every file path first; True means it took the path (an XMP sidecar while the daemon
            learns stars from sidecars: :meth:`pmllm_batch.daemon.sidecars.SidecarLearner.offer`), and the photo
            tracker never sees it.
    """

    def __init__(
        self, path_filter: PathFilter, tracker: SettleTracker, sidecars: Callable[[str], bool] | None = None
    ) -> None:
        super().__init__()
        self.filter = path_filter
        self.tracker = tracker
        self.sidecars = sidecars

    def _file(self, raw: bytes | str) -> None:
        if not raw:
            return  # the unknown half of an unpaired move
        path = os.fsdecode(raw)
        if self.sidecars is not None and self.sidecars(path):
            return
        kind = self.filter.classify(path)
        if kind is not None:
            self.tracker.touch(path, sniff=kind == "sniff")

    def _dir(self, raw: bytes | str) -> None:
        if not raw:
            return
        path = os.fsdecode(raw)
        if self.filter.wanted_dir(path):
            self.tracker.touch_dir(path)

    def on_created(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            self._dir(event.src_path)
        else:
            self._file(event.src_path)

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:  # a folder's own mtime says nothing its files' events do not
            self._file(event.src_path)

    def on_attrib(self, event: FileSystemEvent) -> None:
        if not event.is_directory:  # `cp -p` and `touch` set the mtime through an attribute change
            self._file(event.src_path)

    def on_closed(self, event: FileSystemEvent) -> None:
        self._file(event.src_path)

    def on_deleted(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            self._dir(event.src_path)
        else:
            self._file(event.src_path)

    def on_moved(self, event: FileSystemEvent) -> None:
        dest = event.dest_path
        if event.is_directory:
            self._dir(event.src_path)
            self._dir(dest)
        else:
            self._file(event.src_path)
            self._file(dest)


# ---------------------------------------------------------------------------------------------------------------------
# Overflow
# ---------------------------------------------------------------------------------------------------------------------


class _OverflowListener(logging.Handler):
    def __init__(self, callback: Callable[[], None]) -> None:
        super().__init__(level=logging.WARNING)
        self._callback = callback

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self._callback()


def watch_for_overflow(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback`` (from the observer thread) whenever watchdog reports lost events.

    watchdog handles ``IN_Q_OVERFLOW`` itself and tells handlers nothing; its only signal is a warning on its
    inotify loggers, so we listen there.

    Returns:
        A function that removes the listener.
    """
    listener = _OverflowListener(callback)
    changed: list[logging.Logger] = []
    for name in _OVERFLOW_LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(listener)
        if not logger.isEnabledFor(logging.WARNING):
            # a quiet root logger must not hide the one signal we rely on
            logger.setLevel(logging.WARNING)
            changed.append(logger)

    def remove() -> None:
        for name in _OVERFLOW_LOGGERS:
            logging.getLogger(name).removeHandler(listener)
        for logger in changed:
            logger.setLevel(logging.NOTSET)

    return remove
