#!/usr/bin/env python3
"""Export a preset's vision tower (CLIP ViT features, before the projector) to an ONNX artefact folder.

    python export/export_vision.py --preset demo --out artefacts/demo-vision
    python export/export_vision.py --preset paper --checkpoint runs/paper/adapter --out artefacts/paper-vision

Writes ``vision.onnx`` (fp32), ``vision.int8.onnx`` (unless ``--no-int8``), ``preprocess_cfg.json`` and
``vision_meta.json``. A thin wrapper over :func:`pmllm_batch.runtime.onnx_export.export_tower`; the
scorer does the same on first use into its cache, so running this is only needed to ship artefacts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# Run from a checkout without installing: the checkout's package wins.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pmllm_batch.errors import UserError  # noqa: E402
from pmllm_batch.log import setup_logging  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="demo", help="model preset (demo, cpu, paper, …); default demo")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="adapter folder, 'none' for an untrained adapter, or omit for the preset's default adapter",
    )
    p.add_argument("--out", required=True, type=Path, help="artefact folder to write (replaced as a whole)")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 (dynamically quantised) graph")
    p.add_argument("--offline", action="store_true", help="never touch the network for weights")
    p.add_argument("-v", "--verbose", action="count", default=1, help="more logging")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    from pmllm_batch.model.checkpoint import vision_fingerprint
    from pmllm_batch.model.factory import create_model
    from pmllm_batch.runtime.onnx_export import export_tower, meta_fingerprint, meta_num_features

    try:
        model = create_model(args.preset, args.checkpoint, offline=args.offline, device="cpu")
        start = time.perf_counter()
        paths = export_tower(model.exportable_tower(), args.out, fingerprint=vision_fingerprint(model),
                             int8=not args.no_int8)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    meta = json.loads(paths["meta"].read_text())
    print(
        f"exported in {time.perf_counter() - start:.1f}s with the {meta['exporter']} exporter (opset {meta['opset']})"
    )
    for key, path in paths.items():
        size = path.stat().st_size / 1e6
        graph = meta["graph_ids"].get(key, "")
        print(f"  {key:10s} {path}  {size:8.2f} MB  {graph}")
    shape = f"{meta_num_features(meta)} x {meta['dim']}"
    print(f"  features {shape}, image {meta['image_size']} px, vision {meta_fingerprint(meta)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
