"""Camera RAW (issue: real photo libraries): real DNG containers written by a DNG writer (pidng) from known pixels,
decoded through LibRaw upright; a RAW+JPEG pair is one photo everywhere; a corrupt RAW is a failed row."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import text

from pmllm_batch.scan import DecodeError, decode_photo
from pmllm_batch.scan.discover import SCANNED_EXTENSIONS
from pmllm_batch.scan.raw import RAW_EXTENSIONS, is_raw, jpeg_twin
from tests.helpers import CLIEnv
from tests.imagegen import photo_array

pidng_core = pytest.importorskip("pidng.core")
pidng_defs = pytest.importorskip("pidng.defs")

RED, BLUE, GREY = (230, 40, 40), (40, 40, 230), (120, 120, 120)


def marked(width: int = 96, height: int = 64) -> np.ndarray:
    """Grey pixels with a red block top-left and a blue block bottom-right: every turn and flip shows."""
    rgb = np.zeros((height, width, 3), np.uint8) + np.array(GREY, np.uint8)
    rgb[: height // 4, : width // 4] = RED
    rgb[-height // 4 :, -width // 4 :] = BLUE
    return rgb


def write_dng(path: Path, rgb: np.ndarray, orientation: int = 1, when: str = "2021:05:01 12:00:00") -> Path:
    """A real DNG (uncompressed 16-bit RGGB Bayer data, identity colour matrix) of ``rgb`` as the sensor saw it."""
    tag, defs = pidng_core.Tag, pidng_defs
    h, w, _ = rgb.shape
    sensor = rgb.astype(np.uint16) * 16  # 12-bit levels
    bayer = np.zeros((h, w), np.uint16)
    bayer[0::2, 0::2] = sensor[0::2, 0::2, 0]
    bayer[0::2, 1::2] = sensor[0::2, 1::2, 1]
    bayer[1::2, 0::2] = sensor[1::2, 0::2, 1]
    bayer[1::2, 1::2] = sensor[1::2, 1::2, 2]
    t = pidng_core.DNGTags()
    for key, value in [
        (tag.ImageWidth, w), (tag.ImageLength, h), (tag.TileWidth, w), (tag.TileLength, h),
        (tag.Orientation, orientation), (tag.SamplesPerPixel, 1), (tag.BitsPerSample, 16),
        (tag.PhotometricInterpretation, defs.PhotometricInterpretation.Color_Filter_Array),
        (tag.CFARepeatPatternDim, [2, 2]), (tag.CFAPattern, defs.CFAPattern.RGGB),
        (tag.BlackLevel, 0), (tag.WhiteLevel, 4095),
        (tag.ColorMatrix1, [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1], [1, 1]]),
        (tag.CalibrationIlluminant1, defs.CalibrationIlluminant.D65), (tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]),
        (tag.BaselineExposure, [[0, 1]]), (tag.Make, "TestCam"), (tag.Model, "TestCam DNG"), (tag.DateTime, when),
        (tag.DNGVersion, defs.DNGVersion.V1_4), (tag.DNGBackwardVersion, defs.DNGVersion.V1_2),
        (tag.PreviewColorSpace, defs.PreviewColorSpace.sRGB),
    ]:
        t.set(key, value)
    writer = pidng_core.RAW2DNG()
    writer.options(t, path="", compress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(writer.convert(bayer)))
    return path


def add_jpeg_preview(path: Path, preview: np.ndarray) -> Path:
    """Append an IFD holding a JPEG preview (NewSubfileType 1), as cameras embed their rendered preview."""
    buf = bytearray(path.read_bytes())
    jpeg = io.BytesIO()
    Image.fromarray(preview).save(jpeg, "JPEG", quality=95)
    data = jpeg.getvalue()
    first = struct.unpack_from("<I", buf, 4)[0]
    next_field = first + 2 + 12 * struct.unpack_from("<H", buf, first)[0]
    while len(buf) % 4:
        buf.append(0)
    data_at = len(buf)
    buf += data
    while len(buf) % 4:
        buf.append(0)
    bps_at = len(buf)
    buf += struct.pack("<HHHH", 8, 8, 8, 0)
    ifd_at = len(buf)
    h, w, _ = preview.shape
    tags = [(254, 4, 1, 1), (256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, bps_at), (259, 3, 1, 7), (262, 3, 1, 6),
            (273, 4, 1, data_at), (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, len(data))]
    buf += struct.pack("<H", len(tags))
    for tag_id, kind, count, value in tags:
        buf += struct.pack("<HHIHH", tag_id, kind, count, value, 0) if kind == 3 and count == 1 else struct.pack(
            "<HHII", tag_id, kind, count, value)
    buf += struct.pack("<I", 0)
    struct.pack_into("<I", buf, next_field, ifd_at)
    path.write_bytes(bytes(buf))
    return path


def dominant(pixel: tuple[int, ...]) -> str:
    r, g, b = pixel[:3]
    if max(r, g, b) - min(r, g, b) < 40:
        return "grey"
    return ("red", "green", "blue")[int(np.argmax([r, g, b]))]


def corners(img: Image.Image) -> tuple[str, str, str, str]:
    """Colours at top-left, top-right, bottom-left, bottom-right (a few pixels in)."""
    w, h = img.size
    rgb = img.convert("RGB")
    return tuple(dominant(rgb.getpixel(xy)) for xy in ((2, 2), (w - 3, 2), (2, h - 3), (w - 3, h - 3)))  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------------


def test_every_raw_extension_is_scanned() -> None:
    assert RAW_EXTENSIONS == {".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw"}
    assert RAW_EXTENSIONS <= SCANNED_EXTENSIONS  # listed by extension unless [scan] extensions says otherwise
    assert is_raw("/x/IMG_0001.CR2") and not is_raw("/x/IMG_0001.JPG")


@pytest.mark.parametrize(
    ("orientation", "size", "expected"),
    [
        (1, (96, 64), ("red", "grey", "grey", "blue")),
        (3, (96, 64), ("blue", "grey", "grey", "red")),  # turned 180 degrees
        (6, (64, 96), ("grey", "red", "blue", "grey")),  # turned 90 degrees clockwise
        (8, (64, 96), ("grey", "blue", "red", "grey")),  # turned 90 degrees counter-clockwise
    ],
)
def test_a_dng_decodes_upright_by_its_orientation(tmp_path: Path, orientation: int, size: tuple[int, int],
                                                  expected: tuple[str, ...]) -> None:
    dng = write_dng(tmp_path / f"o{orientation}.dng", marked(), orientation)
    photo = decode_photo(dng)  # no preview in the file: a half-size demosaic
    assert (photo.width, photo.height) == size  # the photo's full upright size
    assert photo.image.size == (size[0] // 2, size[1] // 2)
    assert corners(photo.image) == expected
    assert photo.format == "DNG"
    assert (photo.exif.camera_make, photo.exif.taken_at, photo.exif.orientation) == (
        "TestCam", "2021-05-01T12:00:00", orientation)


def test_the_embedded_preview_is_used_when_it_covers_the_vision_input(tmp_path: Path) -> None:
    preview = np.zeros((200, 300, 3), np.uint8) + 120
    preview[:50, :75] = (40, 220, 40)  # green top-left: tells the preview from the (red-marked) sensor data
    dng = add_jpeg_preview(write_dng(tmp_path / "p.dng", marked(), orientation=6), preview)
    from_preview = decode_photo(dng, min_preview_side=96)
    assert from_preview.image.size == (200, 300)  # the preview, turned by the RAW's orientation
    assert corners(from_preview.image)[1] == "green"
    assert (from_preview.width, from_preview.height) == (64, 96)
    too_small = decode_photo(dng, min_preview_side=336)  # the preview is smaller than the vision input: demosaic
    assert too_small.image.size == (32, 48) and corners(too_small.image)[1] == "red"


def test_a_corrupt_raw_is_a_decode_error_with_a_reason(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.nef"
    garbage.write_bytes(b"not a raw file at all " * 64)
    with pytest.raises(DecodeError) as exc:
        decode_photo(garbage)
    assert exc.value.reason == "unsupported_format" and "LibRaw" in exc.value.message
    whole = write_dng(tmp_path / "whole.dng", marked(192, 128)).read_bytes()
    cut = tmp_path / "cut.dng"
    cut.write_bytes(whole[: len(whole) // 3])
    with pytest.raises(DecodeError) as exc:
        decode_photo(cut)
    assert exc.value.reason == "truncated"


# ---------------------------------------------------------------------------------------------------------------------
# Through the CLI: pairs, lone RAWs, corrupt RAWs
# ---------------------------------------------------------------------------------------------------------------------


def _rows(env: CLIEnv) -> dict[str, tuple[str, str | None]]:
    with env.store() as store, store.engine.connect() as conn:
        return {Path(p).name: (s, r) for p, s, r in conn.execute(text("SELECT path, status, error_reason FROM photos"))}


def test_a_raw_jpeg_pair_ranks_once_and_lists_both_files(env: CLIEnv, tmp_path: Path, model_cache: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PMLLM_PATHS__CACHE_DIR", str(model_cache))
    env.write_config("[scan]\nmin_side = 24\n")
    lib = tmp_path / "nas"
    scene = photo_array(192, 128, seed=5)
    write_dng(lib / "IMG_0001.dng", scene)
    Image.fromarray(scene).save(lib / "IMG_0001.JPG", quality=95)  # the camera's JPEG of the same shot
    write_dng(lib / "IMG_0002.dng", photo_array(192, 128, seed=6), orientation=6)  # RAW only
    (lib / "IMG_0003.cr2").write_bytes(b"\x00garbage" * 512)  # corrupt
    whole = write_dng(tmp_path / "whole.dng", photo_array(192, 128, seed=7)).read_bytes()
    (lib / "IMG_0004.dng").write_bytes(whole[: len(whole) // 3])  # cut off
    code, _, err = env.run_cli("profile", "add", str(env.write_profile("ana", age=30)))
    assert code == 0, err

    code, out, err = env.run_cli("rank", str(lib), "--json")
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert (summary["scanned"], summary["failed"], summary["raw_pairs"], summary["encoded"]) == (5, 2, 1, 2)
    rows = _rows(env)
    assert rows["IMG_0001.dng"] == ("skipped", "raw_pair")
    assert rows["IMG_0001.JPG"] == rows["IMG_0002.dng"] == ("ok", None)
    assert rows["IMG_0003.cr2"] == ("failed", "unsupported_format")
    assert rows["IMG_0004.dng"] == ("failed", "truncated")
    assert {f["path"].rsplit("/", 1)[1]: f["reason"] for f in summary["failures"]} == {
        "IMG_0003.cr2": "unsupported_format", "IMG_0004.dng": "truncated"}
    (ranking,) = [json.loads(line)["top"] for line in out.splitlines()[:-1]]
    assert sorted(Path(r["path"]).name for r in ranking) == ["IMG_0001.JPG", "IMG_0002.dng"]  # the pair once
    pair = next(r for r in ranking if r["path"].endswith("IMG_0001.JPG"))
    assert [Path(p).name for p in pair["paths"]] == ["IMG_0001.JPG", "IMG_0001.dng"]  # JPEG pixels, both files
    with env.store() as store:
        lone = store.photo_index()[str(lib / "IMG_0002.dng")]
        assert (lone.width, lone.height, lone.format) == (128, 192, "DNG")  # upright by its orientation

    code, out, err = env.run_cli("export", "--profile", "ana", "--format", "csv")
    assert code == 0, err
    line = next(row for row in out.splitlines() if "IMG_0001.JPG" in row)
    assert f"{lib / 'IMG_0001.JPG'};{lib / 'IMG_0001.dng'}" in line
    code, out, err = env.run_cli("albums", "--out", str(tmp_path / "albums"))
    assert code == 0, err
    album = [e.name.split("_", 1)[1] for e in (tmp_path / "albums" / "ana").iterdir() if e.is_symlink()]
    assert sorted(album) == ["IMG_0001.JPG", "IMG_0002.dng"]  # one entry for the pair, the JPEG
    code, out, err = env.run_cli("xmp", "--profile", "ana", "--json")
    assert code == 0, err
    assert (lib / "IMG_0001.JPG.xmp").is_file() and (lib / "IMG_0001.dng.xmp").is_file()  # the RAW gets the stars too

    # The JPEG goes: the RAW is the photo again, decoded from its own sensor data; it comes back: a pair again.
    jpeg = (lib / "IMG_0001.JPG").read_bytes()
    (lib / "IMG_0001.JPG").unlink()
    code, out, err = env.run_cli("rank", str(lib), "--json")
    assert code == 0, err
    assert _rows(env)["IMG_0001.dng"] == ("ok", None)
    (ranking,) = [json.loads(line)["top"] for line in out.splitlines()[:-1]]
    assert sorted(Path(r["path"]).name for r in ranking) == ["IMG_0001.dng", "IMG_0002.dng"]
    (lib / "IMG_0001.JPG").write_bytes(jpeg)
    code, out, err = env.run_cli("rank", str(lib), "--json")
    assert code == 0, err
    assert _rows(env)["IMG_0001.dng"] == ("skipped", "raw_pair")
    (ranking,) = [json.loads(line)["top"] for line in out.splitlines()[:-1]]
    assert sorted(Path(r["path"]).name for r in ranking) == ["IMG_0001.JPG", "IMG_0002.dng"]


def test_the_twin_is_the_jpeg_of_the_same_folder_and_stem(tmp_path: Path) -> None:
    raw = write_dng(tmp_path / "a" / "IMG_9.dng", marked())
    assert jpeg_twin(raw) is None
    (tmp_path / "b").mkdir()
    Image.fromarray(marked()).save(tmp_path / "b" / "IMG_9.jpg")  # another folder: not a twin
    assert jpeg_twin(raw) is None
    Image.fromarray(marked()).save(tmp_path / "a" / "IMG_9.jpeg")
    assert jpeg_twin(raw) == tmp_path / "a" / "IMG_9.jpeg"
