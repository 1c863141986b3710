"""Adapter checkpoints: projector + fusion weights (safetensors) and ``pmllm_config.json``.

The base models are never saved here: the JSON names them (vision id, LLM id) with the shapes the
adapter was trained for, so loading into a mismatched LLM or tower fails with one sentence.
Weights load through safetensors only (never pickles).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypedDict

import torch

from pmllm_batch.errors import ModelLoadError
from pmllm_batch.model.presets import resolve_path
from pmllm_batch.version import __version__

if TYPE_CHECKING:
    from pmllm_batch.contracts import JSONDict
    from pmllm_batch.model.config import ModelCfgDict
    from pmllm_batch.model.pmllm import PMLLM

ADAPTER_FILE = "adapter.safetensors"
CONFIG_FILE = "pmllm_config.json"
FORMAT_VERSION = 1

BaseFacts = dict[str, "str | int | None"]  # one base model's identity and shapes, by name


class BaseSignature(TypedDict):
    """What an adapter was trained on: the LLM's and the tower's facts and the rating-level token ids."""

    lm: BaseFacts
    vision: BaseFacts
    level_token_ids: list[int]


class AdapterMeta(TypedDict, total=False):
    """``pmllm_config.json`` (plus whatever ``extra`` its writer added, e.g. ``train_step``)."""

    format_version: int
    model: ModelCfgDict
    preprocess: JSONDict
    base: BaseSignature
    versions: dict[str, str]
    demo: bool


def adapter_state_dict(model: PMLLM) -> dict[str, torch.Tensor]:
    state = {f"projector.{k}": v for k, v in model.projector.state_dict().items()}
    state.update({f"fusion.{k}": v for k, v in model.fused.fusion_blocks.state_dict().items()})
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}


def base_signature(model: PMLLM) -> BaseSignature:
    """What an adapter must match: the LLM's and the tower's identity and shapes."""
    lm_cfg = model.fused.lm.config
    return {
        "lm": {
            "name_or_path": model.cfg.lm.name_or_path,
            "model_type": lm_cfg.model_type,
            "hidden_size": int(lm_cfg.hidden_size),
            "num_hidden_layers": int(lm_cfg.num_hidden_layers),
            "vocab_size": int(lm_cfg.vocab_size),
        },
        "vision": {
            "model_name": model.cfg.vision.model_name if model.cfg.vision.arch is None else "custom",
            "pretrained": model.cfg.vision.pretrained if model.cfg.vision.arch is None else None,
            "width": int(model.d_vis),
            "image_size": int(model.preprocess.image_size),
        },
        "level_token_ids": [int(i) for i in model.level_ids.tolist()],
    }


def save_adapter(model: PMLLM, out_dir: str | Path, extra: JSONDict | None = None) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model), str(out / ADAPTER_FILE))
    import open_clip
    import transformers

    meta = {
        "format_version": FORMAT_VERSION,
        "model": model.cfg.to_dict(),
        "preprocess": model.preprocess.to_dict(),
        "base": base_signature(model),
        "versions": {
            "pmllm_batch": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "open_clip": open_clip.__version__,
        },
        "demo": bool(model.cfg.demo),
        **(extra or {}),
    }
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def read_adapter_config(path: str | Path) -> AdapterMeta:
    p = Path(path)
    cfg_file = p / CONFIG_FILE
    if not cfg_file.is_file() or not (p / ADAPTER_FILE).is_file():
        raise ModelLoadError(f"{p} is not an adapter checkpoint (expected {CONFIG_FILE} and {ADAPTER_FILE}).")
    try:
        data = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {cfg_file}: {exc}.") from None
    if data.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(f"{cfg_file} has format version {data.get('format_version')}, expected {FORMAT_VERSION}.")
    return data


def load_adapter(model: PMLLM, path: str | Path) -> AdapterMeta:
    """Load adapter weights into ``model`` after checking that the base models match."""
    from safetensors.torch import load_file

    meta = read_adapter_config(path)
    want, have = meta["base"], base_signature(model)
    parts: tuple[Literal["lm", "vision"], ...] = ("lm", "vision")
    for part in parts:
        wanted, had = want[part], have[part]
        for key in ("model_type", "hidden_size", "vocab_size", "width", "image_size"):
            if key in wanted and wanted[key] != had.get(key):
                name = wanted.get("name_or_path") or wanted.get("model_name")
                raise ModelLoadError(
                    f"adapter {path} was trained for {part} {name} ({key} {wanted[key]}) "
                    f"but the loaded {part} has {key} {had.get(key)}."
                )
    if want["level_token_ids"] != have["level_token_ids"]:
        raise ModelLoadError(f"adapter {path} was trained with a different tokenizer (rating-level tokens differ).")
    state = load_file(str(Path(path) / ADAPTER_FILE))
    proj = {k[len("projector.") :]: v for k, v in state.items() if k.startswith("projector.")}
    fus = {k[len("fusion.") :]: v for k, v in state.items() if k.startswith("fusion.")}
    try:
        model.projector.load_state_dict(proj, strict=True)
        model.fused.fusion_blocks.load_state_dict(fus, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelLoadError(f"adapter {path} does not fit this model's projector/fusion layout: {first}") from None
    return meta


def fingerprint(model: PMLLM, vision_graph_id: str | None = None, *, lm_quantize: bool = True) -> str:
    """A stable id of everything that determines a score: adapter weights, architecture, base models.

    ``lm.quantize = "int8"`` (model/quantize.py) changes it, naming the int8 scheme; ``"none"`` leaves it what it
    was before the key existed. ``lm_quantize=False`` leaves the LLM's quantisation out (the ONNX export and the
    feature cache are keyed by :func:`vision_fingerprint`, which leaves the adapter out too). Nothing
    here depends on whether the torch vision tower was built.
    """
    from pmllm_batch.model.quantize import INT8_SCHEME

    cfg = model.cfg.to_dict()
    lm = cfg["lm"]
    quantize = lm.pop("quantize", "none") if isinstance(lm, dict) else "none"
    h = hashlib.sha256()
    h.update(json.dumps({"cfg": cfg, "base": base_signature(model)}, sort_keys=True).encode())
    if lm_quantize and quantize != "none":
        h.update(f"lm.quantize={INT8_SCHEME if quantize == 'int8' else quantize}".encode())
    for k, v in sorted(adapter_state_dict(model).items()):
        h.update(k.encode())
        h.update(v.numpy().tobytes())
    if vision_graph_id:
        h.update(vision_graph_id.encode())

    for local in (model.cfg.vision.checkpoint, model.cfg.lm.name_or_path):
        h.update(local_weights_digest(resolve_path(local)).encode())
    return h.hexdigest()[:16]


def vision_fingerprint(model: PMLLM, salt: str = "") -> str:
    """The id of what the vision runner outputs (the tower's features, before the projector): the vision config,
    the preprocessing and the tower's local weights. The adapter is not part of it, so retraining the adapter keeps
    the ONNX export and the feature cache; the demo and smol presets, which share a tower, share both.
    Computable without building the tower. ``salt`` tells apart towers the config cannot (the bench's random ones).
    """
    facts = {"output": "tower-features-v1", "salt": salt, "vision": model.cfg.to_dict()["vision"],
             "preprocess": model.preprocess.to_dict()}
    h = hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode())
    h.update(local_weights_digest(resolve_path(model.cfg.vision.checkpoint)).encode())
    return "v" + h.hexdigest()[:15]


def local_weights_digest(path: str | None, full_hash_limit: int = 64 << 20) -> str:
    """Identify local weight files (a file or a folder): content hash when small, else names + sizes + mtimes.

    Hub ids (not local paths) give "": they are identified by name (and revision) alone.
    """
    if not path:
        return ""
    p = Path(path)
    files = sorted(f for f in ([p] if p.is_file() else p.rglob("*") if p.is_dir() else []) if f.is_file())
    total = sum(f.stat().st_size for f in files)
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        if total <= full_hash_limit:
            h.update(f.read_bytes())
        else:
            st = f.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def copy_adapter(src: str | Path, dst: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Copy an adapter folder, storing its tensors as ``dtype`` (the shipped presets are float16: half the bytes;
    they are loaded into the model's float32 parameters, so scores differ from the float32 adapter only by that
    rounding)."""
    from safetensors.torch import load_file, save_file

    src, out = Path(src), Path(dst)
    read_adapter_config(src)  # one sentence when it is not an adapter folder
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(src / ADAPTER_FILE)).items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / ADAPTER_FILE))
    (out / CONFIG_FILE).write_text((src / CONFIG_FILE).read_text())
    return out


if __name__ == "__main__":  # python -m pmllm_batch.model.checkpoint --to-float16 SRC DST (scripts/train_adapter.sh)
    import sys

    if len(sys.argv) != 4 or sys.argv[1] != "--to-float16":
        sys.exit("usage: python -m pmllm_batch.model.checkpoint --to-float16 SRC_ADAPTER DST_ADAPTER")
    print(copy_adapter(sys.argv[2], sys.argv[3]))
