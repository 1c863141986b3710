"""Decode one photo safely: size guard before pixels, full load, EXIF orientation applied, EXIF facts read.

Every failure becomes a :class:`DecodeError` with a short ``reason`` code (a :class:`~pmllm_batch.contracts.FailReason`;
docs/ARCHITECTURE.md, "Failure rules"), so the scan records a failed photo row and goes on. Nothing here changes global
PIL state (``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``) or the global warning filters, because
decoding may run in worker threads next to other PIL users.

Camera RAW goes through :mod:`pmllm_batch.scan.raw`; the result and error types both decoders share live in
:mod:`pmllm_batch.scan.decoded` (and are re-exported here).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import IO

import exifread
from exifread.core.exceptions import ExifNotFound
from PIL import Image, ImageOps, UnidentifiedImageError

from pmllm_batch.contracts import FailReason
from pmllm_batch.scan import raw
from pmllm_batch.scan.decoded import LEGACY_REASONS, REASONS, DecodedPhoto, DecodeError, ExifInfo
from pmllm_batch.scan.discover import sniff_format

__all__ = [
    "LEGACY_REASONS",
    "REASONS",
    "DecodeError",
    "DecodedPhoto",
    "ExifInfo",
    "decode_photo",
    "read_exif",
    "register_heif",
]

_ORIENTATION_TAG = 0x0112

# ---------------------------------------------------------------------------------------------------------------------
# EXIF facts (exifread)
# ---------------------------------------------------------------------------------------------------------------------


def _tag_text(tags: Mapping[str, object], key: str) -> str | None:
    tag = tags.get(key)
    if tag is None:
        return None
    values = getattr(tag, "values", tag)
    if isinstance(values, bytes):
        values = values.decode("utf-8", errors="replace")
    if not isinstance(values, str):
        return None
    # Cameras pad ASCII fields with NULs and spaces.
    text = values.replace("\x00", " ").strip()
    return text or None


def _parse_exif_datetime(text: str | None) -> str | None:
    if not text:
        return None
    head = text.strip()[:19]
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y/%m/%d %H:%M:%S"):
        try:
            return datetime.strptime(head, fmt).isoformat(timespec="seconds")
        except ValueError:
            continue
    # "0000:00:00 00:00:00" and blanks are common placeholders for "unknown".
    return None


def _tag_orientation(tags: Mapping[str, object]) -> int | None:
    tag = tags.get("Image Orientation")
    if tag is None:
        return None
    values = getattr(tag, "values", None)
    if isinstance(values, list | tuple) and values:
        values = values[0]
    if isinstance(values, int) and 1 <= values <= 8:
        return values
    return None


_capture = threading.local()


class _ExifreadCapture(logging.Filter):
    """Collect exifread's warnings while :func:`read_exif` runs in this thread, and keep them off stderr.

    exifread reports problems ("Possibly corrupted IFD", "PNG file does not have exif data") as WARNING log records
    rather than exceptions. Unconfigured, those reach stderr through logging's last-resort handler for thousands
    of ordinary photos. Inside read_exif they are demoted to DEBUG (still visible with debug logging) and real
    problems are stored in ``ExifInfo.warning`` on the photo's row instead. Thread-local, so parallel decoders do
    not mix their messages.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        sink: list[str] | None = getattr(_capture, "messages", None)
        if sink is None:
            return True
        # "no EXIF in this file" is the normal case for PNG/GIF/WebP, not a warning worth storing.
        if record.levelno >= logging.WARNING and not isinstance(record.msg, ExifNotFound):
            sink.append(record.getMessage())
        record.levelno = logging.DEBUG
        record.levelname = logging.getLevelName(logging.DEBUG)
        return True


_EXIFREAD_LOGGER = logging.getLogger("exifread")
if not any(isinstance(f, _ExifreadCapture) for f in _EXIFREAD_LOGGER.filters):
    _EXIFREAD_LOGGER.addFilter(_ExifreadCapture())


