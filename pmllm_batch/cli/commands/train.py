"""``pmllm-batch train``: train the adapter (projector + fusion) on PARA, LAPIS or the synthetic task."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Protocol

from pmllm_batch.config import Settings
from pmllm_batch.errors import UserError

from . import positive_int

DATASETS = ("para", "lapis", "synthetic")


class _ProgressBar(Protocol):
    """What is used of a ``tqdm`` bar (tqdm ships no types)."""

    def update(self, n: float = 1) -> object: ...

    def set_postfix(self, **kwargs: object) -> None: ...

    def close(self) -> None: ...


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the adapter on a dataset's training users",
        description="Train projector + selective-fusion weights (the LLM and vision tower stay frozen) on the "
        "training users of fold K; the test users of that fold are never seen. Checkpoints go to "
        "OUT/checkpoints/last (resumed automatically), the final adapter to OUT/adapter.",
    )
    p.add_argument("--dataset", choices=DATASETS, required=True,
                   help="dataset layout: para, lapis, or synthetic (rendered images with a known rating function)")
    p.add_argument("--root", required=True, help="dataset root (public layout; `synthetic` is made here if empty)")
    p.add_argument("--fold", type=positive_int, default=1, help="user fold (userset files or seeded split)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=positive_int, default=1000, help="optimizer steps (default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="(user, image) pairs per step (default %(default)s)")
    p.add_argument("--grad-accum", type=positive_int, default=1,
                   help="batches whose gradients are summed before each step (default %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--tasks", default="overall", help="comma list: overall, attributes (PARA)")
    p.add_argument("--captions", help="CSV image,caption: adds the image-description task")
    p.add_argument("--caption-weight", type=float, default=0.2,
                   help="weight of the image-description loss when the samples carry captions (the synthetic task "
                   "does); 0 trains on ratings only, several times faster with a real LLM (default %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=200,
                   help="steps between resumable checkpoints in OUT/checkpoints/last (default %(default)s)")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT has a checkpoint")
    p.add_argument("--init", help="adapter folder to start from (default: fresh, zero-initialised fusion)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = torch's default; tiny models such as the demo train fastest with 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    import torch

    from pmllm_batch.model.checkpoint import save_adapter
    from pmllm_batch.model.spec import ModelSpec
    from pmllm_batch.train.datasets import load_dataset
    from pmllm_batch.train.loop import TrainCfg, Trainer
    from pmllm_batch.train.synthetic import make_synthetic_dataset

    root = Path(args.root)
    if args.dataset == "synthetic" and not (root / "annotation").is_dir():
        make_synthetic_dataset(root, seed=args.seed)
    ds = load_dataset(args.dataset, root, fold=args.fold, split="train", seed=args.seed,
                      captions=Path(args.captions) if args.captions else None)
    if not ds.samples:
        raise UserError(f"no training samples found under {root} for fold {args.fold}.")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = set(tasks) - {"overall", "attributes"}
    if bad:
        raise UserError(f"unknown task(s) {', '.join(sorted(bad))}; choose overall and/or attributes.")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    # [model] preset, lm_path, vision_checkpoint, offline as every command reads them; a fresh adapter unless --init,
    # and the float LLM: int8 ([score] quantize) is for CPU inference, gradients need float weights
    model = ModelSpec.from_settings(settings, checkpoint=args.init or "none").with_quantize("none").create()
    cfg = TrainCfg(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                   seed=args.seed, tasks=tasks, checkpoint_every=args.checkpoint_every,
                   caption_weight=args.caption_weight)
    trainer = Trainer(model, ds, args.out, cfg)
    if not args.no_resume and trainer.resume():
        print(f"resumed at step {trainer.step}", file=sys.stderr)
    bar: _ProgressBar | None = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=trainer.step, desc="train", unit="step")
    def show(step: int, loss: float) -> None:
        assert bar is not None  # show is passed on only with a bar
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")

    history = trainer.train(progress=show if bar else None)
    if bar:
        bar.close()
    adapter = save_adapter(model, Path(args.out) / "adapter", extra={
        "trained_on": {"dataset": args.dataset, "fold": args.fold, "steps": cfg.steps, "seed": args.seed,
                       "n_samples": len(ds.samples), "n_users": len(ds.profiles)}})
    summary = {"adapter": str(adapter), "steps": trainer.step, "final_loss": history[-1]["loss"] if history else None,
               "n_samples": len(ds.samples), "n_users": len(ds.profiles),
               "skipped_missing_images": ds.skipped_missing_images}
    print(json.dumps(summary))
    return 0
