"""Every command builds its model through ``ModelSpec.from_settings``: ``train``, ``eval`` and ``export-onnx`` honour
``[model] lm_path`` and ``[model] vision_checkpoint`` as ``rank`` does (and as the missing-weights error says).

Each command's ``run()`` is called with settings whose ``lm_path`` names a tiny Hugging Face LLM folder (the demo
LLM's config, other random weights) and whose ``vision_checkpoint`` names a changed copy of the demo tower; the
model the command built is caught where the command hands it on, and its weights are compared with those files.
A missing folder or file fails with the one sentence that names it and its key. Everything lives in temp folders.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from pmllm_batch.config import Settings, load_config
from pmllm_batch.errors import ModelLoadError
from pmllm_batch.model.checkpoint import vision_fingerprint
from pmllm_batch.model.pmllm import PMLLM
from pmllm_batch.model.presets import demo_note, resolve_path
from pmllm_batch.model.spec import ModelSpec
from tests.dataset_fixtures import write_para_fixture

DEMO_LM = Path(resolve_path("pkg:assets/demo/lm") or "")
DEMO_VISION = Path(resolve_path("pkg:assets/demo/vision.safetensors") or "")
DEMO_ADAPTER = Path(resolve_path("pkg:assets/demo/adapter") or "")


class Caught(Exception):
    """Raised where a command hands its model on: the test has what it needs, the command stops there."""

    def __init__(self, model: Any) -> None:
        super().__init__("caught")
        self.model = model


@pytest.fixture(scope="module")
def local_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local LLM folder: the demo LLM's config and tokenizer, other (seeded random) weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("local-lm")
    torch.manual_seed(1234)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(DEMO_LM)).save_pretrained(out)
    AutoTokenizer.from_pretrained(DEMO_LM).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def local_tower(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local vision-tower file: the demo tower's weights, each float tensor shifted."""
    out = tmp_path_factory.mktemp("local-vision") / "tower.safetensors"
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in load_file(str(DEMO_VISION)).items()}
    save_file(state, str(out))
    return out


def _settings(base: Path, lm_path: Path, vision_checkpoint: Path, **score: Any) -> Settings:
    overrides: dict[str, dict[str, Any]] = {
        "model": {"preset": "demo", "offline": True, "device": "cpu", "lm_path": str(lm_path),
                  "vision_checkpoint": str(vision_checkpoint)},
        "paths": {"data_dir": str(base / "data"), "cache_dir": str(base / "cache")},
    }
    if score:
        overrides["score"] = score
    return load_config(None, overrides=overrides, env={"HOME": str(base / "home")})


def _args(*argv: str) -> argparse.Namespace:
    from pmllm_batch.cli.app import build_parser

    return build_parser(argv[0].replace("-", "_")).parse_args(list(argv))


def _assert_lm_from(model: PMLLM, folder: Path) -> None:
    from transformers import AutoModelForCausalLM

    assert model.cfg.lm.name_or_path == str(folder)
    want = AutoModelForCausalLM.from_pretrained(folder).get_input_embeddings().weight
    demo = AutoModelForCausalLM.from_pretrained(DEMO_LM).get_input_embeddings().weight
    got = model.fused.lm.get_input_embeddings().weight
    assert torch.equal(got, want) and not torch.equal(got, demo)


def _assert_tower_from(module: torch.nn.Module, path: Path) -> None:
    want = load_file(str(path))
    got = {k.split("visual.", 1)[1]: v for k, v in module.state_dict().items() if "visual." in k}
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def _train_args(root: Path, out: Path, *extra: str) -> argparse.Namespace:
    return _args("train", "--dataset", "para", "--root", str(root), "--out", str(out), "--steps", "1", *extra)


def _eval_args(root: Path, out: Path) -> argparse.Namespace:
    return _args("eval", "--checkpoint", str(DEMO_ADAPTER), "--dataset", "para", "--root", str(root),
                 "--out", str(out))


# --------------------------------------------------------------------------------------------------
# the spec itself
# --------------------------------------------------------------------------------------------------


def test_the_spec_turns_local_weights_and_quantize_into_overrides(tmp_path: Path) -> None:
    spec = ModelSpec.from_settings(_settings(tmp_path, tmp_path / "lm", tmp_path / "v.safetensors", quantize="int8"))
    assert spec.preset == "demo" and spec.device == "cpu" and spec.offline
    assert spec.overrides() == {
        "vision": {"checkpoint": str(tmp_path / "v.safetensors")},
        "lm": {"name_or_path": str(tmp_path / "lm"), "quantize": "int8"},
    }
    assert "quantize" not in spec.with_quantize("none").overrides()["lm"]
    adapter = ModelSpec.from_settings(_settings(tmp_path, tmp_path / "lm", tmp_path / "v"), checkpoint="x", preset=None)
    assert (adapter.preset, adapter.checkpoint) == (None, "x")


# --------------------------------------------------------------------------------------------------
# train, eval, export-onnx build what the settings name
# --------------------------------------------------------------------------------------------------


