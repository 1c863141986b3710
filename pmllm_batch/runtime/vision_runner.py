"""Vision runners: preprocessed images → tower features, through ONNX Runtime or eager torch.

Both backends satisfy :class:`pmllm_batch.contracts.FeatureEncoder`. ``graph_id`` names the exact graph and weights
that made the features, so the feature cache never mixes features of different graphs (fp32 vs int8 vs torch).
The runners take an encoder (:class:`~pmllm_batch.contracts.ExportableTower`), never the model. The ONNX path
imports neither torch nor open_clip once the artefact folder exists.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from pmllm_batch.errors import ConfigError, ModelLoadError
from pmllm_batch.log import get_logger
from pmllm_batch.runtime.onnx_export import (
    INPUT_NAME,
    PREPROCESS_FILE,
    VISION_FP32,
    VISION_INT8,
    ensure_vision_onnx,
    meta_num_features,
    read_meta,
)
from pmllm_batch.runtime.ort_session import create_session
from pmllm_batch.runtime.preprocess import PreprocessCfg

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from pmllm_batch.contracts import ExportableTower, FeatureEncoder, JSONDict

__all__ = ["VARIANT_FILES", "OnnxVisionRunner", "TorchVisionRunner", "load_vision_runner"]

log = get_logger("runtime.vision")

VARIANT_FILES = {"fp32": VISION_FP32, "int8": VISION_INT8}


def _check_pixels(pixel_values: np.ndarray, image_size: int) -> np.ndarray:
    x = np.asarray(pixel_values)
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != image_size or x.shape[3] != image_size:
        raise ValueError(f"pixel_values must have shape (B, 3, {image_size}, {image_size}), got {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class OnnxVisionRunner:
    """Tower features from an exported artefact folder (``vision.onnx`` / ``vision.int8.onnx``).

    The graph's one output is read by position: graphs exported before it was named ``features`` (it was
    ``visual_tokens``) keep working.

    Args:
        onnx_dir: folder written by :func:`~pmllm_batch.runtime.onnx_export.export_vision_onnx`.
        variant: ``"int8"`` (default; faster on CPU) or ``"fp32"``.
        providers: execution-provider preference list (None = CUDA then CPU, whatever is available).
        intra_op_threads: onnxruntime threads inside an op; 0 = one per physical core.
        max_batch: larger batches are run in chunks of this size, which bounds activation memory.
    """

    def __init__(
        self,
        onnx_dir: str | os.PathLike[str],
        variant: Literal["int8", "fp32"] | str = "int8",
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
        max_batch: int = 16,
    ) -> None:
        if variant not in VARIANT_FILES:
            raise ConfigError(f"ONNX vision variant must be 'int8' or 'fp32', not '{variant}'.")
        if max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, not {max_batch}.")
        self.onnx_dir = Path(onnx_dir)
        self.variant = variant
        self.max_batch = int(max_batch)
        meta = read_meta(self.onnx_dir)
        graph_ids = meta["graph_ids"]
        if not isinstance(graph_ids, dict) or variant not in graph_ids:
            raise ModelLoadError(f"{self.onnx_dir} has no {variant} vision graph; re-export it with int8 enabled.")
        try:
            self.preprocess: PreprocessCfg = PreprocessCfg.load_json(self.onnx_dir / PREPROCESS_FILE)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {self.onnx_dir / PREPROCESS_FILE}: {exc}.") from None
        self.meta: JSONDict = meta
        self.graph_id: str = str(graph_ids[variant])
        self.num_features: int = meta_num_features(meta)
        self.dim: int = _meta_int(meta, "dim")
        self.path = self.onnx_dir / VARIANT_FILES[variant]
        self.session = create_session(self.path, providers=providers, intra_op_threads=intra_op_threads)
        names = [i.name for i in self.session.get_inputs()]
        if names != [INPUT_NAME]:
            raise ModelLoadError(f"{self.path} takes inputs {names}, expected ['{INPUT_NAME}'].")
        outputs = [o.name for o in self.session.get_outputs()]
        if len(outputs) != 1:
            raise ModelLoadError(f"{self.path} has outputs {outputs}, expected one (the tower features).")
        if variant == "int8" and self.providers[0] != "CPUExecutionProvider":
            # Its DynamicQuantizeMatMul kernels exist for CPU only: on a GPU they bounce through host memory.
            log.warning("the int8 vision graph is made for CPUs; on %s use the fp32 variant", self.providers[0])

    @property
    def providers(self) -> list[str]:
        """Execution providers of the session, in use order."""
        return list(self.session.get_providers())

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """Args: pixel_values (B, 3, S, S) float32. Returns: tower features (B, n_feat, D_vis) float32."""
        x = _check_pixels(pixel_values, self.preprocess.image_size)
        if x.shape[0] == 0:
            return np.zeros((0, self.num_features, self.dim), dtype=np.float32)
        # output by position (None = all outputs; the graph has one), whatever its name
        parts = [self.session.run(None, {INPUT_NAME: x[s]})[0] for s in _chunks(x.shape[0], self.max_batch)]
        out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        return np.asarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        return f"OnnxVisionRunner({str(self.onnx_dir)!r}, variant={self.variant!r}, graph_id={self.graph_id!r})"


def _meta_int(meta: JSONDict, key: str) -> int:
    value = meta.get(key)
    if not isinstance(value, int | float | str):
        raise ModelLoadError(f"vision_meta.json has no valid '{key}'.")
    return int(value)


def _no_tower(what: str) -> ModelLoadError:
    return ModelLoadError(f"{what} needs a model built with its vision tower (with_vision=True).")


class TorchVisionRunner:
    """Tower features from the model's own torch tower (eager, ``torch.inference_mode``); the projector runs later.

    Args:
        tower: the model's tower as an :class:`~pmllm_batch.contracts.ExportableTower`
            (``PMLLM.exportable_tower()``); None (a model built without it) raises :class:`ModelLoadError`.
        fingerprint: the vision side's fingerprint (``model.checkpoint.vision_fingerprint``, computed by the caller;
            the graph id is ``torch-<fingerprint>``).
        max_batch: larger batches are run in chunks of this size.
    """

    def __init__(self, tower: ExportableTower | None, fingerprint: str, max_batch: int = 16) -> None:
        if tower is None:
            raise _no_tower("the torch vision backend")
        self.encoder: torch.nn.Module = tower.module
        self.encoder.eval()
        self.preprocess: PreprocessCfg = tower.preprocess
        self.graph_id: str = "torch-" + fingerprint
        self.num_features: int = int(tower.num_features)
        self.dim: int = int(tower.dim)
        self.max_batch = int(max_batch)
        param = next(self.encoder.parameters())
        self._device, self._dtype = param.device, param.dtype

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """Args: pixel_values (B, 3, S, S) float32. Returns: tower features (B, n_feat, D_vis) float32."""
        import torch

        x = _check_pixels(pixel_values, self.preprocess.image_size)
        if x.shape[0] == 0:
            return np.zeros((0, self.num_features, self.dim), dtype=np.float32)
        parts: list[np.ndarray] = []
        with torch.inference_mode():
            for s in _chunks(x.shape[0], self.max_batch):
                xt = torch.from_numpy(x[s]).to(self._device, self._dtype)
                parts.append(self.encoder(xt).float().cpu().numpy())
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def __repr__(self) -> str:
        return f"TorchVisionRunner(graph_id={self.graph_id!r}, device={self._device})"


def load_vision_runner(
    tower: ExportableTower | None,
    *,
    fingerprint: str,
    backend: Literal["onnx", "torch"] | str = "onnx",
    variant: Literal["int8", "fp32"] | str = "int8",
    cache_root: str | os.PathLike[str],
    providers: Sequence[str] | None = None,
    intra_op_threads: int = 0,
) -> FeatureEncoder:
    """The feature encoder for a vision tower.

    Args:
        tower: the model's tower (``PMLLM.exportable_tower()``), or None when the model was built without it: the
            ONNX backend then needs a graph already cached under ``cache_root/<fingerprint>/`` (the tower is
            needed only the first time, to export it); the torch backend always needs the tower.
        fingerprint: the vision side's fingerprint (``model.checkpoint.vision_fingerprint(model)``), passed in by
            the caller: it names the cached graph's folder.
        backend: ``"onnx"`` (ONNX Runtime; CUDA when available, else CPU) or ``"torch"`` (eager).
        variant: ONNX graph variant, ``"int8"`` or ``"fp32"``; ignored by the torch backend.
        cache_root: where exported ONNX folders are kept, one per vision fingerprint.
        providers: ONNX execution-provider preference list.
        intra_op_threads: ONNX Runtime intra-op threads (0 = physical cores).

    Raises:
        ConfigError: unknown backend or variant.
        ModelLoadError: the graph cannot be exported or loaded.
    """
    if backend == "torch":
        return TorchVisionRunner(tower, fingerprint)
    if backend != "onnx":
        raise ConfigError(f"vision backend must be 'onnx' or 'torch', not '{backend}'.")
    if variant not in VARIANT_FILES:
        raise ConfigError(f"ONNX vision variant must be 'int8' or 'fp32', not '{variant}'.")
    onnx_dir = ensure_vision_onnx(tower, Path(cache_root), fingerprint)
    try:
        runner = OnnxVisionRunner(onnx_dir, variant, providers=providers, intra_op_threads=intra_op_threads)
    except ModelLoadError as exc:
        if tower is None:
            raise
        # A cached graph that no longer loads (truncated copy, disk error): re-export once (immich does the same).
        log.warning("%s; exporting the vision graph again", exc)
        shutil.rmtree(onnx_dir, ignore_errors=True)
        onnx_dir = ensure_vision_onnx(tower, Path(cache_root), fingerprint)
        runner = OnnxVisionRunner(onnx_dir, variant, providers=providers, intra_op_threads=intra_op_threads)
    log.info("vision: ONNX %s graph %s on %s", variant, runner.graph_id, runner.providers[0])
    return runner
