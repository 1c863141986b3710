"""Rating readout without generation (Q-Align style).

At the answer position the next-token distribution is restricted to the rating-level tokens; the score
is the expected level ``Σ p_i · v_i``. Training uses soft targets over the two neighbouring levels so
that the expected level equals the true rating.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pmllm_batch.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def level_token_ids(tokenizer: PreTrainedTokenizerBase, levels: list[str]) -> list[int]:
    """Token id of each level string; each must be exactly one token."""
    ids = []
    for level in levels:
        enc = tokenizer(level, add_special_tokens=False)["input_ids"]
        if len(enc) != 1 or enc[0] == getattr(tokenizer, "unk_token_id", None):
            raise ModelLoadError(f"rating level '{level}' is not a single known token of this tokenizer.")
        ids.append(int(enc[0]))
    if len(set(ids)) != len(ids):
        raise ModelLoadError("rating levels map to repeated tokens.")
    return ids


def expected_score(level_logits: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Args: level_logits (B, L); values (L,). Returns: (scores (B,), probs (B, L))."""
    probs = torch.softmax(level_logits.float(), dim=-1)
    return probs @ values.to(probs), probs


def soft_targets(ratings: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Split each rating between its two neighbouring levels so that the expectation is the rating.

    Args: ratings (B,) on the levels' scale (clamped into range); values (L,) ascending.
    Returns: targets (B, L), rows sum to 1 and ``targets @ values == ratings``.
    """
    values = values.to(ratings.dtype)
    r = ratings.clamp(values[0], values[-1])
    hi = torch.searchsorted(values, r).clamp(1, len(values) - 1)
    lo = hi - 1
    w_hi = (r - values[lo]) / (values[hi] - values[lo])
    out = torch.zeros(len(r), len(values), dtype=ratings.dtype, device=ratings.device)
    out.scatter_(1, lo[:, None], (1 - w_hi)[:, None])
    out.scatter_add_(1, hi[:, None], w_hi[:, None])
    return out
