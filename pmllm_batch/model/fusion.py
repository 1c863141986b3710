"""Selective fusion: profile-gated injection of an image's tokens (the projector's output) into an LLM's hidden states.

Our reading of P-MLLM (arXiv 2604.17233) — the paper does not publish the equations, so the form
below is our decision (docs/ARCHITECTURE.md, "Model")::

    h ← h + m ⊙ σ(W_g·LN(h)) ⊙ W_o·XAttn(q = LN(h), kv = tokens)

* The gate is computed per token from that token's *own* hidden state. Below the image tag that state
  has already read the persona, so the amount and the kind of visual information let in depend on the
  profile: this is what makes the injection "selective".
* ``W_o`` starts at zero (open_flamingo's zero-init gate idea), so an untrained module is the identity
  and the wrapped LLM is exactly the frozen LLM.
* ``m`` is a position mask: 1 from the image tag onward, 0 on the persona prefix. The prefix is then
  image-independent and its KV cache can be computed once per profile.

Based on the gated cross-attention of open_flamingo (``helpers.py``, MIT licence), rewritten.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelectiveFusionBlock(nn.Module):
    """One fusion module for one decoder block.

    Args:
        dim: LLM hidden width D.
        num_heads: cross-attention heads (the inner width must be divisible by it).
        gate: ``"selective"`` (sigmoid gate from LN(h)) or ``"open"`` (gate fixed to 1, a control).
        width: inner width of queries, keys and values (default D); narrower makes a smaller, faster adapter.
    """

    def __init__(self, dim: int, num_heads: int, gate: str = "selective", width: int | None = None) -> None:
        super().__init__()
        inner = int(width or dim)
        if inner % num_heads:
            raise ValueError(f"fusion width {inner} is not divisible by {num_heads} heads")
        self.dim, self.inner, self.num_heads, self.gate_mode = dim, inner, num_heads, gate
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.to_gate = nn.Linear(dim, dim)
        nn.init.zeros_(self.to_out.weight)  # identity at initialisation

    def forward(self, hidden: torch.Tensor, visual: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Return the fused hidden states.

        Args:
            hidden: shape (B, T, D), the decoder block's input.
            visual: shape (B, N, D), the projector's tokens (one image per row).
            mask: shape (B, T) or (1, T), 1.0 where fusion applies (image tag onward), else 0.0.

        Returns:
            shape (B, T, D).
        """
        b, t, _ = hidden.shape
        d = self.inner
        # The block keeps its own dtype (fp32 for training) even inside a bf16/fp16 LLM.
        out_dtype = hidden.dtype
        hidden = hidden.to(self.norm.weight.dtype)
        h = self.norm(hidden)
        q = self.to_q(h).view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)
        k, v = self.to_kv(visual.to(h.dtype)).chunk(2, dim=-1)
        k = k.view(b, -1, self.num_heads, d // self.num_heads).transpose(1, 2)
        v = v.view(b, -1, self.num_heads, d // self.num_heads).transpose(1, 2)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        update = self.to_out(attn)
        if self.gate_mode == "selective":
            update = torch.sigmoid(self.to_gate(h)) * update
        return (hidden + mask.to(update.dtype).unsqueeze(-1) * update).to(out_dtype)
