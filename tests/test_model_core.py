"""Model core invariants (issue 2): zero-init identity, trainable set, prefix cache parity, masking,
adapter round trip, conditioning hygiene, readout, prompts, decoder-layer lookup, offline errors."""

from __future__ import annotations

import pytest
import torch

from pmllm_batch.errors import ConfigError, ModelLoadError
from pmllm_batch.model.config import ModelCfg
from pmllm_batch.model.fused_lm import DECODER_LAYERS_PATHS, FusedLM, decoder_layers
from pmllm_batch.model.pmllm import PMLLM
from pmllm_batch.model.prompts import IMAGE_WORD, build_prompt, render_persona
from pmllm_batch.model.readout import expected_score, soft_targets
from pmllm_batch.profiles import Profile
from pmllm_batch.runtime.preprocess import PreprocessCfg

D_VIS = 32
PROFILE = Profile(
    name="alice", age="22-25", gender="female", photography_experience="expert",
    big_five={"openness": 9, "extraversion": 2}, art_interest={"VAIAK1": 5}, notes="likes street photography",
)
OTHER = Profile(name="bob", age=61)


def _tiny_lm(kind: str, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.1)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**common)).eval()
    return Qwen2ForCausalLM(Qwen2Config(**common)).eval()


def _model(kind: str, tok) -> PMLLM:
    cfg = ModelCfg.from_dict({"name": f"tiny-{kind}", "lm": {"name_or_path": f"tiny-{kind}"}})
    pre = PreprocessCfg(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return PMLLM(cfg, None, _tiny_lm(kind, len(tok)), tok, pre, d_vis=D_VIS).eval()


def _perturb(model: PMLLM, std: float = 0.3) -> None:
    torch.manual_seed(1)
    for block in model.fused.fusion_blocks.values():
        torch.nn.init.normal_(block.to_out.weight, std=std)


def _visual(model: PMLLM, b: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return model.projector(torch.randn(b, 9, D_VIS, generator=g))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_zero_initialised_fusion_leaves_the_frozen_llm_unchanged(kind, demo_tokenizer):
    model = _model(kind, demo_tokenizer)
    plain = _tiny_lm(kind, len(demo_tokenizer))  # same seed -> same weights, never wrapped
    prompt = model.prompt(PROFILE)
    ids = torch.tensor([prompt.ids])
    with torch.no_grad():
        ref = plain(input_ids=ids).logits[0, -1]
        mask = torch.zeros(1, len(prompt.ids))
        mask[:, prompt.image_start :] = 1
        with model.fused.conditioned(_visual(model, 1), mask):
            got = model.fused.lm(input_ids=ids).logits[0, -1]
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_only_projector_and_fusion_parameters_train(demo_tokenizer):
    model = _model("llama", demo_tokenizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing trains"
    assert all(n.startswith(("projector.", "fused.fusion_blocks.")) for n in trainable), trainable
    expected = {f"fused.fusion_blocks.{n}" for n, _ in model.fused.fusion_blocks.named_parameters()}
    expected |= {f"projector.{n}" for n, _ in model.projector.named_parameters()}
    assert trainable == expected
    # one owner per module: no fusion weights duplicated under the LLM's layers
    assert not any(".fusion." in n for n, _ in model.fused.lm.named_parameters())


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("batch", [1, 8])
def test_prefix_cached_scores_equal_full_prompt_scores(kind, batch, demo_tokenizer):
    model = _model(kind, demo_tokenizer)
    _perturb(model)
    with torch.no_grad():
        vis = _visual(model, batch)
        full = model.score_full(model.prompt(PROFILE), vis)
        cached = model.score_cached(model.encode_prefix(PROFILE), vis)
    assert full.scores.shape == (batch,)
    torch.testing.assert_close(cached.scores, full.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(cached.probs, full.probs, atol=1e-4, rtol=0)


def test_left_padded_mixed_profile_batch_equals_single_rows(demo_tokenizer):
    model = _model("llama", demo_tokenizer)
    _perturb(model)
    with torch.no_grad():
        vis = _visual(model, 2)
        mixed = model.score_full([model.prompt(PROFILE), model.prompt(OTHER)], vis)
        a = model.score_full(model.prompt(PROFILE), vis[:1])
        b = model.score_full(model.prompt(OTHER), vis[1:])
    torch.testing.assert_close(mixed.scores, torch.cat([a.scores, b.scores]), atol=1e-5, rtol=0)


def test_cached_prefixes_of_different_profiles_in_one_batch_equal_full_prompts(demo_tokenizer):
    model = _model("llama", demo_tokenizer)
    _perturb(model)
    vis = _visual(model, 3)
    prefixes = [model.encode_prefix(p) for p in (PROFILE, OTHER, PROFILE)]
    with torch.no_grad():
        _, out = model.score_logits_cached(prefixes, vis)
        ref = model.score_full([model.prompt(PROFILE), model.prompt(OTHER), model.prompt(PROFILE)], vis)
    torch.testing.assert_close(out.scores, ref.scores, atol=1e-4, rtol=0)
    # gradients reach the projector and fusion blocks through the suffix
    feats = torch.randn(3, 9, D_VIS)
    logits, _ = model.score_logits_cached(prefixes, model.projector(feats))
    logits.sum().backward()
    assert all(p.grad is not None for p in model.trainable_parameters())


def test_nonzero_fusion_changes_outputs_but_not_hidden_states_before_the_image_tag(demo_tokenizer):
    model = _model("llama", demo_tokenizer)
    prompt = model.prompt(PROFILE)
    ids = torch.tensor([prompt.ids])
    mask = torch.zeros(1, len(prompt.ids))
    mask[:, prompt.image_start :] = 1

    def run():
        with torch.no_grad(), model.fused.conditioned(_visual(model, 1), mask):
            out = model.fused.lm(input_ids=ids, output_hidden_states=True)
        return out.hidden_states, out.logits[0, -1]

    hs0, logits0 = run()
    _perturb(model)
    hs1, logits1 = run()
    assert (logits1 - logits0).abs().max() > 1e-3
    cut = prompt.image_start
    for a, b in zip(hs0, hs1, strict=True):
        torch.testing.assert_close(b[:, :cut], a[:, :cut], atol=1e-6, rtol=0)
    assert (hs1[-1][:, cut:] - hs0[-1][:, cut:]).abs().max() > 1e-4
    # and different images give different scores once fusion is on
    with torch.no_grad():
        s = model.score_full(prompt, _visual(model, 4, seed=5)).scores
    assert s.std() > 1e-4


def test_conditioning_is_cleared_even_after_an_exception(demo_tokenizer):
    model = _model("llama", demo_tokenizer)
    with pytest.raises(ZeroDivisionError):
        with model.fused.conditioned(_visual(model, 1), torch.ones(1, 3)):
            assert model.fused.is_conditioned
            raise ZeroDivisionError
    assert not model.fused.is_conditioned
    # a failing forward inside also clears (mask length mismatch raises inside the layer)
    with pytest.raises(RuntimeError):
        with model.fused.conditioned(_visual(model, 1), torch.ones(1, 3)):
            model.fused.lm(input_ids=torch.tensor([[1, 2, 3, 4, 5]]))
    assert not model.fused.is_conditioned


def test_adapter_save_load_gives_identical_scores_and_rejects_other_llms(tmp_path, demo_tokenizer):
    from pmllm_batch.model.checkpoint import fingerprint, load_adapter, save_adapter

    model = _model("llama", demo_tokenizer)
    _perturb(model)
    save_adapter(model, tmp_path / "ad")
    fresh = _model("llama", demo_tokenizer)
    assert fingerprint(fresh) != fingerprint(model)
    load_adapter(fresh, tmp_path / "ad")
    assert fingerprint(fresh) == fingerprint(model)
    with torch.no_grad():
        vis_a, vis_b = _visual(model, 3), _visual(fresh, 3)
        torch.testing.assert_close(fresh.score_full(fresh.prompt(PROFILE), vis_b).scores,
                                   model.score_full(model.prompt(PROFILE), vis_a).scores, atol=0, rtol=0)
    other = _model("qwen2", demo_tokenizer)
    with pytest.raises(ModelLoadError) as e4:
        load_adapter(other, tmp_path / "ad")
    with pytest.raises(ModelLoadError) as e5:
        load_adapter(fresh, tmp_path)
    assert str(e4.value) == (
        f"adapter {tmp_path / 'ad'} was trained for lm tiny-llama (model_type llama) but the loaded lm has "
        "model_type qwen2."
    )
    assert str(e5.value) == (
        f"{tmp_path} is not an adapter checkpoint (expected pmllm_config.json and adapter.safetensors)."
    )


def test_soft_targets_expectation_equals_the_rating():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    ratings = torch.tensor([1.0, 2.5, 3.0, 4.75, 5.0, 0.2, 7.0])
    t = soft_targets(ratings, values)
    torch.testing.assert_close(t.sum(-1), torch.ones(len(ratings)))
    torch.testing.assert_close(t @ values, ratings.clamp(1, 5))
    assert (t > 0).sum(-1).max() <= 2  # only neighbouring levels
    scores, probs = expected_score(torch.log(t.clamp_min(1e-12)), values)
    torch.testing.assert_close(scores, ratings.clamp(1, 5), atol=1e-4, rtol=0)


def test_persona_renders_every_field_and_coarse_profiles(demo_tokenizer):
    text = render_persona(PROFILE)
    for needle in ("22-25", "female", "expert", "openness 9 of 10 (curious)", "extraversion 2 of 10 (reserved)",
                   "interest in art", "street photography"):
        assert needle in text
    coarse = render_persona(Profile(name="c", age=40, gender="male"))
    assert "age 40 years" in coarse and "gender male" in coarse and "Personality" not in coarse
    assert "no personal details" in render_persona(Profile(name="n"))
    prompt = build_prompt(demo_tokenizer, text)
    # the suffix starts exactly at the image tag and is profile-independent
    assert demo_tokenizer.convert_ids_to_tokens(prompt.suffix_ids)[0] == IMAGE_WORD
    assert build_prompt(demo_tokenizer, coarse).suffix_ids == prompt.suffix_ids
    assert demo_tokenizer.decode(prompt.prefix_ids).startswith("<s> <|system|>")  # the chat template is used


def test_decoder_layers_are_found_by_model_type_with_an_override(demo_tokenizer):
    from transformers import (
        GemmaConfig,
        GemmaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    small = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=16)
    for cls, cfg in ((MistralForCausalLM, MistralConfig), (Qwen3ForCausalLM, Qwen3Config),
                     (GemmaForCausalLM, GemmaConfig)):
        lm = cls(cfg(**small))
        assert len(decoder_layers(lm)) == 2
        fused = FusedLM(lm, [0, 1])
        # per layer: LayerNorm (w, b), to_q, to_kv, to_out, to_gate (w, b) -> 5 D^2 + 3 D numbers, D = 32
        params = list(fused.fusion_params())
        assert len(params) == 2 * 7 and sum(p.numel() for p in params) == 2 * (5 * 32**2 + 3 * 32)
    lm = _tiny_lm("llama", 64)
    lm.config.model_type = "mystery"
    with pytest.raises(ConfigError) as e1:
        decoder_layers(lm)
    assert len(decoder_layers(lm, "model.layers")) == 4
    with pytest.raises(ConfigError) as e2:
        decoder_layers(lm, "model.blocks")
    with pytest.raises(ConfigError) as e3:
        FusedLM(_tiny_lm("llama", 64), [7])
    assert str(e1.value) == (
        "don't know where the decoder layers of model_type 'mystery' are; set lm.decoder_layers_path "
        f"(known types: {', '.join(sorted(DECODER_LAYERS_PATHS))})."
    )
    assert str(e2.value) == "lm.decoder_layers_path 'model.blocks' does not exist on LlamaForCausalLM."
    assert str(e3.value) == "fusion.layer_ids [7] must be distinct indices below 4 decoder layers."


def test_open_gate_control_differs_from_selective_gate(demo_tokenizer):
    model = _model("llama", demo_tokenizer)
    _perturb(model)
    with torch.no_grad():
        vis = _visual(model, 4)
        sel = model.score_full(model.prompt(PROFILE), vis).scores
        model.fused.set_gate_mode("open")
        opened = model.score_full(model.prompt(PROFILE), vis).scores
    assert (sel - opened).abs().max() > 1e-4


def test_offline_missing_llm_is_one_sentence_naming_what_to_download(tmp_path, monkeypatch):
    from pmllm_batch.model.factory import load_lm_and_tokenizer

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError) as err:
        load_lm_and_tokenizer("meta-llama/Llama-3.1-8B-Instruct", offline=True)
    assert str(err.value) == (
        "LLM not found in the Hugging Face cache (meta-llama/Llama-3.1-8B-Instruct) and offline = true; download it "
        "once with `hf download meta-llama/Llama-3.1-8B-Instruct`, or set [model] lm_path to a local folder."
    )


def test_offline_missing_open_clip_weights_is_one_sentence(tmp_path):
    from pmllm_batch.model.config import VisionCfg
    from pmllm_batch.model.vision import build_vision_tower

    with pytest.raises(ModelLoadError) as err:
        build_vision_tower(VisionCfg(model_name="ViT-B-32", pretrained="openai"), offline=True, cache_dir=str(tmp_path))
    assert str(err.value) == (
        "open_clip weights ViT-B-32/openai are not in the local cache and offline = true; download them once with "
        "network access (Hugging Face repo timm/vit_base_patch32_clip_224.openai) or set vision.checkpoint to a "
        "local file."
    )


def test_presets_exist_and_unknown_preset_lists_them():
    from pmllm_batch.model.presets import get_preset, list_presets

    assert {"demo", "cpu", "paper"} <= set(list_presets())
    paper = ModelCfg.from_dict(get_preset("paper")["model"])
    assert paper.vision.model_name == "ViT-L-14-336" and paper.vision.pretrained == "openai"
    assert paper.fusion.layer_ids == [0, 1, 2] and paper.projector_type == "mlp2x_gelu"
    assert "Llama-3" in paper.lm.name_or_path
    with pytest.raises(ConfigError) as err:
        get_preset("nope")
    assert str(err.value) == (
        f"unknown preset 'nope'; available presets: {', '.join(sorted(list_presets()))} "
        "(or give the path of a preset .json)."
    )


def test_demo_preset_builds_offline_and_prefix_cache_matches(fresh_demo_model):
    model = fresh_demo_model  # create_model("demo", checkpoint="none", offline=True), perturbed below
    assert model.cfg.demo is True
    _perturb(model)
    px = torch.randn(3, 3, model.preprocess.image_size, model.preprocess.image_size)
    with torch.no_grad():
        vis = model.encode_images(px)
        assert model.tower.num_features(model.preprocess.image_size) == 64  # (96 / 12)^2 patches
        assert vis.shape == (3, 64, 64)
        full = model.score_full(model.prompt(PROFILE), vis).scores
        cached = model.score_cached(model.encode_prefix(PROFILE), vis).scores
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)
    assert ((full >= 1) & (full <= 5)).all()


# --------------------------------------------------------------------------------------------------
# What the feature cache keeps: tower features (pooled for the paper preset), not the projector's output
# --------------------------------------------------------------------------------------------------


def _demo_vision_cfg(pool: int):
    from pmllm_batch.model.presets import get_preset, resolve_path

    cfg = ModelCfg.from_dict(get_preset("demo")["model"]).vision
    cfg.pool, cfg.checkpoint = pool, resolve_path(cfg.checkpoint)
    return cfg


def test_a_pooled_tower_averages_each_2x2_patch_group_and_its_shape_is_known_without_weights():
    import numpy as np

    from pmllm_batch.model.vision import build_vision_tower, feature_shape

    plain, pre = build_vision_tower(_demo_vision_cfg(1))
    pooled, _ = build_vision_tower(_demo_vision_cfg(2))
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, pre.image_size, pre.image_size),
                                                                 ).astype(np.float32))
    with torch.no_grad():
        full, small = plain(x), pooled(x)
    side = int(round(full.shape[1] ** 0.5))  # 8 x 8 patches of the demo tower
    grid = full.reshape(2, side, side, -1)
    want = grid.reshape(2, side // 2, 2, side // 2, 2, -1).mean(dim=(2, 4)).reshape(2, (side // 2) ** 2, -1)
    assert small.shape == (2, 16, 64) and torch.allclose(small, want, atol=1e-6)
    assert feature_shape(_demo_vision_cfg(2)) == (16, 64) and pooled.num_features(pre.image_size) == 16
    assert feature_shape(_demo_vision_cfg(1)) == (64, 64) and plain.num_features(pre.image_size) == 64


def test_cache_bytes_per_photo_from_the_presets_shapes():
    from pmllm_batch.model.presets import get_preset
    from pmllm_batch.model.vision import feature_shape

    per_photo = {}
    for name in ("demo", "smol", "cpu", "paper"):
        n, d = feature_shape(ModelCfg.from_dict(get_preset(name)["model"]).vision)
        per_photo[name] = n * d * 2  # float16
    # paper: ViT-L/14 at 336 px, 24 x 24 patches pooled 2 x 2 -> 144 x 1024 (not 576 x 4096 projected: 4.7 MB)
    assert per_photo == {"demo": 8192, "smol": 8192, "cpu": 49 * 768 * 2, "paper": 144 * 1024 * 2}
    assert per_photo["paper"] <= 300_000


def test_retraining_the_adapter_keeps_the_vision_fingerprint(fresh_demo_model):
    from pmllm_batch.model.checkpoint import fingerprint, vision_fingerprint

    before, vision_before = fingerprint(fresh_demo_model), vision_fingerprint(fresh_demo_model)
    with torch.no_grad():
        next(fresh_demo_model.projector.parameters()).add_(0.1)
    assert fingerprint(fresh_demo_model) != before
    assert vision_fingerprint(fresh_demo_model) == vision_before
    fresh_demo_model.cfg.vision.pool = 2  # another tower output: another id (a new ONNX graph, a new cache key)
    assert vision_fingerprint(fresh_demo_model) != vision_before
