"""Scoping an output to some folders or files and to a date range.

* ``PATH...`` arguments of ``xmp`` and ``report``, ``--under PATH`` of every output, and the folders ``rank PATH``
  scanned: only photos at or under them;
* ``--since DATE`` / ``--until DATE``: only photos taken (EXIF capture time) on or after / on or before that date,
  or, when the capture time is unknown, whose file was last modified then (both in local time, both ends inclusive).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pmllm_batch.errors import UserError

DATE_FORMATS = ("YYYY-MM-DD", "YYYY-MM-DDTHH:MM[:SS]")


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


def parse_date(text: str, *, flag: str, end: bool = False) -> datetime:
    """``--since`` / ``--until`` as a naive local datetime: a date means its first moment (``end``: the first moment
    of the next day, an exclusive bound), a date and time that moment.

    Raises:
        UserError: Not a date in one of :data:`DATE_FORMATS`.
    """
    value = text.strip()
    try:
        if len(value) == 10:
            day = datetime.strptime(value, "%Y-%m-%d")
            return day + timedelta(days=1) if end else day
        moment = datetime.fromisoformat(value.replace(" ", "T"))
    except ValueError:
        raise UserError(f"{flag} {text!r} is not a date; write it as {' or '.join(DATE_FORMATS)}.") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone().replace(tzinfo=None)  # capture times are local times without a zone
    return moment + timedelta(seconds=1) if end and len(value) <= 19 else moment


@dataclass(frozen=True)
class Scope:
    """What part of a ranking an output shows: folders/files and a capture-date range (None: no limit)."""

    under: tuple[str, ...] | None = None  # absolute paths
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive

    @classmethod
    def of(
        cls,
        paths: Sequence[str | os.PathLike[str]] | None = None,
        *,
        since: str | None = None,
        until: str | None = None,
    ) -> Scope:
        """From command-line values (paths as given, dates as text).

        Raises:
            UserError: A bad date, or ``--since`` after ``--until``.
        """
        scopes = resolve_scopes(paths)
        lo = parse_date(since, flag="--since") if since else None
        hi = parse_date(until, flag="--until", end=True) if until else None
        if lo is not None and hi is not None and lo >= hi:
            raise UserError(f"--since {since} is after --until {until}: nothing is in between.")
        return cls(under=tuple(scopes) if scopes is not None else None, since=lo, until=hi)

    @property
    def everything(self) -> bool:
        return self.under is None and self.since is None and self.until is None

    def paths_in(self, paths: Sequence[str]) -> list[str]:
        """Those of ``paths`` at or under the scope's folders (all of them when it has none)."""
        scopes = list(self.under) if self.under is not None else None
        return [p for p in paths if in_scope(p, scopes)]

    def when_in(self, taken_at: str | None, mtime_ns: int | None) -> bool:
        """Is the capture time (else the file time) inside the date range?"""
        if self.since is None and self.until is None:
            return True
        moment: datetime | None = None
        if taken_at:
            try:
                moment = datetime.fromisoformat(taken_at[:19])
            except ValueError:
                moment = None
        if moment is None and mtime_ns is not None:
            moment = datetime.fromtimestamp(mtime_ns / 1e9)
        if moment is None:
            return False  # no date at all: outside every date range
        if self.since is not None and moment < self.since:
            return False
        return self.until is None or moment < self.until

    def describe(self) -> str:
        """``under /a, /b, taken 2021-05-01 .. 2021-05-31`` (empty for everything)."""
        parts = []
        if self.under is not None:
            parts.append("under " + ", ".join(self.under))
        if self.since is not None or self.until is not None:
            lo = self.since.isoformat(sep=" ") if self.since else "…"
            hi = (self.until - timedelta(seconds=1)).isoformat(sep=" ") if self.until else "…"
            parts.append(f"taken {lo} .. {hi}")
        return ", ".join(parts)
