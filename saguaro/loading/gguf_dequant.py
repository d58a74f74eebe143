"""GGUF blocks to float32 in PyTorch: the same arithmetic as gguf-py's numpy dequantization, step
for step, so the values are bit for bit the same, on every core and a chunk at a time.

Only tensors that do not run on their own grid are dequantized at load (saguaro.loading.gguf_file).
Types without a function here fall back to gguf-py.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

CHUNK_BLOCKS = 1 << 15  # about 4 MiB of Q4_K blocks: temporaries stay in cache-sized pieces


def _f16(b: torch.Tensor, at: int) -> torch.Tensor:
    """[n, 1] float32 from the fp16 at byte `at` of each block."""
    return b[:, at:at + 2].contiguous().view(torch.float16).float()


# Bit fields are taken apart with plain elementwise ops and one stack: PyTorch's broadcast shifts
# (x >> [0, 4]) run 4-5x slower on uint8.


def _nibbles(qs: torch.Tensor, width: int) -> torch.Tensor:
    """[n, runs · 2 · width]: each run of `width` bytes gives its low nibbles, then its high ones."""
    runs = qs.reshape(qs.shape[0], -1, width)
    return torch.stack([runs & 0x0F, runs >> 4], dim=2).reshape(qs.shape[0], -1)


def _bit_fields(b: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """b's `bits`-wide fields, lowest first, stacked along a new axis `dim`."""
    mask = (1 << bits) - 1
    return torch.stack([(b >> shift) & mask for shift in range(0, 8, bits)], dim=dim)


def _high_bits(qh: torch.Tensor) -> torch.Tensor:
    """[n, 32] the 32 bits of a little-endian uint32 per block, bit i for weight i."""
    return _bit_fields(qh.reshape(-1, 4), 1, 2).reshape(-1, 32)


def _k_scale_min(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 12 bytes of 6-bit sub-scales and mins -> [n, 8] each."""
    s = s.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def _q4_0(b):
    return _f16(b, 0) * (_nibbles(b[:, 2:], 16).to(torch.int8) - 8).float()


def _q4_1(b):
    return _f16(b, 0) * _nibbles(b[:, 4:], 16).float() + _f16(b, 2)


def _q5_0(b):
    q = _nibbles(b[:, 6:], 16) | (_high_bits(b[:, 2:6]) << 4)
    return _f16(b, 0) * (q.to(torch.int8) - 16).float()


def _q5_1(b):
    q = _nibbles(b[:, 8:], 16) | (_high_bits(b[:, 4:8]) << 4)
    return _f16(b, 0) * q.float() + _f16(b, 2)


def _q8_0(b):
    return _f16(b, 0) * b[:, 2:].contiguous().view(torch.int8).float()


def k_scales(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A Q4_K/Q5_K block's 8 sub-block scales and mins, float32 [n, 8] each: w = scale · q - min."""
    sc, mn = _k_scale_min(b[:, 4:16])
    return _f16(b, 0) * sc.float(), _f16(b, 2) * mn.float()


def q4_k_codes(b: torch.Tensor) -> torch.Tensor:
    """[n, 256] uint8 codes 0..15 of Q4_K blocks, in weight order."""
    return _nibbles(b[:, 16:], 32)


def _k_parts(b, q: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dm = k_scales(b)
    return (d.reshape(n, 8, 1) * q.reshape(n, 8, 32).float() - dm.reshape(n, 8, 1)).reshape(n, 256)


def _q4_k(b):
    return _k_parts(b, q4_k_codes(b))


def _q5_k(b):
    high = _bit_fields(b[:, 16:48], 1, 1)  # [n, 8, 32]: bit j of byte i is weight 32 j + i's fifth bit
    return _k_parts(b, _nibbles(b[:, 48:], 32) | (high.reshape(-1, 256) << 4))


def q6_k_codes(b: torch.Tensor) -> torch.Tensor:
    """[n, 256] uint8 codes 0..63 of Q6_K blocks. Each half of 128 weights: 64 bytes of low nibbles
    (weights 0-63 low, 64-127 high), then 32 bytes of high pairs (weights 0-31 at bits 0-1, ...)."""
    high = _bit_fields(b[:, 128:192].reshape(-1, 2, 32), 2, 2)  # [n, 2, 4, 32]
    return _nibbles(b[:, :128], 64) | (high.reshape(-1, 256) << 4)


def q6_k_scales(b: torch.Tensor) -> torch.Tensor:
    """[n, 16] float32: a Q6_K block's scale per 16 weights, w = (q - 32) · scale."""
    return _f16(b, 208) * b[:, 192:208].contiguous().view(torch.int8).float()


def _q6_k(b):
    n = b.shape[0]
    q = (q6_k_codes(b).to(torch.int8) - 32).reshape(n, 16, 16).float()
    return (q6_k_scales(b).reshape(n, 16, 1) * q).reshape(n, 256)


BLOCKS = {T.Q4_0: _q4_0, T.Q4_1: _q4_1, T.Q5_0: _q5_0, T.Q5_1: _q5_1, T.Q8_0: _q8_0, T.Q4_K: _q4_k,
          T.Q5_K: _q5_k, T.Q6_K: _q6_k}


def as_bytes(data: np.ndarray) -> torch.Tensor:
    """A tensor's raw bytes (often a read-only map of the file) as a flat uint8 tensor, no copy."""
    with warnings.catch_warnings():  # a read-only map, which nothing here writes
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(data).reshape(-1).view(np.uint8))


def dequantize(data: np.ndarray, kind: T, shape: tuple[int, ...]) -> torch.Tensor:
    """`data`: a tensor's raw bytes; returns float32 of `shape` (numpy order). The result owns its
    memory: nothing points into the mapped file."""
    raw = as_bytes(data)
    if kind == T.F32:
        return raw.view(torch.float32).reshape(shape).clone()
    if kind == T.F16:
        return raw.view(torch.float16).float().reshape(shape)
    if kind == T.BF16:
        return raw.view(torch.bfloat16).float().reshape(shape)
    fn = BLOCKS.get(kind)
    if fn is None:
        from gguf.quants import dequantize as slow

        return torch.from_numpy(np.array(slow(np.asarray(data), kind), dtype=np.float32)).reshape(shape)
    block, size = GGML_QUANT_SIZES[kind]
    blocks = raw.reshape(-1, size)
    out = torch.empty(blocks.shape[0], block)  # [blocks, weights per block] float32
    for at in range(0, blocks.shape[0], CHUNK_BLOCKS):
        out[at:at + CHUNK_BLOCKS] = fn(blocks[at:at + CHUNK_BLOCKS])
    return out.reshape(shape)
