#!/usr/bin/env python3
"""Check an exported vision graph against eager torch, on random pixels and on real photos, at batch 1 and N.

    python export/verify_parity.py --preset demo --checkpoint none
    python export/verify_parity.py --onnx-dir artefacts/demo-vision --preset demo
    python export/verify_parity.py --open-clip ViT-B-32 --bench        # random-weight tower, no download

For each input set and batch size it prints, per graph variant, the max absolute difference to torch and
the mean/min cosine over features. fp32 must be within ``--atol``; int8 must keep mean cosine
``>= --min-cos``. Exits 1 when a check fails. ``--bench`` adds images/s for torch, ONNX fp32 and ONNX int8.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pmllm_batch.log import setup_logging  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PHOTO_DIRS = (REPO / "examples" / "photos", REPO.parent / "shared" / "data" / "exif-samples" / "jpg")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default="demo", help="model preset whose torch tower is the reference")
    src.add_argument("--open-clip", metavar="NAME", help="a random-weight open_clip tower instead (e.g. ViT-B-32)")
    p.add_argument("--checkpoint", default=None, help="adapter folder, 'none', or omit for the preset's default")
    p.add_argument("--onnx-dir", type=Path, help="artefact folder to check (default: export into a temp folder)")
    p.add_argument("--batch", type=int, default=8, help="the batch size N checked besides 1")
    p.add_argument("--photos", type=Path, help="folder of real photos (default examples/photos, else shared samples)")
    p.add_argument("--atol", type=float, default=1e-4, help="max |fp32 onnx - torch| allowed")
    p.add_argument("--min-cos", type=float, default=0.99, help="min mean token cosine of int8 vs fp32 torch")
    p.add_argument("--bench", action="store_true", help="also measure images/s (torch, onnx fp32, onnx int8)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch and onnxruntime (0 = default)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per backend with --bench")
    p.add_argument("--offline", action="store_true", help="never touch the network for weights")
    return p.parse_args(argv)


def load_photos(folder: Path | None, n: int) -> list[Any]:
    from PIL import Image, ImageOps

    folders = [folder] if folder else [d for d in DEFAULT_PHOTO_DIRS if d.is_dir()]
    paths: list[Path] = []
    for d in folders:
        paths = sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if paths:
            break
    images = []
    for path in paths:
        try:
            with Image.open(path) as im:
                images.append(ImageOps.exif_transpose(im).convert("RGB"))
        except OSError:
            continue  # broken samples are the decoder's business, not this check's
        if len(images) >= n:
            break
    return images


def build_reference(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """(encoder, preprocess cfg, meta) for the torch reference."""
    import torch

    if args.open_clip:
        import open_clip

        from pmllm_batch.model.vision import VisionEncoder, VisionTower
        from pmllm_batch.runtime.preprocess import preprocess_cfg_from_open_clip

        torch.manual_seed(0)
        clip = open_clip.create_model(args.open_clip, pretrained=None)
        tower = VisionTower(clip.visual)
        encoder = VisionEncoder(tower).eval()
        return encoder, preprocess_cfg_from_open_clip(clip.visual), {"open_clip": args.open_clip, "random": True}
    from pmllm_batch.model.factory import create_model

    model = create_model(args.preset, args.checkpoint, offline=args.offline, device="cpu")
    return model.vision_encoder().eval(), model.preprocess, {"preset": args.preset}


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-feature cosine. Args: a, b (B, N, D). Returns: (B, N)."""
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def bench(fn: Any, x: np.ndarray, repeats: int) -> tuple[float, float]:
    """(best, median) images/s of ``fn(x)`` after one warm-up run."""
    fn(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return x.shape[0] / min(times), x.shape[0] / statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(0)
    import torch

    from pmllm_batch.runtime.onnx_export import export_vision_onnx, meta_num_features, read_meta
    from pmllm_batch.runtime.preprocess import preprocess_batch
    from pmllm_batch.runtime.vision_runner import OnnxVisionRunner

    if args.threads:
        torch.set_num_threads(args.threads)
    encoder, pre, info = build_reference(args)
    with tempfile.TemporaryDirectory(prefix="pmllm-parity-") as tmp:
        onnx_dir = args.onnx_dir
        if onnx_dir is None:
            start = time.perf_counter()
            onnx_dir = Path(tmp) / "vision"
            export_vision_onnx(encoder, pre, onnx_dir, meta=info)
            print(f"exported to a temp folder in {time.perf_counter() - start:.1f}s")
        meta = read_meta(onnx_dir)
        print(
            f"graph: exporter {meta.get('exporter')}, opset {meta.get('opset')}, features {meta_num_features(meta)} x "
            f"{meta['dim']}, image {meta['image_size']} px, ids {meta['graph_ids']}"
        )
        variants = [v for v in ("fp32", "int8") if v in meta["graph_ids"]]
        runners = {
            v: OnnxVisionRunner(
                onnx_dir,
                v,
                providers=["CPUExecutionProvider"],
                intra_op_threads=args.threads,
                max_batch=max(args.batch, 1),
            )
            for v in variants
        }

        def torch_encode(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return encoder(torch.from_numpy(x)).numpy()

        s = pre.image_size
        rng = np.random.default_rng(0)
        inputs = {"random": rng.standard_normal((args.batch, 3, s, s), dtype=np.float32)}
        photos = load_photos(args.photos, args.batch)
        if photos:
            x = preprocess_batch(photos, pre)
            inputs["photos"] = x[np.arange(args.batch) % len(x)]  # cycle when there are fewer photos than N
        else:
            print("no real photos found; checking random inputs only")
        ok = True
        print(f"{'input':8s} {'batch':>5s} {'graph':5s} {'max|diff|':>10s} {'cos mean':>9s} {'cos min':>9s}  check")
        for name, x in inputs.items():
            for b in sorted({1, args.batch}):
                ref = torch_encode(x[:b])
                for v in variants:
                    out = runners[v].encode(x[:b])
                    diff = float(np.abs(out - ref).max())
                    cos = cosine(out, ref)
                    if v == "fp32":
                        passed, rule = diff <= args.atol, f"atol {args.atol:g}"
                    else:
                        passed, rule = float(cos.mean()) >= args.min_cos, f"cos >= {args.min_cos:g}"
                    ok &= passed
                    print(
                        f"{name:8s} {b:5d} {v:5s} {diff:10.3g} {cos.mean():9.6f} {cos.min():9.6f}  "
                        f"{'ok' if passed else 'FAIL'} ({rule})"
                    )
        if args.bench:
            x = inputs.get("photos", inputs["random"])
            print(
                f"images/s at batch {args.batch} ({args.threads or 'default'} threads; best / median of "
                f"{args.repeats}):"
            )
            rates = {"torch": bench(torch_encode, x, args.repeats)}
            for v in variants:
                rates[f"onnx {v}"] = bench(runners[v].encode, x, args.repeats)
            for k, (best, med) in rates.items():
                print(f"  {k:10s} {best:8.2f} / {med:8.2f}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
