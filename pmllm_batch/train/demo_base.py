"""Build the *base* models of the demo preset: a tiny open_clip ViT and a tiny Llama-layout LM.

Both are random (seeded) and frozen; only the adapter on top is trained (``scripts/train_demo.sh``).
The tokenizer is a word-level tokenizer built offline over the persona/prompt vocabulary, with a small
chat template, so the demo exercises the same prompt path as real chat models. Words outside that
vocabulary (free notes, rare nationalities) become ``[UNK]``: the demo cannot read them.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pmllm_batch.model.config import ModelCfg
from pmllm_batch.model.prompts import ANSWER_HINT, QUESTION, render_persona
from pmllm_batch.profiles import BIG_FIVE, Profile

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from pmllm_batch.model.vision import OpenClipVisual

SPECIAL = ["[PAD]", "[UNK]", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\nRating:{% endif %}"
)
AGE_BINS = ["18-21", "22-25", "26-29", "30-34", "35-40", "41-50", "51-60", "61-70"]
GENDERS = ["male", "female", "non-binary"]
EDUCATION = ["primary", "junior high school", "senior high school", "technical secondary school",
             "university", "bachelor", "master", "doctor"]
EXPERIENCE = ["beginner", "competent", "proficient", "expert"]
EXTRA_WORDS = ("years photography art experience education nationality gender interest in average of over items "
               "low moderate high photo photos landscape portrait street nature colour color bright dark warm cool "
               "calm sharp soft vivid muted likes dislikes loves prefers austrian german chinese american british "
               "french italian spanish dutch indian japanese")


def _corpus() -> list[str]:
    texts = [QUESTION, ANSWER_HINT, "Rating:", " ".join(str(i) for i in range(0, 131)), EXTRA_WORDS]
    for age, gender, edu, exp in itertools.product(AGE_BINS, GENDERS, EDUCATION, EXPERIENCE):
        texts.append(render_persona(Profile(name="x", age=age, gender=gender, education=edu,
                                            art_experience=exp, photography_experience=exp)))
    for value in range(1, 11):
        texts.append(render_persona(Profile(name="x", big_five=dict.fromkeys(BIG_FIVE, float(value)))))
    texts.append(render_persona(Profile(name="x", art_interest={"a": 1.0})))
    texts.append(render_persona(Profile(name="x", age=30, art_interest={"a": 5.0, "b": "street"}, notes="x")))
    texts.append(render_persona(Profile(name="x")))
    # the synthetic task's population (what the demo adapter is trained on)
    import numpy as np

    from pmllm_batch.train.synthetic import sample_profile

    rng = np.random.default_rng(0)
    texts.extend(render_persona(sample_profile(rng, f"u{i}")) for i in range(3000))
    return texts


def build_tokenizer(out_dir: Path) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.trainers import WordLevelTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(_corpus(), WordLevelTrainer(special_tokens=SPECIAL, min_frequency=1))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="[UNK]", pad_token="[PAD]",
        additional_special_tokens=SPECIAL[4:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def _make_context_mixer(lm: LlamaForCausalLM) -> None:
    """Rescale the random attention so the frozen demo LM carries the persona to later positions.

    With HF's default init (std 0.02) a random 64-wide LM barely mixes positions: attention adds ~2% to
    the residual, so the persona is almost invisible at the image tag. We shrink queries/keys (attention
    ≈ a causal average of the context) and give values/outputs unit-gain scale (the average is a large
    part of the residual). The result is still a random, untrained network — a "bag of persona words"
    reader, not a language model — which is all the demo needs to show profile-gated fusion.
    """
    d = lm.config.hidden_size
    with torch.no_grad():
        for layer in lm.model.layers:
            attn = layer.self_attn
            attn.q_proj.weight.mul_(0.1)
            attn.k_proj.weight.mul_(0.1)
            attn.v_proj.weight.normal_(0.0, d**-0.5)
            attn.o_proj.weight.normal_(0.0, attn.o_proj.weight.shape[1] ** -0.5)
        # Real LLM heads produce confident logits; HF's 0.02 init caps this tiny head's logits near ±2,
        # which no adapter could overcome (the final RMSNorm fixes the hidden-state norm).
        lm.lm_head.weight.normal_(0.0, 0.3)


def pretrain_demo_vision(visual: OpenClipVisual, steps: int = 1500, seed: int = 0, batch: int = 64) -> list[float]:
    """Teach the tiny tower to *see* the synthetic renderer's image parameters.

    A CLIP tower's patch features describe colour, light, sharpness and layout; a random tiny ViT's do not
    (a linear probe on them recovers brightness but not blur or noise). So, standing in for CLIP
    pre-training, the demo tower is trained to regress the 7 :class:`ImageParams` of freshly rendered
    images from its mean-pooled penultimate features (what the projector reads). It never sees
    ratings or people; the tower is frozen afterwards like any CLIP tower.
    """
    import numpy as np

    from pmllm_batch.model.vision import OPENAI_MEAN, OPENAI_STD, VisionTower
    from pmllm_batch.train.synthetic import render_image, sample_image_params

    tower = VisionTower(visual)
    tower.requires_grad_(True)
    size = int(visual.image_size[0])
    rng = np.random.default_rng(seed + 1)
    pool = 4096  # images rendered once, re-drawn as batches
    params = [sample_image_params(rng) for _ in range(pool)]
    mean, std = np.array(OPENAI_MEAN, np.float32)[:, None, None], np.array(OPENAI_STD, np.float32)[:, None, None]
    pix = np.stack([(np.asarray(render_image(p, rng, size), np.float32).transpose(2, 0, 1) / 255.0 - mean) / std
                    for p in params])
    target = np.stack([p.as_array() for p in params]).astype(np.float32)
    target = (target - target.mean(0)) / target.std(0)
    head = torch.nn.Linear(tower.width, target.shape[1])
    opt = torch.optim.AdamW([*visual.parameters(), *head.parameters()], lr=2e-3, weight_decay=0.01)
    x_all, y_all = torch.from_numpy(pix), torch.from_numpy(target)
    losses = []
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, pool, (batch,), generator=gen)
        for g in opt.param_groups:
            g["lr"] = 2e-3 * min(1.0, (step + 1) / 100) * (0.05 + 0.95 * (1 - step / steps))
        visual.train()
        pred = head(tower.forward(x_all[idx]).mean(1))
        loss = torch.nn.functional.mse_loss(pred, y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    visual.eval()
    visual.requires_grad_(False)
    return losses


def build_demo_base(out_dir: str | Path, seed: int = 0, vision_steps: int = 1500) -> Path:
    """Write ``lm/`` (config, weights, tokenizer) and ``vision.safetensors`` into ``out_dir``."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from pmllm_batch.model.presets import get_preset

    out = Path(out_dir)
    (out / "lm").mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out / "lm")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        initializer_range=0.02,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    lm = LlamaForCausalLM(config)
    _make_context_mixer(lm)
    lm.save_pretrained(out / "lm")
    arch = dict(ModelCfg.from_dict(get_preset("demo")["model"]).vision.arch or {})
    embed_dim = int(arch.pop("embed_dim"))
    torch.manual_seed(seed)
    visual = _build_vision_tower(embed_dim, CLIPVisionCfg(**arch))
    if vision_steps:
        pretrain_demo_vision(visual, steps=vision_steps, seed=seed)
    save_file({k: v.contiguous() for k, v in visual.state_dict().items()}, str(out / "vision.safetensors"))
    (out / "BASE_README.txt").write_text(
        f"Demo base models (seed {seed}), built by pmllm_batch.train.demo_base.build_demo_base: a tiny random\n"
        "Llama-layout LM with context-averaging attention (never trained), a word-level tokenizer, and a tiny\n"
        f"ViT pre-trained for {vision_steps} steps to regress the synthetic renderer's image parameters.\n"
        "Not real models.\n"
    )
    (out / "lm" / "generation_config.json").unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Build the demo preset's base models (tokenizer, LM, vision).")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "assets" / "demo"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vision-steps", type=int, default=1500)
    args = parser.parse_args(argv)
    build_demo_base(args.out, seed=args.seed, vision_steps=args.vision_steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
