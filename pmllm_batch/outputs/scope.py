"""Scoping an output to some folders or files (the ``PATH...`` arguments of ``xmp`` and ``report``)."""

from __future__ import annotations

import os
from collections.abc import Sequence


def resolve_scopes(paths: Sequence[str | os.PathLike[str]] | None) -> list[str] | None:
    """Absolute forms of ``paths`` (as the scanner stores photo paths); None (everything) for None or empty."""
    if not paths:
        return None
    return [os.path.abspath(os.fspath(p)) for p in paths]


def in_scope(path: str, scopes: Sequence[str] | None) -> bool:
    """``path`` is one of ``scopes`` or lies under one of them (None: everything is in scope)."""
    if scopes is None:
        return True
    return any(path == s or path.startswith(s.rstrip(os.sep) + os.sep) for s in scopes)
