"""Memory-bandwidth roofline: measured bandwidth, and the weight bytes each decoded token reads."""

from __future__ import annotations

import time

import torch


def measure_read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second of a large streaming read (a sum over a tensor far larger than the caches)."""
    data = torch.ones(int(gib * (1 << 30)) // 4, dtype=torch.float32)
    data.sum()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.numel() * 4 / best


QUANT_SCALES = ("pairs", "scale")  # PyTorch's int4 and int8 kernels (the native ones pack theirs into `weight`)


def linear_bytes(linear) -> int:
    """Bytes a linear streams per call: its weight, and a quantized one's scales (and mins)."""
    parts = [linear.weight] + [getattr(linear, name) for name in QUANT_SCALES if hasattr(linear, name)]
    return sum(t.numel() * t.element_size() for t in parts)


def weight_bytes_per_token(decoder) -> int:
    """Bytes of weights one decode step streams: every linear (the embedding row is negligible)."""
    return sum(linear_bytes(linear) for linear in decoder.linears())
