#!/usr/bin/env python3
"""Throughput of each P-MLLM stage at the paper's shapes, with random weights (no downloads).

Builds open_clip ``ViT-L-14-336`` (random weights) + ``mlp2x_gelu`` projector + a Llama-3-8B-shaped LLM
(hidden 4096, 32 heads, 8 KV heads, MLP 14336, vocab 128256; ``--layers`` decoder blocks instead of 32)
wrapped by :class:`pmllm_batch.model.pmllm.PMLLM` with selective fusion on layers 0, 1, 2 (those that
exist), and times:

* vision tower: torch eager (and ONNX fp32 / int8 with ``--onnx`` / ``--int8``) — images/s, features/s;
* projector (tower features → tokens) — images/s;
* persona prefix, once per profile — prefix tokens/s;
* cached suffix scoring (prefix KV cache reused) — (image, profile) pairs/s, suffix tokens/s;
* full-prompt scoring, the naive way, for comparison — pairs/s, prompt tokens/s;

plus peak memory. The tokenizer is the shipped demo one (offline); the vocabulary is padded to Llama-3's.
Random weights make scores meaningless but the work per token is the real one.

    python export/paper_shapes.py --layers 2 --batch 2                     # this CPU, a few minutes
    python export/paper_shapes.py --device cuda --dtype bfloat16 --layers 32 --batch 16 --onnx --int8
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pmllm_batch.bench.cost import LLAMA3_8B  # noqa: E402  Llama-3-8B's shapes, also what the cost model counts

REPO = Path(__file__).resolve().parents[1]
DEMO_LM = REPO / "pmllm_batch" / "assets" / "demo" / "lm"
PAPER_FUSION_LAYERS = (0, 1, 2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4, help="decoder layers (Llama-3-8B has 32); default 4")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="LLM dtype; auto = bfloat16 on cuda, float32 on cpu (the vision tower stays float32)",
    )
    p.add_argument("--batch", type=int, default=2, help="images per batch (= pairs per scoring call)")
    p.add_argument("--onnx", action="store_true", help="also export the vision encoder and time ONNX fp32")
    p.add_argument("--int8", action="store_true", help="with --onnx: also time the int8 graph")
    p.add_argument("--repeats", type=int, default=0, help="timed runs per stage (default: 1 on cpu, 5 on cuda)")
    p.add_argument("--threads", type=int, default=0, help="torch / onnxruntime CPU threads (0 = default)")
    return p.parse_args(argv)


class Clock:
    """Times a stage: one warm-up, then ``repeats`` runs; tracks peak memory per stage."""

    def __init__(self, device: Any, repeats: int) -> None:
        self.device, self.repeats = device, repeats

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def run(self, fn: Callable[[], Any]) -> tuple[float, Any, float]:
        """Returns (median seconds, last result, peak memory in GB during the stage)."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        out = fn()
        self._sync()
        times = []
        for _ in range(self.repeats):
            start = time.perf_counter()
            out = fn()
            self._sync()
            times.append(time.perf_counter() - start)
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 1e9
        else:  # process-wide peak RSS so far (Linux reports KiB)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        return statistics.median(times), out, peak


