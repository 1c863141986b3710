"""Find photo files under one or more roots.

The walk is deterministic (siblings in sorted name order, depth first), skips hidden entries, filters by
extension and, for files without a known image extension, by content sniffing. Symlinks are followed only
when their target lies inside one of the roots, and every directory is entered at most once, so link loops
terminate and a photo is not listed twice because a link points at its folder.

Real paths win over links: symlinks found during the walk are set aside and followed only after all roots
have been walked, so a link that sorts before the folder it points at (``a_link -> photos/2020``) does not
take over the paths of the files in that folder.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import stat
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

_logger = logging.getLogger(__name__)

DEFAULT_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif", ".avif"}
)
# Camera RAW, decoded through LibRaw (the same list as pmllm_batch.scan.raw.RAW_EXTENSIONS).
RAW_EXTENSIONS: frozenset[str] = frozenset(
    {".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw"}
)
# What a scan lists by extension when ``[scan] extensions`` is empty: the image formats and camera RAW.
SCANNED_EXTENSIONS: frozenset[str] = DEFAULT_EXTENSIONS | RAW_EXTENSIONS

# ISO-BMFF major/compatible brands (the 'ftyp' box) that mark a HEIF or an AVIF still image or sequence.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
# DIB header sizes of the BMP variants PIL knows; "BM" alone is too weak a magic (plain text can start with it).
_BMP_DIB_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_SNIFF_BYTES = 64


@dataclass(frozen=True)
class FileEntry:
    """One candidate photo file found by :func:`discover`.

    Attributes:
        path: Absolute path as found under ``root`` (symlinks in it are not resolved).
        root: The absolute root the file was found under.
        size: File size in bytes (of the link target for a followed symlink).
        mtime_ns: Modification time in nanoseconds (of the link target for a followed symlink).
    """

    path: Path  # absolute, as walked; not resolved through symlinks
    root: Path  # absolute root it was found under
    size: int  # bytes
    mtime_ns: int  # st_mtime_ns


# ---------------------------------------------------------------------------------------------------------------------
# Content sniffing and hashing
# ---------------------------------------------------------------------------------------------------------------------


def _sniff_bytes(head: bytes) -> str | None:
    """Recognise an image format from the first bytes of a file.

    Args:
        head: At least the first 32 bytes of the file (fewer if the file is shorter).

    Returns:
        One of ``"jpeg"``, ``"png"``, ``"gif"``, ``"webp"``, ``"tiff"``, ``"bmp"``, ``"heif"``, ``"avif"``, or
        ``None`` when no image signature matches.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    # Classic TIFF (42) and BigTIFF (43), both byte orders.
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "tiff"
    if head.startswith(b"BM") and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES:
        return "bmp"
    if head[4:8] == b"ftyp" and len(head) >= 12:
        box_size = int.from_bytes(head[0:4], "big")
        end = min(len(head), box_size) if box_size >= 16 else 12
        major = head[8:12]
        # Compatible brands start after the 4-byte minor version.
        brands = {major} | {head[i : i + 4] for i in range(16, end - 3, 4)}
        # AVIF first: AVIF files also carry the generic 'mif1'/'msf1' HEIF brands.
        if brands & _AVIF_BRANDS:
            return "avif"
        if brands & _HEIF_BRANDS:
            return "heif"
    return None


def sniff_format(path: str | os.PathLike[str]) -> str | None:
    """Recognise an image file by its magic bytes.

    Args:
        path: File to inspect. Only the first few bytes are read.

    Returns:
        ``"jpeg"``, ``"png"``, ``"gif"``, ``"webp"``, ``"tiff"``, ``"bmp"``, ``"heif"`` or ``"avif"``; ``None`` when
        the content is not a recognised image or the file cannot be read (this function never raises for I/O).
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except (OSError, ValueError):
        # ValueError: embedded NUL in the path; treat like any other unreadable file.
        return None
    return _sniff_bytes(head)


def content_hash(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hash a file's content, streaming, so a photo keeps its identity when moved or renamed.

    Args:
        path: File to hash.
        chunk_size: Bytes read per step; bounds memory for huge files.

    Returns:
        Hex BLAKE2b digest with ``digest_size=16`` (32 hex characters).

    Raises:
        OSError: The file cannot be opened or read.
    """
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Walking
# ---------------------------------------------------------------------------------------------------------------------


