"""Camera RAW files through LibRaw (``rawpy``), and RAW+JPEG twins.

Decoding (:func:`decode_raw`, called by :func:`pmllm_batch.scan.decode.decode_photo` for a RAW extension): the
embedded preview (the JPEG or bitmap the camera rendered, cheap to read) when its shorter side is at least
``min_preview_side`` (the caller passes the vision input size), else a half-size demosaic (every 2x2 Bayer block
becomes one pixel: fast, and still several times the vision input for any real sensor). The orientation comes from the
RAW (LibRaw's ``sizes.flip``, read from the camera's tags) and is applied to the preview too; the demosaic applies it
itself. Every LibRaw failure is a :class:`~pmllm_batch.scan.decoded.DecodeError` with one of the usual reasons, so a
corrupt RAW becomes a failed row like any other bad file.

Twins (:func:`jpeg_twin`): a camera set to RAW+JPEG writes ``IMG_0001.CR2`` and ``IMG_0001.JPG`` side by side. They
are one photo: the scan stores the RAW as skipped with the reason ``raw_pair`` while its twin is there and decodes,
the JPEG's pixels are ranked, and the outputs list both paths.
"""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Container
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from PIL import Image

from pmllm_batch.contracts import FailReason
from pmllm_batch.scan.decoded import DecodedPhoto, DecodeError, ExifInfo
from pmllm_batch.scan.discover import RAW_EXTENSIONS as _LISTED

if TYPE_CHECKING:
    import rawpy

__all__ = [
    "DEFAULT_PREVIEW_SIDE",
    "RAW_EXTENSIONS",
    "TWIN_EXTENSIONS",
    "decode_raw",
    "is_raw",
    "jpeg_twin",
    "raw_twins",
    "twin_key",
]

#: Camera RAW formats read through LibRaw (Adobe DNG, Canon CR2/CR3, Nikon NEF, Sony ARW, Fujifilm RAF, Olympus ORF,
#: Panasonic RW2, Pentax PEF, Samsung SRW).
RAW_EXTENSIONS: frozenset[str] = _LISTED
#: What a camera writes next to a RAW in RAW+JPEG (or RAW+HEIF) mode, in order of preference.
TWIN_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".heic", ".heif")
#: Preview size accepted when the caller does not say (the largest vision input of the shipped presets, 336 px).
DEFAULT_PREVIEW_SIDE = 336

# LibRaw's flip code -> the PIL transpose that makes stored pixels upright (0 = none).
_FLIP = {
    3: Image.Transpose.ROTATE_180,
    5: Image.Transpose.ROTATE_90,  # 90 degrees counter-clockwise (EXIF orientation 8)
    6: Image.Transpose.ROTATE_270,  # 90 degrees clockwise (EXIF orientation 6)
}


def is_raw(path: str | os.PathLike[str]) -> bool:
    """Does the file name say camera RAW (by extension, any case)?"""
    return os.path.splitext(os.fspath(path))[1].lower() in RAW_EXTENSIONS


