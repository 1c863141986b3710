"""Section 2: vision, torch eager against ONNX fp32 and int8 on real photos (images/s and visual-token cosine)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .timing import interleaved, stats


def token_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching tokens. Args: a, b (B, N, D). Returns: (B, N)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(-1)
    den = np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1)
    return num / np.maximum(den, 1e-30)


def measure_vision(
    model: Any,
    onnx_dir: Path,
    pixels: np.ndarray,
    *,
    fingerprint: str,
    batch: int,
    threads: int,
    repeats: int = 5,
    sweep: Sequence[int] = (),
) -> dict[str, Any]:
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
    from pmllm_batch.runtime.vision_runner import OnnxVisionRunner, TorchVisionRunner

    cpu = ["CPUExecutionProvider"]
    batches = sorted({batch, *sweep})
    big = batches[-1]
    runners: dict[str, Any] = {
        "torch": TorchVisionRunner(model, fingerprint, max_batch=big),
        "onnx_fp32": OnnxVisionRunner(onnx_dir, "fp32", providers=cpu, intra_op_threads=threads, max_batch=big),
        "onnx_int8": OnnxVisionRunner(onnx_dir, "int8", providers=cpu, intra_op_threads=threads, max_batch=big),
    }
    inputs = {b: np.ascontiguousarray(pixels[:b]) for b in batches}
    outputs: dict[str, np.ndarray] = {}

    def arm(runtime: str, b: int) -> Callable[[], None]:
        def call() -> None:
            outputs[f"{runtime}@{b}"] = runners[runtime].encode(inputs[b])

        return call

    arms = {f"{rt}@{b}": arm(rt, b) for b in batches for rt in ("torch", "onnx_int8")}
    arms[f"onnx_fp32@{batch}"] = arm("onnx_fp32", batch)
    times = interleaved(arms, repeats)
    rate = {k: int(k.split("@")[1]) / statistics.median(ts) for k, ts in times.items()}
    out: dict[str, Any] = {"batch": batch, "threads": threads, "images": batch, "batches": batches}
    for rt in runners:
        out[rt] = {**stats(times[f"{rt}@{batch}"]), "images_per_s": rate[f"{rt}@{batch}"]}
    # fidelity on the main batch of real photos (the outputs of the last timed call of each arm)
    ref = outputs[f"torch@{batch}"]
    for rt in ("onnx_fp32", "onnx_int8"):
        got = outputs[f"{rt}@{batch}"]
        cos = token_cosine(got, ref)
        out[rt]["cosine_mean"] = float(cos.mean())
        out[rt]["cosine_min_image"] = float(cos.mean(axis=1).min())
        out[rt]["cosine_min_token"] = float(cos.min())
        out[rt]["max_abs_diff"] = float(np.abs(got - ref).max())
    out["batch_sweep"] = [
        {
            "batch": b,
            "torch_images_per_s": rate[f"torch@{b}"],
            "onnx_int8_images_per_s": rate[f"onnx_int8@{b}"],
            "int8_speedup": rate[f"onnx_int8@{b}"] / rate[f"torch@{b}"],
        }
        for b in batches
    ]
    best = {rt: max((rate[f"{rt}@{b}"], b) for b in batches)[1] for rt in ("torch", "onnx_int8")}
    out["best_batch"] = best
    out["int8_vision_speedup"] = rate[f"onnx_int8@{best['onnx_int8']}"] / rate[f"torch@{best['torch']}"]
    out["int8_vision_speedup_same_batch"] = out["onnx_int8"]["images_per_s"] / out["torch"]["images_per_s"]
    out["fp32_vision_speedup"] = out["onnx_fp32"]["images_per_s"] / out["torch"]["images_per_s"]
    out["int8_vision_cosine"] = out["onnx_int8"]["cosine_mean"]
    out["graph_ids"] = {k: r.graph_id for k, r in runners.items()}
    return out
