"""Small file-writing helpers shared by every output: a reader never sees half a file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pmllm_batch.errors import UserError


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling and a rename, so readers never see half a file.

    Raises:
        UserError: The file cannot be written (missing folder, no permission, a folder in the way).
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise UserError(f"cannot write {target}: it is a folder; give a file name.")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8", newline="")
        os.replace(tmp, target)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the folder itself is unusable; nothing was left behind worth reporting
        raise UserError(f"cannot write {target}: {exc.strerror or exc}.") from None
    return target


def replace_file_bytes(target: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to a new temporary sibling of ``target``, flush it to disk, then rename it over ``target``.

    The temporary file is created exclusively (never through an existing file or link), so nothing but ``target``
    can change; on any failure it is removed again and ``target`` is as it was.

    Args:
        target: File to create or replace.
        data: Its new content.
        mode: Permission bits for the new file (e.g. the replaced file's); None = 0o666 less the umask.

    Raises:
        OSError: The folder cannot be written (the caller decides how to report it).
    """
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)  # os.open applied the umask
        os.replace(tmp, target)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # nothing more can be done in an unusable folder
        raise


def read_manifest_files(path: Path, what: str, folder: str = "the folder") -> list[object] | None:
    """The ``files`` list of a manifest this tool wrote (albums, report); None when there is none.

    Raises:
        UserError: The manifest exists but is unreadable or damaged (``what`` names it, e.g. "album manifest").
    """
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"]
        if not isinstance(files, list):
            raise TypeError("files is not a list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{what} {path} is damaged ({exc}); delete {folder} and run again.") from None
    return files