def twin_key(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(folder, stem): what a RAW and its JPEG twin share."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    return folder, os.path.splitext(name)[0]


def _variants(stem: str, extensions: tuple[str, ...] | frozenset[str]) -> list[str]:
    return [stem + v for ext in sorted(extensions) for v in dict.fromkeys((ext, ext.upper()))]


def jpeg_twin(raw_path: str | os.PathLike[str], present: Container[str] | None = None) -> Path | None:
    """The JPEG (or HEIF) a camera wrote next to this RAW (same folder, same stem), when it is a file; else None.

    ``present``: the paths a walk just listed, looked up instead of the disk (no stat per RAW on a network share).
    """
    base = os.path.splitext(os.path.abspath(os.fspath(raw_path)))[0]
    order = {ext: i for i, ext in enumerate(TWIN_EXTENSIONS)}
    for candidate in sorted(_variants(base, TWIN_EXTENSIONS), key=lambda c: order[os.path.splitext(c)[1].lower()]):
        if candidate in present if present is not None else os.path.isfile(candidate):
            return Path(candidate)
    return None


def raw_twins(path: str | os.PathLike[str]) -> list[str]:
    """Names a RAW twin of ``path`` (a JPEG/HEIF) could have: same folder and stem, every RAW extension (two cases)."""
    if os.path.splitext(os.fspath(path))[1].lower() not in TWIN_EXTENSIONS:
        return []
    base = os.path.splitext(os.path.abspath(os.fspath(path)))[0]
    return _variants(base, RAW_EXTENSIONS)


# ---------------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------------


def _libraw_error(exc: BaseException) -> DecodeError:
    """Classify an exception from rawpy/LibRaw."""
    import rawpy

    detail = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno == errno.ENOENT:
            return DecodeError(FailReason.VANISHED, "file disappeared while it was being read")
        return DecodeError(FailReason.UNREADABLE, f"file cannot be read ({exc.strerror or exc})")
    if isinstance(exc, rawpy.LibRawFileUnsupportedError):
        return DecodeError(
            FailReason.UNSUPPORTED_FORMAT, f"file has a RAW extension but LibRaw cannot read it ({detail})"
        )
    if isinstance(exc, (rawpy.LibRawTooBigError, rawpy.LibRawUnsufficientMemoryError, MemoryError)):
        return DecodeError(FailReason.DECOMPRESSION_BOMB, f"RAW image is too large to decode safely ({detail})")
    return DecodeError(FailReason.TRUNCATED, f"RAW data is corrupt or truncated ({detail})")


def _preview(raw: rawpy.RawPy, min_side: int) -> Image.Image | None:
    """The embedded preview when it is large enough and decodes, else None (the caller demosaics)."""
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    except rawpy.LibRawError:
        return None  # a damaged preview: the sensor data may still be fine
    img: Image.Image
    try:
        if thumb.format == rawpy.ThumbFormat.JPEG:
            img = Image.open(io.BytesIO(cast(bytes, thumb.data)))  # JPEG: the encoded file
            img.load()
        else:  # BITMAP: an (h, w, 3) uint8 array
            img = Image.fromarray(np.ascontiguousarray(thumb.data, dtype=np.uint8))
    except Exception:  # noqa: BLE001 - a corrupt preview is not fatal; the demosaic is the fallback
        return None
    if min(img.size) < min_side:
        return None
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    return img


def decode_raw(
    path: str | os.PathLike[str], *, max_pixels: int = 100_000_000, min_preview_side: int = DEFAULT_PREVIEW_SIDE
) -> DecodedPhoto:
    """Decode a camera RAW upright: its embedded preview when large enough, else a half-size demosaic.

    Args:
        path: RAW file (one of :data:`RAW_EXTENSIONS`).
        max_pixels: Largest sensor ``width * height`` accepted (checked before any pixel is unpacked).
        min_preview_side: Shortest preview side accepted; smaller previews (or none) mean a half-size demosaic.

    Returns:
        The upright image; ``width``/``height`` are the photo's full upright size (the sensor's output size), which
        the preview may be smaller than. ``format`` is the extension in capitals (``"DNG"``, ``"CR2"``, ...); EXIF
        facts are filled in by :func:`~pmllm_batch.scan.decode.decode_photo`.

    Raises:
        DecodeError: ``vanished``, ``unreadable``, ``unsupported_format`` (LibRaw does not know the file),
            ``decompression_bomb`` or ``truncated`` (corrupt or cut-off RAW data).
    """
    import rawpy

    p = Path(path)
    fmt = p.suffix.lstrip(".").upper() or "RAW"
    try:
        raw = rawpy.imread(str(p))
    except Exception as exc:  # noqa: BLE001 - LibRaw raises its own types (and OSError); all mean "cannot open"
        raise _libraw_error(exc) from exc
    with raw:
        try:
            sizes = raw.sizes
            if int(sizes.raw_width) * int(sizes.raw_height) > max_pixels:
                raise DecodeError(
                    FailReason.DECOMPRESSION_BOMB,
                    f"RAW sensor is {sizes.raw_width}x{sizes.raw_height} = {sizes.raw_width * sizes.raw_height} "
                    f"pixels, more than the limit of {max_pixels}",
                )
            flip = int(sizes.flip)
            width, height = int(sizes.width), int(sizes.height)
            if flip in (5, 6):
                width, height = height, width
            image = _preview(raw, min_preview_side)
            if image is not None:
                if flip in _FLIP:
                    image = image.transpose(_FLIP[flip])
            else:
                rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)  # applies the flip itself
                image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
        except DecodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - unpack/demosaic failures of a damaged file
            raise _libraw_error(exc) from exc
    if width <= 0 or height <= 0:
        width, height = image.size
    return DecodedPhoto(image=image, width=width, height=height, format=fmt, exif=ExifInfo())