def read_exif(path: str | os.PathLike[str]) -> ExifInfo:
    """Read capture time, camera and orientation with exifread.

    Args:
        path: Photo file (JPEG, TIFF, HEIF, PNG, WebP, ... whatever exifread understands).

    Returns:
        The facts found. Never raises: a missing file, an unreadable file or any exifread failure gives an
        :class:`ExifInfo` whose ``warning`` says what went wrong (``"exif: ..."``); warnings exifread only logs
        (corrupt fields) are kept there too, next to whatever facts were still read.
    """
    messages: list[str] = []
    _capture.messages = messages
    try:
        with open(path, "rb") as fh:
            tags = exifread.process_file(fh, details=False, extract_thumbnail=False)
    except Exception as exc:  # noqa: BLE001 - exifread raises anything on hostile input; EXIF facts are optional
        return ExifInfo(warning=f"exif: {type(exc).__name__}: {exc}")
    finally:
        _capture.messages = None
    warning = f"exif: {'; '.join(dict.fromkeys(messages))}" if messages else None
    try:
        return ExifInfo(
            taken_at=_parse_exif_datetime(_tag_text(tags, "EXIF DateTimeOriginal"))
            or _parse_exif_datetime(_tag_text(tags, "Image DateTime")),
            camera_make=_tag_text(tags, "Image Make"),
            camera_model=_tag_text(tags, "Image Model"),
            orientation=_tag_orientation(tags),
            warning=warning,
        )
    except Exception as exc:  # noqa: BLE001 - odd tag types must not fail the photo
        return ExifInfo(warning=f"exif: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------------------------------------------------
# Decoding (PIL)
# ---------------------------------------------------------------------------------------------------------------------


_heif_lock = threading.Lock()
_heif_registered = False


def register_heif() -> None:
    """Register pillow-heif's HEIF opener with PIL once per process (safe to call from several threads)."""
    global _heif_registered
    if _heif_registered:
        return
    with _heif_lock:
        if not _heif_registered:
            from pillow_heif import register_heif_opener

            register_heif_opener()
            _heif_registered = True


def _open_error(path: Path, exc: BaseException) -> DecodeError:
    """Classify an exception raised by ``Image.open``."""
    if isinstance(exc, Image.DecompressionBombError):
        return DecodeError(FailReason.DECOMPRESSION_BOMB, f"image is too large to decode safely ({exc})")
    if isinstance(exc, OSError) and not isinstance(exc, UnidentifiedImageError) and exc.errno is not None:
        if exc.errno == errno.ENOENT:
            return DecodeError(FailReason.VANISHED, "file disappeared while it was being read")
        return DecodeError(FailReason.UNREADABLE, f"file cannot be read ({exc.strerror or exc})")
    kind = sniff_format(path)
    if kind is None:
        return DecodeError(FailReason.NOT_AN_IMAGE, "file is not an image")
    detail = "" if isinstance(exc, UnidentifiedImageError) else f" ({type(exc).__name__}: {exc})"
    return DecodeError(
        FailReason.UNSUPPORTED_FORMAT, f"file looks like a {kind.upper()} image but no decoder can open it{detail}"
    )


def _check_exif_parses(img: Image.Image) -> None:
    """Parse the raw EXIF block from scratch; raise if PIL cannot read it.

    ``Image.open`` for JPEG already parses EXIF (for the DPI) and swallows errors, leaving ``getexif()`` quietly empty
    afterwards, which would make a rotated photo look upright. Parsing the raw bytes again surfaces the failure.
    """
    block = img.info.get("exif")
    if block:
        Image.Exif().load(block if isinstance(block, bytes) else bytes(block))
    img.getexif()  # other sources: TIFF tags, PNG 'Raw profile type exif', XMP orientation


def _decode_open(fh: IO[bytes], path: Path, max_pixels: int) -> DecodedPhoto:
    try:
        img = Image.open(fh)
    except Image.DecompressionBombWarning as exc:
        # Only reached when the caller's warning filters turn PIL's warning into an error.
        raise DecodeError(FailReason.DECOMPRESSION_BOMB, f"image is too large to decode safely ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - every plugin raises its own types; all of them mean "cannot open"
        raise _open_error(path, exc) from exc
    fmt = img.format or "unknown"
    width, height = img.size
    # Checked before any pixel is decoded: Image.open only read the header.
    if width * height > max_pixels:
        raise DecodeError(
            FailReason.DECOMPRESSION_BOMB,
            f"image is {width}x{height} = {width * height} pixels, more than the limit of {max_pixels}",
        )
    try:
        # Multi-frame files (GIF, APNG, MPO, HEIF sequences) open on their first frame; load() decodes only that one.
        img.load()
    except Image.DecompressionBombError as exc:
        raise DecodeError(FailReason.DECOMPRESSION_BOMB, f"image is too large to decode safely ({exc})") from exc
    except MemoryError as exc:
        raise DecodeError(FailReason.DECOMPRESSION_BOMB, "image needs more memory than is available to decode") from exc
    except OSError as exc:
        if exc.errno is not None and exc.errno != errno.ENOENT:
            raise DecodeError(FailReason.UNREADABLE, f"file cannot be read ({exc.strerror or exc})") from exc
        if "truncated" in str(exc):
            raise DecodeError(FailReason.TRUNCATED, "image data is truncated") from exc
        raise DecodeError(FailReason.TRUNCATED, f"image data is corrupt or truncated ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - decoders raise ValueError/SyntaxError/... on corrupt data
        raise DecodeError(
            FailReason.TRUNCATED, f"image data is corrupt or truncated ({type(exc).__name__}: {exc})"
        ) from exc
    exif_problem: str | None = None
    try:
        _check_exif_parses(img)
        upright = ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - a broken EXIF block raises anything from SyntaxError to struct.error
        # The pixels are fine (every viewer shows the photo); only the EXIF block is garbage. Viewers then show the
        # pixels as stored, or turned by an orientation a more lenient reader still finds (decode_photo applies
        # exifread's below); the photo is scored, with a warning on its row.
        exif_problem = f"EXIF data is unreadable ({type(exc).__name__}: {exc})".replace("\n", " ")
        upright = img.copy()
    if upright is img:
        # exif_transpose returns a copy today; make sure the result never keeps the file handle we are about to close.
        upright = img.copy()
    img.close()
    exif = ExifInfo(warning=exif_problem) if exif_problem else ExifInfo()
    return DecodedPhoto(image=upright, width=upright.width, height=upright.height, format=fmt, exif=exif)


# EXIF orientation -> the PIL transpose that makes the stored pixels upright (ImageOps.exif_transpose's table).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _with_unreadable_exif(photo: DecodedPhoto, exif: ExifInfo) -> DecodedPhoto:
    """A photo whose EXIF block PIL could not parse: orient it by exifread's orientation when that lenient reader
    found one (as lenient viewers do), else keep the pixels as stored (as the others do); record the warning."""
    pil_problem = photo.exif.warning or "EXIF data is unreadable"
    image, how = photo.image, "shown as stored, without rotation"
    if exif.orientation in _TRANSPOSE:
        image = image.transpose(_TRANSPOSE[exif.orientation])
        how = f"turned by the orientation ({exif.orientation}) a lenient EXIF reader still found"
    parts = [f"exif: {pil_problem}; the pixels are fine and the photo is {how}"]
    if exif.warning:
        parts.append(exif.warning.removeprefix("exif: "))
    warning = "; ".join(parts)
    return replace(photo, image=image, width=image.width, height=image.height,
                   exif=replace(exif, warning=warning))


def decode_photo(
    path: str | os.PathLike[str], *, max_pixels: int = 100_000_000, min_preview_side: int | None = None
) -> DecodedPhoto:
    """Open, guard, fully decode and orient one photo (camera RAW through LibRaw: :mod:`pmllm_batch.scan.raw`).

    Args:
        path: Photo file.
        max_pixels: Largest ``width * height`` accepted; checked from the header before pixels are decoded, so a
            tiny file declaring huge dimensions costs nothing. Independent of PIL's global ``MAX_IMAGE_PIXELS``
            (which still applies on top: PIL refuses images above twice its limit on its own).
        min_preview_side: RAW only: use the embedded preview when its shorter side is at least this (the vision
            input size), else a half-size demosaic; None = :data:`pmllm_batch.scan.raw.DEFAULT_PREVIEW_SIDE`.

    Returns:
        The upright photo and its EXIF facts.

    Raises:
        DecodeError: For every failure, with ``reason`` one of :data:`REASONS`: ``vanished`` (file gone),
            ``unreadable`` (permission or I/O error), ``empty`` (0 bytes), ``not_an_image``, ``unsupported_format``
            (looks like an image but no decoder opens it), ``decompression_bomb``, ``truncated`` (pixel data ends
            early or is corrupt). These are all about the *pixels*: an unreadable EXIF block is not an error (the
            photo is decoded as viewers show it and ``exif.warning`` says "EXIF data is unreadable ...").
    """
    register_heif()
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError as exc:
        raise DecodeError(FailReason.VANISHED, "file no longer exists") from exc
    except (OSError, ValueError) as exc:
        raise DecodeError(FailReason.UNREADABLE, f"file cannot be accessed ({exc})") from exc
    if st.st_size == 0:
        raise DecodeError(FailReason.EMPTY, "file is empty (0 bytes)")
    if raw.is_raw(p):
        side = raw.DEFAULT_PREVIEW_SIDE if min_preview_side is None else min_preview_side
        return replace(raw.decode_raw(p, max_pixels=max_pixels, min_preview_side=side), exif=read_exif(p))
    try:
        fh = open(p, "rb")  # noqa: SIM115 - closed by the with block below; opening separately classifies errors
    except FileNotFoundError as exc:
        raise DecodeError(FailReason.VANISHED, "file no longer exists") from exc
    except OSError as exc:
        raise DecodeError(FailReason.UNREADABLE, f"file cannot be opened ({exc.strerror or exc})") from exc
    with fh:
        photo = _decode_open(fh, p, max_pixels)
    # exifread reads the file again: it understands more containers and maker quirks than PIL's EXIF parser.
    exif = read_exif(p)
    if photo.exif.warning:  # PIL could not parse the EXIF block: the pixels are as stored
        return _with_unreadable_exif(photo, exif)
    return replace(photo, exif=exif)
