"""What a batch looks at: folder events expanded to photos, arrivals for vanished files, files still settling.

A folder event (created, deleted, moved) arrives once for the whole folder, so :func:`expand_dir` touches every
photo below it, on disk and in the database. A batch with a vanished file takes in likely arrivals
(:func:`arrivals_for_vanished`) so the scan records a move instead of a loss. ``--once`` waits for the files its
scan found still changing (:func:`wait_for_settling`).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pmllm_batch.contracts import PhotoStatus
from pmllm_batch.daemon.batchlog import plural
from pmllm_batch.daemon.watcher import SettleTracker
from pmllm_batch.db.store import Store
from pmllm_batch.log import get_logger

if TYPE_CHECKING:
    from pmllm_batch.scorer import PathFilter

log = get_logger("daemon")

RECENT_DIR_WINDOW_S = 60.0  # a batch with vanished files looks for them in folders created this recently
ONCE_SETTLE_LIMIT_S = 30.0  # --once waits at most max(this, 10 x settle) for files that keep changing


def expand_dir(folder: str, tracker: SettleTracker, path_filter: PathFilter, store: Store) -> None:
    """A folder appeared, vanished or moved: touch every photo below it, on disk and in the database."""
    paths = {str(p) for p in path_filter.files_under(folder)} if os.path.isdir(folder) else set()
    root = path_filter.root_of(folder)
    if root is not None:
        prefix = folder.rstrip(os.sep) + os.sep
        index = store.photo_index([str(root)])
        paths.update(p for p, rec in index.items() if p.startswith(prefix) and rec.status != PhotoStatus.MISSING)
    for path in sorted(paths):
        kind = path_filter.classify(path)
        tracker.touch(path, sniff=kind == "sniff")


def _candidates(tracker: SettleTracker, path_filter: PathFilter, settle: float) -> list[str]:
    """Every path still waiting in the tracker, then every file in a folder created in the last minute or so."""
    candidates = list(tracker.waiting_paths())
    for folder in tracker.recent_dirs(within=max(RECENT_DIR_WINDOW_S, 10 * settle)):
        if os.path.isdir(folder):
            candidates += [str(p) for p in path_filter.files_under(folder)]
    return candidates


def _settled_photo(name: str, path_filter: PathFilter, cutoff: float) -> bool:
    """Is ``name`` a photo file (by the tracker's rule) that has not been written since ``cutoff``?"""
    kind = path_filter.classify(name)
    if kind is None or (kind == "sniff" and not path_filter.is_image(name)):
        return False  # the tracker's own rule for files whose extension is not an image's
    try:
        st = os.stat(name)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_mtime <= cutoff


def arrivals_for_vanished(
    batch: list[Path], tracker: SettleTracker, path_filter: PathFilter, settle: float
) -> list[Path]:
    """Photos that may be where a batch's vanished files went, so the scan records moves instead of losses.

    Two ways a move reaches the tracker split in two: ``mkdir sub && mv a.jpg sub/`` can move the file before
    the observer watches ``sub`` (only the deletion of ``a.jpg`` is seen, or the arrival is simulated a moment
    later), and a move's two halves can settle at different times. So a batch with a vanished file also takes
    every file still waiting in the tracker and every file in a folder created in the last minute (up to the
    batch limit), as long as it has not been written for ``settle`` seconds (a moved file keeps its old mtime;
    one being written does not qualify and is left to its own events). The scan then matches arrivals to
    vanished files by content. The paths returned are claimed: the tracker no longer hands them out.
    """
    seen = {str(p) for p in batch}
    candidates = _candidates(tracker, path_filter, settle)
    cutoff = time.time() - settle
    room = max(0, tracker.max_batch - len(batch))  # a batch stays bounded; the rest keep their own events
    found: list[Path] = []
    for name in candidates:
        if len(found) >= room:
            break
        if name in seen:
            continue
        seen.add(name)
        if _settled_photo(name, path_filter, cutoff):
            tracker.claim(name)
            found.append(Path(name))
    return found


def wait_for_settling(
    tracker: SettleTracker,
    process: Callable[[list[Path]], None],
    stopped: Callable[[], bool],
    settle: float,
    tick_s: float,
) -> None:
    """``--once``: files the scan found still changing (a copy in progress) are waited for, then read.

    A file that keeps changing for longer than ``max(ONCE_SETTLE_LIMIT_S, 10 x settle)`` is left for the next run.

    Args:
        tracker: Holds the files that are still changing.
        process: Reads one batch of settled paths.
        stopped: True once a stop was asked for (the wait ends).
        settle: The settle window, seconds.
        tick_s: Seconds between looks at the tracker.
    """
    if not tracker.waiting:
        return
    log.info("%s changed less than %.1fs ago; waiting for %s to settle",
             plural(tracker.waiting, "file"), settle, "it" if tracker.waiting == 1 else "them")
    limit = max(ONCE_SETTLE_LIMIT_S, 10 * settle)
    deadline = time.monotonic() + limit
    while tracker.waiting and not stopped():
        batch = tracker.take_batch()
        if batch:
            process(batch)
            continue
        if time.monotonic() > deadline:
            n = tracker.waiting
            log.warning("%s still changing after %.0fs; left for the next run",
                        "1 file was" if n == 1 else f"{n} files were", limit)
            return
        time.sleep(tick_s)


__all__ = ["ONCE_SETTLE_LIMIT_S", "RECENT_DIR_WINDOW_S", "arrivals_for_vanished", "expand_dir", "wait_for_settling"]
