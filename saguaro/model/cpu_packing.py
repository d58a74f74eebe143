"""Optional transform: oneDNN-packed weights for bfloat16 matmuls on CPU.

Packing reorders each weight once into the layout oneDNN's kernels stream best; results are
bit-identical to F.linear here (checked in tests) and decode gets faster.
"""

from __future__ import annotations

import logging

import torch

from saguaro.model.decoder import Decoder, Linear

log = logging.getLogger(__name__)


class PackedLinear(Linear):
    def __init__(self, linear: Linear):
        super().__init__(torch.ops.mkldnn._reorder_linear_weight(linear.weight, 1), linear.bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def packing_available(decoder: Decoder) -> bool:
    return (
        decoder.device.type == "cpu"
        and decoder.dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


def pack_for_cpu(decoder: Decoder) -> Decoder:
    """Replace the decoder's linears in place; a no-op where oneDNN packing does not apply."""
    if not packing_available(decoder):
        return decoder
    for layer in decoder.layers:
        layer.qkv, layer.o = PackedLinear(layer.qkv), PackedLinear(layer.o)
        layer.gate_up, layer.down = PackedLinear(layer.gate_up), PackedLinear(layer.down)
    head = decoder.lm_head
    if hasattr(head, "inner"):  # a vocabulary-subset head: pack what it multiplies by
        head.inner = PackedLinear(head.inner)
    else:
        decoder.lm_head = PackedLinear(head)
    log.debug("packed %d linears for oneDNN", len(decoder.linears()))
    return decoder
