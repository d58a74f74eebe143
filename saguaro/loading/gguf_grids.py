"""What a GGUF file says about precision: Q4_K and Q6_K tensors as grids, and each tensor's bits.

The quantize transform runs Q4_K and Q6_K weights on their own grids, read from their blocks with
no float in between, and keeps other tensors that the file stores at 6 bits or more (Q8_0, F16)
off the 4-bit kernel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from saguaro.loading.gguf_dequant import CHUNK_BLOCKS, as_bytes, k_scales, q4_k_codes, q6_k_codes, q6_k_scales
from saguaro.loading.gguf_file import permuted_heads, unpermute
from saguaro.loading.gguf_reader import TensorInfo
from saguaro.quant.grids import Int4Grid, Int6Grid, map_rows

Q4_K_BYTES = 144  # fp16 d, fp16 dmin, 12 bytes of 6-bit sub-scales and mins, 128 bytes of codes
Q4_K_GROUP = 32  # weights per Q4_K sub-block: one scale and one min each
Q6_K_BYTES = 210  # 128 bytes of low 4 bits, 64 of high 2 bits, 16 int8 sub-scales, fp16 d

BITS = {"Q4_0": 4, "Q4_1": 4, "Q4_K": 4, "IQ4_NL": 4, "IQ4_XS": 4, "Q5_0": 5, "Q5_1": 5, "Q5_K": 5,
        "Q2_K": 2, "Q3_K": 3, "Q6_K": 6, "Q8_0": 8, "Q8_K": 8, "BF16": 16, "F16": 16, "F32": 32}


def _by_chunks(raw: np.ndarray, size: int, read, parts: list[tuple[int, torch.dtype]]) -> list[torch.Tensor]:
    """read(blocks) -> one tensor per part, run a chunk of blocks at a time into [blocks, width]
    tensors of each part's dtype."""
    blocks = as_bytes(raw).reshape(-1, size)
    outs = [torch.empty(blocks.shape[0], width, dtype=dtype) for width, dtype in parts]
    for at in range(0, blocks.shape[0], CHUNK_BLOCKS):
        for out, part in zip(outs, read(blocks[at:at + CHUNK_BLOCKS])):
            out[at:at + CHUNK_BLOCKS] = part
    return outs


def _q4_k_parts(b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (q4_k_codes(b), *k_scales(b))


def _q6_k_parts(b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return q6_k_codes(b), q6_k_scales(b)


def grid_from_q4_k(raw: np.ndarray, shape: tuple[int, int]) -> Int4Grid:
    """A Q4_K tensor's bytes ([out, in / 256 · 144] uint8) as a group-32 grid, without rounding."""
    out, inp = shape
    f32 = torch.float32
    codes, scale, low = _by_chunks(raw, Q4_K_BYTES, _q4_k_parts, [(256, torch.uint8), (8, f32), (8, f32)])
    scale, low = scale.reshape(out, inp // Q4_K_GROUP), low.reshape(out, inp // Q4_K_GROUP)
    return Int4Grid(codes.reshape(out, inp), scale, 8 * scale - low, Q4_K_GROUP)  # w = scale · q - low


def grid_from_q6_k(raw: np.ndarray, shape: tuple[int, int]) -> Int6Grid:
    """A Q6_K tensor's bytes ([out, in / 256 · 210] uint8) as its codes and sub-block scales."""
    out, inp = shape
    codes, scale = _by_chunks(raw, Q6_K_BYTES, _q6_k_parts, [(256, torch.uint8), (16, torch.float32)])
    return Int6Grid(codes.reshape(out, inp), scale.reshape(out, -1))


READERS = {"Q4_K": grid_from_q4_k, "Q6_K": grid_from_q6_k}


def source_bits(named: dict[str, TensorInfo]) -> dict[str, int]:
    """HF name -> bits per weight of the file's own encoding (unknown types count as 16)."""
    return {name: BITS.get(t.tensor_type.name, 16) for name, t in named.items()}


def native_grids(named: dict[str, TensorInfo], cfg: dict[str, Any]) -> dict[str, Int4Grid | Int6Grid]:
    """HF name -> the tensor's own grid, for every Q4_K and Q6_K matrix in the file."""
    grids = {}
    for name, t in named.items():
        read = READERS.get(t.tensor_type.name)
        if read is None:
            continue
        grid = read(t.data, t.rows_cols)
        heads = permuted_heads(name, cfg)
        if heads:  # llama.cpp interleaved the rotary halves of these rows
            grid = map_rows(grid, lambda x: unpermute(x, heads))
        grids[name] = grid
    return grids
