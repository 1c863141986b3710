"""Shared fixtures. The default run is CPU-only and offline: no weights, no network, no GPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Never reach a hub from tests, and never read a developer's real caches.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present in this checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(REPO / "pmllm_batch" / "assets" / "demo" / "lm"))


@pytest.fixture(scope="session")
def example_photos() -> list[Path]:
    photos = sorted((REPO / "examples" / "photos").glob("*.jpg"))
    if not photos:
        pytest.skip("examples/photos is empty")
    return photos