def build(args: argparse.Namespace, device: Any, dtype: Any) -> Any:
    import open_clip
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pmllm_batch.model.config import ModelCfg
    from pmllm_batch.model.pmllm import PMLLM
    from pmllm_batch.model.presets import get_preset
    from pmllm_batch.model.vision import VisionTower
    from pmllm_batch.runtime.preprocess import preprocess_cfg_from_open_clip

    torch.manual_seed(0)
    start = time.perf_counter()
    clip = open_clip.create_model("ViT-L-14-336", pretrained=None)  # random weights: nothing is downloaded
    visual = clip.visual
    del clip  # the text tower is never used
    pre = preprocess_cfg_from_open_clip(visual)
    tower = VisionTower(visual, select_layer=-2, select_feature="patch").to(device)
    tok = AutoTokenizer.from_pretrained(str(DEMO_LM))
    lcfg = LlamaConfig(
        **{**LLAMA3_8B, "vocab_size": max(LLAMA3_8B["vocab_size"], len(tok))},
        num_hidden_layers=args.layers,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.device(device):
        lm = LlamaForCausalLM._from_config(lcfg, dtype=dtype).eval()
    cfg_dict = get_preset("paper")["model"]
    cfg_dict["lm"]["name_or_path"] = f"random Llama-3-8B shapes, {args.layers} layers"
    cfg_dict["fusion"]["layer_ids"] = [i for i in PAPER_FUSION_LAYERS if i < args.layers]
    cfg = ModelCfg.from_dict(cfg_dict)
    model = PMLLM(cfg, tower, lm, tok, pre).eval()
    # Fusion blocks are created in float32; a bfloat16/float16 LLM needs them in its dtype.
    model.fused.fusion_blocks.to(dtype)
    n_lm = sum(p.numel() for p in lm.parameters())  # the fusion blocks are owned by model.fused, not the LLM
    n_vis = sum(p.numel() for p in tower.parameters())
    n_ad = sum(p.numel() for p in model.trainable_parameters())
    print(
        f"built in {time.perf_counter() - start:.1f}s: vision {n_vis / 1e6:.0f}M, LLM {n_lm / 1e9:.2f}B "
        f"({args.layers} layers, {dtype}), adapter {n_ad / 1e6:.0f}M (fusion on layers {cfg.fusion.layer_ids})"
    )
    return model


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from pmllm_batch.log import setup_logging
    from pmllm_batch.profiles import Profile

    setup_logging(0)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    repeats = args.repeats or (5 if device.type == "cuda" else 1)
    print(
        f"torch {torch.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else f", {torch.get_num_threads()} threads")
        + f", batch {args.batch}, {repeats} timed run(s) per stage after one warm-up"
    )
    model = build(args, device, dtype)
    clock = Clock(device, repeats)
    s = model.preprocess.image_size
    pixels = torch.randn(args.batch, 3, s, s, generator=torch.Generator().manual_seed(0))
    rows: list[tuple[str, str, str, float, float]] = []

    encoder = model.vision_encoder()
    with torch.inference_mode():
        t, feats, peak = clock.run(lambda: encoder(pixels.to(device)))
        b, n, d = feats.shape
        rows.append(("vision torch", f"{b / t:.2f} img/s", f"{b * n / t:.0f} features/s", t, peak))
        t, visual, peak = clock.run(lambda: model.project(feats))
        rows.append(("projector", f"{b / t:.2f} img/s", f"{b * n / t:.0f} tokens/s", t, peak))

    if args.onnx:
        from pmllm_batch.runtime.onnx_export import export_vision_onnx
        from pmllm_batch.runtime.vision_runner import OnnxVisionRunner

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else None
        with tempfile.TemporaryDirectory(prefix="pmllm-paper-shapes-") as tmp:
            start = time.perf_counter()
            export_vision_onnx(encoder, model.preprocess, Path(tmp) / "v", int8=args.int8)
            print(f"ONNX export (+ check{' + int8' if args.int8 else ''}) took {time.perf_counter() - start:.1f}s")
            x = pixels.numpy()
            for variant in ("fp32", "int8") if args.int8 else ("fp32",):
                runner = OnnxVisionRunner(
                    Path(tmp) / "v", variant, providers=providers, intra_op_threads=args.threads, max_batch=args.batch
                )
                t, out, peak = clock.run(lambda r=runner: r.encode(x))
                ref = feats.float().cpu().numpy()  # the graph is the tower only: compare with its features
                cos = (out * ref).sum(-1) / (np.linalg.norm(out, axis=-1) * np.linalg.norm(ref, axis=-1))
                rows.append((f"vision onnx {variant}", f"{b / t:.2f} img/s", f"{b * n / t:.0f} features/s", t, peak))
                print(
                    f"onnx {variant} on {runner.providers[0]}: max|onnx - torch| {np.abs(out - ref).max():.3g}, "
                    f"feature cosine {cos.mean():.5f}"
                )
                del runner

    profile = Profile(
        name="alice",
        age="22-25",
        gender="female",
        photography_experience="expert",
        big_five={"openness": 9, "extraversion": 2},
        art_interest={"VAIAK1": 5},
        notes="likes street photography",
    )
    with torch.inference_mode():
        t, prefix, peak = clock.run(lambda: model.encode_prefix(profile))
        n_pre, n_suf = len(prefix.prompt.prefix_ids), len(prefix.prompt.suffix_ids)
        rows.append(("persona prefix", f"{1 / t:.2f} profiles/s", f"{n_pre / t:.0f} prefix tok/s", t, peak))
        t_cached, cached, peak = clock.run(lambda: model.score_cached(prefix, visual))
        rows.append(
            (
                "cached suffix scoring",
                f"{b / t_cached:.2f} pairs/s",
                f"{b * n_suf / t_cached:.0f} suffix tok/s",
                t_cached,
                peak,
            )
        )
        t_full, full, peak = clock.run(lambda: model.score_full(prefix.prompt, visual))
        rows.append(
            (
                "full-prompt scoring",
                f"{b / t_full:.2f} pairs/s",
                f"{b * (n_pre + n_suf) / t_full:.0f} prompt tok/s",
                t_full,
                peak,
            )
        )
    diff = (cached.scores.float() - full.scores.float()).abs().max().item()

    print(f"\nprompt: {n_pre} prefix + {n_suf} suffix tokens; {n} features x {d} per image, projected to "
          f"{visual.shape[1]} tokens x {visual.shape[2]}")
    print(f"{'stage':24s} {'throughput':>18s} {'tokens':>26s} {'s/call':>9s} {'peak GB':>8s}")
    for name, rate, toks, t, peak in rows:
        print(f"{name:24s} {rate:>18s} {toks:>26s} {t:9.3f} {peak:8.2f}")
    print(
        f"cached vs full: {t_full / t_cached:.1f}x faster per image batch once the prefix is cached; "
        f"max |score difference| {diff:.2g}"
    )
    print(
        "peak GB: "
        + (
            "torch.cuda.max_memory_allocated per stage"
            if device.type == "cuda"
            else "process peak RSS so far (includes everything built before)"
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
