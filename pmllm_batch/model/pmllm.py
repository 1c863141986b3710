"""P-MLLM: vision tower + projector + frozen LLM with selective fusion, read out as a 1–5 rating.

Two ways to score, which agree to float precision (tested):

* :meth:`PMLLM.score_full` runs the whole prompt for every (image, profile) pair — the naive way;
* :meth:`PMLLM.encode_prefix` runs a profile's persona prefix once and keeps its KV cache, then
  :meth:`PMLLM.score_cached` runs only the suffix (image tag → answer) for a batch of images. The
  fusion mask is 0 on the prefix, so the prefix cache is image-independent and exact.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from pmllm_batch.model.config import ModelCfg
from pmllm_batch.model.fused_lm import FusedLM
from pmllm_batch.model.projector import build_projector
from pmllm_batch.model.prompts import PromptTokens, build_prompt, render_persona
from pmllm_batch.model.readout import expected_score, level_token_ids
from pmllm_batch.model.vision import TowerExport, VisionEncoder, VisionTower
from pmllm_batch.preprocess_cfg import PreprocessCfg
from pmllm_batch.profiles import Profile

if TYPE_CHECKING:
    from transformers import DynamicCache, PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class ScoreOutput:
    scores: torch.Tensor  # (B,) expected rating on the levels' scale (1–5)
    probs: torch.Tensor  # (B, L) distribution over rating levels


@dataclass
class PrefixState:
    """A profile's persona prefix, run once: prompt ids and per-layer (key, value) of shape (1, H, T, d)."""

    prompt: PromptTokens
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    persona: str

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.kv)


_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextmanager
def _native_gqa(device: torch.device) -> Iterator[None]:
    """On CPU, let SDPA handle grouped-query attention itself (``enable_gqa``) although a mask is passed.

    transformers' SDPA path otherwise copies every layer's K/V once per query head group (``repeat_kv``) whenever an
    attention mask is given, and the suffix-against-cached-prefix call always has one: with B rows that is B copies
    of the prefix, per layer, per call. torch's CPU kernels take the mask with ``enable_gqa``; the scores are the
    same (tests: cached equals full prompt within 1e-4), about 1.2x faster at cpu-preset shapes. On CUDA masked GQA
    would fall back to the math kernel, so it is left as transformers decides.
    """
    if device.type != "cpu" or os.environ.get(_FORCE_GQA) is not None:
        yield
        return
    os.environ[_FORCE_GQA] = "1"
    try:
        yield
    finally:
        os.environ.pop(_FORCE_GQA, None)


def _make_cache(config: PreTrainedConfig) -> DynamicCache:
    from transformers import DynamicCache

    return DynamicCache(config=config)


