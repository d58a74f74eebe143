"""The quantize transform: swaps a built decoder's linears for int4, int6 or int8 weight-only kernels.

Applied after loading, like packing. "auto" keeps a GGUF at about its own precision (int4 for a
Q4_K_M file, its Q6_K tensors at int6 on their own grid; int8 for Q8_0) and a float checkpoint in
its float dtype. The linears run on Saguaro's native kernels where they build
(saguaro.quant.native), else on PyTorch's (which have no int6: those tensors run as int8). On the
native kernels the decoder's norms, rotary embeddings and cache writes run fused too.
"""

from __future__ import annotations

import logging
import statistics
from typing import Callable

import torch

from saguaro.errors import InvalidRequestError
from saguaro.model.config import layer_parts
from saguaro.model.decoder import Decoder, Linear
from saguaro.quant.grids import Int4Grid, Int6Grid, concat_grids, grid_from_float, map_rows
from saguaro.quant.linear import Int4Linear, Int8Linear
from saguaro.quant.native import glue, use_native
from saguaro.quant.native.linear import NativeInt4Linear, NativeInt6Linear, NativeInt8Linear, fits_fp16, supports

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


Values = Callable[[], torch.Tensor]  # a linear's float weight [out, in], made when first needed


def _values(linear: Linear, names: list[str], dense: Callable[[list[str]], torch.Tensor] | None) -> Values:
    """The linear's own float weight, or, for a decoder built with meta matrices (a GGUF read
    straight from its blocks), those HF tensors' values from `dense`."""
    if not linear.weight.is_meta:
        return lambda: linear.weight
    if dense is None:
        raise ValueError("a linear without values needs `dense` to quantize")
    return lambda: dense(names)


def _int4_grid(values: Values, parts: list[tuple[str, int]], grids: dict) -> Int4Grid:
    own = [grids.get(name) for name, _ in parts]
    if all(isinstance(g, Int4Grid) for g in own):  # the file's own grids: no float needed
        return concat_grids(own)
    rows = torch.split(values(), [n for _, n in parts])
    return concat_grids([g if isinstance(g, Int4Grid) else grid_from_float(w, GROUP) for g, w in zip(own, rows)])


def _int6_grid(parts: list[tuple[str, int]], grids: dict) -> Int6Grid | None:
    """The parts' own int6 grids fused, when every part has one the kernel can hold."""
    own = [grids.get(name) for name, _ in parts]
    if all(isinstance(g, Int6Grid) and fits_fp16(g) for g in own):
        return concat_grids(own)
    return None


def _quantized(linear: Linear, values: Values, scheme: str, parts, dtype, bits: dict[str, int], grids: dict,
               native: bool) -> Linear:
    """scheme: int4 (parts the file keeps wider at int6 where they are Q6_K, else int8), int6 (int6
    where the parts are Q6_K, else int8) or int8."""
    inp = linear.weight.shape[1]
    native = native and supports(inp)  # else this one linear runs on PyTorch's kernel
    if scheme != "int4" or inp % GROUP or any(bits.get(n, 0) >= WIDE_BITS for n, _ in parts):
        if scheme != "int8" and native and (six := _int6_grid(parts, grids)) is not None:
            return NativeInt6Linear(six, dtype, linear.bias)
        return (NativeInt8Linear if native else Int8Linear)(values(), dtype, linear.bias)
    return (NativeInt4Linear if native else Int4Linear)(_int4_grid(values, parts, grids), dtype, linear.bias)


def quantize_decoder(decoder: Decoder, scheme: str, bits: dict[str, int] | None = None,
                     grids: dict | None = None, same_head: bool = False,
                     dense: Callable[[list[str]], torch.Tensor] | None = None) -> str:
    """Quantize in place; returns the scheme applied. `bits` and `grids` come from a GGUF file
    (saguaro.loading.gguf_grids); without them every weight is quantized from its float values.
    `same_head` gives the LM head the layers' scheme: for drafts, whose precision moves only
    acceptance, never exactness, and whose head is a large share of a step's bytes. `dense`
    (HF weight names -> their float rows stacked, in the decoder's dtype) gives the values of
    linears built as meta tensors; only those that cannot run on their file's grid call it."""
    bits, grids = bits or {}, grids or {}
    scheme = resolve_scheme(check_scheme(scheme), bits)
    if scheme == "none":
        return scheme
    if decoder.device.type != "cpu":
        raise InvalidRequestError(f"quantize={scheme} runs on CPU only; use quantize='none' on {decoder.device}")
    native = use_native()
    if native and decoder.dtype in glue.DTYPES:
        decoder.ops = glue.native_ops()
    for i, layer in enumerate(decoder.layers):
        for attr, parts in layer_parts(decoder.cfg, i).items():
            weights = [(name + ".weight", rows) for name, rows in parts]
            linear = getattr(layer, attr)
            values = _values(linear, [name for name, _ in weights], dense)
            setattr(layer, attr, _quantized(linear, values, scheme, weights, decoder.dtype, bits, grids, native))
    head_name = "lm_head.weight" if "lm_head.weight" in bits else "model.embed_tokens.weight"
    # The head decides every token: int4 only where the file itself stores it at 4 bits, int6
    # where it stores it as Q6_K.
    head_grid = grids.get(head_name)
    head_scheme = "int8"
    if scheme == "int4" and (same_head or isinstance(head_grid, Int4Grid)):
        head_scheme = "int4"
    elif scheme == "int4" and isinstance(head_grid, Int6Grid):
        head_scheme = "int6"
    head = decoder.lm_head
    if hasattr(head, "inner"):  # a vocabulary-subset head: its rows are a subset of the file's
        keep = head.keep.cpu()
        head_grids = {head_name: map_rows(head_grid, lambda t: t[keep])} if head_grid is not None else {}
        whole = _values(head.inner, [head_name], dense)
        values = whole if not head.inner.weight.is_meta else lambda: whole()[keep].contiguous()
        head.inner = _quantized(head.inner, values, head_scheme, [(head_name, head.inner.weight.shape[0])],
                                decoder.dtype, {}, head_grids, native)
    else:
        decoder.lm_head = _quantized(head, _values(head, [head_name], dense), head_scheme,
                                     [(head_name, head.weight.shape[0])], decoder.dtype, {}, grids, native)
    head = getattr(decoder.lm_head, "inner", decoder.lm_head)
    log.info("quantized %s linears to %s (head %s) on %s kernels", decoder.cfg.model_type, scheme,
             type(head).__name__, "Saguaro's" if native else "PyTorch's")
    return scheme
