"""What a scan must read: the scanner's file rules, one walk, and the plan against what the database knows.

Both ``rank`` (:meth:`pmllm_batch.scorer.batch.LibraryScorer.sync`) and the daemon's reconcile scans plan here, so
"is this file new, changed, unchanged, still being written, or gone?" is decided in one place:

* :class:`PathFilter` applies the walk's rules (:func:`~pmllm_batch.scan.discover.discover`) to single paths from
  file-system events: inside a root, no hidden path component, ``scan.exclude`` / ``scan.include`` globs, a known
  image extension, or else image magic bytes.
* :func:`walk` is :func:`discover` with the ``[scan]`` settings.
* :func:`plan_scan` compares a walk (or an explicit list of paths) with the photo index.

The index is what the caller read from the database: :class:`~pmllm_batch.contracts.PhotoRecord` rows by path (a
ground-layer type, so this module needs no database code); the plan reads ``size``, ``mtime_ns`` and ``status``, and
:func:`~pmllm_batch.scan.replan.replan` the skip state.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pmllm_batch.config import ScanSettings
from pmllm_batch.contracts import PhotoRecord, PhotoStatus
from pmllm_batch.scan.discover import SCANNED_EXTENSIONS, FileEntry, discover, sniff_format
from pmllm_batch.scan.replan import replan

__all__ = ["PathFilter", "ScanPlan", "plan_scan", "walk"]


def _matches(patterns: Sequence[str], rel_posix: str, name: str) -> bool:
    return any(fnmatch.fnmatch(rel_posix, p) or fnmatch.fnmatch(name, p) for p in patterns)


def _extensions(extensions: Iterable[str]) -> frozenset[str]:
    exts = frozenset(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    return exts or SCANNED_EXTENSIONS


class PathFilter:
    """The scanner's file rules applied to single paths (from file-system events).

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
        self.extensions = _extensions(extensions)

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
        return not (
            self.exclude and any(_matches(self.exclude, "/".join(parts[: i + 1]), parts[i]) for i in range(len(parts)))
        )

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

    @staticmethod
    def is_image(path: str | Path) -> bool:
        """Do the file's magic bytes say it is an image (for files whose extension is not an image's)?"""
        return sniff_format(path) is not None

    @classmethod
    def from_settings(cls, roots: Sequence[Path], scan: ScanSettings) -> PathFilter:
        return cls(roots, include=scan.include, exclude=scan.exclude, extensions=scan.extensions)


def walk(roots: Sequence[Path], scan: ScanSettings) -> Iterator[FileEntry]:
    """Every candidate photo under ``roots`` by the ``[scan]`` rules (:func:`discover`)."""
    return discover(
        roots,
        include=tuple(scan.include),
        exclude=tuple(scan.exclude),
        extensions=_extensions(scan.extensions),
        follow_symlinks=scan.follow_symlinks,
    )


@dataclass
class ScanPlan:
    """What a scan found, against the photo index.

    Attributes:
        entries: the files looked at now (``todo`` + unchanged), not those still settling.
        todo: new or changed files (or ones marked missing that are back): to hash and read now.
        unchanged: how many files match their row (size and mtime): never read again.
        new: how many of ``todo`` are new paths (or missing ones that are back).
        changed: how many of ``todo`` are known paths whose size or mtime changed.
        gone: stored paths (not yet missing) that are no longer there.
        settling: files modified within the settle window: left for later, not read now.
    """

    entries: list[FileEntry] = field(default_factory=list)
    todo: list[FileEntry] = field(default_factory=list)
    unchanged: int = 0
    new: int = 0
    changed: int = 0
    gone: list[str] = field(default_factory=list)
    settling: list[Path] = field(default_factory=list)


def _entries_for(paths: Iterable[Path], roots: Sequence[Path]) -> tuple[list[FileEntry], list[str]]:
    entries: list[FileEntry] = []
    gone: list[str] = []
    for p in paths:
        p = Path(os.path.abspath(p))
        root = next((r for r in roots if p == r or r in p.parents), None)
        if root is None:
            continue
        try:
            st = p.stat()
        except OSError:
            gone.append(str(p))
            continue
        if p.is_file():
            entries.append(FileEntry(path=p, root=root, size=st.st_size, mtime_ns=st.st_mtime_ns))
    return entries, gone


def plan_scan(
    roots: Sequence[Path],
    index: Mapping[str, PhotoRecord],
    scan: ScanSettings,
    *,
    paths: Iterable[Path] | None = None,
    settle_cutoff_ns: int | None = None,
) -> ScanPlan:
    """Compare the folders (or just ``paths``) with ``index``.

    Args:
        roots: absolute photo folders.
        index: the stored photo rows under ``roots``, keyed by path.
        scan: the ``[scan]`` rules for the walk.
        paths: look only at these files (the daemon's event batches): nothing else is marked gone.
        settle_cutoff_ns: files whose mtime is after this (ns since the epoch) may still be being written; they go
            to ``settling`` instead of ``todo`` (the daemon's reconcile; ``rank`` reads everything).
    """
    plan = ScanPlan()
    if paths is None:
        found = list(walk(roots, scan))
        seen = {str(e.path) for e in found}
        plan.gone = [p for p, rec in index.items() if p not in seen and rec.status != PhotoStatus.MISSING]
    else:
        found, plan.gone = _entries_for(paths, roots)
    for e in found:
        rec = index.get(str(e.path))
        if rec is not None and rec.status != PhotoStatus.MISSING and (rec.size, rec.mtime_ns) == (e.size, e.mtime_ns):
            plan.unchanged += 1
            plan.entries.append(e)
            continue
        if settle_cutoff_ns is not None and e.mtime_ns > settle_cutoff_ns:
            plan.settling.append(e.path)
            continue
        plan.entries.append(e)
        plan.todo.append(e)
        if rec is None or rec.status == PhotoStatus.MISSING:
            plan.new += 1
        else:
            plan.changed += 1
    # RAW twins, too_small and blank: unchanged files whose skip state is stale
    replan(plan, index, roots, min_side=scan.min_side, blank_std=scan.blank_std, explicit=paths is not None,
           present={str(e.path) for e in found} if paths is None else None)
    return plan
