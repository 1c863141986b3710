"""Albums: one folder per profile holding its best photos, as symlinks or copies (``pmllm-batch albums``).

Safety rules, because albums are files that point into a photo library:

* ``--out`` must not overlap any scanned photo folder (neither inside one nor containing one), checked on
  resolved paths, so a symlinked album folder cannot lead into the library either;
* each album folder keeps a manifest (``.pmllm-album.json``) of the entries it created; a re-run deletes only
  those, and refuses to replace any file it did not create;
* the photo files are only ever read (copied or linked to), never opened for writing.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pmllm_batch.config import LearnSettings
from pmllm_batch.db import RankedPhoto, Store
from pmllm_batch.db.schema import utcnow
from pmllm_batch.errors import UserError
from pmllm_batch.log import get_logger
from pmllm_batch.outputs.bursts import RankingView
from pmllm_batch.outputs.files import read_manifest_files, write_text_atomic
from pmllm_batch.outputs.scope import Scope

log = get_logger("outputs.albums")

MANIFEST = ".pmllm-album.json"
MANIFEST_VERSION = 1
DEFAULT_TOP = 50


@dataclass
class AlbumResult:
    """What one album folder ended up holding."""

    profile: str
    folder: Path
    mode: str  # "symlink" | "copy"
    entries: list[str] = field(default_factory=list)  # file names created, by rank
    skipped: list[str] = field(default_factory=list)  # source paths no longer on disk
    learned: str = "profile only"  # what the album's ranking learned from ("learned from 3 of your ratings")
    learned_from: int = 0  # the person's ratings it follows (0: the profile-only ranking)


def entry_name(rank: int, path: str, width: int) -> str:
    """``NNN_<basename>``: zero-padded rank so a file browser sorts by rank."""
    return f"{rank:0{width}d}_{os.path.basename(path)}"


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_outside_roots(folders: list[Path], roots: list[str], what: str = "albums") -> None:
    """Refuse output locations (album folders, a report folder) that overlap a scanned photo folder.

    Raises:
        UserError: Some folder is inside a photo root, or contains one.
    """
    root_paths: list[tuple[str, set[Path]]] = [
        (root, {Path(os.path.abspath(root)), Path(os.path.realpath(root))}) for root in roots
    ]
    for folder in folders:
        candidates = {Path(os.path.abspath(folder)), Path(os.path.realpath(folder))}
        for root, variants in root_paths:
            if any(_overlaps(c, v) for c in candidates for v in variants):
                raise UserError(
                    f"--out {folder} overlaps the scanned photo folder {root}; {what} must go in a folder "
                    "outside your photo folders."
                )


def read_manifest(folder: Path) -> list[str]:
    """Names of the entries a previous run created in ``folder`` (plain file names only).

    Raises:
        UserError: The manifest exists but is unreadable.
    """
    files = read_manifest_files(folder / MANIFEST, "album manifest", "the album folder") or []
    # Only plain names inside this folder: a damaged or hand-edited manifest must never point elsewhere.
    return [n for n in files if isinstance(n, str) and n and n == os.path.basename(n) and n not in (".", "..")]


def _write_manifest(folder: Path, profile: str, mode: str, names: list[str]) -> None:
    data: dict[str, object] = {
        "version": MANIFEST_VERSION,
        "profile": profile,
        "mode": mode,
        "updated_at": utcnow().isoformat(timespec="seconds") + "Z",
        "files": names,
    }
    write_text_atomic(folder / MANIFEST, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _plan(folder: Path, ranking: list[RankedPhoto], owned: set[str]) -> list[tuple[RankedPhoto, str]]:
    width = max(3, len(str(len(ranking))))
    plan = [(item, entry_name(item.rank, item.path, width)) for item in ranking]
    for _, name in plan:
        target = folder / name
        if os.path.lexists(target) and name not in owned:
            raise UserError(
                f"{target} already exists and was not made by pmllm-batch; move it away or choose another --out."
            )
    return plan


def _fill(result: AlbumResult, plan: list[tuple[RankedPhoto, str]], owned: list[str], copy: bool) -> None:
    """Replace the entries a previous run made in ``result.folder`` by the planned ones (``result.entries``; photos
    no longer on disk in ``result.skipped``).

    Raises:
        OSError: The file system refused.
        UserError: A file appeared in the way since the plan.
    """
    folder, name, mode = result.folder, result.profile, result.mode
    folder.mkdir(parents=True, exist_ok=True)
    for old in owned:
        target = folder / old
        if target.is_symlink() or target.is_file():
            target.unlink()
    # Record the planned names first: a run killed half-way leaves only files the next run may delete.
    planned = [entry for _, entry in plan]
    _write_manifest(folder, name, mode, sorted(set(planned) | set(owned)))
    for item, entry in plan:
        if not os.path.isfile(item.path):
            result.skipped.append(item.path)
            continue
        target = folder / entry
        if os.path.lexists(target):  # appeared since the plan; never write through it
            raise UserError(f"{target} appeared while the album was written; run again.")
        if copy:
            shutil.copy2(item.path, target)
        else:
            os.symlink(os.path.abspath(item.path), target)
        result.entries.append(entry)
    _write_manifest(folder, name, mode, result.entries)


def build_albums(
    store: Store,
    out: str | os.PathLike[str],
    *,
    profiles: list[str] | None = None,
    top: int = DEFAULT_TOP,
    copy: bool = False,
    group: bool = True,
    scope: Scope | None = None,
    model_id: int | None = None,
    learn: LearnSettings | None = None,
    zero_shot: bool = False,
) -> list[AlbumResult]:
    """Create or refresh ``out/<profile>/`` for each profile with its ``top`` photos.

    Everything is checked (profiles exist, no overlap with photo folders, no foreign files in the way) before the
    first file is written.

    Args:
        store: Library database.
        out: Folder that receives one sub-folder per profile (created if needed).
        profiles: Profile names; None for every stored profile.
        top: Photos per album.
        copy: Copy the files instead of symlinking them.
        group: Each burst / near-duplicate group once (this person's best of it); a RAW+JPEG pair is its JPEG.
        scope: Only photos in these folders and capture dates.
        model_id: Whose scores (default: the library's model).
        learn: ``[learn]`` settings: each album follows the person's learned ranking; a photo they rejected is never
            in it (default settings when None).
        zero_shot: The profile-only rankings (``--zero-shot``).

    Returns:
        One :class:`AlbumResult` per profile.

    Raises:
        UserError: Unknown profile, no profiles, overlap with a photo folder, a foreign file in the way, or a
            file system error.
    """
    out_dir = Path(out).expanduser().absolute()
    names = list(dict.fromkeys(profiles)) if profiles else [row.name for row in store.list_profiles()]
    if not names:
        raise UserError("no profiles are stored yet; add one with `pmllm-batch profile add FILE.toml`.")
    view = RankingView(store, group=group, scope=scope, learn=learn, zero_shot=zero_shot)
    # unknown names fail here, before any write
    rankings = {name: view.ranking(name, top=top, model_id=model_id) for name in names}
    folders = {name: out_dir / name for name in names}
    check_outside_roots([out_dir, *folders.values()], store.photo_roots())
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder.")
    for folder in folders.values():
        if os.path.lexists(folder) and not folder.is_dir():
            raise UserError(f"{folder} exists and is not a folder; move it away or choose another --out.")

    mode = "copy" if copy else "symlink"
    owned = {name: read_manifest(folders[name]) for name in names}
    plans = {name: _plan(folders[name], rankings[name], set(owned[name])) for name in names}

    results = []
    for name in names:
        folder = folders[name]
        learned = view.learned(name, model_id=model_id)
        result = AlbumResult(profile=name, folder=folder, mode=mode, learned=learned.describe(),
                             learned_from=learned.learned_from)
        try:
            _fill(result, plans[name], owned[name], copy)
        except OSError as exc:
            raise UserError(f"cannot write the album {folder}: {exc.strerror or exc}.") from None
        if result.skipped:
            log.warning("%s: %d photo(s) are no longer on disk and were left out", name, len(result.skipped))
        results.append(result)
    return results
