"""Files to read again although they did not change: their skip reason (or its absence) no longer holds.

:func:`pmllm_batch.scan.plan.plan_scan` calls :func:`replan` last. An unchanged file goes back to ``todo`` when

* it is a RAW stored as ``raw_pair`` whose JPEG twin is gone, changed or not "ok" (the RAW is the photo again);
* it is a RAW stored "ok" whose JPEG twin arrived or is "ok" now (the pair becomes one photo, ranked as the JPEG);
* it is stored ``too_small`` but ``[scan] min_side`` now lets it through, or it is stored "ok" with dimensions that
  ``min_side`` now refuses;
* it is stored ``blank`` but ``[scan] blank_std`` is now 0 or at most the luminance spread its message recorded (or
  ``min_side`` now refuses it: it is too small first). An ok row stores no spread, so a raised ``blank_std`` applies
  to files read from then on.

With explicit ``paths`` (the daemon's event batches) a JPEG that arrived, changed or left brings its RAW twin's row
along (looked up by name in the index), since no event names the RAW itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pmllm_batch.contracts import PhotoRecord, PhotoStatus, SkipReason
from pmllm_batch.scan.discover import FileEntry
from pmllm_batch.scan.raw import is_raw, jpeg_twin, raw_twins
from pmllm_batch.scan.skip import blank_spread, too_small

if TYPE_CHECKING:
    from pmllm_batch.scan.plan import ScanPlan

__all__ = ["replan"]


def _stale(rec: PhotoRecord, entry: FileEntry, twin_ok: bool | None, min_side: int, blank_std: float) -> bool:
    status, reason = rec.status, rec.error_reason
    if status == PhotoStatus.SKIPPED and reason == SkipReason.TOO_SMALL:
        return too_small(rec.width, rec.height, min_side) is None
    if status == PhotoStatus.SKIPPED and reason == SkipReason.BLANK:
        if too_small(rec.width, rec.height, min_side) is not None:
            return True
        spread = blank_spread(rec.error_message)
        return blank_std <= 0 or spread is None or spread >= blank_std
    if status == PhotoStatus.OK and too_small(rec.width, rec.height, min_side) is not None:
        return True
    if twin_ok is not None and is_raw(entry.path):
        paired = status == PhotoStatus.SKIPPED and reason == SkipReason.RAW_PAIR
        return paired != twin_ok and status in (PhotoStatus.OK, PhotoStatus.SKIPPED)
    return False


def replan(
    plan: ScanPlan,
    index: Mapping[str, PhotoRecord],
    roots: Sequence[Path],
    *,
    min_side: int,
    blank_std: float,
    explicit: bool,
    present: set[str] | None = None,
) -> None:
    """Move unchanged files whose skip state is stale from ``plan.entries``' unchanged part into ``plan.todo``.

    Args:
        plan: The plan being built (changed in place).
        index: Stored rows by path (``status``, ``error_reason``, ``width``, ``height``).
        roots: The scan roots.
        min_side: ``[scan] min_side``.
        blank_std: ``[scan] blank_std``.
        explicit: The plan looked at explicit paths only (the daemon), not a full walk.
        present: Every path the full walk listed (settling ones too): twins are looked up there, not on disk.
    """
    todo_paths = {str(e.path) for e in plan.todo}
    entries = {str(e.path): e for e in plan.entries}
    if explicit:
        # A JPEG that arrived, changed or left: its RAW twin (not named by any event) is looked at too.
        for path in [*todo_paths, *plan.gone]:
            for name in raw_twins(path):
                if name in entries or name not in index:
                    continue
                try:
                    st = os.stat(name)
                except OSError:
                    continue
                rec = index[name]
                root = Path(rec.root or os.path.dirname(name))
                entry = FileEntry(path=Path(name), root=root, size=st.st_size, mtime_ns=st.st_mtime_ns)
                entries[name] = entry
                plan.entries.append(entry)
                if (rec.size, rec.mtime_ns) == (entry.size, entry.mtime_ns) and rec.status != PhotoStatus.MISSING:
                    plan.unchanged += 1
                else:
                    plan.todo.append(entry)
                    todo_paths.add(name)
                    plan.changed += 1
    gone = set(plan.gone)
    moved: list[FileEntry] = []
    for path, entry in entries.items():
        if path in todo_paths:
            continue
        stored = index.get(path)
        if stored is None:
            continue
        twin_ok: bool | None = None
        if is_raw(path):
            twin = jpeg_twin(path, present)
            if twin is not None and str(twin) in todo_paths:
                moved.append(entry)  # decided again once the twin is read (the scorer reads RAWs last)
                continue
            twin_rec = index.get(str(twin)) if twin is not None else None
            twin_ok = str(twin) not in gone and twin_rec is not None and twin_rec.status == PhotoStatus.OK
        if _stale(stored, entry, twin_ok, min_side, blank_std):
            moved.append(entry)
    for entry in moved:
        plan.todo.append(entry)
        plan.unchanged -= 1
