"""File-system events → settled, debounced batches of photo paths.

Three small pieces, none of which reads a photo or touches the database:

* :class:`PathFilter` decides which paths can be photos, with the same rules as the scanner's walk
  (:func:`pmllm_batch.scan.discover.discover`): inside a root, no hidden path component, ``scan.exclude`` /
  ``scan.include`` globs, a known image extension, or else image magic bytes (checked once the file has settled).
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

import fnmatch
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

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
from pmllm_batch.scan.discover import DEFAULT_EXTENSIONS, sniff_format

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


def _signature(path: str) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _matches(patterns: Sequence[str], rel_posix: str, name: str) -> bool:
    return any(fnmatch.fnmatch(rel_posix, p) or fnmatch.fnmatch(name, p) for p in patterns)


# ---------------------------------------------------------------------------------------------------------------------
# Which paths can be photos
# ---------------------------------------------------------------------------------------------------------------------


class PathFilter:
    """The scanner's file rules applied to single paths from events.

    Args:
        roots: Absolute watched folders.
        include: fnmatch globs a file must match (path relative to its root, or its name); empty = all.
        exclude: fnmatch globs of files or folders to skip; they win over ``include``.
        extensions: Extensions (with the dot) listed without looking at the content; empty = the built-in list.
    """

    def __init__(
        self,
        roots: Sequence[Path],
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        extensions: Iterable[str] = (),
    ) -> None:
        self.roots = [Path(os.path.abspath(r)) for r in roots]
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        exts = frozenset(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        self.extensions = exts or DEFAULT_EXTENSIONS

    def root_of(self, path: str | Path) -> Path | None:
        """The watched root ``path`` lies in (the deepest one for nested roots), or None."""
        p = Path(os.path.abspath(path))
        inside = [r for r in self.roots if p == r or p.is_relative_to(r)]
        return max(inside, key=lambda r: len(r.parts)) if inside else None

    def _relative(self, path: str | Path) -> tuple[Path, str] | None:
        root = self.root_of(path)
        if root is None:
            return None
        rel = Path(os.path.abspath(path)).relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            return None  # hidden file or inside a hidden folder: the walk skips these too (and temp copies)
        return root, rel.as_posix()

    def wanted_dir(self, path: str | Path) -> bool:
        """Could photos under this folder be part of the library (inside a root, not hidden, not excluded)?"""
        found = self._relative(path)
        if found is None:
            return False
        _, rel = found
        if rel == ".":
            return True
        parts = rel.split("/")
        # Excluding a folder prunes its subtree in the walk, so any excluded ancestor excludes it here.
        return not (self.exclude and any(_matches(self.exclude, "/".join(parts[: i + 1]), parts[i])
                                         for i in range(len(parts))))

    def classify(self, path: str | Path) -> str | None:
        """How to treat a file path.

        Returns:
            ``"photo"`` (image extension), ``"sniff"`` (other extension: an image only if its magic bytes say so,
            checked once it has settled) or None (never a photo: outside the roots, hidden, excluded, not included).
        """
        found = self._relative(path)
        if found is None:
            return None
        _, rel = found
        parts = rel.split("/")
        name = parts[-1]
        if len(parts) > 1 and not self.wanted_dir(Path(os.path.abspath(path)).parent):
            return None
        if self.exclude and _matches(self.exclude, rel, name):
            return None
        if self.include and not _matches(self.include, rel, name):
            return None
        return "photo" if Path(name).suffix.lower() in self.extensions else "sniff"

    def files_under(self, directory: str | Path) -> list[Path]:
        """Candidate files below ``directory`` (recursively), by the same rules; unreadable folders are skipped."""
        out: list[Path] = []
        if not self.wanted_dir(directory):
            return out
        for dirpath, dirnames, filenames in os.walk(directory, onerror=None):
            dirnames[:] = sorted(d for d in dirnames if self.wanted_dir(os.path.join(dirpath, d)))
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                if self.classify(full) is not None:
                    out.append(Path(full))
        return out


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
    """

    def __init__(
        self,
        settle: float,
        debounce: float = 0.0,
        *,
        max_batch: int = 256,
        max_delay: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settle = float(settle)
        self.debounce = float(debounce)
        self.max_batch = max(1, int(max_batch))
        self.max_delay = float(max_delay) if max_delay is not None else max(10.0 * self.debounce, 5.0)
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._settled: dict[str, float] = {}  # path -> when it settled (insertion order = batch order)
        self._dirs: dict[str, None] = {}  # folders touched by directory events, in order
        self._last_event = -float("inf")
        self.events = 0  # how many events touched the tracker (for tests and logs)

    # -- producers (observer thread) --------------------------------------------------------------------------------

    def touch(self, path: str, *, sniff: bool = False) -> None:
        """Record an event for ``path``: it must now stay unchanged for ``settle`` seconds before it is read."""
        now = self._clock()
        sig = _signature(path)  # the state this event left behind, so the window starts at the event, not later
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

    # -- consumer (service thread) ----------------------------------------------------------------------------------

    def take_dirs(self) -> list[str]:
        """Folders touched by directory events since the last call."""
        with self._lock:
            dirs = list(self._dirs)
            self._dirs.clear()
        return dirs

    @property
    def waiting(self) -> int:
        """Paths not handed out yet (settling or settled)."""
        with self._lock:
            return len(self._pending) + len(self._settled)

    def _check(self, now: float) -> None:
        # stat outside the lock: a slow disk must not block the observer thread
        with self._lock:
            items = list(self._pending.items())
        stats = [(path, entry, _signature(path)) for path, entry in items]
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
                if entry.sniff and sig is not None and sniff_format(path) is None:
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
    """

    def __init__(self, path_filter: PathFilter, tracker: SettleTracker) -> None:
        super().__init__()
        self.filter = path_filter
        self.tracker = tracker

    def _file(self, raw: bytes | str) -> None:
        if not raw:
            return  # the unknown half of an unpaired move
        path = os.fsdecode(raw)
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
        dest = getattr(event, "dest_path", "")
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
