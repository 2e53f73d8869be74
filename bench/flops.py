"""FLOP counting for the benches: torch's FlopCounterMode plus the CPU flash-attention kernels
(missing from its table) and a grouped-conv-correct convolution backward."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    conv_flop_count,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)


def _cpu_sdpa(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q, k, v)


def _cpu_sdpa_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, q, k, v)


def _conv_backward(
    grad_out,
    x,
    w,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _out_pad,
    _groups,
    mask,
    out_shape=None,
    **kwargs,
) -> int:
    """Convolution backward with the weight gradient counted like the forward conv it mirrors.

    torch's own formula ignores ``groups`` there and counts a depthwise conv's weight gradient
    as a dense conv (``groups`` = C times too many: about 20 of a proxy HSSL step's 134 counted
    GFLOP were this artefact); see pytorch/pytorch#183405.
    """
    flops = 0
    if mask[0]:  # grad_input: a transposed conv of grad_out with w, as torch counts it
        flops += conv_flop_count(grad_out, w, out_shape[0], not transposed)
    if mask[1]:  # grad_weight: the same multiply-adds as the forward conv
        flops += conv_flop_count(x, w, grad_out, transposed)
    return flops


def flop_counter() -> FlopCounterMode:
    """FlopCounterMode that also counts the CPU flash-attention kernels (absent from torch's
    table, so attention would silently count as zero on CPU) and counts grouped-conv weight
    gradients correctly."""
    aten = torch.ops.aten
    extra = {}
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_backward),
    ):
        op = getattr(aten, name, None)
        if op is not None:
            extra[op] = formula
    extra[aten.convolution_backward] = _conv_backward
    return FlopCounterMode(display=False, custom_mapping=extra)
