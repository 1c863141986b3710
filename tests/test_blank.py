"""Blank frames (issue "a newcomer's second hour", item 4): near-uniform pixels are stored ``skipped`` with the reason
``blank``, counted in the run's summary, and read again when ``[scan] blank_std`` no longer calls them blank.

The rule (``pmllm_batch.scan.skip``): the standard deviation of the luminance (0-255) of the photo shrunk by box
averaging to about 64 pixels on its shorter side is below ``[scan] blank_std`` (2.0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import text

from pmllm_batch.config import Settings
from pmllm_batch.contracts import SkipReason
from pmllm_batch.scan.skip import BLANK_SIDE, blank, blank_spread, luminance_spread
from tests.helpers import CLIEnv
from tests.imagegen import make_photo, make_photo_folder, photo_array

W, H = 640, 480


def grey_frame() -> np.ndarray:
    """A perfectly uniform grey frame (pixel std 0): the one that got 5 stars."""
    return np.full((H, W, 3), 128, np.uint8)


def black_noisy_frame(seed: int = 0) -> np.ndarray:
    """The lens cap on at high ISO: near black, with sensor noise of std 4 in every pixel and channel."""
    rng = np.random.default_rng(seed)
    return np.clip(6 + rng.normal(0, 4, (H, W, 3)), 0, 255).astype(np.uint8)


def gentle_gradient() -> np.ndarray:
    """A real but low-contrast photo: brightness rising by 30 levels across the frame (a hazy sky)."""
    ramp = np.linspace(110, 140, W)[None, :, None]
    return np.broadcast_to(ramp, (H, W, 3)).round().astype(np.uint8)


def fog(seed: int = 1) -> np.ndarray:
    """Fog: a pale frame, slightly darker towards the ground, a faint tree shape, grain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    lum = 205 - 14 * (yy / H) - 16 * np.exp(-(((xx - 420) / 70) ** 2 + ((yy - 300) / 150) ** 2))
    lum += rng.normal(0, 3, (H, W))
    return np.clip(np.stack([lum, lum * 0.99, lum * 1.01], -1), 0, 255).astype(np.uint8)


def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def decoded(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return img.copy()


# ---------------------------------------------------------------------------------------------------------------------
# The rule
# ---------------------------------------------------------------------------------------------------------------------


def test_the_default_threshold_is_documented_and_positive() -> None:
    assert Settings().scan.blank_std == 2.0 and BLANK_SIDE == 64


def test_uniform_and_near_black_noisy_frames_are_blank_real_low_contrast_photos_are_not(tmp_path: Path) -> None:
    spreads = {name: luminance_spread(decoded(save(tmp_path / f"{name}.jpg", make())))
               for name, make in (("grey", grey_frame), ("black", black_noisy_frame), ("gradient", gentle_gradient),
                                  ("fog", fog))}
    assert spreads["grey"] == 0.0
    assert spreads["black"] < 1.0  # pixel noise std ~4 averages out in the 7 x 7 blocks
    assert spreads["gradient"] > 8.0 and spreads["fog"] > 3.0
    for name in ("grey", "black"):
        message = blank(decoded(tmp_path / f"{name}.jpg"), 2.0)
        assert message is not None and message.startswith("the frame is blank: luminance spread ")
        assert blank_spread(message) == round(spreads[name], 2)
    for name in ("gradient", "fog"):
        assert blank(decoded(tmp_path / f"{name}.jpg"), 2.0) is None
    assert blank(decoded(tmp_path / "grey.jpg"), 0) is None  # 0 turns the rule off


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "1"])
def test_every_image_mode_is_measured(mode: str) -> None:
    # (a bilevel image has no grey to be uniform in: a white one; converting grey to it would dither)
    flat = Image.new("1", (W, H), 1) if mode == "1" else Image.fromarray(grey_frame()).convert(mode)
    assert luminance_spread(flat) < 2.0
    if mode != "1":
        assert luminance_spread(Image.fromarray(photo_array(W, H, seed=3)).convert(mode)) > 10.0


def test_the_test_suites_generated_photos_are_not_blank(tmp_path: Path) -> None:
    files = make_photo_folder(tmp_path / "lib")
    for name, path in files.items():
        with Image.open(path) as img:
            assert luminance_spread(img) > 20.0, name
    for seed in range(20):
        for size in ((320, 240), (96, 64), (40, 30)):
            assert luminance_spread(Image.fromarray(photo_array(*size, seed=seed))) > 20.0


# ---------------------------------------------------------------------------------------------------------------------
# Through rank
# ---------------------------------------------------------------------------------------------------------------------


def _statuses(env: CLIEnv) -> dict[str, tuple[str, str | None]]:
    with env.store() as store, store.engine.connect() as conn:
        rows = conn.execute(text("SELECT path, status, error_reason FROM photos"))
        return {Path(p).name: (s, r) for p, s, r in rows}


def test_item4_blank_frames_are_skipped_and_counted(env: CLIEnv, model_cache: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PMLLM_PATHS__CACHE_DIR", str(model_cache))
    lib = env.root / "lib"
    save(lib / "lens_cap.jpg", black_noisy_frame())
    save(lib / "grey.jpg", grey_frame())
    save(lib / "haze.jpg", gentle_gradient())
    save(lib / "fog.jpg", fog())
    make_photo(lib / "photo.jpg", (W, H), seed=5)
    assert env.run_cli("profile", "add", str(env.write_profile("ana", age=30)))[0] == 0

    code, out, err = env.run_cli("rank", str(lib), "--json")
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert (summary["scanned"], summary["new"], summary["blank"], summary["too_small"], summary["failed"],
            summary["encoded"], summary["scored"]) == (5, 5, 2, 0, 0, 3, 3)
    assert _statuses(env) == {
        "lens_cap.jpg": ("skipped", SkipReason.BLANK), "grey.jpg": ("skipped", SkipReason.BLANK),
        "haze.jpg": ("ok", None), "fog.jpg": ("ok", None), "photo.jpg": ("ok", None),
    }
    top = json.loads(out.splitlines()[0])["top"]
    assert sorted(Path(r["path"]).name for r in top) == ["fog.jpg", "haze.jpg", "photo.jpg"]

    # the text summary says how many, and a second run counts them again without reading them
    code, out, err = env.run_cli("rank", str(lib))
    assert code == 0, err
    assert "  not ranked: 2 blank frames (near-uniform pixels: below [scan] blank_std = 2)\n" in out
    code, out, err = env.run_cli("rank", str(lib), "--json")
    summary = json.loads(out.splitlines()[-1])
    assert (summary["skipped"], summary["blank"], summary["encoded"], summary["scored"]) == (5, 2, 0, 0)

    # a threshold below a frame's stored spread re-reads it (its reason no longer holds): the noisy black frame
    # (spread ~0.5) is ranked now, the uniform grey one (0) stays blank; 0 turns the rule off
    env.write_config("[scan]\nblank_std = 0.3\n")
    code, out, err = env.run_cli("rank", str(lib), "--json")
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert (summary["skipped"], summary["changed"], summary["blank"], summary["encoded"], summary["scored"]) == (
        4, 0, 1, 1, 1)
    assert _statuses(env)["lens_cap.jpg"] == ("ok", None) and _statuses(env)["grey.jpg"][1] == SkipReason.BLANK
    env.write_config("[scan]\nblank_std = 0\n")
    code, out, err = env.run_cli("rank", str(lib), "--json")
    summary = json.loads(out.splitlines()[-1])
    assert (summary["blank"], summary["encoded"]) == (0, 1)
    assert {s for s, _ in _statuses(env).values()} == {"ok"}
