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


def weight_bytes_per_token(decoder) -> int:
    """Bytes of weights one decode step streams: every linear (the embedding row is negligible)."""
    total = 0
    for linear in decoder.linears():
        w = linear.weight
        total += w.numel() * w.element_size()
    return total
