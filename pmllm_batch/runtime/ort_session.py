"""ONNX Runtime sessions: execution providers from a preference list, CPU always the last resort.

Follows immich's machine-learning service (``immich_ml/sessions/ort.py``): keep the preferred providers
that this onnxruntime build actually offers, in preference order, and always end with the CPU provider
so a missing or broken accelerator degrades to CPU instead of failing. Everything chosen is logged.
Pattern paraphrased, no code copied.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pmllm_batch.errors import ModelLoadError
from pmllm_batch.log import get_logger

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

log = get_logger("runtime.ort")

CPU_PROVIDER = "CPUExecutionProvider"
DEFAULT_PROVIDERS: tuple[str, ...] = ("CUDAExecutionProvider", CPU_PROVIDER)

# Providers that run an exported vision graph with default options (immich's list plus ROCm/DirectML).
# Anything else — TensorRT (needs engine caches and fp16 calibration we do not set up) or a typo — is
# dropped with a warning rather than passed to onnxruntime, which would fail or silently fall back.
SUPPORTED_PROVIDERS: tuple[str, ...] = (
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
    "OpenVINOExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    CPU_PROVIDER,
)


def choose_providers(preferred: Sequence[str] = DEFAULT_PROVIDERS, available: Sequence[str] | None = None) -> list[str]:
    """Filter a provider preference list down to what can run here.

    Args:
        preferred: provider names in order of preference.
        available: what this onnxruntime build offers; None asks ``onnxruntime.get_available_providers()``.

    Returns:
        The preferred providers that are supported and available, in the given order, with
        ``CPUExecutionProvider`` exactly once and always last.
    """
    if isinstance(preferred, str):  # a single name, not a list of its characters
        preferred = [preferred]
    if available is None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
    have = set(available)
    chosen: list[str] = []
    for name in preferred:
        if name == CPU_PROVIDER or name in chosen:
            continue  # CPU is appended last below, whatever position it was asked for
        if name not in SUPPORTED_PROVIDERS:
            log.warning("ignoring execution provider %s: pmllm-batch supports %s", name, ", ".join(SUPPORTED_PROVIDERS))
        elif name not in have:
            log.info("execution provider %s is not available in this onnxruntime build; skipping it", name)
        else:
            chosen.append(name)
    chosen.append(CPU_PROVIDER)
    return chosen


def _ort_load_errors() -> tuple[type[BaseException], ...]:
    """What ``InferenceSession`` raises for a bad model file: OSError/RuntimeError plus onnxruntime's own
    pybind exceptions (``InvalidProtobuf``, ``NoSuchFile``, ``Fail``, …), which derive from ``Exception`` only."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = (
        "InvalidProtobuf",
        "NoSuchFile",
        "Fail",
        "InvalidGraph",
        "InvalidArgument",
        "RuntimeException",
        "NotImplemented",
    )
    ort_errors = tuple(getattr(state, n) for n in names if isinstance(getattr(state, n, None), type))
    return (OSError, RuntimeError, ValueError, *ort_errors)


def _cuda_driver_present() -> bool:
    """Whether the NVIDIA driver library loads. onnxruntime-gpu lists CUDA as available on any machine, then
    prints a red error and falls back to CPU when the driver is missing; checking first keeps the logs clean."""
    import ctypes
    import sys

    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def _provider_options(provider: str) -> dict[str, str]:
    if provider == "CUDAExecutionProvider":
        # Grow the CUDA arena only by what is requested: a batch scorer shares the GPU with the torch LLM.
        return {"arena_extend_strategy": "kSameAsRequested"}
    return {}


def create_session(
    path: str | os.PathLike[str],
    *,
    providers: Sequence[str] | None = None,
    intra_op_threads: int = 0,
    inter_op_threads: int = 1,
) -> InferenceSession:
    """Open an ONNX model in an ``onnxruntime.InferenceSession``.

    Args:
        path: the ``.onnx`` file.
        providers: preference list passed through :func:`choose_providers`; None = :data:`DEFAULT_PROVIDERS`.
        intra_op_threads: threads inside one operator; 0 lets onnxruntime use the physical cores.
        inter_op_threads: threads across operators; only used by parallel execution, kept at 1.

    Returns:
        The session (``onnxruntime.InferenceSession``).

    Raises:
        ModelLoadError: the file is missing, unreadable or not a valid ONNX model.
    """
    import onnxruntime

    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"ONNX model {p} does not exist.")
    chosen = choose_providers(DEFAULT_PROVIDERS if providers is None else providers)
    if "CUDAExecutionProvider" in chosen and not _cuda_driver_present():
        log.info("skipping CUDAExecutionProvider: no NVIDIA driver (libcuda) on this machine")
        chosen.remove("CUDAExecutionProvider")
    opts = onnxruntime.SessionOptions()
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One image batch is one sequential chain of ops; parallel execution only adds scheduling overhead.
    opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = int(intra_op_threads)
    opts.inter_op_num_threads = int(inter_op_threads)
    opts.log_severity_level = 3  # onnxruntime's own warnings (e.g. unused initialisers) are noise here
    try:
        session = onnxruntime.InferenceSession(
            str(p), sess_options=opts, providers=[(name, _provider_options(name)) for name in chosen]
        )
    except _ort_load_errors() as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load ONNX model {p} ({first[:200]}); delete it to have it re-exported.") from None
    log.info(
        "onnx session %s: providers %s (requested %s), intra-op threads %s",
        p.name,
        session.get_providers(),
        chosen,
        intra_op_threads or "auto",
    )
    return session
