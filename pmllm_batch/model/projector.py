"""Vision → LLM projector (LLaVA naming: ``linear``, ``mlp2x_gelu``, ``identity``)."""

from __future__ import annotations

import re

from torch import nn

from pmllm_batch.errors import ConfigError

PROJECTOR_TYPES = ("linear", "mlp2x_gelu", "identity")


def build_projector(projector_type: str, d_vis: int, d_lm: int) -> nn.Module:
    """Build the projector mapping tower features (B, N, d_vis) to tokens (B, N, d_lm).

    ``mlpNx_gelu`` is Linear(d_vis→d_lm) followed by N-1 × (GELU, Linear(d_lm→d_lm)); the paper's
    projector is ``mlp2x_gelu`` (Linear · GELU · Linear).
    """
    if projector_type == "linear":
        return nn.Linear(d_vis, d_lm)
    if projector_type == "identity":
        if d_vis != d_lm:
            raise ConfigError(f"identity projector needs equal widths, got vision {d_vis} and LLM {d_lm}.")
        return nn.Identity()
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if match:
        layers: list[nn.Module] = [nn.Linear(d_vis, d_lm)]
        for _ in range(int(match.group(1)) - 1):
            layers += [nn.GELU(), nn.Linear(d_lm, d_lm)]
        return nn.Sequential(*layers)
    raise ConfigError(f"unknown projector type '{projector_type}'; choose one of {', '.join(PROJECTOR_TYPES)}.")