def _as_root_list(roots: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(roots, str | os.PathLike):
        return [Path(roots)]
    return [Path(r) for r in roots]


def _matches(patterns: Sequence[str], rel_posix: str, name: str) -> bool:
    return any(fnmatch.fnmatch(rel_posix, p) or fnmatch.fnmatch(name, p) for p in patterns)


def _is_within(path: Path, parents: Sequence[Path]) -> bool:
    return any(path == p or path.is_relative_to(p) for p in parents)


class _Walker:
    """State of one :func:`discover` call: roots, filters and the set of directories already entered."""

    def __init__(
        self,
        roots: list[Path],
        include: Sequence[str],
        exclude: Sequence[str],
        extensions: frozenset[str],
        sniff_unknown: bool,
        follow_symlinks: bool,
    ) -> None:
        self.roots = roots
        self.resolved_roots = [r.resolve() for r in roots]
        self.include = include
        self.exclude = exclude
        self.extensions = extensions
        self.sniff_unknown = sniff_unknown
        self.follow_symlinks = follow_symlinks
        # (st_dev, st_ino) of every directory entered: cheaper than realpath and immune to path spelling.
        self.visited_dirs: set[tuple[int, int]] = set()
        # Symlinks set aside until the real tree has been walked: (link path, root, path relative to root).
        self.deferred: deque[tuple[Path, Path, str]] = deque()

    # -- filters ------------------------------------------------------------------------------------------------------

    def _wanted_file(self, path: Path, rel: str, name: str) -> bool:
        if self.exclude and _matches(self.exclude, rel, name):
            return False
        if self.include and not _matches(self.include, rel, name):
            return False
        if path.suffix.lower() in self.extensions:
            # Image extension: always listed; decode decides later whether it really is an image.
            return True
        return self.sniff_unknown and sniff_format(path) is not None

    def _target_inside_roots(self, link: Path) -> Path | None:
        try:
            target = link.resolve(strict=True)
        except (OSError, RuntimeError):
            # Broken link, or a loop of links (RuntimeError on older Pythons).
            return None
        return target if _is_within(target, self.resolved_roots) else None

    # -- walking ------------------------------------------------------------------------------------------------------

    def _entry(self, path: Path, root: Path, st: os.stat_result) -> FileEntry:
        return FileEntry(path=path, root=root, size=st.st_size, mtime_ns=st.st_mtime_ns)

    def walk_dir(self, directory: Path, root: Path, rel_dir: str) -> Iterator[FileEntry]:
        """Walk ``directory`` depth first, yielding wanted regular files and deferring symlinks.

        Args:
            directory: Absolute directory path (as walked, not resolved).
            root: Root that ``directory`` belongs to.
            rel_dir: ``directory`` relative to ``root`` in posix form (``""`` for the root itself).
        """
        try:
            st = os.stat(directory)
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if key in self.visited_dirs:
            return
        self.visited_dirs.add(key)
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            # An unreadable folder is not fatal for the run; the user still gets everything else.
            _logger.warning("cannot list %s: %s", directory, exc)
            return
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            path = directory / name
            rel = f"{rel_dir}/{name}" if rel_dir else name
            try:
                is_link = entry.is_symlink()
                is_dir = not is_link and entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_link:
                if self.follow_symlinks:
                    self.deferred.append((path, root, rel))
                continue
            if is_dir:
                # Excluding a folder prunes its whole subtree (e.g. exclude=["@eaDir", "*/thumbnails"]).
                if self.exclude and _matches(self.exclude, rel, name):
                    continue
                yield from self.walk_dir(path, root, rel)
                continue
            yield from self._file(path, root, rel, name, follow=False)

    def _file(self, path: Path, root: Path, rel: str, name: str, *, follow: bool) -> Iterator[FileEntry]:
        try:
            st = os.stat(path, follow_symlinks=follow)
        except OSError:
            # Vanished or unstat-able while walking: skipped here; decode records such files when it meets them.
            return
        # Only regular files: sniffing a FIFO or a device would block or read forever.
        if not stat.S_ISREG(st.st_mode):
            return
        if self._wanted_file(path, rel, name):
            yield self._entry(path, root, st)

    def walk_link(self, link: Path, root: Path, rel: str) -> Iterator[FileEntry]:
        """Follow one deferred symlink if its target lies inside the roots and was not walked already."""
        target = self._target_inside_roots(link)
        if target is None:
            return
        name = link.name
        if target.is_dir():
            if self.exclude and _matches(self.exclude, rel, name):
                return
            yield from self.walk_dir(link, root, rel)
            return
        # A file link whose target's folder was walked would list the same photo a second time under another name.
        try:
            parent = os.stat(target.parent)
        except OSError:
            return
        if (parent.st_dev, parent.st_ino) in self.visited_dirs:
            return
        yield from self._file(link, root, rel, name, follow=True)

    def run(self) -> Iterator[FileEntry]:
        for root in self.roots:
            try:
                st = os.stat(root)
            except OSError:
                continue  # removed between the existence check and now
            if stat.S_ISDIR(st.st_mode):
                yield from self.walk_dir(root, root, "")
            elif stat.S_ISREG(st.st_mode):
                # A single file given as a root is listed if it passes the filters; its folder acts as the root.
                yield from self._file(root, root.parent, root.name, root.name, follow=True)
        while self.deferred:
            link, root, rel = self.deferred.popleft()
            yield from self.walk_link(link, root, rel)


def discover(
    roots: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    extensions: Iterable[str] = SCANNED_EXTENSIONS,
    sniff_unknown: bool = True,
    follow_symlinks: bool = True,
) -> Iterator[FileEntry]:
    """Walk ``roots`` and yield candidate photo files in a deterministic order.

    Order: roots in the order given; inside a root, depth first with siblings sorted by name; symlinked content
    (if any) after all real files.

    Args:
        roots: One folder (or file) or several. Relative paths are made absolute against the current directory.
        include: fnmatch globs; when given, a file is listed only if its path relative to its root (posix form) or
            its basename matches one of them.
        exclude: fnmatch globs matched the same way; they win over ``include`` and also prune matching folders.
        extensions: File extensions (with the dot, any case) that are listed without looking at the content.
        sniff_unknown: Also list files with another or no extension when their magic bytes are an image's.
        follow_symlinks: Follow symlinks whose resolved target lies inside one of the roots; links pointing
            elsewhere are always ignored.

    Yields:
        One :class:`FileEntry` per file. Hidden files and folders (name starting with ``.``) are skipped; files that
        vanish or cannot be stat'ed during the walk are skipped silently.

    Raises:
        FileNotFoundError: A root does not exist (checked before anything is yielded).
    """
    root_list = [Path(os.path.abspath(r)) for r in _as_root_list(roots)]
    for root in root_list:
        if not os.path.exists(root):
            raise FileNotFoundError(f"photo folder does not exist: {root}")
    # Keep the first occurrence of each root; the visited-directory set handles nested roots.
    unique_roots = list(dict.fromkeys(root_list))
    exts = frozenset(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    walker = _Walker(unique_roots, tuple(include), tuple(exclude), exts, sniff_unknown, follow_symlinks)
    return walker.run()
