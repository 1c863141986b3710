"""Subcommands, one module each (listed in :data:`pmllm_batch.cli.app.COMMAND_MODULES`), and small shared helpers."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pmllm_batch.errors import UserError


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def print_json(data: Any) -> None:
    """Pretty JSON on stdout (non-JSON values such as datetimes as text)."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


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


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
