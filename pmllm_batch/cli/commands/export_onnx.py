"""``pmllm-batch export-onnx``: write the vision tower (features before the projector) as ONNX (fp32 and int8)."""

from __future__ import annotations

import argparse
import json

from pmllm_batch.config import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export-onnx",
        help="export the vision tower to ONNX (vision.onnx, vision.int8.onnx, preprocess_cfg.json)",
        description="Export CLIP ViT + projector of a preset (and adapter) as an ONNX graph with a dynamic batch "
        "axis (input 'pixel_values', output 'visual_tokens'), its int8-quantised variant and the preprocessing JSON.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--checkpoint", help="adapter folder (default: the preset's; 'none' = untrained)")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 variant")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pmllm_batch.model.checkpoint import vision_fingerprint
    from pmllm_batch.model.factory import create_model
    from pmllm_batch.runtime.onnx_export import export_for_model

    model = create_model(settings.model.preset, args.checkpoint or settings.model.checkpoint or None,
                         offline=settings.model.offline, device="cpu")
    paths = export_for_model(model, args.out, fingerprint=vision_fingerprint(model), int8=not args.no_int8)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0
