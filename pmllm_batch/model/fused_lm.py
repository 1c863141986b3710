"""Wrapping a frozen Hugging Face causal LM's lowest decoder blocks with selective fusion.

Composition, not monkey-patching (torchtune ``FusionLayer`` style): each chosen decoder layer is
replaced by a :class:`FusedDecoderLayer` holding the original layer and a fusion block. The HF model
class is untouched. An image's tokens reach the layers through :meth:`FusedLM.conditioned`, a context
manager that always clears them, so an exception can never leave stale images attached (it matters in
a long-running daemon).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from pmllm_batch.errors import ConfigError
from pmllm_batch.model.fusion import SelectiveFusionBlock

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Dotted path of the decoder-layer ModuleList, keyed by ``config.model_type`` (explicit override wins).
DECODER_LAYERS_PATHS: dict[str, str] = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "phi3": "model.layers",
    "olmo2": "model.layers",
    "smollm3": "model.layers",
    "gpt2": "transformer.h",
    "gptj": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
}


def get_by_path(obj: object, path: str) -> object:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def decoder_layers(lm: nn.Module, override: str | None = None) -> nn.ModuleList:
    """Return the decoder-layer ModuleList of ``lm``."""
    model_type = getattr(getattr(lm, "config", None), "model_type", None)
    path = override or DECODER_LAYERS_PATHS.get(str(model_type))
    if path is None:
        raise ConfigError(
            f"don't know where the decoder layers of model_type '{model_type}' are; set "
            f"lm.decoder_layers_path (known types: {', '.join(sorted(DECODER_LAYERS_PATHS))})."
        )
    try:
        layers = get_by_path(lm, path)
    except AttributeError:
        raise ConfigError(f"lm.decoder_layers_path '{path}' does not exist on {type(lm).__name__}.") from None
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"'{path}' on {type(lm).__name__} is not a ModuleList of decoder layers.")
    return layers


class _Conditioning:
    """Mutable state shared by all fused layers of one model (set only inside ``conditioned``)."""

    def __init__(self) -> None:
        self.visual: torch.Tensor | None = None  # (B, N, D)
        self.mask: torch.Tensor | None = None  # (B, T) or (1, T)


class FusedDecoderLayer(nn.Module):
    """A decoder layer with a fusion block applied to its *input* hidden states.

    The wrapper is signature-agnostic and returns the inner layer's output untouched, so it does not
    depend on whether a transformers version returns a tensor or a tuple (open_flamingo ``FlamingoLayer``).
    """

    fusion: SelectiveFusionBlock  # set in __init__ past nn.Module's registration

    def __init__(self, layer: nn.Module, fusion: SelectiveFusionBlock, state: _Conditioning) -> None:
        super().__init__()
        self.layer = layer
        # Not registered as a submodule: FusedLM.fusion_blocks is the single owner (no duplicate keys
        # in state_dict, unlike open_flamingo's double registration).
        object.__setattr__(self, "fusion", fusion)
        self._state = state

    def __getattr__(self, name: str) -> torch.Tensor | nn.Module:  # nn.Module's type; plain attributes pass too
        # HF model loops read attributes such as ``attention_type`` off each decoder layer.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["layer"], name)

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> object:
        """The inner layer's output, whatever this transformers version makes it (a tensor or a tuple)."""
        st = self._state
        if st.visual is not None and st.mask is not None:
            if st.mask.shape[-1] != hidden_states.shape[1]:
                raise RuntimeError(
                    f"fusion mask covers {st.mask.shape[-1]} positions but the layer sees {hidden_states.shape[1]}"
                )
            hidden_states = self.fusion(hidden_states, st.visual, st.mask)
        return self.layer(hidden_states, *args, **kwargs)


class FusedLM(nn.Module):
    """A frozen causal LM whose lowest decoder blocks carry selective fusion modules.

    Args:
        lm: a Hugging Face ``*ForCausalLM`` (frozen here).
        layer_ids: decoder layers to wrap (paper: [0, 1, 2]).
        num_heads: fusion cross-attention heads (default: the LLM's attention heads).
        gate: "selective" or "open".
        decoder_layers_path: explicit dotted path of the decoder ModuleList.
        width: inner width of the fusion cross-attention (default: the LLM's hidden width).
    """

    lm: PreTrainedModel  # a Hugging Face *ForCausalLM

    def __init__(
        self,
        lm: PreTrainedModel,
        layer_ids: list[int],
        num_heads: int | None = None,
        gate: str = "selective",
        decoder_layers_path: str | None = None,
        width: int | None = None,
    ) -> None:
        super().__init__()
        self.lm = lm
        self.lm.requires_grad_(False)
        assert not any(p.requires_grad for p in self.lm.parameters())
        layers = decoder_layers(lm, decoder_layers_path)
        n = len(layers)
        if not layer_ids or any(not 0 <= i < n for i in layer_ids) or len(set(layer_ids)) != len(layer_ids):
            raise ConfigError(f"fusion.layer_ids {layer_ids} must be distinct indices below {n} decoder layers.")
        dim = int(lm.config.hidden_size)
        heads = num_heads or int(lm.config.num_attention_heads)
        self._state = _Conditioning()
        self.fusion_blocks = nn.ModuleDict()
        for i in sorted(layer_ids):
            block = SelectiveFusionBlock(dim, heads, gate, width=width)
            # one owner per module: the ModuleDict owns the block; the wrapper only references it
            self.fusion_blocks[str(i)] = block
            layers[i] = FusedDecoderLayer(layers[i], block, self._state)
        self.layer_ids = sorted(layer_ids)
        self.fusion_blocks.to(device=next(lm.parameters()).device)

    # -- parameters -------------------------------------------------------------------------------
    def fusion_params(self) -> Iterator[nn.Parameter]:
        return self.fusion_blocks.parameters()

    def set_gate_mode(self, mode: str) -> None:
        for block in self.fusion_blocks.values():
            block.gate_mode = mode  # type: ignore[assignment]

    # -- conditioning -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def conditioned(self, visual: torch.Tensor | None, mask: torch.Tensor | None) -> Iterator[None]:
        """Attach an image's tokens (B, N, D; the projector's output) and the position mask (B or 1, T) for the
        forwards inside.

        ``visual=None`` runs the plain frozen LLM (the "no vision" control). State is always cleared.
        """
        if self._state.visual is not None:
            raise RuntimeError("FusedLM.conditioned() is not re-entrant")
        self._state.visual, self._state.mask = visual, mask
        try:
            yield
        finally:
            self._state.visual, self._state.mask = None, None

    @property
    def is_conditioned(self) -> bool:
        return self._state.visual is not None or self._state.mask is not None
