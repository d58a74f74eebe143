"""The fused elementwise steps of a decoder layer (glue.cpp) as a model's LayerOps.

On a one-token decode step PyTorch's RMS norms, rotary embeddings and cache writes cost more in
dispatch than in arithmetic; the quantize transform gives a model on Saguaro's kernels these.
"""

from __future__ import annotations

import torch

from saguaro.kv_cache import KVCache
from saguaro.model.decoder import LayerOps

DTYPES = (torch.float32, torch.bfloat16)


def native_ops() -> LayerOps:
    """The fused ops; the kernels must be loaded (saguaro.quant.native.build.load_kernels)."""
    ops = torch.ops.saguaro_glue

    def write_kv(cache: KVCache, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        ops.kv_write(cache.k[layer], cache.v[layer], slots, k, v)

    return LayerOps(rms_norm=ops.rms_norm, rotary=ops.rotary, write_kv=write_kv)
