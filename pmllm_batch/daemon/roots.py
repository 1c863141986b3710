"""Photo folders that are not there: detection, and checks again with back-off until they appear.

A root that is absent (a NAS not mounted yet, an unplugged disk), or an empty folder the database knows photos
under (the mount point of a disk that is not mounted), is not scanned: scanning it would mark its whole library
missing. It is logged once, checked again after 1 s, then less and less often (doubling, at most every
:data:`ROOT_CHECK_MAX_S` seconds), and scanned once it is back. Its rows are left as they are meanwhile.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pmllm_batch.contracts import PhotoStatus
from pmllm_batch.db.store import Store
from pmllm_batch.log import get_logger

log = get_logger("daemon")

ROOT_CHECK_MAX_S = 60.0  # back-off ceiling between checks of a root that is not there


def abs_path(path: str | Path) -> Path:
    """``path`` made absolute (``~`` expanded), without resolving symlinks."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


class RootMonitor:
    """Which of ``roots`` can be scanned now, and when to look again for those that cannot.

    Args:
        roots: The watched folders (absolute).
        store: The database, asked whether an empty folder is a mount point whose photos it knows.
    """

    def __init__(self, roots: list[Path], store: Store) -> None:
        self.roots = roots
        self.store = store
        self.missing: set[Path] = set()
        self._wait = 1.0  # seconds until the next check of a missing root (doubles up to ROOT_CHECK_MAX_S)
        self._next_check = float("inf")

    def present(self, root: Path) -> bool:
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
        return not any(rec.status != PhotoStatus.MISSING for rec in known.values())

    def available(self) -> list[Path]:
        """The roots to scan now; one that went away or came back is logged (once per change)."""
        roots = []
        for root in self.roots:
            if self.present(root):
                if root in self.missing:
                    self.missing.discard(root)
                    log.warning("photo folder %s is there now; scanning it", root)
                roots.append(root)
            elif root not in self.missing:
                # An unmounted disk must not turn a whole library "missing"; its rows stay as they are.
                self.missing.add(root)
                what = "is empty although the database knows photos in it" if root.is_dir() else "is not there"
                log.warning("photo folder %s %s (not mounted yet?); leaving its photos as they are and checking "
                            "again in %.0fs, then less often (at most every %.0fs)",
                            root, what, self._wait, ROOT_CHECK_MAX_S)
                self._next_check = min(self._next_check, time.monotonic() + self._wait)
        return roots

    def rearm(self) -> None:
        """After a scan: a root still missing is checked again within the current back-off."""
        if self.missing:
            self._next_check = min(self._next_check, time.monotonic() + self._wait)

    def due(self, now: float) -> bool:
        """Is a missing root due for another look at monotonic time ``now``?"""
        return bool(self.missing) and now >= self._next_check

    def check(self) -> list[Path]:
        """Back-off check of the missing roots; returns those that appeared (they need a full scan and a watch)."""
        back = [r for r in sorted(self.missing) if self.present(r)]
        if back:
            self._wait = 1.0
        else:
            self._wait = min(self._wait * 2, ROOT_CHECK_MAX_S)
            log.debug("still not there: %s; next check in %.0fs", ", ".join(map(str, self.missing)), self._wait)
        self._next_check = time.monotonic() + self._wait if self.missing else float("inf")
        return back


__all__ = ["ROOT_CHECK_MAX_S", "RootMonitor", "abs_path"]
