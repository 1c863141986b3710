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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .inputs import SEED
from .timing import default_threads, interleaved


@dataclass
class MachineInfo:
    """The machine a bench ran on (the JSON object ``machine``). ``/proc`` figures are None where there is none."""

    date_utc: str
    platform: str
    python: str
    torch: str
    onnxruntime: str
    transformers: str
    numpy: str
    logical_cpus: int | None
    usable_cpus: int
    threads: int
    open_clip: str | None = None
    cpu_family: str | None = None
    model: str | None = None
    stepping: str | None = None
    cpu_model: str = "unknown"
    physical_cores: int | None = None
    simd: list[str] = field(default_factory=list)
    virtual_machine: bool = False
    memory_gib: float | None = None
    load_average_start: list[float] | None = None
    load_average_end: list[float] | None = None


@dataclass
class _CpuInfo:
    """What /proc/cpuinfo says (its first processor's fields, and how many distinct physical cores it lists)."""

    model: str
    fields: dict[str, str]  # cpu_family, model, stepping
    flags: frozenset[str]
    physical_cores: int | None


def machine_info(threads: int) -> MachineInfo:
    """CPU model, cores, SIMD flags, memory, load, library versions and the date (UTC)."""
    import onnxruntime
    import torch
    import transformers

    cpu = _cpuinfo()
    fields = cpu.fields
    return MachineInfo(
        date_utc=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        platform=platform.platform(),
        python=platform.python_version(),
        torch=torch.__version__,
        onnxruntime=onnxruntime.__version__,
        transformers=transformers.__version__,
        numpy=np.__version__,
        logical_cpus=os.cpu_count(),
        usable_cpus=default_threads(),
        threads=threads,
        open_clip=_open_clip_version(),
        cpu_family=fields.get("cpu_family"),
        model=fields.get("model"),
        stepping=fields.get("stepping"),
        cpu_model=cpu.model,
        physical_cores=cpu.physical_cores,
        simd=[f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in cpu.flags],
        virtual_machine="hypervisor" in cpu.flags,
        memory_gib=_memory_gib(),
        load_average_start=load_average(),
    )


def _open_clip_version() -> str | None:
    with contextlib.suppress(ImportError):  # a hard dependency; only its version is wanted here
        import open_clip

        return str(open_clip.__version__)
    return None


def _cpuinfo() -> _CpuInfo:
    model = "unknown"
    fields: dict[str, str] = {}
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    with contextlib.suppress(OSError):
        physical = ""
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name" and model == "unknown":
                model = value
            elif key in ("cpu family", "model", "stepping") and key.replace(" ", "_") not in fields:
                fields[key.replace(" ", "_")] = value
            elif key == "flags" and not flags:
                flags = set(value.split())
            elif key == "physical id":
                physical = value
            elif key == "core id":
                cores.add((physical, value))
    return _CpuInfo(model=model, fields=fields, flags=frozenset(flags), physical_cores=len(cores) or None)


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (2 decimals); None where the platform has none."""
    with contextlib.suppress(OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


# GEMM shapes for the practical limit: two square ones and the two big transformer shapes of the cpu preset
# (ViT-B/32 MLP up-projection, Qwen2.5-0.5B MLP up-projection), as (M, K, N).
GEMM_SHAPES: tuple[tuple[int, int, int], ...] = (
    (1024, 1024, 1024),
    (2048, 2048, 2048),
    (1024, 768, 3072),
    (1024, 896, 4864),
)


def _matmul_graphs(a: np.ndarray, w: np.ndarray, d: Path) -> tuple[Path, Path]:
    """An ONNX graph of ``x @ w`` (``w`` a constant), and its int8 quantisation: (fp32 path, int8 path) in ``d``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from pmllm_batch.runtime.onnx_export import quantize_int8

    (m, k), n = a.shape, w.shape[1]
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
    return fp32, int8


def _gemm_rates(shape: tuple[int, int, int], threads: int, repeats: int, d: Path) -> dict[str, float]:
    """GFLOP/s of one (M, K) x (K, N) product in torch fp32, ONNX Runtime fp32 and ONNX Runtime int8, interleaved."""
    import onnxruntime
    import torch

    m, k, n = shape
    rng = np.random.default_rng(SEED)
    a = rng.standard_normal((m, k), dtype=np.float32)
    w = (rng.standard_normal((k, n), dtype=np.float32) * 0.05).astype(np.float32)
    fp32, int8 = _matmul_graphs(a, w, d)
    arms: dict[str, Callable[[], object]] = {}
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


@dataclass
class GemmResult:
    """Large GEMM rates (the JSON object ``limit.gemm``): each engine's best GFLOP/s over the shapes, and where."""

    shapes: list[str]  # "MxKxN"
    threads: int
    per_shape: dict[str, dict[str, float]]  # shape -> engine -> GFLOP/s
    torch_fp32_gflops: float
    torch_fp32_best_shape: str
    onnx_fp32_gflops: float
    onnx_fp32_best_shape: str
    onnx_int8_gflops: float
    onnx_int8_best_shape: str


def measure_gemm(
    threads: int,
    shapes: Sequence[tuple[int, int, int]] = GEMM_SHAPES,
    repeats: int = 5,
    work_dir: Path | None = None,
) -> GemmResult:
    """Large GEMM rates: torch fp32, ONNX Runtime fp32 MatMul and its int8 (dynamically quantised) MatMul.

    These are the practical limits each stage is compared with. Each engine's limit is its best rate over
    ``shapes`` (which shape runs best depends on the kernel's blocking, the caches and, for int8, the cost of
    quantising the activations); a stage can still come out a little above it, since a whole model keeps weights
    and activations hot in ways a single product does not.
    """
    d = Path(tempfile.mkdtemp(prefix="pmllm-gemm-")) if work_dir is None else Path(work_dir)
    d.mkdir(parents=True, exist_ok=True)
    try:
        per_shape = {"x".join(map(str, sh)): _gemm_rates(sh, threads, repeats, d) for sh in shapes}
    finally:
        if work_dir is None:
            shutil.rmtree(d, ignore_errors=True)

    def best(engine: str) -> str:
        return max((r[engine], sh) for sh, r in per_shape.items())[1]

    tb, fb, ib = best("torch_fp32"), best("onnx_fp32"), best("onnx_int8")
    return GemmResult(
        shapes=list(per_shape),
        threads=threads,
        per_shape={k: {e: round(v, 1) for e, v in r.items()} for k, r in per_shape.items()},
        torch_fp32_gflops=round(per_shape[tb]["torch_fp32"], 1),
        torch_fp32_best_shape=tb,
        onnx_fp32_gflops=round(per_shape[fb]["onnx_fp32"], 1),
        onnx_fp32_best_shape=fb,
        onnx_int8_gflops=round(per_shape[ib]["onnx_int8"], 1),
        onnx_int8_best_shape=ib,
    )
