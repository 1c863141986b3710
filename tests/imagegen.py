"""Fixture generators: small real-looking photos and deliberately broken files, written into a given folder.

Other test modules import these (``from tests.imagegen import make_photo_folder``). Everything is generated from
code (numpy + PIL, fixed seeds), so the project's tests need no binary files and no network.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "BAD_FILE_REASONS",
    "EXIF_ORIENTATIONS",
    "make_bad_files",
    "make_orientation_set",
    "make_photo",
    "make_photo_folder",
    "orient_for_exif",
    "photo_array",
    "write_bomb_png",
    "write_broken_exif_jpeg",
    "write_fake_heif",
    "write_jpeg_with_orientation",
    "write_truncated_jpeg",
]

EXIF_ORIENTATIONS = (1, 2, 3, 4, 5, 6, 7, 8)
# What make_bad_files produces, keyed by the DecodeError.reason each file must give.
# A JPEG with garbage EXIF is no longer bad: it is scored as stored, with an EXIF warning (write_broken_exif_jpeg).
BAD_FILE_REASONS = ("empty", "truncated", "not_an_image", "decompression_bomb", "unsupported_format")


# ---------------------------------------------------------------------------------------------------------------------
# Good photos
# ---------------------------------------------------------------------------------------------------------------------


def photo_array(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Render a photo-like RGB image: smooth sky/ground gradients, a sun, a few shapes, mild noise.

    Deliberately asymmetric (sun top-left, dark block bottom-right) so every flip or rotation is detectable.

    Returns:
        uint8 array of shape (height, width, 3).
    """
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    hue = rng.uniform(0.2, 0.8)
    r = 90 + 120 * (1 - y) * hue + 40 * x
    g = 120 + 80 * (1 - y) + 30 * np.sin(6.0 * x + seed)
    b = 200 * (1 - y) + 40 * y * x
    horizon = y > 0.6
    r = np.where(horizon, 60 + 50 * x, r)
    g = np.where(horizon, 110 + 60 * (y - 0.6), g)
    b = np.where(horizon, 40 + 20 * x, b)
    img = np.stack(np.broadcast_arrays(r, g, b), axis=-1)
    img = img + rng.normal(0.0, 3.0, size=img.shape)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(pil)
    s = min(width, height)
    draw.ellipse(
        [int(0.08 * width), int(0.06 * height), int(0.08 * width) + s // 5, int(0.06 * height) + s // 5],
        fill=(250, 230, 120),
    )
    draw.rectangle([int(0.7 * width), int(0.7 * height), int(0.95 * width), int(0.95 * height)], fill=(30, 25, 40))
    for _ in range(3):
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.3, 0.7) * height
        rad = rng.uniform(0.04, 0.12) * s
        color = tuple(int(c) for c in rng.integers(20, 235, size=3))
        draw.polygon([(cx, cy - rad), (cx - rad, cy + rad), (cx + rad, cy + rad)], fill=color)
    return np.asarray(pil)


def make_photo(
    path: Path,
    size: tuple[int, int] = (320, 240),
    *,
    seed: int = 0,
    mode: str = "RGB",
    fmt: str | None = None,
    quality: int = 90,
) -> Path:
    """Write one photo-like image.

    Args:
        path: Target file; the format comes from ``fmt`` or the suffix.
        size: (width, height).
        seed: Changes colours and shapes.
        mode: PIL mode to convert to before saving (``RGB``, ``L``, ``RGBA``, ``P``, ``CMYK``, ...).
        fmt: PIL format name, e.g. ``"JPEG"``; inferred from the suffix when None.
        quality: JPEG/WebP quality.
    """
    img = Image.fromarray(photo_array(size[0], size[1], seed), "RGB")
    if mode == "RGBA":
        alpha = Image.linear_gradient("L").resize(img.size)
        img = img.convert("RGBA")
        img.putalpha(alpha)
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    elif mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"quality": quality} if (fmt or path.suffix.lstrip(".")).upper() in ("JPEG", "JPG", "WEBP") else {}
    img.save(path, format=fmt, **kwargs)
    return path


