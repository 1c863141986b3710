"""Tests for pmllm_batch.scan.decode: failure reasons, orientation, EXIF facts, real camera files."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pmllm_batch.scan import decode as decode_mod
from pmllm_batch.scan.decode import REASONS, DecodeError, ExifInfo, decode_photo, read_exif, register_heif
from pmllm_batch.scan.discover import discover
from tests.imagegen import (
    BAD_FILE_REASONS,
    EXIF_ORIENTATIONS,
    make_bad_files,
    make_orientation_set,
    make_photo,
    make_photo_folder,
    orient_for_exif,
    photo_array,
    write_bomb_png,
    write_broken_exif_jpeg,
)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file per failure reason; read-only (no test changes them)."""
    return make_bad_files(tmp_path_factory.mktemp("bad"))


def _error(path: Path, **kwargs: int) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode_photo(path, **kwargs)
    err = info.value
    assert err.reason in REASONS and str(err) == f"{err.reason}: {err.message}"
    return err


def _reason(path: Path, **kwargs: int) -> str:
    return _error(path, **kwargs).reason


# the sentence each bad fixture gives; PIL's own words for the bomb (after the parenthesis) vary between versions
BAD_FILE_MESSAGES = {
    "empty": "file is empty (0 bytes)",
    "truncated": "image data is truncated",
    "not_an_image": "file is not an image",
    "decompression_bomb": "image is too large to decode safely (",
    "unsupported_format": "file looks like a HEIF image but no decoder can open it",
}


# ---------------------------------------------------------------------------------------------------------------------
# Failure reasons
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", BAD_FILE_REASONS)
def test_each_bad_file_gives_its_reason(bad_files: dict[str, Path], reason: str) -> None:
    err = _error(bad_files[reason])
    assert err.reason == reason
    if reason == "decompression_bomb":
        assert err.message.startswith(BAD_FILE_MESSAGES[reason]) and err.message.endswith(")")
    else:
        assert err.message == BAD_FILE_MESSAGES[reason]