def test_train_uses_lm_path_and_vision_checkpoint(tmp_path: Path, local_lm: Path, local_tower: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from pmllm_batch.cli.commands import train
    from pmllm_batch.train import loop

    def catch(model: PMLLM, *args: Any, **kwargs: Any) -> None:
        raise Caught(model)

    monkeypatch.setattr(loop, "Trainer", catch)
    root = write_para_fixture(tmp_path / "para").root
    # [score] quantize is for scoring: training always gets the float LLM
    settings = _settings(tmp_path, local_lm, local_tower, quantize="int8")
    with pytest.raises(Caught) as caught:
        train.run(_train_args(root, tmp_path / "run"), settings)
    model = caught.value.model
    _assert_lm_from(model, local_lm)
    assert model.tower is not None
    _assert_tower_from(model.tower, local_tower)
    assert model.cfg.lm.quantize == "none"
    assert model.fusion_untrained()  # no --init: a fresh adapter


def test_eval_uses_lm_path_and_vision_checkpoint(tmp_path: Path, local_lm: Path, local_tower: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from pmllm_batch.cli.commands import eval as eval_command
    from pmllm_batch.train import evaluate

    def catch(model: PMLLM, *args: Any, **kwargs: Any) -> None:
        raise Caught(model)

    monkeypatch.setattr(evaluate, "evaluate", catch)
    root = write_para_fixture(tmp_path / "para").root
    with pytest.raises(Caught) as caught:
        eval_command.run(_eval_args(root, tmp_path / "report"), _settings(tmp_path, local_lm, local_tower))
    model = caught.value.model
    _assert_lm_from(model, local_lm)
    assert model.tower is not None
    _assert_tower_from(model.tower, local_tower)
    assert not model.fusion_untrained()  # the adapter given by --checkpoint, on the local base models


def test_export_onnx_uses_vision_checkpoint(tmp_path: Path, local_lm: Path, local_tower: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from pmllm_batch.cli.commands import export_onnx
    from pmllm_batch.runtime import onnx_export

    seen: dict[str, Any] = {}

    def catch(tower: Any, out_dir: Any, *, fingerprint: str, int8: bool = True) -> dict[str, Path]:
        seen.update(tower=tower, fingerprint=fingerprint)
        return {}

    monkeypatch.setattr(onnx_export, "export_tower", catch)
    assert export_onnx.run(_args("export-onnx", "--out", str(tmp_path / "onnx")),
                           _settings(tmp_path, local_lm, local_tower)) == 0
    tower = seen["tower"]
    _assert_tower_from(tower.module, local_tower)
    assert tower.name == "demo" and (tower.num_features, tower.dim) == (64, 64)
    # the graph is keyed by the local tower, not the shipped one
    shipped = ModelSpec.from_settings(_settings(tmp_path, DEMO_LM, DEMO_VISION)).create(with_vision=False)
    assert seen["fingerprint"] != vision_fingerprint(shipped)


@pytest.mark.parametrize("command", ["train", "eval", "export-onnx"])
def test_a_missing_local_path_is_named_with_its_key(tmp_path: Path, command: str) -> None:
    from pmllm_batch.cli.commands import eval as eval_command
    from pmllm_batch.cli.commands import export_onnx, train

    lm, vision = tmp_path / "no-such-lm", tmp_path / "no-such-tower.safetensors"
    settings = _settings(tmp_path, lm, vision)
    root = write_para_fixture(tmp_path / "para").root
    runs = {
        "train": lambda: train.run(_train_args(root, tmp_path / "run"), settings),
        "eval": lambda: eval_command.run(_eval_args(root, tmp_path / "report"), settings),
        "export-onnx": lambda: export_onnx.run(_args("export-onnx", "--out", str(tmp_path / "onnx")), settings),
    }
    with pytest.raises(ModelLoadError) as err:
        runs[command]()
    text = str(err.value)
    assert f"the LLM folder {lm} does not exist (set model.lm_path" in text
    assert f"the vision checkpoint {vision} does not exist (set model.vision_checkpoint" in text
    assert not (tmp_path / "onnx").exists() and not (tmp_path / "run" / "adapter").exists()


# --------------------------------------------------------------------------------------------------
# the demo note
# --------------------------------------------------------------------------------------------------


def test_the_demo_note_names_the_preset_and_what_is_real() -> None:
    from pmllm_batch.model.factory import model_cfg_for

    demo, _ = model_cfg_for("demo", "none")
    smol, _ = model_cfg_for("smol", "none")
    cpu, _ = model_cfg_for("cpu", "none")
    assert demo_note(demo) == (
        "demo: a tiny model trained on a synthetic task — scores show the mechanism, not anyone's real taste."
    )
    assert demo_note(smol) == (
        "smol: a real LLM (SmolLM2-135M-Instruct) with an adapter trained on a synthetic task — scores show the "
        "mechanism, not anyone's real taste."
    )
    assert demo_note(cpu) is None  # not a demo: nothing to say
