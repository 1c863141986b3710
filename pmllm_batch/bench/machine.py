"""The machine a bench ran on (CPU, SIMD, memory, library versions) and its practical large-GEMM limit."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import shutil
import statistics
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .inputs import SEED
from .timing import default_threads, interleaved


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model, cores, SIMD flags, memory, load, library versions and the date (UTC)."""
    import onnxruntime
    import torch
    import transformers

    info: dict[str, Any] = {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": default_threads(),
        "threads": threads,
    }
    with contextlib.suppress(ImportError):  # a hard dependency; only its version is wanted here
        import open_clip

        info["open_clip"] = open_clip.__version__
    model = "unknown"
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    with contextlib.suppress(OSError):
        physical = core = ""
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name" and model == "unknown":
                model = value
            elif key in ("cpu family", "model", "stepping") and key.replace(" ", "_") not in info:
                info[key.replace(" ", "_")] = value
            elif key == "flags" and not flags:
                flags = set(value.split())
            elif key == "physical id":
                physical = value
            elif key == "core id":
                core = value
                cores.add((physical, core))
    info["cpu_model"] = model
    info["physical_cores"] = len(cores) or None
    info["simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    info["virtual_machine"] = "hypervisor" in flags
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    with contextlib.suppress(OSError):
        info["load_average_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


# GEMM shapes for the practical limit: two square ones and the two big transformer shapes of the cpu preset
# (ViT-B/32 MLP up-projection, Qwen2.5-0.5B MLP up-projection), as (M, K, N).
GEMM_SHAPES: tuple[tuple[int, int, int], ...] = (
    (1024, 1024, 1024),
    (2048, 2048, 2048),
    (1024, 768, 3072),
    (1024, 896, 4864),
)


def _gemm_rates(shape: tuple[int, int, int], threads: int, repeats: int, d: Path) -> dict[str, float]:
    """GFLOP/s of one (M, K) x (K, N) product in torch fp32, ONNX Runtime fp32 and ONNX Runtime int8, interleaved."""
    import onnx
    import onnxruntime
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from pmllm_batch.runtime.onnx_export import quantize_int8

    m, k, n = shape
    rng = np.random.default_rng(SEED)
    a = rng.standard_normal((m, k), dtype=np.float32)
    w = (rng.standard_normal((k, n), dtype=np.float32) * 0.05).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [numpy_helper.from_array(w, "w")],
    )
    stem = f"mm{m}x{k}x{n}"
    fp32, int8 = d / f"{stem}.onnx", d / f"{stem}.int8.onnx"
    # IR 8 / opset 17: what every onnxruntime >= 1.15 loads
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), fp32)
    quantize_int8(fp32, int8)  # the very settings the vision graph is quantised with
    arms: dict[str, Callable[[], Any]] = {}
    ta, tw = torch.from_numpy(a), torch.from_numpy(w)
    arms["torch_fp32"] = lambda: torch.mm(ta, tw)
    for key, path in (("onnx_fp32", fp32), ("onnx_int8", int8)):
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        sess = onnxruntime.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        arms[key] = functools.partial(sess.run, None, {"x": a})
    times = interleaved(arms, repeats)
    return {key: 2.0 * m * k * n / statistics.median(ts) / 1e9 for key, ts in times.items()}


def measure_gemm(
    threads: int,
    shapes: Sequence[tuple[int, int, int]] = GEMM_SHAPES,
    repeats: int = 5,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Large GEMM rates: torch fp32, ONNX Runtime fp32 MatMul and its int8 (dynamically quantised) MatMul.

    These are the practical limits each stage is compared with. Each engine's limit is its best rate over
    ``shapes`` (which shape runs best depends on the kernel's blocking, the caches and, for int8, the cost of
    quantising the activations); a stage can still come out a little above it, since a whole model keeps weights
    and activations hot in ways a single product does not.
    """
    own_dir = work_dir is None
    d = Path(tempfile.mkdtemp(prefix="pmllm-gemm-")) if own_dir else Path(work_dir)  # type: ignore[arg-type]
    d.mkdir(parents=True, exist_ok=True)
    try:
        per_shape = {"x".join(map(str, sh)): _gemm_rates(sh, threads, repeats, d) for sh in shapes}
    finally:
        if own_dir:
            shutil.rmtree(d, ignore_errors=True)
    out: dict[str, Any] = {
        "shapes": list(per_shape),
        "threads": threads,
        "per_shape": {k: {e: round(v, 1) for e, v in r.items()} for k, r in per_shape.items()},
    }
    for key in ("torch_fp32", "onnx_fp32", "onnx_int8"):
        best = max((r[key], sh) for sh, r in per_shape.items())[1]
        out[f"{key}_gflops"] = round(per_shape[best][key], 1)
        out[f"{key}_best_shape"] = best
    return out
