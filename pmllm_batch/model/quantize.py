"""int8 LLM stage on CPU: the frozen LLM's decoder-layer Linear modules as int8 GEMMs (``lm.quantize = "int8"``).

What is quantised: every ``nn.Linear`` inside the *original* decoder layers (attention q/k/v/o, MLP gate/up/down).
What is not: the fusion blocks and the projector (they train, and ``fusion_params()`` / ``trainable_parameters()``
stay float32 parameters), the embeddings, the norms and the output head (scoring reads only the five rating-level
rows of it, ``hidden @ head.weight[level_ids].T``: nothing to gain, and a tied head would need a second copy).

The scheme (measured in docs/PERFORMANCE.md, "int8 LLM stage"):

* **weights**: int8, symmetric, one scale per output channel (absmax / 127), packed once at load;
* **activations**: dynamic, one scale per row (token), symmetric, and *two* int8 passes: ``x / s`` is rounded
  to ``q1`` and the rounding residual, times 127, to ``q2``; both run through one int8 GEMM
  (``torch._int_mm``, int32 accumulation) stacked along the rows, and ``y = s * w_s * (q1·W + q2·W / 127)``.
  The activation error is then ~1/127 of a single int8 pass, so what is left is the weights' rounding.

Why not torch's ``quantize_dynamic`` (fbgemm, one activation scale per *tensor*) or optimum-quanto: on the real
SmolLM2 (whose activations have outlier channels up to 34x their row RMS) one activation scale per tensor moved
scores by up to 0.59 and per-row single-pass int8 by 0.10, against 0.02 for this scheme; quanto's weight-only int8
kept the scores but ran slower than float32 on CPU (it dequantises the weights every call) and its w8a8 mode did
not keep them. Per-row scales also make every image's score independent of the other images in its batch (the
int32 accumulation is exact), which a per-tensor scale does not.

Only for CPU inference: ``create_model`` applies it on CPU and ignores it (with a warning) elsewhere; a quantised
model cannot train (rounding has no gradient). The fingerprint names the scheme (:data:`INT8_SCHEME`), so int8
scores are never mixed with float32 ones.
"""

from __future__ import annotations

import torch
from torch import nn

from pmllm_batch.errors import ConfigError
from pmllm_batch.model.fused_lm import FusedDecoderLayer, decoder_layers

QUANTIZE_MODES = ("none", "int8")
# Part of the fingerprint of an int8 model: change it whenever the arithmetic below changes.
INT8_SCHEME = "int8:w-per-channel-absmax:a-per-row-2pass:int_mm:v1"

_QMAX = 127.0


def check_quantize(mode: str) -> str:
    """Raises: ConfigError: ``mode`` is not one of :data:`QUANTIZE_MODES`."""
    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"lm.quantize must be one of {', '.join(QUANTIZE_MODES)}, not '{mode}'.")
    return mode


def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``x`` (m, k) as two-pass int8 (2m, k) and their scales (m, 1)."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12).div_(_QMAX)
    xs = x / scale
    q1 = torch.round(xs)
    q2 = xs.sub_(q1).mul_(_QMAX).round_()  # the residual, |.| <= 63.5 before rounding
    return torch.cat([q1, q2]).to(torch.int8), scale


def _int8_matmul(
    q: torch.Tensor, scale: torch.Tensor, weight_int8: torch.Tensor, weight_scale: torch.Tensor
) -> torch.Tensor:
    """(q1; q2) · W as float: ``scale * w_s * (q1·W + q2·W / 127)``. int32 accumulation: exact per row."""
    m = scale.shape[0]
    acc = torch._int_mm(q, weight_int8)  # (2m, out) int32
    out = acc[m:] * (1.0 / _QMAX)
    return out.add_(acc[:m]).mul_(weight_scale).mul_(scale)


def _version(x: torch.Tensor) -> int:
    """The tensor's in-place version counter (inference-mode tensors have none: -1)."""
    try:
        return int(x._version)
    except RuntimeError:
        return -1


class _SharedInput:
    """Siblings that read the same input (q/k/v; gate/up): the first call runs one GEMM for all of them and keeps the
    others' outputs until they ask, as long as they get the very same, unmodified tensor (else each runs its own)."""

    def __init__(self, members: list[Int8Linear]) -> None:
        self.members = members
        self.weight_int8 = torch.cat([m.weight_int8 for m in members], dim=1).contiguous()
        self.weight_scale = torch.cat([m.weight_scale for m in members])
        self.splits = [m.out_features for m in members]
        start = 0
        for m in members:  # each keeps a view of the joint weight, for a call on its own: no second copy
            m.weight_int8 = self.weight_int8[:, start : start + m.out_features]
            start += m.out_features
        self.key: tuple[torch.Tensor, int] | None = None
        self.pending: dict[int, torch.Tensor] = {}

    def output(self, member: Int8Linear, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        index = self.members.index(member)
        if self.key is not None and self.key[0] is x and self.key[1] == _version(x) and index in self.pending:
            out = self.pending.pop(index)
            if not self.pending:
                self.key = None  # drop the references as soon as every sibling has its output
            return out
        q, scale = _quantize_rows(rows)
        outs = _int8_matmul(q, scale, self.weight_int8, self.weight_scale).split(self.splits, dim=1)
        self.pending = {i: o for i, o in enumerate(outs) if i != index}
        self.key = (x, _version(x)) if self.pending else None
        return outs[index]


class Int8Linear(nn.Module):
    """A frozen ``nn.Linear`` as int8 weights (per output channel) × two-pass int8 activations (per row).

    Args:
        linear: the float Linear to replace (its weight is read once; the module keeps no float copy).
    """

    weight_int8: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / _QMAX
        q = torch.round(w / scale[:, None]).clamp_(-_QMAX, _QMAX).to(torch.int8)
        self.in_features, self.out_features = int(linear.in_features), int(linear.out_features)
        self.register_buffer("weight_int8", q.t().contiguous())  # (in, out): the layout _int_mm takes
        self.register_buffer("weight_scale", scale)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)
        self._shared: _SharedInput | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features).float()
        if self._shared is not None:
            out = self._shared.output(self, x, rows)
        else:
            q, scale = _quantize_rows(rows)
            out = _int8_matmul(q, scale, self.weight_int8, self.weight_scale)
        if self.bias is not None:
            out = out + self.bias
        return out.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# Sibling projections that HF decoder layers call one after the other on the same tensor.
_SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _swap_linears(module: nn.Module) -> int:
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear(child))
            count += 1
        else:
            count += _swap_linears(child)
    for names in _SIBLINGS:
        members = [module._modules.get(n) for n in names]
        if all(isinstance(m, Int8Linear) for m in members):
            group = [m for m in members if isinstance(m, Int8Linear)]
            if len({m.in_features for m in group}) == 1:
                shared = _SharedInput(group)
                for m in group:
                    m._shared = shared
    return count


def quantize_lm_int8(lm: nn.Module, decoder_layers_path: str | None = None) -> int:
    """Replace every Linear inside ``lm``'s original decoder layers by :class:`Int8Linear`, in place.

    A :class:`FusedDecoderLayer` is entered through its ``layer`` (the original block): its fusion block is not a
    submodule of it, so it is never touched. Returns the number of Linear modules replaced.
    """
    count = 0
    for layer in decoder_layers(lm, decoder_layers_path):
        inner = layer.layer if isinstance(layer, FusedDecoderLayer) else layer
        count += _swap_linears(inner)
    return count
