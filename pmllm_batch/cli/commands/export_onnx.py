"""``pmllm-batch export-onnx``: write the vision tower (features before the projector) as ONNX (fp32 and int8)."""

from __future__ import annotations

import argparse
import json

from pmllm_batch.config import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export-onnx",
        help="export the vision tower to ONNX (vision.onnx, vision.int8.onnx, preprocess_cfg.json)",
        description="Export the vision tower of a preset (CLIP ViT features, before the projector) as an ONNX graph "
        "with a dynamic batch axis (input 'pixel_values', output 'features'), its int8-quantised variant and the "
        "preprocessing JSON. [model] vision_checkpoint (local tower weights) is honoured; the adapter does not "
        "change the graph.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--checkpoint", help="adapter folder (default: the preset's; 'none' = untrained)")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 variant")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pmllm_batch.model.checkpoint import vision_fingerprint
    from pmllm_batch.model.spec import ModelSpec
    from pmllm_batch.runtime.onnx_export import export_tower

    # traced on CPU; the LLM's int8 ([score] quantize) changes nothing in the vision graph, so it is not applied
    spec = ModelSpec.from_settings(settings, checkpoint=args.checkpoint, device="cpu").with_quantize("none")
    model = spec.create()
    paths = export_tower(model.exportable_tower(), args.out, fingerprint=vision_fingerprint(model),
                         int8=not args.no_int8)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0
