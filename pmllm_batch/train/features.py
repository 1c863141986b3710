"""Frozen-tower image features for training and evaluation, computed once per dataset (the tower never trains)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from pmllm_batch.model.pmllm import PMLLM
from pmllm_batch.train.datasets import RatingDataset


def image_features(
    model: PMLLM, dataset: RatingDataset, batch: int = 64, progress: bool = False
) -> tuple[dict[Path, int], torch.Tensor]:
    """Frozen-tower features (n_images, N, D_vis) for every image, computed once (the tower never trains)."""
    from pmllm_batch.runtime.preprocess import preprocess_image
    from pmllm_batch.scan.decode import decode_photo

    if model.tower is None:
        raise RuntimeError("training and evaluation need the torch vision tower (create_model(with_vision=True))")
    tower = model.tower
    paths = sorted({s.image_path for s in dataset.samples})
    index = {p: i for i, p in enumerate(paths)}
    feats = []
    it: Iterable[int] = range(0, len(paths), batch)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="vision features", unit="batch", leave=False)
    for i in it:
        px = np.stack([preprocess_image(decode_photo(p).image, model.preprocess) for p in paths[i : i + batch]])
        with torch.no_grad():
            feats.append(tower(torch.from_numpy(px).to(model.device)).to("cpu", torch.float16))
    return index, torch.cat(feats) if feats else torch.empty(0)
