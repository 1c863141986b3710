"""Presets: named architectures (+ a default adapter), shipped or a user's own file.

A preset is a JSON file holding an architecture (``model``) and optionally a default adapter (``adapter``). The
shipped ones live in ``model_configs/`` (file stem = preset name, open_clip's one-file-per-model layout); a user's
preset is any ``.json`` path, so local weights never need a file inside the installed package. Paths inside a
preset may be ``pkg:relative/path`` (inside this package, for the shipped demo/smol), absolute, ``~/…``, or
relative to the preset file itself.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Required, TypedDict, TypeVar, cast

from pmllm_batch.errors import ConfigError

if TYPE_CHECKING:
    from pmllm_batch.contracts import JSON
    from pmllm_batch.model.config import ModelCfg, ModelCfgDict


class Preset(TypedDict, total=False):
    """A preset file: an architecture and, optionally, the path of a default adapter."""

    model: Required[ModelCfgDict]
    adapter: str | None


_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
_PRESETS: dict[str, Preset] = {}
_V = TypeVar("_V", bound="JSON")  # a value of a preset's JSON


def _rescan() -> None:
    _PRESETS.clear()
    for f in sorted(_CONFIG_DIR.glob("*.json")):
        _PRESETS[f.stem] = json.loads(f.read_text())


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    if not _PRESETS:
        _rescan()
    return sorted(_PRESETS)


def is_preset_file(name: str) -> bool:
    """True when ``name`` names a preset file rather than a shipped preset (a path or a ``.json`` name)."""
    return name.endswith(".json") or "/" in name or name.startswith("~")


def _relative_to(value: _V, base: Path, *, always_local: bool = False) -> _V | str:
    """A path in a preset file, made absolute against the file's folder (hub ids stay as they are)."""
    if not isinstance(value, str) or not value or value.startswith(("pkg:", "py:")) or "://" in value:
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    if always_local or value.startswith(("./", "../")) or (base / p).exists():
        return str((base / p).resolve())
    return value  # an LLM hub id such as "Qwen/Qwen2.5-0.5B-Instruct"


def load_preset_file(path: str | Path) -> Preset:
    """Read a user's preset file; relative weight paths are resolved against the file's folder.

    Raises:
        ConfigError: the file is missing or is not a preset (one sentence naming the file).
    """
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"preset file {p} does not exist; give a shipped preset ({', '.join(list_presets())}) or a path "
            "to a preset .json."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"preset file {p} is not readable JSON: {exc}.") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ConfigError(f'preset file {p} needs a "model" object (see pmllm_batch/model/model_configs/).')
    preset = cast("Preset", data)  # checked above: an object holding a "model" object
    base = p.resolve().parent
    model = preset["model"]
    model.setdefault("name", p.stem)
    vision = model.get("vision") or {}
    if "checkpoint" in vision:
        vision["checkpoint"] = _relative_to(vision["checkpoint"], base, always_local=True)
    lm = model.get("lm") or {}
    if "name_or_path" in lm:
        lm["name_or_path"] = _relative_to(lm["name_or_path"], base)
    if lm.get("gguf"):
        lm["gguf"] = _relative_to(lm["gguf"], base, always_local=True)
    adapter = preset.get("adapter")
    if adapter:
        preset["adapter"] = _relative_to(adapter, base, always_local=True)
    return preset


def get_preset(name: str) -> Preset:
    """A deep copy of a preset: ``{"model": {...}, "adapter": path | None}``; ``name`` may be a file path."""
    if is_preset_file(name):
        return load_preset_file(name)
    presets = list_presets()
    if name not in presets:
        raise ConfigError(
            f"unknown preset '{name}'; available presets: {', '.join(presets)} (or give the path of a preset .json)."
        )
    return copy.deepcopy(_PRESETS[name])


def resolve_path(value: str | None) -> str | None:
    """``pkg:relative/path`` → a path inside the installed package; ``~`` expanded; anything else unchanged."""
    if value and value.startswith("pkg:"):
        return str(_PACKAGE_DIR / value[4:])
    if value and value.startswith("~"):
        return str(Path(value).expanduser())
    return value


def demo_note(cfg: ModelCfg) -> str | None:
    """One line saying what a demo model's scores mean, naming the preset and what in it is real; None for a model
    that is not a demo (``demo`` false in its config).

    The shipped demo's LLM lives inside this package (``pkg:`` path): a tiny random model. Every other LLM (smol's
    SmolLM2, or a local folder given as ``[model] lm_path``) is a real language model whose adapter was still trained
    on the synthetic task. The one wording for the load log, ``rank``'s note and reports.
    """
    if not cfg.demo:
        return None
    lm = cfg.lm.name_or_path
    if lm.startswith("pkg:"):
        what = "a tiny model trained on a synthetic task"
    else:
        label = Path(lm.rstrip("/")).name or lm
        what = f"a real LLM ({label}) with an adapter trained on a synthetic task"
    return f"{cfg.name}: {what} — scores show the mechanism, not anyone's real taste."
