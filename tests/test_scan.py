"""Tests for pmllm_batch.scan.discover: walking, filtering, sniffing, symlinks, hashing."""

from __future__ import annotations

import hashlib
import io
import os
import struct
from pathlib import Path

import pytest
from PIL import Image

from pmllm_batch.scan.discover import DEFAULT_EXTENSIONS, FileEntry, content_hash, discover, sniff_format
from tests.imagegen import make_bad_files, make_photo, make_photo_folder


def _rel(entries: list[FileEntry], root: Path) -> list[str]:
    return [e.path.relative_to(root).as_posix() for e in entries]


def _image_bytes(fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 200, 30)).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture()
def lib(tmp_path: Path) -> Path:
    root = tmp_path / "lib"
    make_photo_folder(root)
    return root


# ---------------------------------------------------------------------------------------------------------------------
# Extension filter and sniffing
# ---------------------------------------------------------------------------------------------------------------------


def test_lists_every_photo_of_the_folder_with_absolute_paths_and_stat(lib: Path) -> None:
    entries = list(discover(lib))
    assert _rel(entries, lib) == [
        "2021/trip/beach.JPG",
        "2021/trip/night.tiff",
        "alpha.png",
        "gray.png",
        "landscape.jpg",
        "odd_size.jpeg",
        "palette.gif",
        "portrait.jpg",
        "small.png",
        "web.webp",
    ]
    for e in entries:
        assert e.path.is_absolute() and e.root == lib
        st = e.path.stat()
        assert (e.size, e.mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_extension_filter_is_case_insensitive_and_skips_other_files(tmp_path: Path) -> None:
    make_photo(tmp_path / "A.JPEG")
    make_photo(tmp_path / "b.Png")
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    (tmp_path / "movie.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 64)
    assert _rel(list(discover(tmp_path)), tmp_path) == ["A.JPEG", "b.Png"]
    # A custom extension list (with or without the dot) replaces the default one.
    assert _rel(list(discover(tmp_path, extensions=["png"], sniff_unknown=False)), tmp_path) == ["b.Png"]


def test_image_extension_is_listed_even_when_the_content_is_not_an_image(tmp_path: Path) -> None:
    bad = make_bad_files(tmp_path)
    names = _rel(list(discover(tmp_path)), tmp_path)
    # decode, not discover, decides that these are broken; they must reach it to get a failed row.
    assert names == sorted(p.relative_to(tmp_path).as_posix() for p in bad.values())
    assert len(names) == len(bad) == 5


def test_extensionless_and_misnamed_images_are_found_by_sniffing(tmp_path: Path) -> None:
    (tmp_path / "IMG_0001").write_bytes(_image_bytes("JPEG"))
    (tmp_path / "scan.dat").write_bytes(_image_bytes("PNG"))
    (tmp_path / "README").write_text("not a photo", encoding="utf-8")
    (tmp_path / "data.bin").write_bytes(os.urandom(256))
    assert _rel(list(discover(tmp_path)), tmp_path) == ["IMG_0001", "scan.dat"]
    assert list(discover(tmp_path, sniff_unknown=False)) == []


def test_special_files_are_skipped_without_blocking(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    # Opening a FIFO to sniff it would block forever; it must be skipped from its stat alone.
    os.mkfifo(tmp_path / "pipe")
    os.mkfifo(tmp_path / "pipe.jpg")
    make_photo(tmp_path / "real.jpg")
    assert _rel(list(discover(tmp_path)), tmp_path) == ["real.jpg"]


# ---------------------------------------------------------------------------------------------------------------------
# Globs, hidden entries, order, roots
# ---------------------------------------------------------------------------------------------------------------------


def test_include_globs_match_relative_path_or_basename(lib: Path) -> None:
    assert _rel(list(discover(lib, include=["2021/*"])), lib) == ["2021/trip/beach.JPG", "2021/trip/night.tiff"]
    assert _rel(list(discover(lib, include=["*.png"])), lib) == ["alpha.png", "gray.png", "small.png"]
    assert _rel(list(discover(lib, include=["beach.JPG", "web.*"])), lib) == ["2021/trip/beach.JPG", "web.webp"]


def test_exclude_wins_over_include_and_prunes_folders(lib: Path) -> None:
    got = _rel(list(discover(lib, include=["*.png"], exclude=["alpha.*"])), lib)
    assert got == ["gray.png", "small.png"]
    # A folder name in exclude drops its whole subtree (Synology-style "@eaDir" caches, "trip" here).
    got = _rel(list(discover(lib, exclude=["trip"])), lib)
    top_level = ["alpha.png", "gray.png", "landscape.jpg", "odd_size.jpeg", "palette.gif", "portrait.jpg", "small.png"]
    assert got == [*top_level, "web.webp"]


def test_hidden_files_and_folders_are_skipped(tmp_path: Path) -> None:
    make_photo(tmp_path / "visible.jpg")
    make_photo(tmp_path / ".hidden.jpg")
    make_photo(tmp_path / ".thumbnails" / "t.jpg")
    make_photo(tmp_path / "album" / ".cache" / "c.jpg")
    assert _rel(list(discover(tmp_path)), tmp_path) == ["visible.jpg"]


def test_a_hidden_root_itself_is_walked(tmp_path: Path) -> None:
    root = tmp_path / ".photos"
    make_photo(root / "a.jpg")
    assert _rel(list(discover(root)), root) == ["a.jpg"]


def test_order_is_sorted_depth_first_and_repeatable(tmp_path: Path) -> None:
    for name in ["b.jpg", "a/z.jpg", "a.jpg", "c/a.jpg", "a/b/c.jpg", "B.jpg", "a-b.jpg"]:
        make_photo(tmp_path / name, (16, 16))
    first = _rel(list(discover(tmp_path)), tmp_path)
    assert first == sorted(first, key=lambda p: Path(p).parts)
    assert first == ["B.jpg", "a/b/c.jpg", "a/z.jpg", "a-b.jpg", "a.jpg", "b.jpg", "c/a.jpg"]
    assert _rel(list(discover(tmp_path)), tmp_path) == first


def test_missing_root_raises_before_anything_is_yielded(tmp_path: Path) -> None:
    make_photo(tmp_path / "ok" / "a.jpg")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover([tmp_path / "ok", tmp_path / "missing"])


def test_several_roots_keep_their_order_and_nested_roots_give_no_duplicates(tmp_path: Path) -> None:
    make_photo(tmp_path / "x" / "1.jpg", (16, 16))
    make_photo(tmp_path / "x" / "inner" / "2.jpg", (16, 16))
    make_photo(tmp_path / "y" / "3.jpg", (16, 16))
    entries = list(discover([tmp_path / "y", tmp_path / "x", tmp_path / "x" / "inner", tmp_path / "y"]))
    assert [(e.root.name, e.path.name) for e in entries] == [("y", "3.jpg"), ("x", "1.jpg"), ("x", "2.jpg")]


def test_a_single_file_root_is_listed(tmp_path: Path) -> None:
    photo = make_photo(tmp_path / "one.jpg")
    entries = list(discover(photo))
    assert [(e.path, e.root) for e in entries] == [(photo, tmp_path)]


def test_relative_roots_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_photo(tmp_path / "lib" / "a.jpg")
    monkeypatch.chdir(tmp_path)
    (entry,) = list(discover("lib"))
    assert entry.root == tmp_path / "lib" and entry.path == tmp_path / "lib" / "a.jpg"


def test_files_that_vanish_during_the_walk_are_skipped(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        make_photo(tmp_path / name, (16, 16))
    it = discover(tmp_path)
    first = next(it)
    (tmp_path / "b.jpg").unlink()
    rest = list(it)
    assert [first.path.name] + [e.path.name for e in rest] == ["a.jpg", "c.jpg"]


# ---------------------------------------------------------------------------------------------------------------------
# Symlinks
# ---------------------------------------------------------------------------------------------------------------------


def test_symlinked_folder_inside_root_is_not_listed_twice_and_real_paths_win(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    make_photo(root / "real" / "a.jpg", (16, 16))
    # "aaa" sorts before "real": without real-path preference the files would be listed under the link.
    (root / "aaa").symlink_to(root / "real", target_is_directory=True)
    (root / "alias.jpg").symlink_to(root / "real" / "a.jpg")
    assert _rel(list(discover(root)), root) == ["real/a.jpg"]


def test_symlink_into_a_hidden_folder_inside_root_is_followed_once(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    make_photo(root / ".private" / "p.jpg", (16, 16))
    (root / "link1").symlink_to(root / ".private", target_is_directory=True)
    (root / "link2").symlink_to(root / ".private", target_is_directory=True)
    assert _rel(list(discover(root)), root) == ["link1/p.jpg"]
    assert list(discover(root, follow_symlinks=False)) == []


def test_symlinks_pointing_outside_the_roots_are_ignored(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    outside = tmp_path / "elsewhere"
    make_photo(root / "in.jpg", (16, 16))
    make_photo(outside / "secret.jpg", (16, 16))
    (root / "out_dir").symlink_to(outside, target_is_directory=True)
    (root / "out_file.jpg").symlink_to(outside / "secret.jpg")
    (root / "broken.jpg").symlink_to(tmp_path / "nothing.jpg")
    assert _rel(list(discover(root)), root) == ["in.jpg"]
    # ...unless the target's folder is itself a root.
    got = [(e.root.name, e.path.name) for e in discover([root, outside])]
    assert got == [("lib", "in.jpg"), ("elsewhere", "secret.jpg")]


def test_symlink_loops_terminate(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    make_photo(root / "a" / "x.jpg", (16, 16))
    (root / "a" / "up").symlink_to(root, target_is_directory=True)
    (root / "a" / "self").symlink_to(root / "a", target_is_directory=True)
    (root / "l1").symlink_to(root / "l2")
    (root / "l2").symlink_to(root / "l1")
    assert _rel(list(discover(root)), root) == ["a/x.jpg"]


def test_file_symlink_to_a_file_in_an_unwalked_folder_inside_root_is_listed(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    make_photo(root / ".hidden" / "h.jpg", (16, 16))
    (root / "shown.jpg").symlink_to(root / ".hidden" / "h.jpg")
    (entry,) = list(discover(root))
    # Path keeps the link's spelling; size is the target's.
    assert entry.path == root / "shown.jpg"
    assert entry.size == (root / ".hidden" / "h.jpg").stat().st_size


def test_root_given_through_a_symlink_keeps_its_spelling(tmp_path: Path) -> None:
    make_photo(tmp_path / "store" / "a.jpg", (16, 16))
    (tmp_path / "pictures").symlink_to(tmp_path / "store", target_is_directory=True)
    (entry,) = list(discover(tmp_path / "pictures"))
    assert entry.path == tmp_path / "pictures" / "a.jpg" and entry.root == tmp_path / "pictures"


# ---------------------------------------------------------------------------------------------------------------------
# sniff_format / content_hash
# ---------------------------------------------------------------------------------------------------------------------


def _ftyp(major: bytes, compatible: list[bytes]) -> bytes:
    body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + b"\x00" * 32


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (lambda: _image_bytes("JPEG"), "jpeg"),
        (lambda: _image_bytes("PNG"), "png"),
        (lambda: _image_bytes("GIF"), "gif"),
        (lambda: _image_bytes("WEBP"), "webp"),
        (lambda: _image_bytes("TIFF"), "tiff"),
        (lambda: _image_bytes("BMP"), "bmp"),
        (lambda: _ftyp(b"heic", [b"mif1", b"heic"]), "heif"),
        (lambda: _ftyp(b"mif1", [b"mif1", b"heic"]), "heif"),
        (lambda: _ftyp(b"avif", [b"avif", b"mif1", b"miaf"]), "avif"),
        (lambda: _ftyp(b"mif1", [b"mif1", b"avif"]), "avif"),
        (lambda: _ftyp(b"isom", [b"isom", b"mp42"]), None),
        (lambda: b"BMW is a car maker, and this is a text file about it.", None),
        (lambda: b"hello world", None),
        (lambda: b"", None),
    ],
    ids=[
        "jpeg",
        "png",
        "gif",
        "webp",
        "tiff",
        "bmp",
        "heic",
        "mif1-heic",
        "avif",
        "mif1-avif",
        "mp4",
        "BM-text",
        "text",
        "empty",
    ],
)
def test_sniff_format_recognises_magic_bytes(tmp_path: Path, data, expected: str | None) -> None:
    path = tmp_path / "file"
    path.write_bytes(data())
    assert sniff_format(path) == expected


def test_sniff_format_never_raises_for_unreadable_paths(tmp_path: Path) -> None:
    assert sniff_format(tmp_path / "missing") is None
    assert sniff_format(tmp_path) is None  # a directory
    assert sniff_format("bad\x00name") is None


def test_content_hash_is_streaming_blake2b_128(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 + 17)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    expected = hashlib.blake2b(data, digest_size=16).hexdigest()
    assert content_hash(path) == expected
    assert content_hash(path, chunk_size=100) == expected
    assert len(expected) == 32
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert content_hash(path) != expected


def test_default_extensions_cover_the_supported_formats() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif", ".avif"} == set(
        DEFAULT_EXTENSIONS
    )
