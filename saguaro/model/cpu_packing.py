"""Optional transform: oneDNN-packed weights for CPU matmuls, only where this CPU runs them.

Packing reorders each weight once into the layout oneDNN's kernels stream best; results are
bit-identical to F.linear here (checked in tests) and bf16 decode gets faster. oneDNN's bf16
path needs AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT; elsewhere the portable F.linear path runs.
`SAGUARO_CPU_KERNELS` (auto, onednn, portable) forces a path, so tests cover both on any CPU.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

from saguaro.errors import UnsupportedEnvironmentError
from saguaro.model.decoder import Decoder, Linear

log = logging.getLogger(__name__)
KERNELS_ENV = "SAGUARO_CPU_KERNELS"
KERNEL_CHOICES = ("auto", "onednn", "portable")


class PackedLinear(Linear):
    def __init__(self, linear: Linear):
        super().__init__(torch.ops.mkldnn._reorder_linear_weight(linear.weight, 1), linear.bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def requested_kernels() -> str:
    choice = os.environ.get(KERNELS_ENV, "auto").strip().lower() or "auto"
    if choice not in KERNEL_CHOICES:
        raise UnsupportedEnvironmentError(
            f"{KERNELS_ENV}={choice!r} is not one of {', '.join(KERNEL_CHOICES)}")
    return choice


@functools.cache
def onednn_runs(dtype: torch.dtype) -> bool:
    """Whether this CPU and torch build run oneDNN's packed linear in `dtype`, found by trying it:
    CPU flags alone do not say what the torch build was compiled for."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    try:
        w = torch.ones(16, 32, dtype=dtype)
        out = PackedLinear(Linear(w))(torch.ones(2, 32, dtype=dtype))  # [2, 16]
        return bool(torch.all(out == 32))
    except RuntimeError as e:
        log.debug("oneDNN packing unavailable for %s: %s", dtype, e)
        return False


def should_pack(decoder: Decoder) -> bool:
    """auto packs bf16 CPU decoders where oneDNN runs them; onednn packs or fails in one line."""
    kernels = requested_kernels()
    if kernels == "portable" or decoder.device.type != "cpu":
        return False
    if kernels == "auto":
        return decoder.dtype == torch.bfloat16 and onednn_runs(torch.bfloat16)
    if not onednn_runs(decoder.dtype):
        raise UnsupportedEnvironmentError(
            f"{KERNELS_ENV}=onednn, but this CPU or torch build cannot run oneDNN's packed {decoder.dtype} "
            f"matmuls (bfloat16 needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT); use {KERNELS_ENV}=auto")
    return True


def pack_for_cpu(decoder: Decoder) -> Decoder:
    """Replace the decoder's plain linears in place; a no-op where packing does not apply."""
    if not should_pack(decoder):
        return decoder
    packable = [(layer, name) for layer in decoder.layers for name in ("qkv", "o", "gate_up", "down")]
    for layer, name in packable:
        if type(getattr(layer, name)) is Linear:
            setattr(layer, name, PackedLinear(getattr(layer, name)))
    head = decoder.lm_head
    if hasattr(head, "inner"):  # a vocabulary-subset head: pack what it multiplies by
        if type(head.inner) is Linear:
            head.inner = PackedLinear(head.inner)
    elif type(head) is Linear:
        decoder.lm_head = PackedLinear(head)
    log.debug("packed the linears for oneDNN (%s)", decoder.dtype)
    return decoder
