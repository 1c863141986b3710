"""Section 2: vision, torch eager against ONNX fp32 and int8 on real photos (images/s and visual-token cosine)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .timing import TimingStats, interleaved, stats

if TYPE_CHECKING:
    from pmllm_batch.contracts import FeatureEncoder
    from pmllm_batch.model.pmllm import PMLLM


def token_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching tokens. Args: a, b (B, N, D). Returns: (B, N)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(-1)
    den = np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1)
    return num / np.maximum(den, 1e-30)


@dataclass
class RuntimeRate(TimingStats):
    """One runtime at the main batch: its timing and images/s."""

    images_per_s: float


@dataclass
class OnnxRate(RuntimeRate):
    """An ONNX graph at the main batch, and its visual tokens against torch's on the same photos."""

    cosine_mean: float
    cosine_min_image: float  # the worst photo's mean token cosine
    cosine_min_token: float
    max_abs_diff: float


@dataclass
class SweepRow:
    """torch eager and ONNX int8 at one batch size."""

    batch: int
    torch_images_per_s: float
    onnx_int8_images_per_s: float
    int8_speedup: float  # onnx_int8_images_per_s / torch_images_per_s


@dataclass
class BestBatch:
    """The batch at which each runtime ran fastest."""

    torch: int
    onnx_int8: int


@dataclass
class VisionResult:
    """Section 2's figures (the JSON object ``vision``)."""

    batch: int
    threads: int
    images: int
    batches: list[int]
    torch: RuntimeRate
    onnx_fp32: OnnxRate
    onnx_int8: OnnxRate
    batch_sweep: list[SweepRow]
    best_batch: BestBatch
    int8_vision_speedup: float  # int8 at its best batch over torch at its best batch
    int8_vision_speedup_same_batch: float
    fp32_vision_speedup: float
    int8_vision_cosine: float  # onnx_int8.cosine_mean
    graph_ids: dict[str, str]


def measure_vision(
    model: PMLLM,
    onnx_dir: Path,
    pixels: np.ndarray,
    *,
    fingerprint: str,
    batch: int,
    threads: int,
    repeats: int = 5,
    sweep: Sequence[int] = (),
) -> VisionResult:
    """images/s of torch eager, ONNX fp32 and ONNX int8 on real photos; visual-token cosine against torch.

    torch eager and ONNX int8 run at ``batch`` and every ``sweep`` size, ONNX fp32 at ``batch``; all of these
    arms are interleaved in one loop, so every figure comes from the same stretch of machine time. The headline
    compares each runtime at its best measured batch (a deployment tunes the batch for the runtime it uses; the
    two do not peak at the same one), the same-batch figure at ``batch`` is reported next to it.

    Args:
        model: a PMLLM with its torch vision tower.
        onnx_dir: the exported artefact folder of that model.
        pixels: (B_all, 3, S, S) preprocessed real photos; the first ``batch`` of them are also compared.
        fingerprint: the model's fingerprint (the torch runner's graph id is ``torch-<fingerprint>``).
        batch: the main batch size (the scorer's ``vision.batch_size``).
        threads: intra-op threads of the ONNX sessions (torch's are set process-wide).
        repeats: timed calls per arm.
        sweep: more batch sizes for torch and int8 (the batch-size effect).
    """
    batches = sorted({batch, *sweep})
    runners = _runners(model, onnx_dir, fingerprint, threads, batches[-1])
    inputs = {b: np.ascontiguousarray(pixels[:b]) for b in batches}
    outputs: dict[str, np.ndarray] = {}

    def arm(runtime: str, b: int) -> Callable[[], None]:
        def call() -> None:
            outputs[f"{runtime}@{b}"] = runners[runtime].encode(inputs[b])

        return call

    arms = {f"{rt}@{b}": arm(rt, b) for b in batches for rt in ("torch", "onnx_int8")}
    arms[f"onnx_fp32@{batch}"] = arm("onnx_fp32", batch)
    times = interleaved(arms, repeats)
    return _result(times, outputs, batch, batches, threads, {k: r.graph_id for k, r in runners.items()})