def _cache_tensors(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (key, value) of a filled cache (transformers 5 cache API: ``cache.layers[i].keys``/``.values``)."""
    out = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
            raise RuntimeError(f"the LLM's cache layer {type(layer).__name__} holds no key/value tensors")
        out.append((keys, values))
    return out


class PMLLM(nn.Module):
    """The whole model. Only ``projector`` and the fusion blocks train.

    Args:
        cfg: architecture config.
        tower: frozen vision tower, or None when images arrive as tower features (ONNX runtime, feature cache).
        lm: a Hugging Face causal LM (frozen here, wrapped with fusion).
        tokenizer: its tokenizer.
        preprocess: the tower's preprocessing.
        d_vis: vision width when ``tower`` is None.
    """

    level_ids: torch.Tensor
    level_values: torch.Tensor
    projector: nn.Module

    def __init__(
        self,
        cfg: ModelCfg,
        tower: VisionTower | None,
        lm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        preprocess: PreprocessCfg,
        d_vis: int | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.tower = tower
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        d_lm = int(lm.config.hidden_size)
        self.d_vis = tower.width if tower is not None else int(d_vis or 0)
        self.projector = build_projector(cfg.projector_type, self.d_vis, d_lm)
        self.fused = FusedLM(
            lm,
            cfg.fusion.layer_ids,
            cfg.fusion.num_heads,
            cfg.fusion.gate,
            cfg.lm.decoder_layers_path,
            width=cfg.fusion.width,
        )
        ids = level_token_ids(tokenizer, cfg.readout.levels)
        self.register_buffer("level_ids", torch.tensor(ids), persistent=False)
        self.register_buffer("level_values", torch.tensor(cfg.readout.values), persistent=False)
        self.projector.to(next(lm.parameters()).device)
        base = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model
        self._base = [base]  # list: keep it out of the module tree (it is already inside ``fused.lm``)
        self._cache_kw = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        self.freeze_base()

    # -- parameters -------------------------------------------------------------------------------
    def freeze_base(self) -> None:
        """Freeze everything, check, then unfreeze projector + fusion (open_flamingo's order)."""
        self.requires_grad_(False)
        assert not any(p.requires_grad for p in self.parameters())
        for p in self.trainable_parameters():
            p.requires_grad_(True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.projector.parameters(), *self.fused.fusion_params()]

    @property
    def device(self) -> torch.device:
        return next(self.fused.lm.parameters()).device

    @property
    def lm_dtype(self) -> torch.dtype:
        return next(self.fused.lm.parameters()).dtype

    # -- vision -----------------------------------------------------------------------------------
    def vision_encoder(self) -> VisionEncoder:
        """The torch tower as a module (pixels → features). Raises RuntimeError when built without it."""
        if self.tower is None:
            raise RuntimeError("this model was built without a torch vision tower")
        return VisionEncoder(self.tower)

    def exportable_tower(self) -> TowerExport | None:
        """The tower as ``runtime`` exports and runs it (:class:`pmllm_batch.contracts.ExportableTower`), or None
        when the model was built without it (``with_vision=False``; see ``factory.attach_vision_tower``)."""
        if self.tower is None:
            return None
        return TowerExport.of(self.tower, self.preprocess, self.cfg.name)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Args: pixel_values (B, 3, S, S). Returns: tokens (B, n_feat, D_lm): the tower's features, projected."""
        if self.tower is None:
            raise RuntimeError("this model was built without a torch vision tower")
        with torch.no_grad():
            feats = self.tower(pixel_values.to(self.device))
        return self.projector(feats)

    @torch.no_grad()
    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Tower features (B, n_feat, D_vis), from the tower or the cache → tokens (B, n_feat, D_lm)."""
        param = next(self.projector.parameters(), None)
        if param is not None:
            features = features.to(param.device, param.dtype)
        return self.projector(features)

    # -- prompts ----------------------------------------------------------------------------------
    def prompt(self, profile: Profile | str) -> PromptTokens:
        persona = profile if isinstance(profile, str) else render_persona(profile)
        return build_prompt(self.tokenizer, persona)

    # -- LLM --------------------------------------------------------------------------------------
    def _answer_logits(
        self,
        input_ids: torch.Tensor,
        visual: torch.Tensor | None,
        mask: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: DynamicCache | None = None,
    ) -> torch.Tensor:
        """Level logits (B, L) at the last position. Only the level rows of the output head are used."""
        kwargs: dict[str, object] = {}
        if cache is not None:
            kwargs[self._cache_kw] = cache
            kwargs["use_cache"] = True
        else:
            kwargs["use_cache"] = False
        if visual is not None:
            visual = visual.to(device=self.device)
        with self.fused.conditioned(visual, mask if visual is not None else None), _native_gqa(self.device):
            out = self._base[0](
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
            )
        head = self.fused.lm.get_output_embeddings()
        hidden = out.last_hidden_state[:, -1].to(head.weight.dtype)
        logits = hidden @ head.weight[self.level_ids].T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[self.level_ids]
        return logits

    def score_full(self, prompts: PromptTokens | list[PromptTokens], visual: torch.Tensor | None) -> ScoreOutput:
        """Naive path: one full-prompt forward per row.

        Args:
            prompts: one prompt for all rows, or one per row (different personas; same suffix).
            visual: (B, n_tok, D_lm) tokens (the projector's output), or None (no vision).
        """
        return self.score_logits_full(prompts, visual, batch=None if visual is None else visual.shape[0])[1]

    def score_logits_full(
        self, prompts: PromptTokens | list[PromptTokens], visual: torch.Tensor | None, batch: int | None = None
    ) -> tuple[torch.Tensor, ScoreOutput]:
        """Like :meth:`score_full` but also returns the level logits (B, L), for training."""
        if isinstance(prompts, PromptTokens):
            prompts = [prompts] * (batch or 1)
        suffix = prompts[0].suffix_ids
        if any(p.suffix_ids != suffix for p in prompts):
            raise ValueError("all prompts in a batch must share the suffix")
        longest = max(len(p.ids) for p in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (longest - len(p.ids)) + p.ids for p in prompts], device=self.device)
        attn = torch.tensor([[0] * (longest - len(p.ids)) + [1] * len(p.ids) for p in prompts], device=self.device)
        # left padding: positions count real tokens only, so padded rows equal unpadded ones
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        mask = torch.zeros(1, longest, device=self.device)
        mask[:, longest - len(suffix) :] = 1.0
        padded = bool((attn == 0).any())
        logits = self._answer_logits(ids, visual, mask, attention_mask=attn if padded else None, position_ids=pos)
        scores, probs = expected_score(logits, self.level_values)
        return logits, ScoreOutput(scores, probs)

    def encode_prefix(self, profile: Profile | str) -> PrefixState:
        """Run a profile's persona prefix once; the result serves every image for this profile."""
        persona = profile if isinstance(profile, str) else render_persona(profile)
        return self.encode_prompt_prefix(build_prompt(self.tokenizer, persona), persona)

    @torch.no_grad()
    def encode_prompt_prefix(self, prompt: PromptTokens, persona: str = "") -> PrefixState:
        """KV cache of ``prompt.prefix_ids`` (everything before the image tag)."""
        cache = _make_cache(self.fused.lm.config)
        ids = torch.tensor([prompt.prefix_ids], device=self.device)
        self._base[0](input_ids=ids, use_cache=True, **{self._cache_kw: cache})
        kv = [(k.detach(), v.detach()) for k, v in _cache_tensors(cache)]
        return PrefixState(prompt, kv, persona)

    def fusion_untrained(self) -> bool:
        """True when every fusion output projection is zero (fresh, never-trained fusion): the image then cannot
        change a score, so every photo would get the same one."""
        outs = [m.weight for name, m in self.fused.fusion_blocks.named_modules() if name.endswith("to_out")]
        return all(not bool(w.any()) for w in outs)

    def score_logits_cached(self, prefixes: list[PrefixState], visual: torch.Tensor | None) -> tuple[
        torch.Tensor, ScoreOutput
    ]:
        """One suffix forward for rows with *different* cached prefixes (left-padded caches + mask).

        Exact like :meth:`score_cached` (the fusion mask is 0 on every prefix); gradients reach the projector
        and fusion blocks through the suffix only, which is all that trains. Used by training.

        Args:
            prefixes: one :class:`PrefixState` per row; all must share the suffix.
            visual: (B, N, D_lm) or None.
        """
        b = len(prefixes)
        suffix = prefixes[0].prompt.suffix_ids
        if any(p.prompt.suffix_ids != suffix for p in prefixes):
            raise ValueError("all prefixes in a batch must share the suffix")
        lens = [len(p.prompt.prefix_ids) for p in prefixes]
        longest, s = max(lens), len(suffix)
        cache = _make_cache(self.fused.lm.config)
        for i in range(len(prefixes[0].kv)):
            keys = torch.cat([torch.nn.functional.pad(p.kv[i][0], (0, 0, longest - n, 0)) for p, n in zip(
                prefixes, lens, strict=True)])
            values = torch.cat([torch.nn.functional.pad(p.kv[i][1], (0, 0, longest - n, 0)) for p, n in zip(
                prefixes, lens, strict=True)])
            cache.update(keys, values, i)
        attn = torch.tensor([[0] * (longest - n) + [1] * (n + s) for n in lens], device=self.device)
        pos = torch.tensor([[n + j for j in range(s)] for n in lens], device=self.device)
        ids = torch.tensor([suffix] * b, device=self.device)
        mask = torch.ones(1, s, device=self.device)
        logits = self._answer_logits(ids, visual, mask, attention_mask=attn, position_ids=pos, cache=cache)
        scores, probs = expected_score(logits, self.level_values)
        return logits, ScoreOutput(scores, probs)

    def score_cached(self, prefix: PrefixState, visual: torch.Tensor | None, batch: int | None = None) -> ScoreOutput:
        """Score a batch of images against a cached prefix: only the suffix tokens run.

        Args:
            prefix: from :meth:`encode_prefix`.
            visual: (B, N, D_lm), or None (no vision; then ``batch`` rows).
        """
        b = visual.shape[0] if visual is not None else (batch or 1)
        cache = _make_cache(self.fused.lm.config)
        for i, (k, v) in enumerate(prefix.kv):
            cache.update(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1), i)
        suffix = prefix.prompt.suffix_ids
        ids = torch.tensor([suffix] * b, device=self.device)
        start = len(prefix.prompt.prefix_ids)
        pos = torch.arange(start, start + len(suffix), device=self.device).unsqueeze(0).expand(b, -1)
        mask = torch.ones(1, len(suffix), device=self.device)
        logits = self._answer_logits(ids, visual, mask, position_ids=pos, cache=cache)
        scores, probs = expected_score(logits, self.level_values)
        return ScoreOutput(scores, probs)