def make_photo_folder(directory: Path) -> dict[str, Path]:
    """Write a small library of valid photos (several sizes, formats and modes, one nested folder).

    Returns:
        name -> path, e.g. ``{"landscape.jpg": ..., "2021/trip/portrait.jpg": ...}`` (names are posix paths
        relative to ``directory``).
    """
    specs: list[tuple[str, tuple[int, int], str, int]] = [
        ("landscape.jpg", (640, 480), "RGB", 1),
        ("portrait.jpg", (360, 540), "RGB", 2),
        ("small.png", (120, 90), "RGB", 3),
        ("odd_size.jpeg", (333, 217), "RGB", 4),
        ("gray.png", (300, 200), "L", 5),
        ("alpha.png", (256, 256), "RGBA", 6),
        ("palette.gif", (200, 150), "P", 7),
        ("web.webp", (400, 300), "RGB", 8),
        ("2021/trip/beach.JPG", (480, 320), "RGB", 9),
        ("2021/trip/night.tiff", (240, 320), "RGB", 10),
    ]
    out: dict[str, Path] = {}
    for name, size, mode, seed in specs:
        out[name] = make_photo(directory / name, size, seed=seed, mode=mode)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# EXIF orientation
# ---------------------------------------------------------------------------------------------------------------------


def orient_for_exif(upright: np.ndarray, orientation: int) -> np.ndarray:
    """Return the *stored* pixels that, tagged with ``orientation``, display as ``upright``.

    Written from the EXIF 2.3 definition of the tag (where row 0 / column 0 of the stored image belong), not from
    PIL's transpose table, so a wrong mapping in the decoder cannot cancel out in the tests.
    """
    u = upright
    stored = {
        1: u,
        2: u[:, ::-1],  # mirrored left-right
        3: u[::-1, ::-1],  # rotated 180
        4: u[::-1, :],  # mirrored top-bottom
        5: np.swapaxes(u, 0, 1),  # transposed (mirror + rotate)
        6: np.rot90(u, 1),  # stored rotated 90 CCW; viewer rotates 90 CW
        7: np.swapaxes(u[::-1, ::-1], 0, 1),  # transverse
        8: np.rot90(u, -1),  # stored rotated 90 CW; viewer rotates 90 CCW
    }[orientation]
    return np.ascontiguousarray(stored)


def _exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "PMLLM"  # Make
    exif[0x0110] = "Fixture Cam"  # Model
    return exif


def write_jpeg_with_orientation(path: Path, upright: np.ndarray, orientation: int, quality: int = 95) -> Path:
    """Write ``upright`` stored as an EXIF-``orientation`` JPEG (or PNG when the suffix is .png, lossless)."""
    stored = Image.fromarray(orient_for_exif(upright, orientation), "RGB")
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    kwargs = {"quality": quality, "subsampling": 0} if fmt == "JPEG" else {}
    stored.save(path, format=fmt, exif=_exif_with_orientation(orientation), **kwargs)
    return path


