"""Scanning: find photo files, hash them, decode them safely, read their EXIF facts."""

from __future__ import annotations

from pmllm_batch.scan.decode import (
    REASONS,
    DecodedPhoto,
    DecodeError,
    ExifInfo,
    decode_photo,
    read_exif,
    register_heif,
)
from pmllm_batch.scan.discover import DEFAULT_EXTENSIONS, FileEntry, content_hash, discover, sniff_format

__all__ = [
    "DEFAULT_EXTENSIONS",
    "REASONS",
    "DecodeError",
    "DecodedPhoto",
    "ExifInfo",
    "FileEntry",
    "content_hash",
    "decode_photo",
    "discover",
    "read_exif",
    "register_heif",
    "sniff_format",
]
