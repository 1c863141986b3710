"""Vision runners: preprocessed images → visual tokens, through ONNX Runtime or eager torch.

Both backends satisfy :class:`VisionRunner`. ``graph_id`` names the exact graph and weights that made
the tokens, so the visual-token cache never mixes tokens of different graphs (fp32 vs int8 vs torch).
The ONNX path imports neither torch nor open_clip once the artefact folder exists.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from pmllm_batch.errors import ConfigError, ModelLoadError
from pmllm_batch.log import get_logger
from pmllm_batch.runtime.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    PREPROCESS_FILE,
    VISION_FP32,
    VISION_INT8,
    ensure_vision_onnx,
    read_meta,
)
from pmllm_batch.runtime.ort_session import create_session
from pmllm_batch.runtime.preprocess import PreprocessCfg

if TYPE_CHECKING:
    from collections.abc import Sequence

log = get_logger("runtime.vision")

VARIANT_FILES = {"fp32": VISION_FP32, "int8": VISION_INT8}


@runtime_checkable
class VisionRunner(Protocol):
    """Turns preprocessed pixels into visual tokens."""

    graph_id: str  # identifies the exact graph/weights: part of the visual-token cache key
    num_tokens: int  # N
    dim: int  # D (the tower's width: features before the projector)
    preprocess: PreprocessCfg  # how to make ``pixel_values`` for :meth:`encode`

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """Args: pixel_values (B, 3, S, S) float32. Returns: visual tokens (B, N, D) float32."""
        ...


def _check_pixels(pixel_values: np.ndarray, image_size: int) -> np.ndarray:
    x = np.asarray(pixel_values)
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != image_size or x.shape[3] != image_size:
        raise ValueError(f"pixel_values must have shape (B, 3, {image_size}, {image_size}), got {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class OnnxVisionRunner:
    """Visual tokens from an exported artefact folder (``vision.onnx`` / ``vision.int8.onnx``).

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
        if variant not in meta["graph_ids"]:
            raise ModelLoadError(f"{self.onnx_dir} has no {variant} vision graph; re-export it with int8 enabled.")
        try:
            self.preprocess = PreprocessCfg.load_json(self.onnx_dir / PREPROCESS_FILE)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {self.onnx_dir / PREPROCESS_FILE}: {exc}.") from None
        self.meta: dict[str, Any] = meta
        self.graph_id: str = str(meta["graph_ids"][variant])
        self.num_tokens: int = int(meta["num_tokens"])
        self.dim: int = int(meta["dim"])
        self.path = self.onnx_dir / VARIANT_FILES[variant]
        self.session = create_session(self.path, providers=providers, intra_op_threads=intra_op_threads)
        names = [i.name for i in self.session.get_inputs()]
        if names != [INPUT_NAME]:
            raise ModelLoadError(f"{self.path} takes inputs {names}, expected ['{INPUT_NAME}'].")
        if variant == "int8" and self.providers[0] != "CPUExecutionProvider":
            # Its DynamicQuantizeMatMul kernels exist for CPU only: on a GPU they bounce through host memory.
            log.warning("the int8 vision graph is made for CPUs; on %s use the fp32 variant", self.providers[0])

    @property
    def providers(self) -> list[str]:
        """Execution providers of the session, in use order."""
        return list(self.session.get_providers())

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """Args: pixel_values (B, 3, S, S) float32. Returns: visual tokens (B, N, D) float32."""
        x = _check_pixels(pixel_values, self.preprocess.image_size)
        if x.shape[0] == 0:
            return np.zeros((0, self.num_tokens, self.dim), dtype=np.float32)
        parts = [self.session.run([OUTPUT_NAME], {INPUT_NAME: x[s]})[0] for s in _chunks(x.shape[0], self.max_batch)]
        out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        return np.asarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        return f"OnnxVisionRunner({str(self.onnx_dir)!r}, variant={self.variant!r}, graph_id={self.graph_id!r})"


