"""The ONNX vision path builds no torch vision tower when the model's ONNX artefact exists.

``load_models`` builds open_clip's tower (and reads its weights) only to export the graph the first time; a second
load with the artefact warm builds none, and the model fingerprint does not depend on whether it was built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import open_clip.model
import pytest

from pmllm_batch.model.checkpoint import fingerprint
from pmllm_batch.model.factory import attach_vision_tower, create_model, model_cfg_for
from pmllm_batch.model.presets import resolve_path
from pmllm_batch.model.vision import build_vision_tower, vision_spec
from tests.helpers import isolated_env


def _settings(base: Path, **score: Any) -> Any:
    from pmllm_batch.config import load_config

    overrides: dict[str, dict[str, Any]] = {
        "model": {"preset": "demo", "offline": True, "device": "cpu"},
        "paths": {"data_dir": str(base / "data"), "cache_dir": str(base / "cache")},
        "vision": {"backend": "onnx", "variant": "int8", "providers": ["CPUExecutionProvider"]},
    }
    if score:
        overrides["score"] = score
    return load_config(None, overrides=overrides, env={"HOME": str(base / "home")})


def _count_tower_builds(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"n": 0}
    real = open_clip.model._build_vision_tower

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(open_clip.model, "_build_vision_tower", counted)
    return calls


def test_a_warm_onnx_artefact_means_no_torch_tower(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pmllm_batch.scorer.models import load_models

    with isolated_env(tmp_path):
        settings = _settings(tmp_path)
        calls = _count_tower_builds(monkeypatch)
        first = load_models(settings)  # cold: builds the tower once to export the graph
        assert calls["n"] == 1
        assert first.model.tower is None  # dropped after the export
        assert any((tmp_path / "cache" / "onnx").iterdir())
        calls["n"] = 0
        second = load_models(settings)  # warm: nothing of the tower is built
        assert calls["n"] == 0
        assert second.model.tower is None
        assert second.fingerprint == first.fingerprint
        assert second.vision.graph_id == first.vision.graph_id
        # the old behaviour, kept for the bench's before/after figure: same model, same fingerprint
        forced = load_models(settings, build_tower=True)
        assert calls["n"] == 1 and forced.fingerprint == first.fingerprint


def test_int8_setting_reuses_the_float32_onnx_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pmllm_batch.scorer.models import load_models

    with isolated_env(tmp_path):
        fp32 = load_models(_settings(tmp_path))
        calls = _count_tower_builds(monkeypatch)
        int8 = load_models(_settings(tmp_path, quantize="int8"))
        assert calls["n"] == 0  # the vision side is the same model: its graph is already there
        assert int8.model.cfg.lm.quantize == "int8"
        assert int8.vision.graph_id == fp32.vision.graph_id
        assert int8.fingerprint != fp32.fingerprint  # int8 scores get their own model id


def test_a_broken_artefact_is_exported_again_with_a_tower(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pmllm_batch.scorer.models import load_models

    with isolated_env(tmp_path):
        settings = _settings(tmp_path)
        first = load_models(settings)
        (folder,) = [p for p in (tmp_path / "cache" / "onnx").iterdir() if not p.name.startswith(".")]
        (folder / "vision.int8.onnx").write_bytes(b"truncated")  # complete by its meta, but does not load
        calls = _count_tower_builds(monkeypatch)
        again = load_models(settings)
        assert calls["n"] == 1 and again.model.tower is None
        assert (folder / "vision.int8.onnx").read_bytes() != b"truncated"  # exported again
        assert again.fingerprint == first.fingerprint


@pytest.mark.parametrize("preset", ["demo", "cpu"])
def test_the_config_alone_gives_the_towers_width_and_preprocessing(preset: str) -> None:
    cfg, _ = model_cfg_for(preset, "none")
    vision = cfg.vision
    vision.checkpoint = resolve_path(vision.checkpoint)
    tower, pre = build_vision_tower(vision, offline=True, load_weights=False)
    assert vision_spec(vision, load_weights=False) == (tower.width, pre)


def test_a_model_without_its_tower_has_the_same_fingerprint_and_can_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_tower_builds(monkeypatch)
    bare = create_model("demo", offline=True, with_vision=False)
    assert calls["n"] == 0 and bare.tower is None
    full = create_model("demo", offline=True, with_vision=True)
    assert fingerprint(bare) == fingerprint(full)
    assert bare.preprocess == full.preprocess and bare.d_vis == full.d_vis
    attach_vision_tower(bare, offline=True)
    assert bare.tower is not None and fingerprint(bare) == fingerprint(full)
