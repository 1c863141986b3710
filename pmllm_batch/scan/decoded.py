"""What decoding gives: :class:`DecodedPhoto` with its :class:`ExifInfo`, or a :class:`DecodeError` with a reason.

Its own module so that both decoders, :mod:`pmllm_batch.scan.decode` (PIL, and the entry point
:func:`~pmllm_batch.scan.decode.decode_photo`) and :mod:`pmllm_batch.scan.raw` (camera RAW through LibRaw), import it
without importing each other: ``decode`` imports ``raw``, never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from pmllm_batch.contracts import FailReason

__all__ = ["LEGACY_REASONS", "REASONS", "DecodeError", "DecodedPhoto", "ExifInfo"]

#: Kept for readers of old rows: "broken_exif" was a failure before unreadable EXIF became a warning on an ok photo.
LEGACY_REASONS: frozenset[FailReason] = frozenset({FailReason.BROKEN_EXIF})
#: Every ``DecodeError.reason`` the decoders can produce.
REASONS: frozenset[FailReason] = frozenset(FailReason) - LEGACY_REASONS


@dataclass(frozen=True)
class ExifInfo:
    """EXIF facts stored with a photo row. Every field is optional: most files lack some of them.

    ``orientation`` is the raw tag as written in the file. It describes the stored pixels, not the image that
    :func:`~pmllm_batch.scan.decode.decode_photo` returns (always upright); for HEIF the decoder already applies the
    rotation itself.
    """

    taken_at: str | None = None  # 'YYYY-MM-DDTHH:MM:SS' from DateTimeOriginal, else DateTime; no timezone
    camera_make: str | None = None  # e.g. "Canon"
    camera_model: str | None = None  # e.g. "Canon EOS 40D"
    orientation: int | None = None  # EXIF Orientation 1..8 as stored; None when absent or out of range
    warning: str | None = None  # "exif: ..." when exifread failed; the photo itself is still fine


class DecodeError(Exception):
    """A photo that cannot be decoded; the scan stores ``reason`` and ``message`` on its row.

    Attributes:
        reason: Short code, one of :data:`REASONS` (a :class:`~pmllm_batch.contracts.FailReason`).
        message: One human sentence, e.g. ``"image data is truncated"``.
    """

    def __init__(self, reason: FailReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[type[DecodeError], tuple[FailReason, str]]:
        # Picklable with both fields, so it survives a process-pool boundary in the scan pipeline.
        return (type(self), (self.reason, self.message))


@dataclass
class DecodedPhoto:
    """A fully loaded, upright photo.

    Attributes:
        image: Pixels with the EXIF orientation applied (the Orientation tag removed from its EXIF), detached from
            the file. The mode is left as decoded (``RGB``, ``L``, ``P``, ``RGBA``, ``CMYK``, ``I;16``, ...); callers
            convert when they need to. Multi-frame files give their first frame.
        width: Upright width in pixels.
        height: Upright height in pixels.
        format: PIL format name, e.g. ``"JPEG"``, ``"PNG"``, ``"HEIF"``.
        exif: EXIF facts from :func:`~pmllm_batch.scan.decode.read_exif`.
    """

    image: Image.Image
    width: int
    height: int
    format: str
    exif: ExifInfo