class TorchVisionRunner:
    """Visual features from the model's own torch tower (eager, ``torch.inference_mode``); the projector runs later.

    Args:
        model: a :class:`~pmllm_batch.model.pmllm.PMLLM` built with its vision tower.
        fingerprint: the vision side's fingerprint (``model.checkpoint.vision_fingerprint``, computed by the caller;
            the graph id is ``torch-<fingerprint>``).
        max_batch: larger batches are run in chunks of this size.
    """

    def __init__(self, model: Any, fingerprint: str, max_batch: int = 16) -> None:
        try:
            self.encoder = model.vision_encoder()
        except RuntimeError:
            raise ModelLoadError(
                "the torch vision backend needs a model built with its vision tower (with_vision=True)."
            ) from None
        self.encoder.eval()
        self.preprocess: PreprocessCfg = model.preprocess
        self.graph_id: str = "torch-" + fingerprint
        self.num_tokens: int = int(model.tower.num_tokens(self.preprocess.image_size))
        self.dim: int = int(model.tower.width)
        self.max_batch = int(max_batch)
        param = next(self.encoder.parameters())
        self._device, self._dtype = param.device, param.dtype

    def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """Args: pixel_values (B, 3, S, S) float32. Returns: visual tokens (B, N, D) float32."""
        import torch

        x = _check_pixels(pixel_values, self.preprocess.image_size)
        if x.shape[0] == 0:
            return np.zeros((0, self.num_tokens, self.dim), dtype=np.float32)
        parts = []
        with torch.inference_mode():
            for s in _chunks(x.shape[0], self.max_batch):
                xt = torch.from_numpy(x[s]).to(self._device, self._dtype)
                parts.append(self.encoder(xt).float().cpu().numpy())
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def __repr__(self) -> str:
        return f"TorchVisionRunner(graph_id={self.graph_id!r}, device={self._device})"


def load_vision_runner(
    model: Any,
    *,
    fingerprint: str,
    backend: Literal["onnx", "torch"] | str = "onnx",
    variant: Literal["int8", "fp32"] | str = "int8",
    cache_root: str | os.PathLike[str],
    providers: Sequence[str] | None = None,
    intra_op_threads: int = 0,
) -> VisionRunner:
    """The vision runner for ``model``.

    Args:
        model: a :class:`~pmllm_batch.model.pmllm.PMLLM`. The ONNX backend needs its torch tower only the
            first time (to export into ``cache_root/<fingerprint>/``).
        fingerprint: the model's fingerprint (``model.checkpoint.fingerprint(model)``), passed in by the caller.
        backend: ``"onnx"`` (ONNX Runtime; CUDA when available, else CPU) or ``"torch"`` (eager).
        variant: ONNX graph variant, ``"int8"`` or ``"fp32"``; ignored by the torch backend.
        cache_root: where exported ONNX folders are kept, one per model fingerprint.
        providers: ONNX execution-provider preference list.
        intra_op_threads: ONNX Runtime intra-op threads (0 = physical cores).

    Raises:
        ConfigError: unknown backend or variant.
        ModelLoadError: the graph cannot be exported or loaded.
    """
    if backend == "torch":
        return TorchVisionRunner(model, fingerprint)
    if backend != "onnx":
        raise ConfigError(f"vision backend must be 'onnx' or 'torch', not '{backend}'.")
    if variant not in VARIANT_FILES:
        raise ConfigError(f"ONNX vision variant must be 'int8' or 'fp32', not '{variant}'.")
    onnx_dir = ensure_vision_onnx(model, Path(cache_root), fingerprint)
    try:
        runner = OnnxVisionRunner(onnx_dir, variant, providers=providers, intra_op_threads=intra_op_threads)
    except ModelLoadError as exc:
        if getattr(model, "tower", None) is None:
            raise
        # A cached graph that no longer loads (truncated copy, disk error): re-export once (immich does the same).
        log.warning("%s; exporting the vision graph again", exc)
        shutil.rmtree(onnx_dir, ignore_errors=True)
        onnx_dir = ensure_vision_onnx(model, Path(cache_root), fingerprint)
        runner = OnnxVisionRunner(onnx_dir, variant, providers=providers, intra_op_threads=intra_op_threads)
    log.info("vision: ONNX %s graph %s on %s", variant, runner.graph_id, runner.providers[0])
    return runner
