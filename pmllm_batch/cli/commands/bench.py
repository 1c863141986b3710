"""``pmllm-batch bench``: measure the speed levers (prefix cache, ONNX int8 vision, caches) against the naive way."""

from __future__ import annotations

import argparse
import json
import sys

from pmllm_batch.config import Settings

from . import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure the speed levers against the naive way and write a report",
        description="Measure, side by side in one run: the persona prefix cache vs full-prompt recompute, ONNX "
        "int8/fp32 vision vs torch eager, incremental work (a new profile, new photos), end-to-end throughput, and "
        "each stage against this machine's large-GEMM rate. Prints a table (or JSON) and writes "
        "bench-<preset>.json and bench-<preset>.md into --out. The cpu preset uses random weights at its real shapes "
        "(nothing is downloaded). Exits 1 when an acceptance check fails.",
    )
    # dest differs from the global --preset, whose value a subparser default would otherwise overwrite
    parser.add_argument(
        "--preset",
        dest="bench_preset",
        choices=("demo", "cpu", "smol"),
        default=None,
        help="model to measure: demo (default) or cpu (random weights, cpu-preset shapes)",
    )
    parser.add_argument("--json", action="store_true", help="print every figure as JSON instead of the table")
    parser.add_argument(
        "--out", metavar="DIR", default="bench-out", help="folder for bench-<preset>.json and .md (default ./bench-out)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (a plumbing check)")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="intra-op threads for torch and ONNX Runtime (default: whichever of 1 … all CPUs runs the "
        "model's LLM stage fastest, found by a short probe)",
    )
    parser.add_argument(
        "--photos",
        metavar="DIR",
        default=None,
        help="folder of real photos to derive the bench images from (default: examples/photos)",
    )
    parser.add_argument(
        "--only",
        choices=("ray",),
        default=None,
        help="measure one section alone: ray (the Ray engine with 1 and 2 scoring actors against the local engine; "
        "writes bench-ray.json)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the bench. ``settings`` is not used for the measurements: a bench must not depend on a user's config."""
    from pmllm_batch.bench import format_table, run_bench

    preset = args.bench_preset or args.preset or "demo"
    quiet = bool(getattr(args, "quiet", False))

    def progress(message: str) -> None:
        if not quiet:
            print(f"bench: {message}", file=sys.stderr, flush=True)

    if getattr(args, "only", None) == "ray":
        from pmllm_batch.bench.ray import run_only

        return run_only(args.out, args.quick, photos=args.photos, as_json=args.json, progress=progress)
    result = run_bench(preset, args.out, args.quick, threads=args.threads, photos=args.photos, progress=progress)
    if args.json:
        sys.stdout.write(json.dumps(result.to_json(), indent=2, default=str) + "\n")
    else:
        sys.stdout.write(format_table(result) + "\n")
        reports = result.reports or {}
        sys.stdout.write(f"reports: {reports.get('markdown')}, {reports.get('json')}\n")
    # a check that ran and failed (not one that does not apply) makes the run fail, for scripts and CI
    return 1 if any(ok is False for ok in result.checks.values()) else 0
