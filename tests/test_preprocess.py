"""Tests for pmllm_batch.runtime.preprocess: parity with open_clip's eval transform, config round trips.

open_clip (and with it torch/torchvision) is imported only here, as the reference; the module under test must not
need it.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pmllm_batch.runtime.preprocess import (
    OPENAI_DATASET_MEAN,
    OPENAI_DATASET_STD,
    PreprocessCfg,
    preprocess_batch,
    preprocess_cfg_from_open_clip,
    preprocess_image,
)
from pmllm_batch.scan.decode import decode_photo
from tests.imagegen import make_orientation_set, photo_array

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")

ATOL = 1e-5

# (width, height): landscape, portrait, smaller than the input, odd sizes, exactly square, off-by-one, extreme.
SIZES = [(400, 300), (300, 450), (120, 90), (333, 217), (217, 333), (224, 224), (337, 336), (41, 700)]
MODES = ["RGB", "L", "RGBA", "CMYK", "P"]

_transforms: dict[tuple[int, str, str], Callable[[Image.Image], Any]] = {}


@pytest.fixture(scope="module", autouse=True)
def _single_torch_thread():
    # The reference transform's tiny tensor ops are ~10x slower when torch spreads them over busy cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _reference(img: Image.Image, cfg: PreprocessCfg) -> np.ndarray:
    key = (cfg.image_size, cfg.interpolation, cfg.resize_mode)
    if key not in _transforms:
        _transforms[key] = open_clip.image_transform(
            cfg.image_size,
            is_train=False,
            mean=cfg.mean,
            std=cfg.std,
            interpolation=cfg.interpolation,
            resize_mode=cfg.resize_mode,
        )
    return _transforms[key](img).numpy()


@functools.lru_cache(maxsize=64)
def _image(size: tuple[int, int], mode: str, seed: int = 3) -> Image.Image:
    """Test image in ``mode`` (cached: callers must not modify it)."""
    img = Image.fromarray(photo_array(size[0], size[1], seed=seed), "RGB")
    if mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(Image.linear_gradient("L").resize(img.size))  # varying alpha: PIL resizes RGBA premultiplied
        return img
    if mode == "P":
        return img.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)  # PIL resizes P with nearest
    return img.convert(mode)


def _assert_parity(img: Image.Image, cfg: PreprocessCfg) -> None:
    ours = preprocess_image(img, cfg)
    ref = _reference(img, cfg)
    s = cfg.image_size
    assert ours.shape == ref.shape == (3, s, s)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=ATOL)


def _openai_cfg(size: int, **kwargs: str) -> PreprocessCfg:
    return PreprocessCfg(image_size=size, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Parity with open_clip
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [224, 336])
@pytest.mark.parametrize("mode", MODES)
def test_matches_open_clip_eval_transform(image_size: int, mode: str) -> None:
    cfg = _openai_cfg(image_size)
    for size in SIZES:
        _assert_parity(_image(size, mode), cfg)


@pytest.mark.parametrize(("interpolation", "resize_mode"), [("bilinear", "shortest"), ("bicubic", "squash")])
def test_matches_open_clip_for_other_resize_settings(interpolation: str, resize_mode: str) -> None:
    cfg = PreprocessCfg(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), interpolation=interpolation, resize_mode=resize_mode)
    for size in [(400, 300), (300, 450), (120, 90), (224, 224)]:
        for mode in ("RGB", "RGBA", "P"):
            _assert_parity(_image(size, mode), cfg)


def test_resize_happens_before_rgb_conversion_like_open_clip() -> None:
    # For RGBA, converting to RGB first gives different pixels (premultiplied resize vs plain); parity proves the order.
    img = _image((400, 300), "RGBA")
    cfg = _openai_cfg(224)
    converted_first = preprocess_image(img.convert("RGB"), cfg)
    assert np.abs(converted_first - _reference(img, cfg)).max() > 1e-2
    _assert_parity(img, cfg)


@pytest.mark.parametrize("image_size", [224, 336])
def test_matches_open_clip_on_decoded_orientation_fixtures(tmp_path: Path, image_size: int) -> None:
    cfg = _openai_cfg(image_size)
    outputs = []
    for path in make_orientation_set(tmp_path, ".png", size=(300, 200)).values():
        img = decode_photo(path).image
        _assert_parity(img, cfg)
        outputs.append(preprocess_image(img, cfg))
    # Lossless fixtures of one upright scene: after decode, all eight preprocess identically.
    for out in outputs[1:]:
        np.testing.assert_array_equal(out, outputs[0])


def test_matches_open_clip_on_real_orientation_samples(exif_samples: Path) -> None:
    cfg = _openai_cfg(224)
    paths = sorted((exif_samples / "jpg" / "orientation").glob("*.jpg"))
    assert len(paths) == 16  # landscape and portrait, EXIF orientations 1 to 8
    for path in paths:
        _assert_parity(decode_photo(path).image, cfg)


def test_preprocess_batch_stacks_single_images() -> None:
    cfg = _openai_cfg(224)
    images = [_image((400, 300), "RGB"), _image((120, 90), "L"), _image((300, 450), "P")]
    batch = preprocess_batch(images, cfg)
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == np.float32
    for i, img in enumerate(images):
        np.testing.assert_array_equal(batch[i], preprocess_image(img, cfg))
    assert preprocess_batch([], cfg).shape == (0, 3, 224, 224)


def test_runtime_module_does_not_import_torch_or_open_clip() -> None:
    code = (
        "import sys, pmllm_batch.runtime.preprocess as p; "
        "bad = [m for m in ('torch', 'torchvision', 'open_clip') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""


# ---------------------------------------------------------------------------------------------------------------------
# PreprocessCfg
# ---------------------------------------------------------------------------------------------------------------------


def test_cfg_json_round_trip(tmp_path: Path) -> None:
    cfg = PreprocessCfg(336, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), interpolation="bilinear", resize_mode="squash")
    path = tmp_path / "preprocess_cfg.json"
    cfg.save_json(path)
    assert json.loads(path.read_text(encoding="utf-8")) == {
        "image_size": 336,
        "mean": [0.1, 0.2, 0.3],
        "std": [0.4, 0.5, 0.6],
        "interpolation": "bilinear",
        "resize_mode": "squash",
    }
    assert PreprocessCfg.load_json(path) == cfg
    assert PreprocessCfg.from_dict(cfg.to_dict()) == cfg


def test_cfg_from_dict_accepts_open_clip_keys_and_ignores_unknown_ones() -> None:
    d = {"size": (224, 224), "mode": "RGB", "mean": [0.5] * 3, "std": [0.5] * 3, "fill_color": 0, "future": 1}
    assert PreprocessCfg.from_dict(d) == PreprocessCfg(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.mark.parametrize(
    "bad",
    [
        {"mean": [0.5] * 3, "std": [0.5] * 3},
        {"image_size": 0, "mean": [0.5] * 3, "std": [0.5] * 3},
        {"image_size": 224, "mean": [0.5] * 2, "std": [0.5] * 3},
        {"image_size": 224, "mean": [0.5] * 3, "std": [0.5, 0.0, 0.5]},
        {"image_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "nearest"},
        {"image_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "resize_mode": "longest"},
        {"image_size": (224, 336), "mean": [0.5] * 3, "std": [0.5] * 3},
    ],
)
def test_cfg_rejects_invalid_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        PreprocessCfg.from_dict(bad)


def test_load_json_rejects_non_object(tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="JSON object"):
        PreprocessCfg.load_json(path)


# ---------------------------------------------------------------------------------------------------------------------
# preprocess_cfg_from_open_clip
# ---------------------------------------------------------------------------------------------------------------------


def test_cfg_from_a_real_open_clip_model_matches_its_own_transform(tmp_path: Path) -> None:
    # A tiny random CLIP built through open_clip's own factory, so preprocess_cfg is attached the way real
    # pretrained tags attach it.
    config = {
        "model_cfg": {
            "embed_dim": 16,
            "vision_cfg": {"image_size": 48, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
            "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1},
        },
        "preprocess_cfg": {
            "mean": [0.5, 0.4, 0.3],
            "std": [0.2, 0.25, 0.3],
            "interpolation": "bilinear",
            "resize_mode": "squash",
        },
    }
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config), encoding="utf-8")
    model = open_clip.create_model(f"local-dir:{tmp_path}", load_weights=False)
    cfg = preprocess_cfg_from_open_clip(model.visual)
    assert cfg == PreprocessCfg(48, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), interpolation="bilinear", resize_mode="squash")
    assert preprocess_cfg_from_open_clip(model) == cfg  # the whole model works too
    pp = model.visual.preprocess_cfg
    reference = open_clip.image_transform(
        pp["size"],
        is_train=False,
        mean=pp["mean"],
        std=pp["std"],
        interpolation=pp["interpolation"],
        resize_mode=pp["resize_mode"],
    )
    img = _image((120, 90), "RGBA")
    np.testing.assert_allclose(preprocess_image(img, cfg), reference(img).numpy(), rtol=0, atol=ATOL)


def test_cfg_from_legacy_attributes_and_openai_fallback() -> None:
    legacy = SimpleNamespace(image_size=(336, 336), image_mean=(0.1, 0.2, 0.3), image_std=(0.3, 0.2, 0.1))
    assert preprocess_cfg_from_open_clip(legacy) == PreprocessCfg(336, (0.1, 0.2, 0.3), (0.3, 0.2, 0.1))
    bare = SimpleNamespace(image_size=224)
    assert preprocess_cfg_from_open_clip(bare) == PreprocessCfg(224, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    assert OPENAI_DATASET_MEAN == tuple(open_clip.OPENAI_DATASET_MEAN)
    assert OPENAI_DATASET_STD == tuple(open_clip.OPENAI_DATASET_STD)


def test_cfg_from_open_clip_maps_random_interpolation_and_rejects_what_it_cannot_reproduce() -> None:
    pp = {"size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "random", "resize_mode": "shortest"}
    assert preprocess_cfg_from_open_clip(SimpleNamespace(preprocess_cfg=pp)).interpolation == "bicubic"
    with pytest.raises(ValueError, match="longest"):
        preprocess_cfg_from_open_clip(SimpleNamespace(preprocess_cfg={**pp, "resize_mode": "longest"}))
    with pytest.raises(ValueError, match="square"):
        preprocess_cfg_from_open_clip(SimpleNamespace(preprocess_cfg={**pp, "size": (224, 320)}))
    with pytest.raises(ValueError, match="image size"):
        preprocess_cfg_from_open_clip(SimpleNamespace(image_size=None))