def make_orientation_set(directory: Path, suffix: str = ".jpg", size: tuple[int, int] = (96, 64)) -> dict[int, Path]:
    """Write the same upright image tagged with each orientation 1..8.

    Returns:
        orientation -> path. Decoding any of them (EXIF applied) must give ``photo_array(*size, seed=11)``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    upright = photo_array(size[0], size[1], seed=11)
    return {
        o: write_jpeg_with_orientation(directory / f"orientation_{o}{suffix}", upright, o) for o in EXIF_ORIENTATIONS
    }


# ---------------------------------------------------------------------------------------------------------------------
# Bad files
# ---------------------------------------------------------------------------------------------------------------------


def _jpeg_bytes(size: tuple[int, int] = (160, 120), seed: int = 21) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo_array(size[0], size[1], seed), "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_truncated_jpeg(path: Path) -> Path:
    """A valid JPEG header with its entropy-coded data cut in the middle (a download that stopped)."""
    data = _jpeg_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@functools.lru_cache(maxsize=4)
def _bomb_png_bytes(side: int) -> bytes:
    # Rows of a 1-bit palette image are 1 filter byte + side/8 bytes, all zero. Deflating ~100 MB of zeros takes about
    # a second, so one 1000-row block is deflated once and repeated: after Z_FULL_FLUSH the compressor forgets its
    # history, so every identical block deflates to identical, byte-aligned output.
    row = b"\x00" * (1 + (side + 7) // 8)
    block = row * 1000
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated_block = raw.compress(block) + raw.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated_tail = tail.compress(row * (side % 1000)) + tail.flush()
    adler = 1
    for _ in range(side // 1000):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(row * (side % 1000), adler)
    idat = b"\x78\xda" + deflated_block * (side // 1000) + deflated_tail + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 3, 0, 0, 0)  # bit depth 1, colour type 3 (palette)
    plte = bytes([0, 0, 0, 255, 255, 255])
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"PLTE", plte)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def write_bomb_png(path: Path, side: int = 30000) -> Path:
    """A fully valid ~110 KB palette PNG that declares ``side x side`` pixels (900 M for the default)."""
    path.write_bytes(_bomb_png_bytes(side))
    return path


def write_fake_heif(path: Path) -> Path:
    """Bytes with a real HEIF signature (an ISO-BMFF 'ftyp' box, brand 'heic') followed by garbage.

    ``sniff_format`` says "heif", but no decoder can open it: the "sniffable but unsupported" case.
    """
    body = b"heic" + b"\x00\x00\x00\x00" + b"mif1heic"
    ftyp = struct.pack(">I", 8 + len(body)) + b"ftyp" + body
    path.write_bytes(ftyp + b"\x00\x00\x00\x10meta" + b"\xde\xad\xbe\xef" * 64)
    return path


def write_broken_exif_jpeg(path: Path) -> Path:
    """A decodable JPEG whose APP1 EXIF block has an invalid TIFF header, so nobody can read its orientation.

    The APP1 segment is spliced in by hand right after SOI: ``Exif\\0\\0`` followed by byte-order mark ``XX``
    instead of ``II``/``MM``. PIL's ``Image.Exif.load`` raises ``SyntaxError`` on it (``Image.open`` hides that
    error while reading DPI, which is why the decoder re-parses the raw block).
    """
    data = _jpeg_bytes(seed=22)
    payload = b"Exif\x00\x00" + b"XX\x2a\x00\x08\x00\x00\x00" + b"\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00"
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    path.write_bytes(data[:2] + segment + data[2:])
    return path


def make_bad_files(directory: Path) -> dict[str, Path]:
    """Write one file per static failure reason.

    Returns:
        DecodeError.reason -> path, with keys :data:`BAD_FILE_REASONS`. ("vanished" and "unreadable" depend on what
        happens after writing, so tests create those themselves.)
    """
    directory.mkdir(parents=True, exist_ok=True)
    empty = directory / "empty.jpg"
    empty.write_bytes(b"")
    text = directory / "notes.jpg"
    text.write_text("This is a shopping list, not a photo.\nmilk\neggs\n", encoding="utf-8")
    writers: dict[str, Callable[[], Path]] = {
        "empty": lambda: empty,
        "truncated": lambda: write_truncated_jpeg(directory / "truncated.jpg"),
        "not_an_image": lambda: text,
        "decompression_bomb": lambda: write_bomb_png(directory / "bomb.png"),
        "unsupported_format": lambda: write_fake_heif(directory / "fake.heic"),
    }
    return {reason: make() for reason, make in writers.items()}
