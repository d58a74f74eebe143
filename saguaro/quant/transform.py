"""The quantize transform: swaps a built decoder's linears for int4 or int8 weight-only kernels.

Applied after loading, like packing. "auto" keeps a GGUF at about its own precision (int4 for a
Q4_K_M file, int8 for Q8_0) and a float checkpoint in its float dtype. The linears run on
Saguaro's native kernels where they build (saguaro.quant.native), else on PyTorch's.
"""

from __future__ import annotations

import logging
import statistics

import torch

from saguaro.errors import InvalidRequestError
from saguaro.loading.weights import layer_parts
from saguaro.model.decoder import Decoder, Linear
from saguaro.quant.grids import Int4Grid, concat_grids, grid_from_float
from saguaro.quant.linear import Int4Linear, Int8Linear
from saguaro.quant.native import use_native
from saguaro.quant.native.linear import NativeInt4Linear, NativeInt8Linear, supports

log = logging.getLogger(__name__)
SCHEMES = ("auto", "none", "int8", "int4")
GROUP = 32  # Q4_K's own group; the kernel is about as fast at 32 as at 128 (docs/QUANTIZATION.md)
WIDE_BITS = 6  # tensors a file keeps at this many bits or more run as int8 under int4


def check_scheme(scheme: str | None) -> str:
    scheme = "auto" if scheme is None else str(scheme).lower()
    if scheme not in SCHEMES:
        raise InvalidRequestError(f"unknown quantization {scheme!r}; choose one of {', '.join(SCHEMES)}")
    return scheme


def resolve_scheme(scheme: str, bits: dict[str, int]) -> str:
    """'auto' from the file's own encoding of its layer matrices; float checkpoints stay float."""
    if scheme != "auto":
        return scheme
    matrices = [b for name, b in bits.items() if name.startswith("model.layers.") and "_proj." in name]
    if not matrices:
        return "none"
    typical = statistics.median(matrices)
    return "int4" if typical <= 5 else "int8" if typical <= 8 else "none"


def _int4_grid(weight: torch.Tensor, parts: list[tuple[str, int]], grids: dict[str, Int4Grid]) -> Int4Grid:
    rows = torch.split(weight, [n for _, n in parts])
    return concat_grids([grids.get(name) or grid_from_float(w, GROUP) for (name, _), w in zip(parts, rows)])


def _quantized(linear: Linear, scheme: str, parts, dtype, bits: dict[str, int], grids: dict[str, Int4Grid],
               native: bool) -> Linear:
    inp = linear.weight.shape[1]
    native = native and supports(inp)  # else this one linear runs on PyTorch's kernel
    if scheme == "int8" or inp % GROUP or any(bits.get(n, 0) >= WIDE_BITS for n, _ in parts):
        return (NativeInt8Linear if native else Int8Linear)(linear.weight, dtype, linear.bias)
    return (NativeInt4Linear if native else Int4Linear)(_int4_grid(linear.weight, parts, grids), dtype, linear.bias)


def quantize_decoder(decoder: Decoder, scheme: str, bits: dict[str, int] | None = None,
                     grids: dict[str, Int4Grid] | None = None, same_head: bool = False) -> str:
    """Quantize in place; returns the scheme applied. `bits` and `grids` come from a GGUF file
    (saguaro.quant.gguf_native); without them every weight is quantized from its float values.
    `same_head` gives the LM head the layers' scheme: for drafts, whose precision moves only
    acceptance, never exactness, and whose head is a large share of a step's bytes."""
    bits, grids = bits or {}, grids or {}
    scheme = resolve_scheme(check_scheme(scheme), bits)
    if scheme == "none":
        return scheme
    if decoder.device.type != "cpu":
        raise InvalidRequestError(f"quantize={scheme} runs on CPU only; use quantize='none' on {decoder.device}")
    native = use_native()
    for i, layer in enumerate(decoder.layers):
        for attr, parts in layer_parts(decoder.cfg, i).items():
            weights = [(name + ".weight", rows) for name, rows in parts]
            quantized = _quantized(getattr(layer, attr), scheme, weights, decoder.dtype, bits, grids, native)
            setattr(layer, attr, quantized)
    head_name = "lm_head.weight" if "lm_head.weight" in bits else "model.embed_tokens.weight"
    # The head decides every token: int4 only where the file itself stores it at 4 bits.
    head_scheme = "int4" if scheme == "int4" and (same_head or head_name in grids) else "int8"
    head = decoder.lm_head
    if hasattr(head, "inner"):  # a vocabulary-subset head: its rows are a subset of the file's
        head_grids = {head_name: _take_rows(grids[head_name], head.keep)} if head_name in grids else {}
        head.inner = _quantized(head.inner, head_scheme, [(head_name, head.inner.weight.shape[0])],
                                decoder.dtype, {}, head_grids, native)
    else:
        decoder.lm_head = _quantized(head, head_scheme, [(head_name, head.weight.shape[0])], decoder.dtype, {}, grids,
                                     native)
    log.info("quantized %s linears to %s (head %s) on %s kernels", decoder.cfg.model_type, scheme, head_scheme,
             "Saguaro's" if native else "PyTorch's")
    return scheme


def _take_rows(grid: Int4Grid, rows: torch.Tensor) -> Int4Grid:
    rows = rows.cpu()
    return Int4Grid(grid.q[rows], grid.scale[rows], grid.offset[rows], grid.group)