def _runners(model: PMLLM, onnx_dir: Path, fingerprint: str, threads: int, max_batch: int) -> dict[str, FeatureEncoder]:
    """The three runtimes: torch eager (the model's own tower), ONNX fp32 and ONNX int8 (``threads`` intra-op)."""
    from pmllm_batch.runtime.vision_runner import OnnxVisionRunner, TorchVisionRunner

    cpu = ["CPUExecutionProvider"]
    return {
        "torch": TorchVisionRunner(model.exportable_tower(), fingerprint, max_batch=max_batch),
        "onnx_fp32": OnnxVisionRunner(onnx_dir, "fp32", providers=cpu, intra_op_threads=threads, max_batch=max_batch),
        "onnx_int8": OnnxVisionRunner(onnx_dir, "int8", providers=cpu, intra_op_threads=threads, max_batch=max_batch),
    }


def _result(
    times: dict[str, list[float]],
    outputs: dict[str, np.ndarray],
    batch: int,
    batches: list[int],
    threads: int,
    graph_ids: dict[str, str],
) -> VisionResult:
    """The section's figures from the arms' timings (``runtime@batch``) and their last outputs."""
    rate = {k: int(k.split("@")[1]) / statistics.median(ts) for k, ts in times.items()}
    # fidelity on the main batch of real photos (the outputs of the last timed call of each arm)
    ref = outputs[f"torch@{batch}"]
    fp32 = _onnx_rate(times[f"onnx_fp32@{batch}"], rate[f"onnx_fp32@{batch}"], outputs[f"onnx_fp32@{batch}"], ref)
    int8 = _onnx_rate(times[f"onnx_int8@{batch}"], rate[f"onnx_int8@{batch}"], outputs[f"onnx_int8@{batch}"], ref)
    torch_rate = RuntimeRate(*stats(times[f"torch@{batch}"]).parts(), images_per_s=rate[f"torch@{batch}"])
    best = BestBatch(torch=_best_batch(rate, "torch", batches), onnx_int8=_best_batch(rate, "onnx_int8", batches))
    return VisionResult(
        batch=batch,
        threads=threads,
        images=batch,
        batches=batches,
        torch=torch_rate,
        onnx_fp32=fp32,
        onnx_int8=int8,
        batch_sweep=[_sweep_row(rate, b) for b in batches],
        best_batch=best,
        int8_vision_speedup=rate[f"onnx_int8@{best.onnx_int8}"] / rate[f"torch@{best.torch}"],
        int8_vision_speedup_same_batch=int8.images_per_s / torch_rate.images_per_s,
        fp32_vision_speedup=fp32.images_per_s / torch_rate.images_per_s,
        int8_vision_cosine=int8.cosine_mean,
        graph_ids=graph_ids,
    )


def _onnx_rate(times: list[float], images_per_s: float, got: np.ndarray, ref: np.ndarray) -> OnnxRate:
    """An ONNX arm's timing and rate, and its tokens' cosine and max abs difference against torch's."""
    cos = token_cosine(got, ref)
    return OnnxRate(
        *stats(times).parts(),
        images_per_s=images_per_s,
        cosine_mean=float(cos.mean()),
        cosine_min_image=float(cos.mean(axis=1).min()),
        cosine_min_token=float(cos.min()),
        max_abs_diff=float(np.abs(got - ref).max()),
    )


def _best_batch(rate: dict[str, float], runtime: str, batches: list[int]) -> int:
    """The batch at which ``runtime`` ran fastest (the larger one on a tie)."""
    return max((rate[f"{runtime}@{b}"], b) for b in batches)[1]


def _sweep_row(rate: dict[str, float], b: int) -> SweepRow:
    return SweepRow(
        batch=b,
        torch_images_per_s=rate[f"torch@{b}"],
        onnx_int8_images_per_s=rate[f"onnx_int8@{b}"],
        int8_speedup=rate[f"onnx_int8@{b}"] / rate[f"torch@{b}"],
    )