def test_bad_file_fixtures_are_what_they_claim(bad_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # Guards the fixtures themselves, so a decoder bug cannot hide behind a fixture that is broken the wrong way.
    assert bad_files["empty"].stat().st_size == 0
    assert bad_files["decompression_bomb"].stat().st_size < 200_000
    with monkeypatch.context() as m:
        m.setattr(Image, "MAX_IMAGE_PIXELS", None)
        with Image.open(bad_files["decompression_bomb"]) as im:
            assert im.size == (30000, 30000) and im.mode == "P"
    with Image.open(bad_files["truncated"]) as im, pytest.raises(OSError, match="truncated"):
        im.load()
    garbage = write_broken_exif_jpeg(bad_files["empty"].parent / "garbage_exif.jpg")
    with Image.open(garbage) as im:
        im.load()  # the pixels are fine...
        raw = im.info["exif"]
    with pytest.raises(SyntaxError):
        Image.Exif().load(raw)  # ...only the EXIF block cannot be parsed (scored with a warning: test_hardening)


def test_decode_error_survives_pickling() -> None:
    err = pickle.loads(pickle.dumps(DecodeError("truncated", "image data is truncated")))
    assert (err.reason, err.message, str(err)) == (
        "truncated",
        "image data is truncated",
        "truncated: image data is truncated",
    )


def test_file_deleted_after_discover_is_vanished(tmp_path: Path) -> None:
    make_photo(tmp_path / "a.jpg")
    (entry,) = list(discover(tmp_path))
    entry.path.unlink()
    assert _reason(entry.path) == "vanished"


def test_unopenable_path_is_unreadable(tmp_path: Path) -> None:
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    assert _reason(folder) == "unreadable"


def test_file_without_read_permission_is_unreadable(tmp_path: Path) -> None:
    if os.name != "posix" or os.geteuid() == 0:
        pytest.skip("permission bits do not stop root (or non-POSIX)")
    photo = make_photo(tmp_path / "locked.jpg")
    photo.chmod(0)
    try:
        assert _reason(photo) == "unreadable"
    finally:
        photo.chmod(0o644)


def test_io_error_while_opening_is_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = make_photo(tmp_path / "a.jpg")

    def failing_open(*args: object, **kwargs: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(decode_mod.Image, "open", failing_open)
    assert _reason(photo) == "unreadable"


def test_bomb_is_refused_from_the_header_without_relying_on_pil_global_limit(
    bad_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)

    def no_pixel_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels must not be decoded for an oversized image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_pixel_decoding)
    assert _reason(bad_files["decompression_bomb"]) == "decompression_bomb"


def test_max_pixels_is_the_callers_limit(tmp_path: Path) -> None:
    photo = make_photo(tmp_path / "a.png", (100, 80))
    assert _reason(photo, max_pixels=100 * 80 - 1) == "decompression_bomb"
    assert decode_photo(photo, max_pixels=100 * 80).width == 100


def test_image_between_our_limit_and_pils_is_a_bomb(tmp_path: Path) -> None:
    # 11000^2 = 121 M pixels: above our default 100 M, below PIL's own error threshold (2 x 89 M).
    bomb = write_bomb_png(tmp_path / "big.png", side=11000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert _reason(bomb) == "decompression_bomb"


def test_decoding_leaves_pil_globals_and_warning_filters_alone(bad_files: dict[str, Path]) -> None:
    filters_before = list(warnings.filters)
    max_before = Image.MAX_IMAGE_PIXELS
    for path in bad_files.values():
        with pytest.raises(DecodeError):
            decode_photo(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert Image.MAX_IMAGE_PIXELS == max_before
    assert list(warnings.filters) == filters_before


def test_corrupt_png_data_is_truncated_not_a_crash(tmp_path: Path) -> None:
    photo = make_photo(tmp_path / "a.png", (64, 48))
    data = bytearray(photo.read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 20 : idat + 60] = b"\xff" * 40  # garbage inside the compressed stream
    photo.write_bytes(bytes(data))
    assert _reason(photo) == "truncated"


# ---------------------------------------------------------------------------------------------------------------------
# Successful decodes
# ---------------------------------------------------------------------------------------------------------------------


def test_photo_folder_decodes_with_modes_kept_and_upright_sizes(tmp_path: Path) -> None:
    photos = make_photo_folder(tmp_path)
    expected_modes = {"gray.png": "L", "alpha.png": "RGBA", "palette.gif": "P"}
    expected_formats = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".webp": "WEBP", ".tiff": "TIFF"}
    for name, path in photos.items():
        photo = decode_photo(path)
        with Image.open(path) as raw:
            assert (photo.width, photo.height) == raw.size == photo.image.size
        assert photo.image.mode == expected_modes.get(name, "RGB"), name
        assert photo.format == expected_formats[path.suffix.lower()], name
        assert isinstance(photo.exif, ExifInfo)


def test_decoded_image_is_detached_from_the_file(tmp_path: Path) -> None:
    path = make_photo(tmp_path / "a.jpg", (64, 48))
    expected = np.asarray(decode_photo(path).image)
    photo = decode_photo(path)
    path.unlink()
    assert photo.image.size == (64, 48)
    np.testing.assert_array_equal(np.asarray(photo.image), expected)  # all pixels still there, file gone


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    photo = decode_photo(path)
    assert photo.image.convert("RGB").getpixel((5, 5)) == (255, 0, 0)


@pytest.mark.parametrize("orientation", EXIF_ORIENTATIONS)
def test_png_orientation_fixtures_decode_to_the_same_upright_pixels(tmp_path: Path, orientation: int) -> None:
    paths = make_orientation_set(tmp_path, ".png")
    upright = photo_array(96, 64, seed=11)
    photo = decode_photo(paths[orientation])
    np.testing.assert_array_equal(np.asarray(photo.image), upright)
    assert (photo.width, photo.height) == (96, 64)
    assert photo.exif.orientation == orientation


@pytest.mark.parametrize("orientation", EXIF_ORIENTATIONS)
def test_jpeg_orientation_fixtures_decode_to_the_same_upright_pixels(tmp_path: Path, orientation: int) -> None:
    paths = make_orientation_set(tmp_path, ".jpg")
    upright = photo_array(96, 64, seed=11).astype(np.int16)
    photo = decode_photo(paths[orientation])
    got = np.asarray(photo.image).astype(np.int16)
    assert got.shape == upright.shape
    # JPEG noise only: a wrong flip/rotation of this asymmetric scene is off by tens of levels on average.
    assert np.abs(got - upright).mean() < 4.0
    assert photo.exif.orientation == orientation
    # The orientation tag is gone from the returned image, so applying it again cannot double-rotate.
    assert photo.image.getexif().get(0x0112) in (None, 1)


def test_orientation_fixtures_really_store_transformed_pixels() -> None:
    upright = photo_array(96, 64, seed=11)
    stored = {o: orient_for_exif(upright, o) for o in EXIF_ORIENTATIONS}
    assert all(stored[o].shape == (64, 96, 3) for o in (1, 2, 3, 4))
    assert all(stored[o].shape == (96, 64, 3) for o in (5, 6, 7, 8))
    flat = {o: stored[o].tobytes() for o in EXIF_ORIENTATIONS}
    assert len(set(flat.values())) == 8  # eight distinct pixel layouts


# ---------------------------------------------------------------------------------------------------------------------
# EXIF facts
# ---------------------------------------------------------------------------------------------------------------------


def _jpeg_with_exif(path: Path, tags: dict[int, object], exif_ifd: dict[int, object]) -> Path:
    exif = Image.Exif()
    for k, v in tags.items():
        exif[k] = v
    sub = exif.get_ifd(0x8769)
    for k, v in exif_ifd.items():
        sub[k] = v
    Image.fromarray(photo_array(64, 48)).save(path, format="JPEG", exif=exif)
    return path


def test_read_exif_reads_capture_time_camera_and_orientation(tmp_path: Path) -> None:
    path = _jpeg_with_exif(
        tmp_path / "a.jpg",
        {0x010F: "Fixture Corp\x00", 0x0110: " Model 7 ", 0x0112: 6, 0x0132: "2020:01:01 00:00:00"},
        {0x9003: "2021:07:04 10:11:12"},
    )
    info = read_exif(path)
    assert info == ExifInfo(
        taken_at="2021-07-04T10:11:12", camera_make="Fixture Corp", camera_model="Model 7", orientation=6
    )


def test_read_exif_falls_back_to_datetime_and_ignores_placeholders(tmp_path: Path) -> None:
    path = _jpeg_with_exif(tmp_path / "a.jpg", {0x0132: "2019:12:31 23:59:58"}, {0x9003: "0000:00:00 00:00:00"})
    assert read_exif(path).taken_at == "2019-12-31T23:59:58"
    path = _jpeg_with_exif(tmp_path / "b.jpg", {0x0132: "    :  :     :  :  ", 0x0112: 9}, {})
    info = read_exif(path)
    assert info.taken_at is None and info.orientation is None


def test_read_exif_never_raises(tmp_path: Path, bad_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    warning = read_exif(tmp_path / "missing.jpg").warning
    assert warning is not None and warning.startswith("exif: ")
    for path in bad_files.values():
        assert isinstance(read_exif(path), ExifInfo)
    assert read_exif(make_photo(tmp_path / "plain.png")) == ExifInfo()  # no EXIF is not a warning

    def boom(*args: object, **kwargs: object) -> None:
        raise IndexError("list index out of range")

    monkeypatch.setattr(decode_mod.exifread, "process_file", boom)
    info = read_exif(make_photo(tmp_path / "a.jpg"))
    assert info == ExifInfo(warning="exif: IndexError: list index out of range")


def test_exifread_failure_alone_does_not_fail_the_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise ValueError("bad tag")

    monkeypatch.setattr(decode_mod.exifread, "process_file", boom)
    photo = decode_photo(make_photo(tmp_path / "a.jpg"))
    assert photo.width == 320 and photo.exif.warning == "exif: ValueError: bad tag"


def test_register_heif_is_idempotent() -> None:
    register_heif()
    register_heif()
    assert "HEIF" in Image.OPEN


# ---------------------------------------------------------------------------------------------------------------------
# Real camera files (shared data; skipped when absent)
# ---------------------------------------------------------------------------------------------------------------------


def test_heic_files_decode_upright(exif_samples: Path) -> None:
    heic = exif_samples / "heic"
    # The two 16 MP Nokia files are left out to keep the suite fast; they add no case the others lack.
    small = decode_photo(heic / "samplefilehub.heif")
    assert (small.format, small.width, small.height) == ("HEIF", 640, 426)
    apple = decode_photo(heic / "IMG_5195.HEIC")
    assert apple.format == "HEIF" and apple.exif.camera_model == "iPhone 11 Pro Max"
    # The iPhone 13 file stores a 4032x3024 landscape sensor image with orientation 6 (rotate 90 CW): upright it is
    # a portrait, rotated exactly once (libheif applies the rotation; it must not be applied again).
    photo = decode_photo(heic / "mobile" / "iphone_13_pro_max.HEIC")
    assert (photo.format, photo.width, photo.height) == ("HEIF", 3024, 4032)
    assert photo.exif.camera_make == "Apple" and photo.exif.camera_model == "iPhone 13 Pro Max"
    assert photo.exif.taken_at == "2022-02-16T12:55:41"


def _signature(img: Image.Image) -> np.ndarray:
    a = np.asarray(img.convert("L").resize((16, 16), Image.Resampling.BOX), dtype=np.float64).ravel()
    return (a - a.mean()) / a.std()


@pytest.mark.parametrize("kind", ["landscape", "portrait"])
def test_real_orientation_samples_decode_to_the_same_upright_picture(exif_samples: Path, kind: str) -> None:
    folder = exif_samples / "jpg" / "orientation"
    photos = [decode_photo(folder / f"{kind}_{o}.jpg") for o in EXIF_ORIENTATIONS]
    ref = photos[0].image
    ref_sig = _signature(ref)
    wrong = [_signature(ref.transpose(t)) for t in (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_180)]
    for o, photo in zip(EXIF_ORIENTATIONS, photos, strict=True):
        assert photo.image.size == ref.size, o
        sig = _signature(photo.image)
        # The samples differ only in a printed digit and labels: correlation ~0.99 when upright, <0.75 when not.
        assert float(np.mean(sig * ref_sig)) > 0.95, o
        assert all(float(np.mean(sig * w)) < 0.8 for w in wrong), o
        assert photo.exif.orientation == o


@pytest.mark.parametrize(
    ("name", "make", "model", "taken_at"),
    [
        ("Canon_40D.jpg", "Canon", "Canon EOS 40D", "2008-05-30T15:56:01"),
        ("Nikon_D70.jpg", "NIKON CORPORATION", "NIKON D70", "2008-03-15T09:52:01"),
        ("Fujifilm_FinePix_E500.jpg", "FUJIFILM", "FinePix E500", "2006-08-17T09:24:48"),
    ],
)
def test_read_exif_on_real_camera_files(exif_samples: Path, name: str, make: str, model: str, taken_at: str) -> None:
    info = read_exif(exif_samples / "jpg" / name)
    assert (info.camera_make, info.camera_model, info.taken_at, info.warning) == (make, model, taken_at, None)


# exifread's regression samples (tests/) and files with broken metadata (invalid/): upright size, EXIF warning
HOSTILE_SAMPLES: dict[str, tuple[int, int, str | None]] = {
    "invalid/image00971.jpg": (636, 227, None),
    "invalid/image01088.jpg": (425, 120, None),
    "invalid/image01137.jpg": (88, 64, None),
    "invalid/image01551.jpg": (61, 58, None),
    "invalid/image01713.jpg": (49, 500, None),
    "invalid/image01980.jpg": (284, 25, None),
    "invalid/image02206.jpg": (65, 65, None),
    "tests/11-tests.jpg": (1136, 775, None),
    "tests/22-canon_tags.jpg": (1600, 1200, None),
    "tests/28-hex_value.jpg": (1704, 2272, None),
    "tests/30-type_error.jpg": (3872, 2403, "exif: Possibly corrupted IFD: EXIF"),
    "tests/32-lens_data.jpeg": (200, 133, None),
    "tests/33-type_error.jpg": (2560, 1600, None),
    "tests/35-empty.jpg": (2164, 1626, None),
    "tests/36-memory_error.jpg": (1600, 1200, None),
    "tests/42_IndexError.jpg": (4032, 3024, None),
    "tests/45-gps_ifd.jpg": (1600, 900, "exif: No values found for GPS SubIFD"),
    "tests/67-0_length_string.jpg": (4032, 2012, None),
    "tests/87_OSError.jpg": (1488, 2240, None),
}


def test_hostile_real_files_decode_with_their_sizes_and_exif_warnings(exif_samples: Path) -> None:
    jpg = exif_samples / "jpg"
    paths = sorted(p for sub in ("tests", "invalid") for p in (jpg / sub).iterdir() if p.name != "README")
    got = {}
    for path in paths:
        photo = decode_photo(path)  # a DecodeError here fails the test: every one of them is a valid picture
        assert read_exif(path).warning == photo.exif.warning
        got[path.relative_to(jpg).as_posix()] = (photo.width, photo.height, photo.exif.warning)
    assert got == HOSTILE_SAMPLES
