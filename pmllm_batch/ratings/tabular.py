"""Ratings typed by hand: a CSV file (``path,stars``) or one photo on the command line."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from pmllm_batch.errors import UserError
from pmllm_batch.ratings.model import Rating, ReadResult

__all__ = ["cli_rating", "parse_stars", "read_csv"]

DELIMITERS = ",;\t"


def parse_stars(text: str) -> int | None:
    """"-1".."5" -> the number (0 = clear); anything else -> None."""
    try:
        stars = int(text.strip())
    except ValueError:
        return None
    return stars if -1 <= stars <= 5 else None


def _dialect(sample: str) -> type[csv.Dialect] | csv.Dialect:
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS)
    except csv.Error:
        return csv.excel


def read_csv(file: Path | str) -> ReadResult:
    """Ratings from a CSV file with the columns ``path,stars``.

    * A header row is optional: a first row naming ``path`` and ``stars`` (any case, any order, other columns
      ignored) is one; without it the first column is the path and the second the stars.
    * Delimiter ``,``, ``;`` or tab (sniffed); UTF-8, with or without a byte-order mark; blank rows and rows whose
      first cell starts with ``#`` are ignored.
    * stars: -1 rejected, 1..5 stars, 0 *clear* (returned as ``Rating(stars=0)``: forget the stored rating).
    * A relative path is relative to the CSV file's folder; paths are not checked on disk.
    * A path given twice: the last row wins (a note says so).
    * A row without a path or with stars that are not a whole number in -1..5 is Skipped (reason "bad_row", the
      line number in the message); the other rows are read.
    """
    src = Path(file)
    result = ReadResult()
    try:
        text = src.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        result.skip(src, "unreadable_file", f"the CSV file cannot be read ({why})")
        return result
    reader = csv.reader(io.StringIO(text), _dialect(text[:4096]))
    path_col, stars_col = 0, 1
    first = True
    rows: dict[Path, tuple[int, Rating]] = {}
    for row in reader:
        line = reader.line_num
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if first:
            first = False
            lowered = [c.lower() for c in cells]
            if "path" in lowered and "stars" in lowered:
                path_col, stars_col = lowered.index("path"), lowered.index("stars")
                continue
        where = f"{src.name} line {line}"
        if len(cells) <= max(path_col, stars_col):
            result.skip(src, "bad_row", f"line {line}: expected the columns path and stars, got {len(cells)} cell(s)")
            continue
        path_text, stars_text = cells[path_col], cells[stars_col]
        if not path_text:
            result.skip(src, "bad_row", f"line {line}: the path is empty")
            continue
        stars = parse_stars(stars_text)
        if stars is None:
            result.skip(src, "bad_row", f"line {line}: stars {stars_text!r} is not a whole number in -1..5")
            continue
        path = Path(path_text).expanduser()
        if not path.is_absolute():
            path = src.parent / path
        if path in rows:
            result.notes.append(f"{path}: given on lines {rows[path][0]} and {line}; line {line} wins")
        rows[path] = (line, Rating(path, stars, "csv", where))
    result.ratings = [rating for _line, rating in rows.values()]
    return result


def cli_rating(path: Path | str, stars: int | str) -> Rating:
    """One rating given on the command line (``rate PHOTO STARS``); the path is made absolute, not checked.

    Raises:
        UserError: stars is not a whole number in -1..5.
    """
    value = stars if isinstance(stars, int) else parse_stars(stars)
    if value is None or not -1 <= value <= 5:
        raise UserError(f"stars must be a whole number from -1 (rejected) to 5, or 0 to clear; got {stars!r}")
    return Rating(Path(path).expanduser().absolute(), value, "cli", "command line")
